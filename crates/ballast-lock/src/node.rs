//! One Redis server as the locks use it: a lazily opened, shared (multiplexed) connection, every
//! call bounded by the per-node timeout, and errors that name the node.
//!
//! A timed-out call leaves the connection in place: the late reply is matched to its request and
//! dropped, and whatever is sent next is executed after it, in order. That is what makes "release
//! on every node, including those that timed out" work: the release queues behind the acquire it
//! undoes. A broken connection is thrown away, to be opened again on the next call; so is one
//! that has answered nothing for [`SILENT_FOR`] while calls waited on it. Packets that vanish
//! (a cut link, a firewall that drops) break nothing TCP can see: it retransmits with a timer
//! that doubles from 200 ms, so after a cut of ten seconds the old connection may stay silent
//! for seconds after the link is back, while a fresh connection's handshake goes at once. What
//! the old connection still carries lands late or not at all; a late acquire only sets a key
//! that expires within its TTL, so safety never rested on it.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, FromRedisValue, RedisError, Script};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::NodeError;

/// What a node says about one lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// The holder's value, if the lock is held.
    pub value: Option<String>,
    /// How long it is held for yet, if held.
    pub ttl: Option<Duration>,
    /// The last fencing token this node issued for the lock.
    pub last_token: u64,
}

/// How long a connection may leave every call unanswered before it is replaced: several node
/// timeouts, so a node that is only slow keeps its connection (and the order of what was sent).
const SILENT_FOR: Duration = Duration::from_secs(1);

/// One Redis server.
pub(crate) struct Node {
    /// The URL as shown in errors and status: its password redacted.
    url: String,
    client: Client,
    connection: Mutex<Slot>,
}

/// The shared connection, and since when its calls have gone unanswered.
#[derive(Default)]
struct Slot {
    connection: Option<MultiplexedConnection>,
    silent_since: Option<Instant>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Node {
    /// A node at `url` (`redis://HOST:PORT[/DB]`); nothing is connected yet.
    pub(crate) fn new(url: &str) -> Result<Self, String> {
        use redis::IntoConnectionInfo;
        let info = url
            .into_connection_info()
            .map_err(|e| ballast_telemetry::redact(&e.to_string()).into_owned())?;
        // One small request in flight per lock step: never wait on Nagle's algorithm.
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        let client = Client::open(info.set_tcp_settings(tcp)).map_err(|e| e.to_string())?;
        Ok(Self {
            url: ballast_telemetry::redact(url).into_owned(),
            client,
            connection: Mutex::new(Slot::default()),
        })
    }

    /// The node's URL, its password redacted.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The shared connection, opened (within `timeout`) if there is none or the one there has
    /// been silent for too long.
    async fn connection(&self, timeout: Duration) -> Result<MultiplexedConnection, NodeError> {
        let mut slot = self.connection.lock().await;
        if slot
            .silent_since
            .is_some_and(|since| since.elapsed() >= SILENT_FOR)
        {
            tracing::debug!(node = %self.url, "no answer for {SILENT_FOR:?}: reconnecting");
            *slot = Slot::default();
        }
        if let Some(connection) = &slot.connection {
            return Ok(connection.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None);
        let opened = tokio::time::timeout(
            timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| self.timed_out(timeout))?
        .map_err(|e| self.unreachable(&e))?;
        let mut opened = opened;
        let mut load = redis::pipe();
        for source in crate::scripts::ALL {
            load.cmd("SCRIPT").arg("LOAD").arg(source).ignore();
        }
        tokio::time::timeout(timeout, load.query_async::<()>(&mut opened))
            .await
            .map_err(|_| self.timed_out(timeout))?
            .map_err(|e| self.unreachable(&e))?;
        slot.connection = Some(opened.clone());
        Ok(opened)
    }

    /// Opens the connection now (within `timeout`), if it is not open yet.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<(), NodeError> {
        self.connection(timeout).await.map(drop)
    }

    /// Runs `script` with `keys` and `args`, within `timeout` in all (connecting included).
    pub(crate) async fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[String],
        timeout: Duration,
    ) -> Result<T, NodeError> {
        let call = async {
            let mut connection = self.connection(timeout).await?;
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(*key);
            }
            for arg in args {
                invocation.arg(arg);
            }
            match invocation.invoke_async(&mut connection).await {
                Ok(value) => Ok(value),
                Err(error) => Err(self.failed(error).await),
            }
        };
        let Ok(answer) = tokio::time::timeout(timeout, call).await else {
            let mut slot = self.connection.lock().await;
            if slot.connection.is_some() {
                slot.silent_since.get_or_insert_with(Instant::now);
            }
            return Err(self.timed_out(timeout));
        };
        // An error within the time is an answer too (or a connection already thrown away).
        self.connection.lock().await.silent_since = None;
        answer
    }

    /// Classifies an error, forgetting the connection when it is broken.
    async fn failed(&self, error: RedisError) -> NodeError {
        if error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal() {
            *self.connection.lock().await = Slot::default();
            return self.unreachable(&error);
        }
        NodeError::Script {
            node: self.url.clone(),
            reason: error.to_string(),
        }
    }

    fn unreachable(&self, error: &RedisError) -> NodeError {
        NodeError::Unreachable {
            node: self.url.clone(),
            reason: error.to_string(),
        }
    }

    fn timed_out(&self, after: Duration) -> NodeError {
        NodeError::TimedOut {
            node: self.url.clone(),
            after,
        }
    }
}
