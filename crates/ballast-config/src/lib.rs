//! Ballast's configuration database: the model (pools, backends, the writes that change them),
//! its validation, and the stores that keep it with one global revision and a change log.
//!
//! Every [`Write`] is one transaction: check it, apply it, bump the revision, append a
//! [`Change`]. Managed LB servers load a [`Config`] and then follow the change log from the
//! revision they applied, so none of them asks the database per request.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ballast_config::StoreError> {
//! use ballast_config::{AlgorithmSpec, PoolSpec, SqlStore, Write};
//!
//! let store = SqlStore::connect("sqlite://ballast.db").await?;
//! store.apply(Write::CreatePool(PoolSpec {
//!     name: "web".into(),
//!     algorithm: AlgorithmSpec::named("least_request"),
//!     hash_key: "client_ip".into(),
//!     dns_name: None,
//!     policy: Default::default(),
//! })).await?;
//! let revision = store
//!     .apply(Write::AddBackend { pool: "web".into(), address: "127.0.0.1:9001".into(), weight: 1 })
//!     .await?;
//! assert_eq!(store.config().await?.revision, revision);
//! # Ok(()) }
//! ```
//!
//! SQLite (one file, WAL) is the embedded default; the PostgreSQL store, with `NOTIFY` for the
//! push half of the change feed, shares the model, the checks and the test suite.

#![forbid(unsafe_code)]

mod feed;
mod hash_key;
mod model;
pub mod route;
mod sql;
mod store;
mod validate;

pub use ballast_balance::ALGORITHM_NAMES;
pub use feed::{FollowOptions, Followed, catch_up, follow, follow_or_fall_back};
pub use hash_key::HashKeySpec;
pub use model::{
    AdminState, AlgorithmSpec, Backend, Change, Config, Health, LbFigures, LbServer, LbState,
    Liveness, OutOfStep, Pool, PoolPolicy, PoolSpec, ProxyProtocol, RouteEditError,
    UpstreamProtocol, Write,
};
pub use sql::lease::Lease;
pub use sql::{Dialect, NOTIFY_CHANNEL, SqlStore};
pub use store::{Fence, StoreError};
pub use validate::{Invalid, backend_address, check};
