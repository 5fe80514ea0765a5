//! The demonstration the locks exist for: consumers sharing a remote queue whose read is not
//! atomic. Each consumer loops `ACQ_LOCK(); READ_MSG(); REL_LOCK()`, where `READ_MSG` reads the
//! head of a Redis list (`LINDEX 0`) and then, in a second step, removes the head and records the
//! delivery. Two consumers between those steps deliver one message twice and lose the next one;
//! a lock around them prevents it.
//!
//! A consumer may also pause past its lease (`pause_probability`), as a GC pause or a swapped-out
//! process would: another consumer then takes the lock, and the sleeper wakes believing it still
//! holds it. Both steps are fenced by the queue itself, the protected resource: each refuses a
//! holder whose fencing token is older than the newest it has seen, and reading registers the
//! reader's token, so the late consumer's commit is refused, counted, and harmless.
//!
//! Keys, under a prefix: `PREFIX:queue` (the list), `PREFIX:deliveries` (a hash: message →
//! times delivered), `PREFIX:newest` (the newest fencing token seen), `PREFIX:refused` (a count),
//! `PREFIX:lock` (the lock's name).

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Script};

use crate::error::LockError;
use crate::manager::LockManager;

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue's Redis node failed.
    #[error("queue node {node}: {source}")]
    Redis {
        /// Its URL.
        node: String,
        /// What it said.
        source: redis::RedisError,
    },
    /// The lock could not be had.
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// Reads the head, unless the consumer's fencing token is older than the newest seen (then 0);
/// 1 when the queue is empty. Reading registers the token, so that a holder whose lease passed to
/// someone who already read cannot commit afterwards.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local token = tonumber(ARGV[1])
        local newest = tonumber(redis.call('GET', KEYS[2]) or '0')
        if token < newest then
            redis.call('INCR', KEYS[3])
            return 0
        end
        if token > newest then
            redis.call('SET', KEYS[2], ARGV[1])
        end
        return redis.call('LINDEX', KEYS[1], 0) or 1
        ",
    )
});

/// Removes the head and records the delivery of what the consumer read, unless the consumer's
/// fencing token is older than the newest seen: the protected resource's side of fencing.
static COMMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local token = tonumber(ARGV[1])
        local newest = tonumber(redis.call('GET', KEYS[3]) or '0')
        if token < newest then
            redis.call('INCR', KEYS[4])
            return 0
        end
        if token > newest then
            redis.call('SET', KEYS[3], ARGV[1])
        end
        redis.call('LPOP', KEYS[1])
        redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
        return 1
        ",
    )
});

/// The queue: where it lives and under which prefix.
#[derive(Debug, Clone)]
pub struct Queue {
    url: String,
    prefix: String,
}

/// What one consumer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Consumed {
    /// Messages it committed.
    pub committed: u64,
    /// Commits the queue refused (its fencing token was stale).
    pub refused: u64,
    /// Times it paused past its lease.
    pub paused: u64,
}

/// What the queue saw, once every consumer is done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Messages put in the queue.
    pub produced: u64,
    /// Delivered exactly once.
    pub once: u64,
    /// Delivered more than once.
    pub duplicated: u64,
    /// Never delivered.
    pub lost: u64,
    /// Commits refused for a stale fencing token.
    pub refused: u64,
}

/// How a consumer behaves.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// The lock around each read (`None`: no lock, the unsafe baseline).
    pub lock: Option<LockManager>,
    /// The lock's TTL.
    pub ttl: Duration,
    /// The chance, per message, of pausing for 1.5 × the TTL between reading and committing.
    pub pause_probability: f64,
}

impl Queue {
    /// The queue at `url` (a Redis node) under `prefix`.
    pub fn new(url: &str, prefix: &str) -> Self {
        Self {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, part: &str) -> String {
        format!("{}:{part}", self.prefix)
    }

    /// The lock's name for this queue.
    pub fn lock_name(&self) -> String {
        self.key("lock")
    }

    async fn connect(&self) -> Result<MultiplexedConnection, QueueError> {
        let fail = |source| QueueError::Redis {
            node: ballast_telemetry::redact(&self.url).into_owned(),
            source,
        };
        let client = redis::Client::open(self.url.as_str()).map_err(fail)?;
        client
            .get_multiplexed_async_connection()
            .await
            .map_err(fail)
    }

    fn failed(&self) -> impl Fn(redis::RedisError) -> QueueError + '_ {
        |source| QueueError::Redis {
            node: ballast_telemetry::redact(&self.url).into_owned(),
            source,
        }
    }

    /// Empties the queue and its records, then puts messages `0..count` in it.
    pub async fn fill(&self, count: u64) -> Result<(), QueueError> {
        let mut connection = self.connect().await?;
        let keys = ["queue", "deliveries", "newest", "refused"].map(|k| self.key(k));
        let () = connection.del(&keys).await.map_err(self.failed())?;
        let queue = self.key("queue");
        let ids: Vec<u64> = (0..count).collect();
        for chunk in ids.chunks(1000) {
            let () = connection
                .rpush(&queue, chunk)
                .await
                .map_err(self.failed())?;
        }
        Ok(())
    }

    /// Consumes until the queue is empty.
    pub async fn consume(&self, consumer: &Consumer) -> Result<Consumed, QueueError> {
        let mut connection = self.connect().await?;
        let (queue, deliveries, newest, refused) = (
            self.key("queue"),
            self.key("deliveries"),
            self.key("newest"),
            self.key("refused"),
        );
        let lock_name = self.lock_name();
        let mut done = Consumed::default();
        loop {
            let lease = match &consumer.lock {
                Some(locks) => Some(
                    locks
                        .acquire(&lock_name, consumer.ttl, Duration::from_secs(60))
                        .await?,
                ),
                None => None,
            };
            let token = lease.as_ref().map_or(0, |l| l.fencing_token());
            let head: redis::Value = READ
                .key(&queue)
                .key(&newest)
                .key(&refused)
                .arg(token)
                .invoke_async(&mut connection)
                .await
                .map_err(self.failed())?;
            let message = match head {
                redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                redis::Value::Int(0) => {
                    // Our lease passed to someone who already read: nothing of ours may commit.
                    done.refused += 1;
                    if let Some(lease) = lease {
                        lease.release().await;
                    }
                    continue;
                }
                _ => {
                    if let Some(lease) = lease {
                        lease.release().await;
                    }
                    return Ok(done);
                }
            };
            if consumer.pause_probability > 0.0
                && rand::random::<f64>() < consumer.pause_probability
            {
                done.paused += 1;
                tokio::time::sleep(consumer.ttl * 3 / 2).await;
            }
            let committed: u64 = COMMIT
                .key(&queue)
                .key(&deliveries)
                .key(&newest)
                .key(&refused)
                .arg(token)
                .arg(&message)
                .invoke_async(&mut connection)
                .await
                .map_err(self.failed())?;
            if committed == 1 {
                done.committed += 1;
            } else {
                done.refused += 1;
            }
            if let Some(lease) = lease {
                lease.release().await;
            }
        }
    }

    /// Counts what happened to messages `0..produced`.
    pub async fn outcome(&self, produced: u64) -> Result<Outcome, QueueError> {
        let mut connection = self.connect().await?;
        let deliveries: std::collections::HashMap<u64, u64> = connection
            .hgetall(self.key("deliveries"))
            .await
            .map_err(self.failed())?;
        let refused: Option<u64> = connection
            .get(self.key("refused"))
            .await
            .map_err(self.failed())?;
        let mut outcome = Outcome {
            produced,
            refused: refused.unwrap_or(0),
            ..Outcome::default()
        };
        for id in 0..produced {
            match deliveries.get(&id).copied().unwrap_or(0) {
                0 => outcome.lost += 1,
                1 => outcome.once += 1,
                _ => outcome.duplicated += 1,
            }
        }
        Ok(outcome)
    }
}
