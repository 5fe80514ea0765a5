//! Real servers for Ballast's tests, never mocks and never the machine's own services: each is
//! started on a free loopback port in a temp dir and goes away when the test binary exits.
//!
//! ```no_run
//! # async fn demo() {
//! // One server per test binary, one database per test:
//! let url = ballast_testkit::postgres::database().await;
//! // Or a server of one's own, to stop and start under load:
//! let server = ballast_testkit::postgres::Server::start();
//! server.stop();
//! server.start_again();
//!
//! // Five private Redis servers for Redlock, and one crashed and restarted:
//! let nodes = ballast_testkit::redis::Server::cluster(5);
//! nodes[0].kill();
//! nodes[0].start_again();
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod haproxy;
pub mod pgbouncer;
pub mod postgres;
pub mod prometheus;
pub mod redis;
