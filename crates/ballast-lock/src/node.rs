//! One Redis server as the locks use it: a lazily opened, shared (multiplexed) connection, every
//! call bounded by the per-node timeout, and errors that name the node.
//!
//! A timed-out call leaves the connection in place: the late reply is matched to its request and
//! dropped, and whatever is sent next is executed after it, in order. That is what makes "release
//! on every node, including those that timed out" work: the release queues behind the acquire it
//! undoes. Only a broken connection is thrown away, to be opened again on the next call.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, FromRedisValue, RedisError, Script};
use tokio::sync::Mutex;

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

/// One Redis server.
pub(crate) struct Node {
    /// The URL as shown in errors and status: its password redacted.
    url: String,
    client: Client,
    connection: Mutex<Option<MultiplexedConnection>>,
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
            connection: Mutex::new(None),
        })
    }

    /// The node's URL, its password redacted.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The shared connection, opened (within `timeout`) if there is none.
    async fn connection(&self, timeout: Duration) -> Result<MultiplexedConnection, NodeError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = &*slot {
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
        *slot = Some(opened.clone());
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
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| self.timed_out(timeout))?
    }

    /// Classifies an error, forgetting the connection when it is broken.
    async fn failed(&self, error: RedisError) -> NodeError {
        if error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal() {
            *self.connection.lock().await = None;
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
