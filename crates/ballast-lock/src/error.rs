//! What can go wrong, naming the node where one is to blame.

use std::time::Duration;

/// Why one Redis node did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// No connection: refused, reset, or the name did not resolve.
    #[error("{node}: unreachable: {reason}")]
    Unreachable {
        /// The node's URL.
        node: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// No answer within the per-node timeout.
    #[error("{node}: timed out after {after:?}")]
    TimedOut {
        /// The node's URL.
        node: String,
        /// The per-node timeout.
        after: Duration,
    },
    /// The node answered with an error (a script error, a full memory, a wrong type).
    #[error("{node}: {reason}")]
    Script {
        /// The node's URL.
        node: String,
        /// The node's error.
        reason: String,
    },
}

/// Why a lock could not be had, kept, or set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// The settings cannot work (a zero TTL, no nodes, an even Redlock).
    #[error("{field}: {reason}")]
    Invalid {
        /// The setting at fault.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Someone else holds it (on `held` nodes), or too few nodes answered to reach a quorum.
    #[error(
        "`{name}` not acquired: {granted} of {nodes} nodes granted it, {quorum} needed ({held} held by another){}",
        failures_text(.failures)
    )]
    NotAcquired {
        /// The lock's name.
        name: String,
        /// Nodes that granted it.
        granted: usize,
        /// Nodes where another holder had it.
        held: usize,
        /// Nodes in all.
        nodes: usize,
        /// Grants needed.
        quorum: usize,
        /// The nodes that failed, and how.
        failures: Vec<NodeError>,
    },
    /// A quorum granted it but so late that no validity was left (the TTL is too short for the
    /// nodes' latency).
    #[error(
        "`{name}` not acquired: the grants took {elapsed:?}, leaving no validity of the {ttl:?} TTL"
    )]
    TooSlow {
        /// The lock's name.
        name: String,
        /// How long the grants took.
        elapsed: Duration,
        /// The TTL asked for.
        ttl: Duration,
    },
    /// A quorum granted it, but too few nodes then raised their fencing counters to its token,
    /// so a later holder could get a smaller one: refused (and released) rather than unsafe.
    #[error(
        "`{name}` not acquired: fewer than {quorum} nodes raised their fencing counter to the token{}",
        failures_text(.failures)
    )]
    Unfenced {
        /// The lock's name.
        name: String,
        /// Nodes needed.
        quorum: usize,
        /// The nodes that failed, and how.
        failures: Vec<NodeError>,
    },
    /// The wait ended before the lock was free.
    #[error("`{name}` not acquired within {waited:?}: {last}")]
    Timeout {
        /// The lock's name.
        name: String,
        /// How long it waited.
        waited: Duration,
        /// Why the last attempt failed.
        last: Box<LockError>,
    },
    /// The lease is gone: its validity ran out, or too few nodes still held it to extend it.
    #[error("`{name}` lost: {reason}")]
    Lost {
        /// The lock's name.
        name: String,
        /// Why.
        reason: String,
    },
}

fn failures_text(failures: &[NodeError]) -> String {
    if failures.is_empty() {
        return String::new();
    }
    let listed: Vec<String> = failures.iter().map(ToString::to_string).collect();
    format!("; {}", listed.join("; "))
}
