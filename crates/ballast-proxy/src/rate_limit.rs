//! Rate limits per route and per listener (`rate = "100/s"`, `burst`, `rate_key`): each client —
//! its address, or a header, cookie or path — may send `burst` requests at once and then `rate`
//! on average; a request over it is answered 429 with `Retry-After` before any backend is chosen
//! (a listener's limit is counted first, on every request it takes; in TCP mode it counts
//! connections, and one over it is closed).
//!
//! The algorithm is GCRA (the generic cell rate algorithm of ATM networks, as in Redis-cell and
//! Brandur Leach's `throttled`): per client, one number, the theoretical arrival time (TAT) of
//! its next request. A request at `now` is allowed when `TAT − now ≤ τ`, where `T` is the interval
//! between requests at the rate and `τ = T·(burst − 1)` the slack a burst may use; it then moves
//! the TAT to `max(TAT, now) + T`. This is a token bucket without a refill step: one subtraction,
//! one comparison, one store, and no timer.
//!
//! A `local` limit is each LB server's own (over all its workers): behind N LBs a client gets up
//! to N times the rate. A `fleet` limit runs the same step in Redis ([`crate::fleet_rate`]), one
//! count for the whole fleet, at the price of a round trip. Local state lives in shards of a map, each behind its own lock, so workers limiting
//! different clients rarely meet. The maps are bounded: a client whose TAT has passed is as good
//! as unknown and is forgotten when a shard fills; a shard full of clients still in debt lets a
//! new client through rather than grow without bound (counted in the metric, so it shows).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ballast_config::route::{OnRedisError, RateLimitSpec, RateScope};
use foldhash::HashMap;
use prometheus_client::metrics::counter::Counter;

use crate::fleet_rate::FleetCounter;
use crate::key::HashKey;
use crate::routes::Rated;
use crate::state::{Routed, Shared, Snapshot};

/// Shards of the client map: a power of two, more than the workers a server runs.
const SHARDS: usize = 64;
/// Clients each shard remembers at most (16,384 clients in all, about 512 KiB).
const PER_SHARD: usize = 256;

/// One route's limit and its clients.
#[derive(Debug)]
pub(crate) struct RateLimit {
    /// The interval between requests at the rate, in nanoseconds.
    interval: u64,
    /// How far ahead of now a client's TAT may be and the request still pass.
    tolerance: u64,
    /// What tells clients apart.
    pub(crate) key: HashKey,
    /// Where it is counted, and (in Redis) under what name.
    scope: RateScope,
    on_redis_error: OnRedisError,
    name: String,
    epoch: Instant,
    shards: Box<[Mutex<HashMap<u64, u64>>]>,
    /// Requests answered 429.
    limited: Counter,
    /// New clients let through because their shard was full of clients in debt.
    overflowed: Counter,
    /// Requests Redis gave no verdict for.
    redis_errors: Counter,
}

/// The counters of one route's limit.
#[derive(Debug, Default)]
pub(crate) struct RateCounters {
    /// Requests answered 429.
    pub limited: Counter,
    /// New clients let through because their shard was full of clients in debt.
    pub overflowed: Counter,
    /// Requests Redis gave no verdict for (`on_redis_error` decided).
    pub redis_errors: Counter,
}

impl RateLimit {
    /// For `spec`; `name` is the limit's Redis key prefix (the same on every LB of a fleet).
    pub(crate) fn new(spec: &RateLimitSpec, name: String, counters: RateCounters) -> Self {
        let rate = spec.rate;
        let per = u64::try_from(rate.per.as_nanos()).unwrap_or(u64::MAX);
        let interval = (per / u64::from(rate.count.max(1))).max(1);
        let local = spec.scope == RateScope::Local;
        Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(spec.burst.max(1)) - 1),
            key: HashKey::from(&spec.key),
            scope: spec.scope,
            on_redis_error: spec.on_redis_error,
            name,
            epoch: Instant::now(),
            shards: (0..if local { SHARDS } else { 0 })
                .map(|_| Mutex::default())
                .collect(),
            limited: counters.limited,
            overflowed: counters.overflowed,
            redis_errors: counters.redis_errors,
        }
    }

    /// Whether it is counted in Redis ([`RateLimit::check_fleet`]) rather than here.
    pub(crate) fn is_fleet(&self) -> bool {
        self.scope == RateScope::Fleet
    }

    /// [`RateLimit::check`], counted over the fleet's Redis nodes (`None`: the LB has none,
    /// which `on_redis_error` decides like a Redis that does not answer).
    pub(crate) async fn check_fleet(
        &self,
        redis: Option<&FleetCounter>,
        key: u64,
    ) -> Result<(), Duration> {
        let asked = match redis {
            Some(redis) => {
                let name = format!("{}{key:016x}", self.name);
                let (interval, tolerance) = (
                    Duration::from_nanos(self.interval),
                    Duration::from_nanos(self.tolerance),
                );
                redis
                    .step(&name, key, interval, tolerance)
                    .await
                    .map_err(|e| e.to_string())
            }
            None => Err("the LB has no rate_limit_redis".to_owned()),
        };
        match asked {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => {
                self.limited.inc();
                Err(wait)
            }
            Err(error) => {
                self.redis_errors.inc();
                tracing::debug!(limit = %self.name, %error, "fleet rate limit: no verdict from Redis");
                match self.on_redis_error {
                    OnRedisError::Allow => Ok(()),
                    OnRedisError::Deny => {
                        self.limited.inc();
                        Err(Duration::from_secs(1))
                    }
                }
            }
        }
    }

    /// Whether a request from `client` for `path` is within the rate (`header` finds a request
    /// header by lower-case name, for a limit keyed by one), or must be asked of the fleet.
    pub(crate) fn rate<'h>(
        &self,
        path: &str,
        header: impl Fn(&str) -> Option<&'h [u8]>,
        client: std::net::IpAddr,
    ) -> Rated {
        let key = self.key.of_lookup(path, header, client);
        if self.is_fleet() {
            return Rated::AskFleet(key);
        }
        match self.check(key) {
            Ok(()) => Rated::Within,
            Err(wait) => Rated::Over(wait),
        }
    }

    /// Whether a connection from `client` may pass (a TCP listener's limit, keyed by address),
    /// counted here or over the fleet's Redis nodes.
    pub(crate) async fn admit(
        &self,
        client: std::net::IpAddr,
        fleet: Option<&FleetCounter>,
    ) -> Result<(), Duration> {
        match self.rate("", |_| None, client) {
            Rated::Within => Ok(()),
            Rated::Over(wait) => Err(wait),
            Rated::AskFleet(key) => self.check_fleet(fleet, key).await,
        }
    }

    /// Whether a request of the client with `key` may pass now; if not, how long until one may
    /// (what `Retry-After` says).
    pub(crate) fn check(&self, key: u64) -> Result<(), Duration> {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.check_at(key, now)
    }

    fn check_at(&self, key: u64, now: u64) -> Result<(), Duration> {
        // The key is an XXH3 hash: its high bits pick the shard, the map uses it whole.
        let shard = &self.shards[(key >> 58) as usize % SHARDS];
        let mut clients = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tat = clients.get(&key).copied().unwrap_or(now).max(now);
        if tat - now > self.tolerance {
            drop(clients);
            self.limited.inc();
            return Err(Duration::from_nanos(tat - now - self.tolerance));
        }
        if clients.len() >= PER_SHARD && !clients.contains_key(&key) {
            clients.retain(|_, tat| *tat > now);
            if clients.len() >= PER_SHARD {
                drop(clients);
                self.overflowed.inc();
                return Ok(());
            }
        }
        clients.insert(key, tat + self.interval);
        Ok(())
    }
}

/// Where a request goes once the fleet's Redis has counted it: `routed` itself, unless it asks
/// the fleet ([`Routed::AskFleet`]: the listener's limit, then the route's), whose verdicts are
/// then its destination or a 429.
pub(crate) async fn settle(
    shared: &Shared,
    snapshot: &Snapshot,
    listener: usize,
    route: Option<u32>,
    routed: &Routed,
) -> Option<Routed> {
    let mut asking = routed;
    while let Routed::AskFleet { key, by, then } = asking {
        let limit = match by {
            Limiter::Listener => snapshot.listener_limit(listener),
            Limiter::Route => {
                route.and_then(|position| snapshot.router(listener)?.rate_limit(position))
            }
        };
        // Boxed: asking Redis is a large state that only requests under a fleet-wide limit
        // need; inline, every request's future carried it.
        if let Some(limit) = limit
            && let Err(wait) = Box::pin(limit.check_fleet(shared.fleet.as_deref(), *key)).await
        {
            return Some(Routed::Limited(retry_after_secs(wait)));
        }
        asking = then;
    }
    (!std::ptr::eq(asking, routed)).then(|| asking.clone())
}

/// Whose limit a request is counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limiter {
    /// The listener's, on every request it takes.
    Listener,
    /// The route's that the request took.
    Route,
}

/// Whole seconds for `Retry-After` (RFC 9110 §10.2.3), rounded up so that a client that waits
/// them is let through.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: &str, burst: u32) -> RateLimit {
        let spec = RateLimitSpec {
            rate: rate.parse().expect("rate"),
            burst,
            key: ballast_config::HashKeySpec::ClientIp,
            scope: RateScope::Local,
            on_redis_error: OnRedisError::Allow,
        };
        RateLimit::new(&spec, "test:".to_owned(), RateCounters::default())
    }

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_burst_passes_then_the_rate_and_the_wait_is_told() {
        let limit = limit("10/s", 5);
        for _ in 0..5 {
            assert_eq!(limit.check_at(1, 0), Ok(()));
        }
        // Five requests at once put the TAT 500 ms ahead, 100 ms past the slack.
        assert_eq!(limit.check_at(1, 0), Err(Duration::from_millis(100)));
        assert_eq!(limit.limited.get(), 1);
        // Another client is not held back by the first.
        assert_eq!(limit.check_at(2, 0), Ok(()));
        // 100 ms later one more passes, and the next waits another interval.
        assert_eq!(limit.check_at(1, SECOND / 10), Ok(()));
        assert_eq!(
            limit.check_at(1, SECOND / 10),
            Err(Duration::from_millis(100))
        );
        // Over a long run, one request per interval passes.
        let mut passed = 0;
        for tick in 0..1000u64 {
            let now = SECOND + tick * SECOND / 100;
            passed += usize::from(limit.check_at(1, now).is_ok());
        }
        assert!((100..=106).contains(&passed), "{passed}");
    }

    #[test]
    fn a_full_map_forgets_paid_up_clients_and_never_grows_past_its_bound() {
        let limit = limit("1/s", 1);
        // Every key lands in shard 0 (the shard comes from the top bits).
        for key in 0..PER_SHARD as u64 {
            assert_eq!(limit.check_at(key, 0), Ok(()));
        }
        // All in debt: a new client passes uncounted rather than grow the map.
        assert_eq!(limit.check_at(10_000, 0), Ok(()));
        assert_eq!(limit.overflowed.get(), 1);
        // A second later every one has paid: they are forgotten to make room.
        assert_eq!(limit.check_at(10_000, 2 * SECOND), Ok(()));
        assert_eq!(
            limit.check_at(10_000, 2 * SECOND),
            Err(Duration::from_secs(1))
        );
        let shard = limit.shards[0].lock().expect("lock");
        assert!(shard.len() <= PER_SHARD);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
