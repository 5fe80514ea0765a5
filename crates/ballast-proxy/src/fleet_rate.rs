//! The Redis nodes that fleet-wide rate limits (`rate_scope = "fleet"`) count on: every LB server
//! of a fleet runs the same GCRA step ([`crate::rate_limit`]) as one Lua script on the node a
//! client's key falls to, so the whole fleet keeps one count per client, as Traefik's and
//! Envoy's global rate limits do with their services. The node's clock decides (`TIME`), so LB
//! servers whose clocks differ still agree.
//!
//! Redis is asked within `rate_limit_redis_timeout` (100 ms by default); a node that does not
//! answer in time, refuses, or cannot
//! be reached is an error the route's `on_redis_error` decides (allow or deny), never a request
//! left waiting. Connections are multiplexed, one per node per LB server, opened on first use
//! and again after an error.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;

/// GCRA over one key, in microseconds by the node's clock: ARGV[1] is the interval between
/// requests at the rate, ARGV[2] the tolerance a burst may use. Returns 0 when the request
/// passes, else the microseconds until one would. The key expires once its debt is paid.
const GCRA: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if tat - now > tolerance then return tat - now - tolerance end
local next = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil((next - now) / 1000) + 1)
return 0
";

/// Why Redis gave no verdict.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FleetError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

/// The nodes, each with its connection once made.
pub(crate) struct FleetCounter {
    nodes: Vec<Node>,
    script: redis::Script,
    /// How long a request waits for a verdict before `on_redis_error` decides.
    timeout: Duration,
}

struct Node {
    client: redis::Client,
    connection: ArcSwapOption<MultiplexedConnection>,
}

impl std::fmt::Debug for FleetCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs may hold passwords: only how many nodes there are is shown.
        f.debug_struct("FleetCounter")
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl FleetCounter {
    /// Over the nodes at `urls` (checked: see [`check_url`]); nothing is connected yet.
    pub(crate) fn new(urls: &[String], timeout: Duration) -> Result<Self, String> {
        let nodes = urls
            .iter()
            .map(|url| {
                let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
                Ok(Node {
                    client,
                    connection: ArcSwapOption::empty(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            nodes,
            script: redis::Script::new(GCRA),
            timeout,
        })
    }

    /// One GCRA step for `key` (on the node `hash` falls to): `None` when the request passes,
    /// else how long until one would.
    pub(crate) async fn step(
        &self,
        key: &str,
        hash: u64,
        interval: Duration,
        tolerance: Duration,
    ) -> Result<Option<Duration>, FleetError> {
        let node = &self.nodes[(hash % self.nodes.len() as u64) as usize];
        let asked = tokio::time::timeout(self.timeout, async {
            let mut connection = node.connection().await?;
            let wait: u64 = self
                .script
                .key(key)
                .arg(u64::try_from(interval.as_micros()).unwrap_or(u64::MAX))
                .arg(u64::try_from(tolerance.as_micros()).unwrap_or(u64::MAX))
                .invoke_async(&mut connection)
                .await?;
            Ok::<_, redis::RedisError>(wait)
        })
        .await;
        let wait = match asked {
            Ok(Ok(wait)) => wait,
            Ok(Err(error)) => {
                node.connection.store(None);
                return Err(error.into());
            }
            Err(_) => {
                node.connection.store(None);
                return Err(FleetError::Timeout(self.timeout));
            }
        };
        Ok((wait > 0).then(|| Duration::from_micros(wait)))
    }
}

impl Node {
    async fn connection(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        if let Some(connection) = self.connection.load_full() {
            return Ok((*connection).clone());
        }
        let connection = self.client.get_multiplexed_async_connection().await?;
        self.connection.store(Some(Arc::new(connection.clone())));
        Ok(connection)
    }
}

/// Whether `url` names a Redis node (`redis://[:PASSWORD@]HOST:PORT[/DB]`); the reason names no
/// password.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|_| "a Redis URL, redis://[:PASSWORD@]HOST:PORT[/DB]".to_owned())
}
