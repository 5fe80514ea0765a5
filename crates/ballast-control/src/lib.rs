//! Ballast's control plane: the admin API, a JSON REST API over the configuration database that
//! the `ballast pool …` and `ballast backend …` commands (and anything else with the token) use to
//! change pools and backends — each change one store write, one revision, reaching every managed
//! LB through the change feed — and the orchestrator. Instances elect a leader ([`leader`]); the
//! leader ([`orchestrator`]) runs the loops, every write carrying its fencing token: [`health`]
//! checks every backend and writes its verdicts, [`fleet`] scrapes the LB servers (or asks
//! [`prometheus`]) and judges their liveness, [`scaler`] sizes the fleet by the HPA rule of
//! [`autoscale`] through a [`provision`]er. [`retention`] keeps the change log to a bounded
//! length. [`run`] wires one instance from its [`Settings`]; [`client`] is the one client of
//! the admin API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = ballast_control::Settings {
//!     db: "sqlite://ballast.db".into(),
//!     listen_db: None,
//!     listen: "127.0.0.1:9000".parse()?,
//!     token: "a-long-random-token".into(),
//!     keep_changes: 100_000,
//!     orchestrator: None,
//! };
//! ballast_control::run(settings, |address| println!("admin API on {address}")).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod api;
pub mod orchestrator;
pub mod retention;
mod service;

pub use api::client;
pub use orchestrator::{autoscale, fleet, health, leader, prometheus, provision, scaler};
pub use service::{Orchestration, Provisioner, Scaling, ServiceError, Settings, run};

pub(crate) use api::{dashboard, error};
