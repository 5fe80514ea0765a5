//! The lock manager: one Redis node (a remote lock) or an odd number of independent ones
//! (Redlock). Acquiring asks every node at once and counts the grants; the lock is held when a
//! majority granted it with validity to spare, and released everywhere otherwise.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::error::{LockError, NodeError};
use crate::lease::{Lease, Released};
use crate::node::{Holding, Node};
use crate::options::{Options, drift};
use crate::scripts::{ACQUIRE, INSPECT, RAISE, RELEASE};

/// The nodes and how they decide.
#[derive(Debug, Clone)]
pub struct LockManager {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) nodes: Vec<Node>,
    pub(crate) options: Options,
}

/// What one node said about a lock, from [`LockManager::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node's URL.
    pub node: String,
    /// Its answer.
    pub holding: Result<Holding, NodeError>,
}

impl LockManager {
    /// A remote lock on one Redis server.
    pub fn single(url: &str, options: Options) -> Result<Self, LockError> {
        Self::build(&[url], options)
    }

    /// Redlock over `urls`: independent Redis masters (no replication between them), an odd
    /// number, at least three, so that a majority is well defined and survives a failure.
    pub fn redlock<S: AsRef<str>>(urls: &[S], options: Options) -> Result<Self, LockError> {
        if urls.len() < 3 || urls.len().is_multiple_of(2) {
            return Err(LockError::Invalid {
                field: "redis",
                reason: format!(
                    "Redlock needs an odd number of independent nodes, at least 3; got {}",
                    urls.len()
                ),
            });
        }
        Self::build(urls, options)
    }

    /// One URL: a remote lock; several: Redlock (as `--redis URL[,URL…]` reads).
    pub fn from_urls<S: AsRef<str>>(urls: &[S], options: Options) -> Result<Self, LockError> {
        match urls {
            [] => Err(LockError::Invalid {
                field: "redis",
                reason: "no Redis node given".to_owned(),
            }),
            [one] => Self::single(one.as_ref(), options),
            many => Self::redlock(many, options),
        }
    }

    fn build<S: AsRef<str>>(urls: &[S], options: Options) -> Result<Self, LockError> {
        let nodes = urls
            .iter()
            .map(|url| {
                Node::new(url.as_ref()).map_err(|reason| LockError::Invalid {
                    field: "redis",
                    reason: format!("`{}`: {reason}", ballast_telemetry::redact(url.as_ref())),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(LockError::Invalid {
                field: "redis",
                reason: "no Redis node given".to_owned(),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner { nodes, options }),
        })
    }

    /// Grants needed: a majority of the nodes.
    pub fn quorum(&self) -> usize {
        self.inner.nodes.len() / 2 + 1
    }

    /// The nodes' URLs.
    pub fn nodes(&self) -> Vec<String> {
        self.inner
            .nodes
            .iter()
            .map(|n| n.url().to_owned())
            .collect()
    }

    /// Opens every node's connection now, all at once, each within `timeout`; returns the nodes
    /// that could not be reached. Otherwise the first attempt opens them, and a cold connection
    /// counts against the per-node timeout (which is small against the TTL).
    pub async fn connect(&self, timeout: Duration) -> Vec<NodeError> {
        self.each_node(|node| node.connect(timeout))
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect()
    }

    /// One attempt: the lock if a majority grants it now, with validity left.
    pub async fn try_acquire(&self, name: &str, ttl: Duration) -> Result<Lease, LockError> {
        check(name, ttl)?;
        let value = format!(
            "{}:{:032x}",
            self.inner.options.holder,
            rand::random::<u128>()
        );
        let fence = fence_key(name);
        let keys = [name, fence.as_str()];
        let timeout = self.inner.options.node_timeout(ttl);
        let args = [value.clone(), ttl.as_millis().to_string()];
        let started = Instant::now();
        let answers: Vec<Result<u64, NodeError>> = self
            .each_node(|node| node.run(&ACQUIRE, &keys, &args, timeout))
            .await;
        let elapsed = started.elapsed();
        let mut tokens = Vec::new();
        let mut failures = Vec::new();
        let mut held = 0;
        for answer in answers {
            match answer {
                Ok(0) => held += 1,
                Ok(token) => tokens.push(token),
                Err(error) => failures.push(error),
            }
        }
        let quorum = self.quorum();
        let margin = drift(ttl);
        let mut unfenced = None;
        if tokens.len() >= quorum && elapsed + margin < ttl {
            let token = tokens.iter().copied().max().unwrap_or(0);
            match self.raise(&keys, token, timeout).await {
                Ok(()) if started.elapsed() + margin < ttl => {
                    return Ok(Lease::new(
                        self.clone(),
                        name.to_owned(),
                        value,
                        token,
                        ttl,
                        started + ttl - margin,
                    ));
                }
                Ok(()) => {}
                Err(failures) => unfenced = Some(failures),
            }
        }
        // Undo every grant, on every node: one that timed out may have granted it all the same.
        self.release(name, &value, 0).await;
        if let Some(failures) = unfenced {
            return Err(LockError::Unfenced {
                name: name.to_owned(),
                quorum,
                failures,
            });
        }
        if tokens.len() >= quorum {
            return Err(LockError::TooSlow {
                name: name.to_owned(),
                elapsed,
                ttl,
            });
        }
        Err(LockError::NotAcquired {
            name: name.to_owned(),
            granted: tokens.len(),
            held,
            nodes: self.inner.nodes.len(),
            quorum,
            failures,
        })
    }

    /// Raises the fencing counter to `token` on every node; `Ok` once a majority's counters are
    /// at least `token`, so that any later majority includes a node that issues a larger one.
    async fn raise(
        &self,
        keys: &[&str; 2],
        token: u64,
        timeout: Duration,
    ) -> Result<(), Vec<NodeError>> {
        let args = [token.to_string()];
        let answers: Vec<Result<u64, NodeError>> = self
            .each_node(|node| node.run(&RAISE, keys, &args, timeout))
            .await;
        let mut raised = 0;
        let mut failures = Vec::new();
        for answer in answers {
            match answer {
                Ok(counter) if counter >= token => raised += 1,
                Ok(_) => {}
                Err(error) => failures.push(error),
            }
        }
        if raised >= self.quorum() {
            Ok(())
        } else {
            Err(failures)
        }
    }

    /// Tries until the lock is had or `wait` has passed, pausing between attempts with jittered
    /// exponential backoff (see [`Options::retry_delay`]). A zero `wait` tries once.
    pub async fn acquire(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Lease, LockError> {
        let deadline = Instant::now() + wait;
        let options = &self.inner.options;
        let mut delay = options.retry_delay;
        loop {
            let error = match self.try_acquire(name, ttl).await {
                Ok(lease) => return Ok(lease),
                Err(invalid @ LockError::Invalid { .. }) => return Err(invalid),
                Err(error) => error,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(LockError::Timeout {
                    name: name.to_owned(),
                    waited: wait,
                    last: Box::new(error),
                });
            }
            let half = delay / 2;
            let pause = half + delay.mul_f64(rand::random::<f64>());
            tokio::time::sleep(pause.min(deadline - now)).await;
            delay = (delay * 2).min(options.max_retry_delay);
        }
    }

    /// Releases `name` wherever it still holds `value` (compare-and-delete), on every node, and
    /// raises each node's fencing counter to at least `token`.
    pub async fn release(&self, name: &str, value: &str, token: u64) -> Released {
        let fence = fence_key(name);
        let keys = [name, fence.as_str()];
        let timeout = self.inner.options.node_timeout(Duration::from_secs(1));
        let args = [value.to_owned(), token.to_string()];
        let answers: Vec<Result<u64, NodeError>> = self
            .each_node(|node| node.run(&RELEASE, &keys, &args, timeout))
            .await;
        let mut released = Released::default();
        for answer in answers {
            match answer {
                Ok(1) => released.nodes += 1,
                Ok(_) => {}
                Err(error) => released.failures.push(error),
            }
        }
        released
    }

    /// What each node says about `name`: its holder's value, the TTL left, the last token.
    pub async fn status(&self, name: &str) -> Vec<NodeStatus> {
        let fence = fence_key(name);
        let keys = [name, fence.as_str()];
        let timeout = self.inner.options.node_timeout(Duration::from_secs(1));
        let answers: Vec<Result<Inspected, NodeError>> = self
            .each_node(|node| node.run(&INSPECT, &keys, &[], timeout))
            .await;
        self.inner
            .nodes
            .iter()
            .zip(answers)
            .map(|(node, answer)| NodeStatus {
                node: node.url().to_owned(),
                holding: answer.map(|(value, pttl, token)| Holding {
                    ttl: u64::try_from(pttl).ok().map(Duration::from_millis),
                    value,
                    last_token: token.parse().unwrap_or(0),
                }),
            })
            .collect()
    }

    /// Runs `call` on every node, all at once (or in turn, with [`Options::sequential`]).
    pub(crate) async fn each_node<'a, T, F, Fut>(&'a self, call: F) -> Vec<T>
    where
        F: Fn(&'a Node) -> Fut,
        Fut: Future<Output = T>,
    {
        if self.inner.options.sequential {
            let mut answers = Vec::with_capacity(self.inner.nodes.len());
            for node in &self.inner.nodes {
                answers.push(call(node).await);
            }
            return answers;
        }
        join_all(self.inner.nodes.iter().map(call)).await
    }
}

/// What the inspect script answers: the holder's value, the PTTL (negative: none), the last token.
type Inspected = (Option<String>, i64, String);

/// Where a lock's fencing counter lives, beside it.
pub(crate) fn fence_key(name: &str) -> String {
    format!("{name}:fence")
}

fn check(name: &str, ttl: Duration) -> Result<(), LockError> {
    if name.is_empty() {
        return Err(LockError::Invalid {
            field: "name",
            reason: "a lock needs a name".to_owned(),
        });
    }
    if ttl < Duration::from_millis(10) {
        return Err(LockError::Invalid {
            field: "ttl",
            reason: format!("{ttl:?} is too short; a lock lives at least 10 ms"),
        });
    }
    Ok(())
}
