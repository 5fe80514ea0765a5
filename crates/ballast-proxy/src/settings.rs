//! What an LB server runs: its listeners, pools, timeouts and policies, built from command-line
//! flags or read from a TOML file, and validated whole before anything starts.
//!
//! Every error names the field at fault (`pools[0].backends[2]: …`) and the reason; a file with
//! one bad field changes nothing.
//!
//! A pool has one model, the configuration database's ([`ballast_config::Pool`]): a static file's
//! or the flags' pools are that model at revision 0, checked by the same validation as a write
//! to the store, and [`Pool::all_of`] is the one translation into what the request path runs,
//! in static and managed mode alike.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ballast_balance::Algorithm;
use ballast_config::route::{OnRedisError, RateFields, RateLimitSpec, RateScope, RouteTable};
use ballast_config::{
    AdminState, AlgorithmSpec, HashKeySpec, Health, PoolPolicy, PoolSpec, ProxyProtocol,
    UpstreamProtocol, Write,
};
use serde::Deserialize;

use crate::access_log::{AccessLogSettings, LogFormat, LogTarget};
use crate::key::HashKey;
use ballast_health::BackendTls;

/// Everything one LB server runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where clients connect, each bound to a pool.
    pub listeners: Vec<Listener>,
    /// The backend pools (static mode; managed mode follows the database's).
    pub pools: Vec<ballast_config::Pool>,
    /// Route tables listeners may serve by (static mode).
    pub route_tables: Vec<RouteTable>,
    /// Event-loop threads, each with its own accept queue and upstream connections.
    pub workers: usize,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub admin: Option<SocketAddr>,
    /// The timeouts.
    pub timeouts: Timeouts,
    /// Extra tries on another backend for idempotent requests that failed before any response
    /// byte (connection refused or reset); 0 turns retries off.
    pub retries: u32,
    /// Passive outlier detection.
    pub outlier: OutlierPolicy,
    /// How long SIGTERM waits for requests in flight before exiting.
    pub drain_timeout: Duration,
    /// How long, after SIGTERM, the server still accepts new connections while it tells the
    /// fleet it is leaving (its heartbeat says `draining`, DNS drops it, resolvers' caches
    /// expire), before it closes its listeners and drains: clients that looked it up just before
    /// are served rather than refused. 0 closes the listeners at once.
    pub drain_delay: Duration,
    /// Request bodies up to this size are read whole before a backend is chosen (nginx's
    /// `proxy_request_buffering`), so a client that sends its body slowly holds no backend
    /// connection, and a malformed body is refused before any backend sees its head. 0 streams
    /// every body.
    pub request_buffering: ByteSize,
    /// The pools come from the configuration database (managed mode): a listener's pool may
    /// not exist yet, and answers 503 until it does.
    pub managed: bool,
    /// One line per HTTP request, if set (nginx's `access_log`).
    pub access_log: Option<AccessLogSettings>,
    /// Send each request's ID back to the client in `X-Request-Id` (it always goes to the
    /// backend while request IDs are on: with the access log, or with this).
    pub request_id_header: bool,
    /// The Redis nodes routes with `rate_scope = "fleet"` count on (`redis://` URLs; a
    /// client's key picks its node).
    pub rate_limit_redis: Vec<String>,
    /// How long a request waits for Redis's verdict before the route's `on_redis_error`
    /// decides.
    pub rate_limit_redis_timeout: Duration,
}

/// A size in bytes, written as people write it: `65536`, `64KiB`, `1MiB`, `0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = text.split_at(digits);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("`{text}`: a size is a number of bytes, KiB, MiB or GiB"))?;
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "KB" | "k" => 1 << 10,
            "MiB" | "M" | "MB" => 1 << 20,
            "GiB" | "G" | "GB" => 1 << 30,
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}` (B, KiB, MiB, GiB)"
                ));
            }
        };
        number
            .checked_mul(scale)
            .map(Self)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bytes(bytes) => Ok(Self(bytes)),
            Written::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Request buffering's default: small bodies, which are most bodies, never hold a backend.
pub const DEFAULT_REQUEST_BUFFERING: ByteSize = ByteSize(64 * 1024);
/// The most a client's body may take in memory before a backend is chosen.
const MAX_REQUEST_BUFFERING: ByteSize = ByteSize(16 * 1024 * 1024);

/// One listening address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The address to bind.
    pub address: SocketAddr,
    /// HTTP or raw TCP.
    pub mode: Mode,
    /// Where its requests go.
    pub serves: Serves,
    /// Certificates and keys for TLS termination, chosen by SNI (the first for clients that
    /// send no name or one no certificate is for); none: plain text.
    pub tls: Vec<TlsFiles>,
    /// Every connection opens with a PROXY protocol header (v1 or v2) from the balancer in
    /// front, whose client address is then the client's everywhere.
    pub proxy_protocol: bool,
    /// A rate limit on every request of the listener (HTTP; before any route's), or on every
    /// connection (TCP), by client: past it 429 with `Retry-After`, or the connection closed.
    pub rate_limit: Option<RateLimitSpec>,
}

/// Where a listener sends what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serves {
    /// Everything to this pool.
    Pool(String),
    /// Each HTTP request by this route table (static mode).
    Routes(String),
}

impl Serves {
    /// The pool, for a listener that serves one.
    pub fn pool(&self) -> Option<&str> {
        match self {
            Self::Pool(pool) => Some(pool),
            Self::Routes(_) => None,
        }
    }
}

impl std::fmt::Display for Serves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pool(pool) => write!(f, "pool {pool}"),
            Self::Routes(table) => write!(f, "routes {table}"),
        }
    }
}

/// HTTP or TCP proxying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// HTTP/1.1 and HTTP/2, request by request.
    Http,
    /// Bytes both ways, connection by connection.
    Tcp,
}

/// PEM files for TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// A pool as the request path runs it: the model's pool with its algorithm built, its hash key
/// and addresses parsed, and its policy as durations.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pool {
    /// The name listeners refer to and metrics carry.
    pub name: String,
    /// The balancing algorithm.
    pub algorithm: Algorithm,
    /// What the hash-based algorithms hash.
    pub hash_key: HashKey,
    /// The backends.
    pub backends: Vec<BackendAddress>,
    /// The pool's own retries and timeouts, where it overrides the LB's.
    pub overrides: PoolOverrides,
    /// What the LB speaks to the backends.
    pub protocol: UpstreamProtocol,
    /// The PROXY protocol header each backend connection opens with, if any.
    pub send_proxy_protocol: Option<ProxyProtocol>,
    /// How long a backend that (re)joins ramps up to its full share.
    pub slow_start: Option<Duration>,
    /// What protects its backends from too many requests.
    pub protection: Protection,
    /// The cookie that keeps a client on its backend, if the pool keeps clients.
    pub sticky_cookie: Option<String>,
    /// TLS to the backends, if the pool speaks it.
    pub tls: Option<Arc<BackendTls>>,
}

/// What protects a pool's backends: a cap on each one's requests in flight with a queue in
/// front, and a budget for retries (see [`crate::protection`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Protection {
    /// Requests one backend may have in flight, over every worker.
    pub max_requests: Option<u32>,
    /// Connections open to one backend, busy or idle, over every worker.
    pub max_connections: Option<u32>,
    /// Requests that may wait for a backend under its cap.
    pub queue_size: u32,
    /// How long one may wait.
    pub queue_timeout: Duration,
    /// Retries in progress: at most this fraction of the requests in flight…
    pub retry_budget: f64,
    /// …or this many, whichever is more.
    pub retry_budget_min: u32,
}

impl Protection {
    pub(crate) fn of(policy: &PoolPolicy) -> Self {
        Self {
            max_requests: policy.max_requests,
            max_connections: policy.max_connections,
            queue_size: policy.queue_size.unwrap_or(0),
            queue_timeout: Duration::from_millis(policy.queue_timeout_ms.unwrap_or(1_000)),
            retry_budget: policy.retry_budget_percent.unwrap_or(20.0) / 100.0,
            retry_budget_min: policy.retry_budget_min.unwrap_or(3),
        }
    }

    /// Requests one backend may have in flight: its `max_requests`, or where fewer, its
    /// `max_connections`, since a connection carries one request (or TCP session) at a time.
    pub(crate) fn in_flight_cap(&self) -> Option<u32> {
        match (self.max_requests, self.max_connections) {
            (Some(requests), Some(connections)) => Some(requests.min(connections)),
            (requests, connections) => requests.or(connections),
        }
    }
}

/// What a pool may set for itself instead of the LB server's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PoolOverrides {
    /// Extra tries for replayable requests.
    pub retries: Option<u32>,
    /// Connecting to a backend.
    pub connect: Option<Duration>,
    /// A backend starting its response (and each read of its body).
    pub backend_response: Option<Duration>,
}

impl Pool {
    /// The request path's pools for the model's. A pool or backend that it cannot use (which
    /// validation should have prevented) is left out with a warning rather than stopping the
    /// others.
    pub(crate) fn all_of(pools: &[ballast_config::Pool]) -> Vec<Self> {
        pools
            .iter()
            .filter_map(|pool| {
                let spec = &pool.spec;
                let algorithm = spec.algorithm.build()
                .map_err(|error| tracing::warn!(pool = %spec.name, %error, "pool left out"))
                .ok()?;
                let hash_key = match spec.hash_key.parse::<HashKeySpec>() {
                    Ok(source) => HashKey::from(&source),
                    Err(error) => {
                        tracing::warn!(pool = %spec.name, %error, "hashing the client address instead");
                        HashKey::ClientIp
                    }
                };
                let backends = pool
                    .backends
                    .iter()
                    .filter_map(|backend| match backend.address.parse() {
                        Ok(address) => Some(BackendAddress {
                            address,
                            weight: backend.weight,
                            accepting: backend.takes_traffic(),
                        }),
                        Err(_) => {
                            tracing::warn!(pool = %spec.name, address = %backend.address, "backend left out");
                            None
                        }
                    })
                    .collect();
                let policy = &spec.policy;
                let tls = BackendTls::of(policy)
                    .map_err(|error| tracing::warn!(pool = %spec.name, %error, "pool left out"))
                    .ok()?;
                if tls.as_ref().is_some_and(|tls| tls.is_insecure()) {
                    tracing::warn!(
                        pool = %spec.name,
                        "insecure_skip_verify: backends' certificates are not verified"
                    );
                }
                Some(Self {
                    name: spec.name.clone(),
                    algorithm,
                    hash_key,
                    backends,
                    overrides: PoolOverrides {
                        retries: policy.retries,
                        connect: policy.connect_timeout_ms.map(Duration::from_millis),
                        backend_response: policy.response_timeout_ms.map(Duration::from_millis),
                    },
                    protocol: policy.protocol.unwrap_or_default(),
                    send_proxy_protocol: policy.send_proxy_protocol,
                    slow_start: policy.slow_start_ms.map(Duration::from_millis),
                    protection: Protection::of(policy),
                    sticky_cookie: policy.sticky_cookie.clone(),
                    tls,
                })
            })
            .collect()
    }
}

/// A backend and its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendAddress {
    /// Where to connect.
    pub address: SocketAddr,
    /// Its relative share.
    pub weight: u32,
    /// Whether it may take new requests (false while draining, disabled or unhealthy).
    pub accepting: bool,
}

impl BackendAddress {
    /// The backend in the model: active, of unknown health.
    pub fn into_model(self) -> ballast_config::Backend {
        ballast_config::Backend {
            address: self.address.to_string(),
            weight: self.weight,
            admin_state: AdminState::Active,
            health: Health::Unknown,
            phi: None,
            health_reason: None,
        }
    }
}

impl std::str::FromStr for BackendAddress {
    type Err = String;

    /// `ADDR` or `ADDR=WEIGHT`, e.g. `127.0.0.1:9001=3`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, weight) = match text.split_once('=') {
            Some((address, weight)) => (
                address,
                weight
                    .parse()
                    .map_err(|_| format!("weight `{weight}` must be a whole number"))?,
            ),
            None => (text, 1),
        };
        let address = ballast_config::backend_address(address)?;
        Ok(Self {
            address,
            weight,
            accepting: true,
        })
    }
}

/// The timeouts, each with a default users may change (a file's `[timeouts]` sets any of them,
/// as people write durations: `"250ms"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// Connecting to a backend.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// A client sending a whole request head, from its first byte (cuts off slow-loris
    /// clients); also the longest wait for each read of a request body, for a TLS handshake,
    /// and for a new connection's first request.
    #[serde(with = "humantime_serde")]
    pub request_headers: Duration,
    /// A backend starting its response; also the longest wait for each read of its body.
    #[serde(with = "humantime_serde")]
    pub backend_response: Duration,
    /// An idle keep-alive connection, to a client or to a backend, before it is closed; also
    /// an idle TCP-mode session, and a write to a client that stopped reading.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(1),
            request_headers: Duration::from_secs(10),
            backend_response: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

/// When a backend is ejected for failing, and for how long (a file's `[outlier]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierPolicy {
    /// Consecutive connect failures or 5xx responses that eject; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// The longest ejection.
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
        }
    }
}

/// A configuration that cannot run, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SettingsError {
    /// The path of the field, e.g. `pools[0].backends[1]`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl SettingsError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl Settings {
    /// Default settings around the given listeners and pools.
    pub fn new(listeners: Vec<Listener>, pools: Vec<ballast_config::Pool>) -> Self {
        Self {
            listeners,
            pools,
            route_tables: Vec::new(),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            admin: None,
            timeouts: Timeouts::default(),
            retries: 2,
            outlier: OutlierPolicy::default(),
            drain_timeout: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            request_buffering: DEFAULT_REQUEST_BUFFERING,
            managed: false,
            access_log: None,
            request_id_header: false,
            rate_limit_redis: Vec::new(),
            rate_limit_redis_timeout: Duration::from_millis(100),
        }
    }

    /// Whether requests carry an ID (to the backend, the access log and maybe the client).
    pub fn request_ids(&self) -> bool {
        self.access_log.is_some() || self.request_id_header
    }

    /// Checks the whole configuration; the first problem found is the error (see
    /// [`Settings::problems`] for all of them).
    pub fn validate(&self) -> Result<(), SettingsError> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Every problem with the configuration, each naming its field, in file order (as
    /// `nginx -t` reports them, so one run of `--check-config` shows everything to fix).
    pub fn problems(&self) -> Vec<SettingsError> {
        let mut problems = Problems::default();
        if self.listeners.is_empty() {
            problems.add("listeners", "at least one listener is needed");
        }
        if self.workers == 0 || self.workers > 1024 {
            problems.add("workers", "must be from 1 to 1024");
        }
        let mut pool_names = HashSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            if let Err((field, reason)) = check_pool(pool) {
                problems.add(format!("pools[{i}]{field}"), reason);
            }
            if !pool_names.insert(pool.spec.name.as_str()) {
                problems.add(
                    format!("pools[{i}].name"),
                    format!("pool `{}` is defined twice", pool.spec.name),
                );
            }
        }
        let pools: Vec<&str> = pool_names.iter().copied().collect();
        let mut tables = HashSet::new();
        for (i, table) in self.route_tables.iter().enumerate() {
            if let Err(e) = table.check(&pools) {
                problems.add(format!("route_tables[{i}].{}", e.field), e.reason);
            }
            if !tables.insert(table.name.as_str()) {
                problems.add(
                    format!("route_tables[{i}].name"),
                    format!("route table `{}` is defined twice", table.name),
                );
            }
        }
        if self.rate_limit_redis_timeout.is_zero() {
            problems.add("rate_limit_redis_timeout", "must be longer than zero");
        }
        for (i, url) in self.rate_limit_redis.iter().enumerate() {
            if let Err(reason) = crate::fleet_rate::check_url(url) {
                problems.add(format!("rate_limit_redis[{i}]"), reason);
            }
        }
        if self.rate_limit_redis.is_empty() {
            let routes = self.route_tables.iter().enumerate().flat_map(|(i, table)| {
                let fleet = table.routes.iter().enumerate();
                fleet
                    .filter(|(_, route)| route.rate_scope == Some(RateScope::Fleet))
                    .map(move |(j, _)| format!("route_tables[{i}].routes[{j}].rate_scope"))
            });
            let listeners = self
                .listeners
                .iter()
                .enumerate()
                .filter_map(|(i, listener)| {
                    let limit = listener.rate_limit.as_ref()?;
                    (limit.scope == RateScope::Fleet).then(|| format!("listeners[{i}].rate_scope"))
                });
            for field in routes.chain(listeners) {
                problems.add(
                    field,
                    "a fleet-wide rate counts on Redis: set rate_limit_redis",
                );
            }
        }
        let mut addresses = HashSet::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            // Port 0 asks for any free port, a different one each time.
            if listener.address.port() != 0 && !addresses.insert(listener.address) {
                problems.add(
                    format!("listeners[{i}].listen"),
                    format!("{} is used by two listeners", listener.address),
                );
            }
            match &listener.serves {
                Serves::Pool(pool) if !self.managed && !pool_names.contains(pool.as_str()) => {
                    problems.add(
                        format!("listeners[{i}].pool"),
                        format!("no pool is named `{pool}`"),
                    );
                }
                Serves::Routes(table) => {
                    let field = format!("listeners[{i}].routes");
                    if listener.mode == Mode::Tcp {
                        problems.add(field.clone(), "routes are for HTTP listeners");
                    }
                    // A managed LB's tables come from the database, and may come later.
                    if !self.managed && !self.route_tables.iter().any(|t| t.name == *table) {
                        problems.add(field, format!("no route table is named `{table}`"));
                    }
                }
                Serves::Pool(_) => {}
            }
            if let Some(limit) = &listener.rate_limit
                && listener.mode == Mode::Tcp
                && limit.key != ballast_config::HashKeySpec::ClientIp
            {
                problems.add(
                    format!("listeners[{i}].rate_key"),
                    "a TCP listener tells clients apart by their address only",
                );
            }
            if listener.mode == Mode::Tcp && !listener.tls.is_empty() {
                problems.add(
                    format!("listeners[{i}].tls"),
                    "TLS termination is for HTTP listeners",
                );
            }
        }
        for (field, value) in [
            ("timeouts.connect", self.timeouts.connect),
            ("timeouts.request_headers", self.timeouts.request_headers),
            ("timeouts.backend_response", self.timeouts.backend_response),
            ("timeouts.idle", self.timeouts.idle),
        ] {
            if value.is_zero() {
                problems.add(field, "must be longer than zero");
            }
        }
        if self.request_buffering > MAX_REQUEST_BUFFERING {
            problems.add(
                "request_buffering",
                "at most 16MiB: every client connection may hold that much",
            );
        }
        if self.retries > 10 {
            problems.add("retries", "at most 10 extra tries");
        }
        if self.outlier.base_ejection > self.outlier.max_ejection {
            problems.add(
                "outlier.base_ejection",
                "must not exceed outlier.max_ejection",
            );
        }
        problems.0
    }

    /// Reads and validates a TOML file (see `ballast.example.toml`).
    pub fn from_file(path: &Path) -> Result<Self, SettingsError> {
        Self::from_toml(&read(path)?)
    }

    /// Reads a TOML file and leaves validation to the caller (which may change it first, then
    /// call [`Settings::validate`] or [`Settings::problems`]). For a managed LB (`managed`), the
    /// file holds listeners and settings only, since the pools come from the database.
    pub fn read_file(path: &Path, managed: bool) -> Result<Self, SettingsError> {
        let mut settings = Self::parse(&read(path)?)?;
        if managed {
            if !settings.pools.is_empty() {
                return Err(SettingsError::new(
                    "pools",
                    "pools come from --db in managed mode; remove the file's [[pools]]",
                ));
            }
            settings.managed = true;
        }
        Ok(settings)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, SettingsError> {
        let settings = Self::parse(text)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Parses TOML text, leaving validation to the caller.
    fn parse(text: &str) -> Result<Self, SettingsError> {
        let file: File = toml::from_str(text).map_err(|e| {
            let reason = e.message().to_owned();
            let at = e
                .span()
                .map(|span| {
                    let line = text[..span.start].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "file".to_owned());
            SettingsError::new(at, reason)
        })?;
        file.into_settings()
    }
}

/// The problems [`Settings::problems`] finds, in order.
#[derive(Default)]
struct Problems(Vec<SettingsError>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(SettingsError::new(field, reason));
    }
}

/// The file's shape, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    workers: Option<usize>,
    admin: Option<SocketAddr>,
    #[serde(default, with = "humantime_serde_opt")]
    drain_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    drain_delay: Option<Duration>,
    request_buffering: Option<ByteSize>,
    retries: Option<u32>,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    outlier: OutlierPolicy,
    #[serde(default)]
    listeners: Vec<FileListener>,
    #[serde(default)]
    pools: Vec<FilePool>,
    #[serde(default)]
    route_tables: Vec<RouteTable>,
    access_log: Option<String>,
    access_log_format: Option<LogFormat>,
    #[serde(default)]
    request_id_header: bool,
    #[serde(default)]
    rate_limit_redis: Vec<String>,
    #[serde(default, with = "humantime_serde_opt")]
    rate_limit_redis_timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
    listen: SocketAddr,
    #[serde(default = "http_mode")]
    mode: Mode,
    pool: Option<String>,
    routes: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls: Option<Vec<TlsFiles>>,
    #[serde(default)]
    proxy_protocol: bool,
    rate: Option<String>,
    burst: Option<u32>,
    rate_key: Option<String>,
    rate_scope: Option<RateScope>,
    on_redis_error: Option<OnRedisError>,
}

fn http_mode() -> Mode {
    Mode::Http
}

/// A pool as the file writes it: the model's fields, with durations as people write them and
/// backends as `ADDR[=WEIGHT]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePool {
    name: String,
    #[serde(default = "default_algorithm")]
    algorithm: String,
    hash_key: Option<String>,
    table_size: Option<u32>,
    points_per_weight: Option<u32>,
    load_factor: Option<f64>,
    #[serde(default, with = "humantime_serde_opt")]
    peak_ewma: Option<Duration>,
    retries: Option<u32>,
    #[serde(default, with = "humantime_serde_opt")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    response_timeout: Option<Duration>,
    protocol: Option<UpstreamProtocol>,
    send_proxy_protocol: Option<ProxyProtocol>,
    #[serde(default, with = "humantime_serde_opt")]
    slow_start: Option<Duration>,
    max_requests: Option<u32>,
    max_connections: Option<u32>,
    queue_size: Option<u32>,
    #[serde(default, with = "humantime_serde_opt")]
    queue_timeout: Option<Duration>,
    retry_budget_percent: Option<f64>,
    retry_budget_min: Option<u32>,
    sticky_cookie: Option<String>,
    tls: Option<bool>,
    ca_file: Option<String>,
    server_name: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    insecure_skip_verify: Option<bool>,
    backends: Vec<String>,
}

fn millis(duration: Option<Duration>) -> Option<u64> {
    duration.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl FilePool {
    /// The pool in the model; `at` names it in errors.
    fn into_model(self, at: &str) -> Result<ballast_config::Pool, SettingsError> {
        let spec = PoolSpec {
            name: self.name,
            algorithm: AlgorithmSpec {
                algorithm: self.algorithm,
                table_size: self.table_size,
                points_per_weight: self.points_per_weight,
                load_factor: self.load_factor,
                peak_ewma_ms: millis(self.peak_ewma),
            },
            hash_key: self.hash_key.unwrap_or_else(|| "client_ip".to_owned()),
            dns_name: None,
            policy: PoolPolicy {
                retries: self.retries,
                connect_timeout_ms: millis(self.connect_timeout),
                response_timeout_ms: millis(self.response_timeout),
                protocol: self.protocol,
                send_proxy_protocol: self.send_proxy_protocol,
                slow_start_ms: millis(self.slow_start),
                max_requests: self.max_requests,
                max_connections: self.max_connections,
                queue_size: self.queue_size,
                queue_timeout_ms: millis(self.queue_timeout),
                retry_budget_percent: self.retry_budget_percent,
                retry_budget_min: self.retry_budget_min,
                sticky_cookie: self.sticky_cookie,
                tls: self.tls,
                ca_file: self.ca_file,
                server_name: self.server_name,
                client_cert: self.client_cert,
                client_key: self.client_key,
                insecure_skip_verify: self.insecure_skip_verify,
                ..PoolPolicy::default()
            },
        };
        // As the file is read, like its syntax: the first thing wrong with a pool is usually
        // its algorithm.
        spec.algorithm
            .build()
            .map_err(|e| SettingsError::new(at, e.to_string()))?;
        let backends = self
            .backends
            .iter()
            .enumerate()
            .map(|(j, b)| {
                b.parse::<BackendAddress>()
                    .map(BackendAddress::into_model)
                    .map_err(|e| SettingsError::new(format!("{at}.backends[{j}]"), e))
            })
            .collect::<Result<_, _>>()?;
        Ok(ballast_config::Pool { spec, backends })
    }
}

/// A static pool checked by the store's own rules (as if created and filled through the API),
/// plus what a static pool needs besides: a backend, and an algorithm that builds on them. The
/// error's field is relative to the pool (`.hash_key`), as the file names it.
fn check_pool(pool: &ballast_config::Pool) -> Result<(), (String, String)> {
    let spec = &pool.spec;
    if pool.backends.is_empty() {
        return Err((
            ".backends".to_owned(),
            "a pool needs at least one backend".to_owned(),
        ));
    }
    // The algorithm on these very backends first: its errors say which parameter, and catch
    // what a probe cannot (two backends with one address).
    let backends: Vec<ballast_balance::Backend> = pool
        .backends
        .iter()
        .map(|b| ballast_balance::Backend::new(b.address.clone(), b.weight))
        .collect();
    spec.algorithm
        .build()
        .and_then(|algorithm| ballast_balance::Picker::build(&algorithm, &backends))
        .map_err(|e| (String::new(), e.to_string()))?;
    let in_file = |field: &str| format!(".{}", field.trim_end_matches("_ms"));
    ballast_config::check(&Write::CreatePool(spec.clone()))
        .map_err(|e| (in_file(&e.field), e.reason))?;
    BackendTls::of(&spec.policy).map_err(|e| (in_file(e.field), e.reason))?;
    for (j, backend) in pool.backends.iter().enumerate() {
        let add = Write::AddBackend {
            pool: spec.name.clone(),
            address: backend.address.clone(),
            weight: backend.weight,
        };
        ballast_config::check(&add).map_err(|e| (format!(".backends[{j}]"), e.reason))?;
    }
    Ok(())
}

/// A settings file's text; an unreadable file is an error naming it.
fn read(path: &Path) -> Result<String, SettingsError> {
    std::fs::read_to_string(path)
        .map_err(|e| SettingsError::new(path.display().to_string(), e.to_string()))
}

fn default_algorithm() -> String {
    "round_robin".to_owned()
}

impl File {
    fn into_settings(self) -> Result<Settings, SettingsError> {
        let mut listeners = Vec::new();
        for (i, l) in self.listeners.into_iter().enumerate() {
            let tls = match (l.tls_cert, l.tls_key, l.tls) {
                (Some(cert), Some(key), None) => vec![TlsFiles { cert, key }],
                (None, None, Some(many)) if !many.is_empty() => many,
                (None, None, None) => Vec::new(),
                (None, None, Some(_)) => {
                    return Err(SettingsError::new(
                        format!("listeners[{i}].tls"),
                        "at least one { cert = …, key = … }",
                    ));
                }
                (_, _, Some(_)) => {
                    return Err(SettingsError::new(
                        format!("listeners[{i}].tls"),
                        "tls_cert and tls_key (one certificate), or tls (several): not both",
                    ));
                }
                _ => {
                    return Err(SettingsError::new(
                        format!("listeners[{i}]"),
                        "tls_cert and tls_key go together",
                    ));
                }
            };
            let serves = match (l.pool, l.routes) {
                (Some(pool), None) => Serves::Pool(pool),
                (None, Some(table)) => Serves::Routes(table),
                _ => {
                    return Err(SettingsError::new(
                        format!("listeners[{i}]"),
                        "a listener serves a pool or a route table (routes): one of them",
                    ));
                }
            };
            let rate_limit = RateFields {
                rate: l.rate.as_deref(),
                burst: l.burst,
                rate_key: l.rate_key.as_deref(),
                rate_scope: l.rate_scope,
                on_redis_error: l.on_redis_error,
            }
            .spec()
            .map_err(|e| SettingsError::new(format!("listeners[{i}].{}", e.field), e.reason))?;
            listeners.push(Listener {
                address: l.listen,
                mode: l.mode,
                serves,
                tls,
                proxy_protocol: l.proxy_protocol,
                rate_limit,
            });
        }
        let pools = self
            .pools
            .into_iter()
            .enumerate()
            .map(|(i, pool)| pool.into_model(&format!("pools[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut settings = Settings::new(listeners, pools);
        settings.route_tables = self.route_tables;
        settings.workers = self.workers.unwrap_or(settings.workers);
        settings.admin = self.admin;
        settings.drain_timeout = self.drain_timeout.unwrap_or(settings.drain_timeout);
        settings.drain_delay = self.drain_delay.unwrap_or(settings.drain_delay);
        settings.request_buffering = self.request_buffering.unwrap_or(settings.request_buffering);
        settings.retries = self.retries.unwrap_or(settings.retries);
        settings.timeouts = self.timeouts;
        settings.outlier = self.outlier;
        settings.request_id_header = self.request_id_header;
        settings.rate_limit_redis = self.rate_limit_redis;
        settings.rate_limit_redis_timeout = self
            .rate_limit_redis_timeout
            .unwrap_or(settings.rate_limit_redis_timeout);
        settings.access_log = match (self.access_log, self.access_log_format) {
            (Some(target), format) => Some(AccessLogSettings {
                target: target
                    .parse::<LogTarget>()
                    .map_err(|e| SettingsError::new("access_log", e))?,
                format: format.unwrap_or_default(),
            }),
            (None, Some(_)) => {
                return Err(SettingsError::new(
                    "access_log_format",
                    "set access_log (a path, or `-`) too",
                ));
            }
            (None, None) => None,
        };
        Ok(settings)
    }
}

/// A duration in the file, written as people write them: "1s", "250ms", "5m".
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}")))
    }
}

/// An optional duration in the file.
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::Deserializer;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::humantime_serde::deserialize(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
workers = 2
admin = "127.0.0.1:9180"
drain_timeout = "5s"
drain_delay = "2s"

[timeouts]
connect = "250ms"

[[listeners]]
listen = "127.0.0.1:8080"
pool = "web"

[[listeners]]
listen = "127.0.0.1:8081"
mode = "tcp"
pool = "db"

[[pools]]
name = "web"
algorithm = "maglev"
hash_key = "header:x-user"
table_size = 65537
backends = ["127.0.0.1:9001=3", "127.0.0.1:9002"]

[[pools]]
name = "db"
algorithm = "least_connections"
backends = ["127.0.0.1:9101"]
"#;

    #[test]
    fn reads_a_full_file() {
        let settings = Settings::from_toml(EXAMPLE).expect("valid");
        assert_eq!(settings.workers, 2);
        assert_eq!(settings.drain_timeout, Duration::from_secs(5));
        assert_eq!(settings.drain_delay, Duration::from_secs(2));
        assert_eq!(settings.timeouts.connect, Duration::from_millis(250));
        assert_eq!(settings.timeouts.idle, Duration::from_secs(60));
        assert_eq!(settings.listeners[1].mode, Mode::Tcp);
        assert_eq!(settings.pools[0].backends[0].weight, 3);
        assert_eq!(settings.pools[0].spec.hash_key, "header:x-user");
    }

    #[test]
    fn the_example_file_in_the_repository_is_valid() {
        let text = include_str!("../../../ballast.example.toml");
        let settings = Settings::from_toml(text).expect("the example must stay valid");
        assert_eq!(settings.listeners.len(), 3);
        assert_eq!(settings.listeners[2].serves, Serves::Routes("sites".into()));
        assert_eq!(settings.route_tables[0].routes.len(), 4);
        assert_eq!(settings.request_buffering, ByteSize(64 * 1024));
        assert_eq!(settings.outlier.max_ejection, Duration::from_secs(300));
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        for (text, bytes) in [
            ("0", 0),
            ("65536", 65536),
            ("64KiB", 65536),
            ("1 MiB", 1 << 20),
        ] {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
        for text in ["", "KiB", "-1", "1.5MiB", "99999999999GiB"] {
            assert!(text.parse::<ByteSize>().is_err(), "{text}");
        }
        let from_number = Settings::from_toml(&format!("request_buffering = 1024\n{EXAMPLE}"));
        assert_eq!(
            from_number.expect("valid").request_buffering,
            ByteSize(1024)
        );
    }

    #[test]
    fn static_pools_take_the_per_pool_policy_managed_pools_have() {
        let tuned = EXAMPLE.replace(
            "name = \"db\"",
            "name = \"db\"\nretries = 0\nconnect_timeout = \"100ms\"\nresponse_timeout = \"2s\"",
        );
        let settings = Settings::from_toml(&tuned).expect("valid");
        let pools = Pool::all_of(&settings.pools);
        assert_eq!(pools[0].overrides, PoolOverrides::default());
        assert_eq!(pools[0].protocol, UpstreamProtocol::Http1);
        assert_eq!(
            pools[1].overrides,
            PoolOverrides {
                retries: Some(0),
                connect: Some(Duration::from_millis(100)),
                backend_response: Some(Duration::from_secs(2)),
            }
        );
        // The store's limits, named as the file names the field.
        let greedy = EXAMPLE.replace("name = \"db\"", "name = \"db\"\nretries = 11");
        assert_eq!(error(&greedy), "pools[1].retries: at most 10 extra tries");
        let slow = EXAMPLE.replace("name = \"db\"", "name = \"db\"\nconnect_timeout = \"2h\"");
        assert_eq!(
            error(&slow),
            "pools[1].connect_timeout: must be from 1 ms to one hour"
        );
        let grpc = EXAMPLE.replace("name = \"db\"", "name = \"db\"\nprotocol = \"h2c\"");
        let settings = Settings::from_toml(&grpc).expect("valid");
        assert_eq!(
            Pool::all_of(&settings.pools)[1].protocol,
            UpstreamProtocol::H2c
        );
        let spdy = EXAMPLE.replace("name = \"db\"", "name = \"db\"\nprotocol = \"spdy\"");
        assert!(
            error(&spdy)
                .contains("unknown variant `spdy`, expected one of `http1`, `h2c`, `h2`, `auto`"),
            "{}",
            error(&spdy)
        );
        let unbounded = EXAMPLE.replace("name = \"db\"", "name = \"db\"\nqueue_size = 10");
        assert!(
            error(&unbounded).starts_with("pools[1].queue_size: requests queue for a backend"),
            "{}",
            error(&unbounded)
        );
        let shouting = EXAMPLE.replace("name = \"db\"", "name = \"DB\"");
        assert!(
            error(&shouting).starts_with("pools[1].name: "),
            "{}",
            error(&shouting)
        );
    }

    fn error(text: &str) -> String {
        Settings::from_toml(text).expect_err("invalid").to_string()
    }

    #[test]
    fn a_fleet_wide_rate_needs_redis_and_redis_urls_are_checked_without_showing_them() {
        let example = include_str!("../../../ballast.example.toml");
        assert!(Settings::from_toml(example).is_ok());
        let fleet = example.replace(
            "rate = \"100/s\"",
            "rate = \"100/s\"\nrate_scope = \"fleet\"",
        );
        assert!(
            error(&fleet).starts_with("route_tables[0].routes[0].rate_scope: a fleet-wide rate"),
            "{}",
            error(&fleet)
        );
        let with_redis = format!("rate_limit_redis = [\"redis://127.0.0.1:6390\"]\n{fleet}");
        assert!(Settings::from_toml(&with_redis).is_ok());
        let bad = format!("rate_limit_redis = [\"http://:hunter2@x\"]\n{fleet}");
        let reason = error(&bad);
        assert!(reason.starts_with("rate_limit_redis[0]: "), "{reason}");
        assert!(!reason.contains("hunter2"), "{reason}");
    }

    #[test]
    fn names_the_field_at_fault() {
        let bad_weight = EXAMPLE.replace("127.0.0.1:9002\"", "127.0.0.1:9002=heavy\"");
        assert_eq!(
            error(&bad_weight),
            "pools[0].backends[1]: weight `heavy` must be a whole number"
        );
        let bad_prime = EXAMPLE.replace("65537", "65536");
        assert!(error(&bad_prime).starts_with("pools[0]: maglev.table_size: 65536 is not a prime"));
        let no_pool = EXAMPLE.replace("pool = \"db\"", "pool = \"dbx\"");
        assert_eq!(error(&no_pool), "listeners[1].pool: no pool is named `dbx`");
        let misfit = EXAMPLE.replace(
            "algorithm = \"least_connections\"",
            "algorithm = \"least_connections\"\ntable_size = 7",
        );
        assert_eq!(
            error(&misfit),
            "pools[1]: table_size: does not apply to algorithm least_connections"
        );
        let duplicate = EXAMPLE.replace("\"127.0.0.1:9002\"", "\"127.0.0.1:9001\"");
        assert!(
            error(&duplicate).contains("duplicate id `127.0.0.1:9001`"),
            "{}",
            error(&duplicate)
        );
        let typo = EXAMPLE.replace("drain_timeout", "drain_timout");
        assert!(
            error(&typo).starts_with("line 4: unknown field `drain_timout`"),
            "{}",
            error(&typo)
        );
        let duration = EXAMPLE.replace("\"250ms\"", "\"fast\"");
        assert!(error(&duration).contains("`fast`"), "{}", error(&duration));
        let huge = format!("request_buffering = \"1GiB\"\n{EXAMPLE}");
        assert!(
            error(&huge).starts_with("request_buffering: at most 16MiB"),
            "{}",
            error(&huge)
        );
        let unit = format!("request_buffering = \"64 parsecs\"\n{EXAMPLE}");
        assert!(
            error(&unit).contains("unknown unit `parsecs`"),
            "{}",
            error(&unit)
        );
        let key = EXAMPLE.replace("header:x-user", "body");
        assert!(
            error(&key).starts_with("pools[0].hash_key: "),
            "{}",
            error(&key)
        );
        let both = EXAMPLE.replace(
            "pool = \"web\"\n",
            "pool = \"web\"\ntls_cert = \"a.pem\"\ntls_key = \"a.key\"\n\
             tls = [{ cert = \"b.pem\", key = \"b.key\" }]\n",
        );
        assert!(
            error(&both).starts_with("listeners[0].tls: "),
            "{}",
            error(&both)
        );
        let none = EXAMPLE.replace("pool = \"web\"\n", "pool = \"web\"\ntls = []\n");
        assert!(
            error(&none).starts_with("listeners[0].tls: "),
            "{}",
            error(&none)
        );
        let both_serve = EXAMPLE.replace("pool = \"web\"\n", "pool = \"web\"\nroutes = \"x\"\n");
        assert!(
            error(&both_serve).starts_with("listeners[0]: a listener serves a pool or"),
            "{}",
            error(&both_serve)
        );
    }
}
