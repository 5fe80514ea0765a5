//! A granted lock: its value, its fencing token and how long it is valid. Extend it before the
//! validity runs out, or hand it to [`Lease::keep_alive`] to have that done in the background.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{LockError, NodeError};
use crate::manager::{LockManager, fence_key};
use crate::options::drift;
use crate::scripts::EXTEND;

/// A held lock. Dropping it does not release it (it expires with its TTL); call
/// [`release`](Self::release) to free it at once.
#[derive(Debug)]
pub struct Lease {
    manager: LockManager,
    name: String,
    value: String,
    token: u64,
    ttl: Duration,
    valid_until: Instant,
}

/// What a release did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Released {
    /// Nodes where the lock was ours and is now deleted.
    pub nodes: usize,
    /// Nodes that could not be asked (the lock expires there with its TTL).
    pub failures: Vec<NodeError>,
}

impl Lease {
    pub(crate) fn new(
        manager: LockManager,
        name: String,
        value: String,
        token: u64,
        ttl: Duration,
        valid_until: Instant,
    ) -> Self {
        Self {
            manager,
            name,
            value,
            token,
            ttl,
            valid_until,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The random value that marks this holder on the nodes.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The fencing token: larger than that of every earlier grant of this lock. Pass it with
    /// every write to the protected resource, which refuses tokens older than the newest it saw.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// The TTL it was granted (and is extended) with.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Until when the holder may act: the TTL from the start of the attempt, less the time the
    /// grants took and the clock-drift margin.
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }

    /// The validity left (zero once it ran out).
    pub fn remaining(&self) -> Duration {
        self.valid_until.saturating_duration_since(Instant::now())
    }

    /// Whether the validity has not run out yet.
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }

    /// Resets the TTL on every node that still holds our value. Succeeds only if a majority did
    /// so while the lease was still valid; otherwise the lease is lost, and released wherever it
    /// remains so that others need not wait for it to expire.
    pub async fn extend(&mut self) -> Result<(), LockError> {
        let started = Instant::now();
        if started >= self.valid_until {
            return Err(self.lost("its validity ran out before the extension"));
        }
        let fence = fence_key(&self.name);
        let keys = [self.name.as_str(), fence.as_str()];
        let inner = &self.manager.inner;
        let timeout = inner.options.node_timeout(self.ttl);
        let args = [
            self.value.clone(),
            self.token.to_string(),
            self.ttl.as_millis().to_string(),
        ];
        let answers: Vec<Result<u64, NodeError>> = self
            .manager
            .each_node(|node| node.run(&EXTEND, &keys, &args, timeout))
            .await;
        let extended = answers.iter().filter(|a| matches!(a, Ok(1))).count();
        let valid_until = started + self.ttl - drift(self.ttl);
        let now = Instant::now();
        if extended >= self.manager.quorum() && now < valid_until && now < self.valid_until {
            self.valid_until = valid_until;
            return Ok(());
        }
        self.manager
            .release(&self.name, &self.value, self.token)
            .await;
        let failures: Vec<String> = answers
            .iter()
            .filter_map(|a| a.as_ref().err().map(ToString::to_string))
            .collect();
        let mut reason = format!(
            "extended on {extended} of {} nodes, {} needed",
            inner.nodes.len(),
            self.manager.quorum()
        );
        if !failures.is_empty() {
            reason = format!("{reason}; {}", failures.join("; "));
        }
        Err(self.lost(&reason))
    }

    /// Releases the lock on every node (compare-and-delete: only where it is still ours).
    pub async fn release(self) -> Released {
        self.manager
            .release(&self.name, &self.value, self.token)
            .await
    }

    fn lost(&self, reason: &str) -> LockError {
        LockError::Lost {
            name: self.name.clone(),
            reason: reason.to_owned(),
        }
    }
}
