//! How a lock manager talks to its nodes and waits for a lock.

use std::time::Duration;

/// Tuning for a [`LockManager`](crate::LockManager); the defaults suit nodes on one network.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long one node may take for one call. `None`: a twentieth of the TTL, between 5 ms and
    /// 250 ms, so that a slow node cannot eat the validity of the lock.
    pub node_timeout: Option<Duration>,
    /// The first pause between attempts while waiting for a held lock; it doubles up to
    /// `max_retry_delay`, and each pause is drawn at random from half to one and a half of it, so
    /// that waiters do not retry in step.
    pub retry_delay: Duration,
    /// The longest pause between attempts.
    pub max_retry_delay: Duration,
    /// Ask the nodes one after another instead of all at once. Only for measuring what asking in
    /// parallel buys (`ballast bench lock`); never faster.
    pub sequential: bool,
    /// Written into each lock's value before the random part, for people reading it (a host
    /// name, a process).
    pub holder: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            node_timeout: None,
            retry_delay: Duration::from_millis(5),
            max_retry_delay: Duration::from_millis(200),
            sequential: false,
            holder: format!("pid-{}", std::process::id()),
        }
    }
}

impl Options {
    /// The per-node timeout for a lock of `ttl`.
    pub(crate) fn node_timeout(&self, ttl: Duration) -> Duration {
        self.node_timeout.unwrap_or_else(|| {
            (ttl / 20).clamp(Duration::from_millis(5), Duration::from_millis(250))
        })
    }
}

/// The margin for clocks running at different rates on the client and the nodes: 1% of the TTL
/// plus 2 ms, as the Redlock description gives it.
pub(crate) fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}
