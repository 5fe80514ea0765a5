//! Ballast's data plane: the LB server.
//!
//! [`run`] starts an LB server from [`Settings`] (flags or a TOML file) and returns once SIGTERM
//! or SIGINT has drained it. Its pools are the settings' own ([`Source::Static`]) or follow the
//! configuration database ([`Source::Managed`]), revision by revision; either way they are the
//! database's model of a pool. It proxies HTTP/1.1 and HTTP/2 (h2c and TLS with ALPN) or raw
//! TCP to the backends of each listener's pool, choosing with the pool's `ballast-balance`
//! picker, and serves Prometheus metrics on its admin address.
//!
//! ```no_run
//! use ballast_config::{AlgorithmSpec, Pool, PoolSpec};
//! use ballast_proxy::settings::{BackendAddress, Listener, Mode, Serves, Settings};
//!
//! let pool = Pool {
//!     spec: PoolSpec {
//!         name: "web".into(),
//!         algorithm: AlgorithmSpec::named("least_request"),
//!         hash_key: "client_ip".into(),
//!         dns_name: None,
//!         policy: Default::default(),
//!     },
//!     backends: ["127.0.0.1:9001=3", "127.0.0.1:9002"]
//!         .iter()
//!         .map(|b| b.parse::<BackendAddress>().map(BackendAddress::into_model))
//!         .collect::<Result<_, _>>()?,
//! };
//! let listener = Listener {
//!     address: "127.0.0.1:8080".parse()?,
//!     mode: Mode::Http,
//!     serves: Serves::Pool("web".into()),
//!     tls: Vec::new(),
//!     proxy_protocol: false,
//!     rate_limit: None,
//! };
//! let settings = Settings::new(vec![listener], vec![pool]);
//! ballast_proxy::run(settings, ballast_proxy::Source::Static, None, |bound| {
//!     println!("listening on {:?}", bound.listeners);
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The request path never waits on a lock or the network for configuration: it reads an
//! immutable snapshot through `ArcSwap`, counts with atomics, and keeps its backend connections in
//! a per-worker cache (see `server` for the threading model).

#![forbid(unsafe_code)]

pub mod access_log;
mod admin;
mod attempt;
pub mod echo;
mod fleet_rate;
mod h1;
mod headers;
mod http2;
mod hyper_path;
mod key;
mod listeners;
mod managed;
pub mod metrics;
mod outlier;
mod prefixed;
mod process;
mod protection;
mod proxy_protocol;
mod rate_limit;
mod relay;
pub mod reload;
mod request_id;
pub mod routes;
mod server;
pub mod settings;
mod shutdown;
mod slow_start;
mod spare;
mod state;
mod sticky;
mod tcp;
mod tls;
mod upstream;
mod watchdog;

/// The HTTP/1.1 parsers without a server, for the fuzz target (the `fuzzing` feature).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use h1::fuzzing;
pub use managed::Managed;
pub use reload::Reload;
pub use server::{Bound, ServerError, Source, run};
pub use settings::Settings;
