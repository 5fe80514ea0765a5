//! Ballast's health detection, pure and free of any store: the phi accrual failure detector,
//! active probes (HTTP and TCP, over TLS where the pool speaks it), and the tracker that turns
//! probe outcomes into verdicts with rise and fall thresholds. How a pool's backends are reached
//! over TLS ([`BackendTls`]) lives here, where probes and the LB's requests both take it. The orchestrator (`ballast-control`) runs the probes on a schedule
//! and writes the verdicts to the configuration database.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::{Duration, Instant};
//! use ballast_health::{Check, Thresholds, Tracker, probe};
//!
//! let mut tracker = Tracker::new(Thresholds::default());
//! let backend = "127.0.0.1:9001".parse().unwrap();
//! let check = Check::Http { path: "/health".into(), tls: None };
//! loop {
//!     let outcome = probe(backend, &check, Duration::from_millis(500)).await;
//!     if let Some(verdict) = tracker.record(&outcome, Instant::now()) {
//!         println!("{:?}: {} (phi {:.1})", verdict.health, verdict.reason, verdict.phi);
//!     }
//!     tokio::time::sleep(Duration::from_secs(1)).await;
//! }
//! # }
//! ```

#![forbid(unsafe_code)]

mod phi;
mod probe;
mod tls;
mod tracker;

pub use phi::{PhiAccrual, PhiSettings};
pub use probe::{Check, Outcome, probe};
pub use tls::{BackendTls, BackendTlsError, speaks_h2};
pub use tracker::{Health, Thresholds, Tracker, Verdict, shown};
