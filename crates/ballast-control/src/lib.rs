//! Ballast's control plane: the admin API, a JSON REST API over the configuration database that
//! the `ballast pool …` and `ballast backend …` commands (and anything else with the token) use to
//! change pools and backends — each change one store write, one revision, reaching every managed
//! LB through the change feed — and the orchestrator. Instances elect a leader ([`leader`]); the
//! leader ([`orchestrator`]) runs the loops, every write carrying its fencing token: [`health`]
//! checks every backend and writes its verdicts, [`fleet`] scrapes the LB servers (or asks
//! [`prometheus`]) and judges their liveness, [`scaler`] sizes the fleet by the HPA rule of
//! [`autoscale`] through a [`provision`]er. [`retention`] keeps the change log to a bounded
//! length.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = ballast_config::SqlStore::connect("sqlite://ballast.db").await?;
//! let app = ballast_control::api::router(store, "a-long-random-token".to_owned(), None);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod api;
mod auth;
pub mod autoscale;
mod dashboard;
mod error;
pub mod fleet;
pub mod health;
pub mod leader;
mod openapi;
pub mod orchestrator;
pub mod prometheus;
pub mod provision;
pub mod retention;
pub mod scaler;
