//! What a Ballast process shows the outside world, in one place for every process.
//!
//! Two things leave every server and command: metrics pages and text (output, logs, API answers).
//! Each has one rule that must not drift between the LB, the orchestrator, DNS and the locks:
//!
//! - [`exposition`]: a `/metrics` page in the format the scraper asked for: OpenMetrics for
//!   Prometheus (which asks for it), the Prometheus text format 0.0.4 for everything else
//!   (`curl | promtool check metrics`, older scrapers), from the one registry each process keeps.
//! - [`redact`]: any text with the passwords in it replaced, so that a database or Redis URL
//!   given on the command line reaches no log, error, API answer or dashboard whole.
//!
//! It depends on nothing of Ballast's, so that every crate (the lock crate included) may use it.

#![forbid(unsafe_code)]

pub mod exposition;
mod redact;

pub use exposition::{Format, Page};
pub use redact::redact;
