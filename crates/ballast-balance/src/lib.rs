//! Backend selection for Ballast: every balancing algorithm, pure and synchronous.
//!
//! A [`Picker`] is built once from a backend set and then shared by every worker thread. Its
//! [`Picker::pick`] takes `&self`, never blocks and never allocates; the only shared state it
//! touches is atomics (a rotation counter, each backend's [`Load`]). When the backend set or the
//! algorithm changes, the owner builds a new picker off the hot path and swaps it in whole.
//!
//! ```
//! use ballast_balance::{Algorithm, Backend, Picker, hash_key};
//!
//! let backends = vec![Backend::new("a", 5), Backend::new("b", 1), Backend::new("c", 1)];
//! let picker = Picker::build(&"weighted_round_robin".parse::<Algorithm>()?, &backends)?;
//! let order: Vec<&str> = (0..7)
//!     .map(|_| backends[picker.pick(0).expect("a backend")].id())
//!     .collect();
//! assert_eq!(order, ["a", "a", "b", "a", "c", "a", "a"]);
//!
//! // Hash-based algorithms route the same key to the same backend.
//! let maglev = Picker::build(&Algorithm::maglev(), &backends)?;
//! let key = hash_key(b"203.0.113.7");
//! assert_eq!(maglev.pick(key), maglev.pick(key));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Load-aware algorithms (`least_connections`, `least_request`, `bounded_load`) read each
//! backend's in-flight count; the caller marks a request's life with [`Load::start`], whose guard
//! ends it on drop. The loads live in `Arc`s inside [`Backend`], so a rebuilt picker can share
//! them with the one it replaces and requests already in flight stay counted.

#![forbid(unsafe_code)]

mod algorithm;
mod alias;
mod backend;
mod bounded_load;
mod error;
mod hash;
mod least_connections;
mod least_request;
mod maglev;
mod picker;
pub mod quality;
mod random;
mod ring_hash;
mod round_robin;
pub mod simulation;
mod weighted_round_robin;

pub use algorithm::{ALGORITHM_NAMES, Algorithm, Parameters};
pub use backend::{Backend, InFlight, Load};
pub use error::BuildError;
pub use hash::hash_key;
pub use picker::{Picker, Select};
