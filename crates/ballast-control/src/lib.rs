//! Ballast's control plane. Today: the admin API, a JSON REST API over the configuration
//! database that the `ballast pool …` and `ballast backend …` commands (and anything else with
//! the token) use to change pools and backends. Each change is one store write, one revision,
//! and reaches every managed LB through the change feed. [`retention`] keeps the change log to
//! a bounded length.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = ballast_config::SqlStore::connect("sqlite://ballast.db").await?;
//! let app = ballast_control::api::router(store, "a-long-random-token".to_owned());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod api;
mod auth;
mod error;
mod openapi;
pub mod retention;
