//! Ballast's DNS for the LB tier: a pool's DNS name resolves to the LB servers that serve it and
//! are up, so clients spread over the fleet. This crate holds the zone and its answers — which
//! names exist, which addresses each returns, in which order, and which subset a client gets when
//! the fleet is too large for one answer — built from the configuration and the fleet as the
//! configuration database holds them. The server that speaks the DNS protocol over UDP and TCP
//! builds on it.
//!
//! ```
//! use ballast_dns::{Lookup, QueryType, Zone};
//!
//! let zone = Zone::new("ballast.local", 5);
//! assert_eq!(
//!     zone.lookup("example.com", QueryType::A, "127.0.0.1".parse().unwrap(), None, 0),
//!     Lookup::Refused
//! );
//! ```

#![forbid(unsafe_code)]

mod bind;
mod fast;
mod follow;
mod metrics;
mod server;
mod udp;
mod zone;

pub use bind::bind;
pub use follow::follow_zone;
/// The DNS wire format the server speaks, for clients such as `ballast bench dns`.
pub use hickory_server::proto;
pub use metrics::Metrics;
pub use server::{Answerer, DnsServer, serve};
pub use zone::{Lookup, QueryType, Zone};
