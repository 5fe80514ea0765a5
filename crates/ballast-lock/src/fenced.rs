//! The protected resource's half of fencing: a register on a Redis node that accepts a write only
//! if its fencing token is at least the newest it has seen, and keeps the accepted writes in
//! order. A holder paused past its lease wakes with an old token; by then the new holder has
//! written with a newer one, and the old holder's write is refused.
//!
//! ```no_run
//! # async fn demo(lease: ballast_lock::Lease) -> Result<(), redis::RedisError> {
//! let register = ballast_lock::fenced::Register::open("redis://127.0.0.1:7000", "report").await?;
//! if !register.write(lease.fencing_token(), "row 42").await? {
//!     // Someone newer holds the lock: stop.
//! }
//! # Ok(()) }
//! ```

use std::sync::LazyLock;

use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, RedisError, Script};

/// Accepts `ARGV[1]` (token) with `ARGV[2]` (payload) unless a newer token was seen; appends
/// `token payload` to the log when accepted.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local token = tonumber(ARGV[1])
        local newest = tonumber(redis.call('GET', KEYS[1]) or '0')
        if token < newest then
            return 0
        end
        if token > newest then
            redis.call('SET', KEYS[1], ARGV[1])
        end
        redis.call('RPUSH', KEYS[2], ARGV[1] .. ' ' .. ARGV[2])
        return 1
        ",
    )
});

/// A fenced register: `NAME:newest` and the log `NAME:log`.
#[derive(Clone)]
pub struct Register {
    connection: MultiplexedConnection,
    newest: String,
    log: String,
}

impl std::fmt::Debug for Register {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Register").field("log", &self.log).finish()
    }
}

impl Register {
    /// The register `name` on the node at `url`.
    pub async fn open(url: &str, name: &str) -> Result<Self, RedisError> {
        let connection = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        Ok(Self {
            connection,
            newest: format!("{name}:newest"),
            log: format!("{name}:log"),
        })
    }

    /// Writes `payload` with `token`; `false` when refused for a stale token.
    pub async fn write(&self, token: u64, payload: &str) -> Result<bool, RedisError> {
        let accepted: u64 = WRITE
            .key(&self.newest)
            .key(&self.log)
            .arg(token)
            .arg(payload)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(accepted == 1)
    }

    /// The accepted writes, oldest first: `(token, payload)`.
    pub async fn log(&self) -> Result<Vec<(u64, String)>, RedisError> {
        let lines: Vec<String> = self.connection.clone().lrange(&self.log, 0, -1).await?;
        Ok(lines
            .iter()
            .map(|line| {
                let (token, payload) = line.split_once(' ').unwrap_or((line, ""));
                (token.parse().unwrap_or(0), payload.to_owned())
            })
            .collect())
    }

    /// The accepted writes' tokens, oldest first: what a history check compares.
    pub async fn tokens(&self) -> Result<Vec<u64>, RedisError> {
        Ok(self
            .log()
            .await?
            .into_iter()
            .map(|(token, _)| token)
            .collect())
    }

    /// Forgets every write and the newest token.
    pub async fn clear(&self) -> Result<(), RedisError> {
        self.connection
            .clone()
            .del(&[&self.newest, &self.log])
            .await
    }
}
