//! Ballast's locks: a remote lock on one Redis server, and Redlock over several independent
//! ones, each grant carrying a fencing token, with lease extension and background renewal.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ballast_lock::LockError> {
//! use std::time::Duration;
//! use ballast_lock::{LockManager, Options, Renewal};
//!
//! let urls = ["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"];
//! let locks = LockManager::redlock(&urls, Options::default())?;
//! let lease = locks.acquire("nightly-report", Duration::from_secs(10), Duration::from_secs(30)).await?;
//! let token = lease.fencing_token(); // give it to every write the lock protects
//! let held = lease.keep_alive(Renewal::default());
//! // … work, stopping when `held.lost()` resolves …
//! held.release().await;
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! A lock is a key holding a fresh random value per grant, set with `SET NAME VALUE NX PX TTL`;
//! release and extension are Lua scripts that act only while the key still holds that value. With
//! several nodes (Redlock), every step goes to all of them at once, each call bounded by a
//! per-node timeout small against the TTL; the lock is granted when a majority (N/2 + 1) granted
//! it and validity remains: TTL − time taken − drift, drift being 1% of the TTL + 2 ms. A failed
//! attempt is released on every node, the ones that timed out included. Each grant also issues a
//! fencing token in the same script (see `scripts.rs`): the largest of the majority's is the
//! lease's once a majority has raised its counter to it, so tokens grow in grant order even when
//! the nodes' counters disagree.
//!
//! # What it does not promise
//!
//! A lease is a promise about time. Redlock's safety rests on bounded clock drift between the
//! nodes and the client, and on the holder not being paused (GC, swapping, SIGSTOP) for longer
//! than its validity: Martin Kleppmann's critique ("How to do distributed locking", 2016) shows a
//! paused holder that wakes after its lease passed to someone else and writes anyway, and antirez's
//! reply ("Is Redlock safe?") argues the assumptions hold in practice. Both agree on the remedy
//! for the paused holder: **fencing**. A resource that remembers the newest token it saw and
//! refuses older ones makes a late writer harmless; the lock alone cannot.
//!
//! Nodes must not forget a lock they granted: run them with `appendonly yes` and
//! `appendfsync always`, or keep a crashed node down for at least one TTL before it rejoins
//! (otherwise a restarted, empty node can hand out a lock a majority still holds). With a majority
//! of nodes down the lock is unavailable, never unsafe.

#![forbid(unsafe_code)]

mod error;
pub mod fenced;
pub mod history;
mod lease;
pub mod local;
mod manager;
mod node;
mod options;
pub mod queue;
pub mod renewal;
mod scripts;

pub use error::{LockError, NodeError};
pub use lease::{Lease, Released};
pub use manager::{LockManager, NodeStatus};
pub use node::Holding;
pub use options::Options;
pub use renewal::{Held, Renewal};
