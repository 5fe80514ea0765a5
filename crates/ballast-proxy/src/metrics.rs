//! The LB server's Prometheus metrics: what operators graph and what the orchestrator scales the
//! fleet on (CPU seconds, resident memory, open descriptors, client connections).
//!
//! Nothing on the request path looks a metric up by its labels: each backend's counters are
//! created once, when the backend first appears, and kept in its state, so counting a request is
//! one atomic add. Gauges that mirror live state (in-flight, pooled connections, process figures)
//! are read when `/metrics` is scraped.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use ballast_telemetry::{Format, Page};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric of one LB server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    durations: Family<Labels, Histogram, fn() -> Histogram>,
    ejections: Family<Labels, Counter>,
    stray: Family<Labels, Counter>,
    in_flight: Family<Labels, Gauge>,
    weights: Family<Labels, Gauge>,
    queued: Family<Labels, Gauge>,
    queue_waits: Family<Labels, Histogram, fn() -> Histogram>,
    retries_refused: Family<Labels, Counter>,
    pooled: Family<Labels, Gauge>,
    open: Family<Labels, Gauge>,
    client_connections: Gauge,
    accept_errors: Counter,
    proxy_header_errors: Counter,
    /// Live count behind `client_connections`, updated by every worker.
    open_client_connections: Arc<AtomicI64>,
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_bytes: Gauge,
    open_fds: Gauge,
    config_revision: Gauge,
    config_unreachable_seconds: Gauge<f64, AtomicU64>,
    config_reloads: Family<Labels, Counter>,
    route_misses: Family<Labels, Counter>,
    rate_limited: Family<Labels, Counter>,
    rate_limit_overflows: Family<Labels, Counter>,
    rate_limit_redis_errors: Family<Labels, Counter>,
    listener_rate_limited: Family<Labels, Counter>,
    listener_rate_overflows: Family<Labels, Counter>,
    listener_rate_redis_errors: Family<Labels, Counter>,
    access_log_lines: Counter,
    access_log_dropped: Counter,
}

/// Why a request was answered by the LB itself rather than a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 503: no backend took the request.
    NoBackend,
    /// 504: the backend did not answer in time.
    Timeout,
    /// 502: the backend broke the exchange.
    BadGateway,
    /// 400: the request could not be parsed.
    BadRequest,
    /// 431: the request's headers were too large.
    HeadersTooLarge,
    /// The client did not send its headers in time.
    HeaderTimeout,
    /// 421: the request's host has another certificate than the one its TLS connection was
    /// made with (a client coalescing connections across names).
    Misdirected,
    /// 503 with `Retry-After`: every backend is at its `max_requests`, and the pool's queue was
    /// full or the wait in it too long.
    Overloaded,
}

impl ErrorKind {
    /// Every kind, in the order the metrics register them.
    pub const ALL: [Self; 8] = [
        Self::NoBackend,
        Self::Timeout,
        Self::BadGateway,
        Self::BadRequest,
        Self::HeadersTooLarge,
        Self::HeaderTimeout,
        Self::Misdirected,
        Self::Overloaded,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::NoBackend => "no_backend",
            Self::Timeout => "backend_timeout",
            Self::BadGateway => "bad_gateway",
            Self::BadRequest => "bad_request",
            Self::HeadersTooLarge => "headers_too_large",
            Self::HeaderTimeout => "header_timeout",
            Self::Misdirected => "misdirected",
            Self::Overloaded => "overloaded",
        }
    }
}

/// A backend's request counters by status class (1xx … 5xx), made once.
#[derive(Debug, Clone)]
pub struct BackendCounters {
    by_class: [Counter; 5],
    ejections: Counter,
    stray: Counter,
    in_flight: Gauge,
    weight: Gauge,
    pooled: Gauge,
    open: Gauge,
    /// Idle pooled connections to this backend over all workers.
    pub pooled_now: Arc<AtomicI64>,
}

impl BackendCounters {
    /// Counts one response with `status`.
    #[inline]
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
    }

    /// The weight the backend's picker uses now.
    pub fn set_weight(&self, weight: u32) {
        self.weight.set(i64::from(weight));
    }

    /// Counts one ejection.
    pub fn ejected(&self) {
        self.ejections.inc();
    }

    /// Counts one connection on which the backend sent bytes nobody asked for.
    pub fn stray_bytes(&self) {
        self.stray.inc();
    }
}

/// Per-pool handles.
#[derive(Debug, Clone)]
pub struct PoolCounters {
    duration: Histogram,
    errors: [Counter; ErrorKind::ALL.len()],
    queued: Gauge,
    queue_waits: Histogram,
    retries_refused: Counter,
}

impl PoolCounters {
    /// Records how long a request took, in seconds.
    #[inline]
    pub fn observe(&self, seconds: f64) {
        self.duration.observe(seconds);
    }

    /// Counts a response the LB made itself.
    #[inline]
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].inc();
    }

    /// A request starts (`1`) or stops (`-1`) waiting in the pool's queue.
    pub fn queued(&self, change: i64) {
        self.queued.inc_by(change);
    }

    /// Records how long a request waited in the queue before a backend took it, in seconds.
    pub fn waited(&self, seconds: f64) {
        self.queue_waits.observe(seconds);
    }

    /// Counts a retry the retry budget did not allow.
    pub fn retry_refused(&self) {
        self.retries_refused.inc();
    }
}

fn duration_histogram() -> Histogram {
    // 100 µs to ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let durations = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let ejections = Family::<Labels, Counter>::default();
        let stray = Family::<Labels, Counter>::default();
        let in_flight = Family::<Labels, Gauge>::default();
        let weights = Family::<Labels, Gauge>::default();
        let queued = Family::<Labels, Gauge>::default();
        let queue_waits = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let retries_refused = Family::<Labels, Counter>::default();
        let pooled = Family::<Labels, Gauge>::default();
        let open = Family::<Labels, Gauge>::default();
        let client_connections = Gauge::default();
        let accept_errors = Counter::default();
        let proxy_header_errors = Counter::default();
        let cpu_seconds = Counter::<f64, AtomicU64>::default();
        let resident_bytes = Gauge::default();
        let open_fds = Gauge::default();
        let config_revision = Gauge::default();
        let config_unreachable_seconds = Gauge::<f64, AtomicU64>::default();
        let config_reloads = Family::<Labels, Counter>::default();
        let route_misses = Family::<Labels, Counter>::default();
        let rate_limited = Family::<Labels, Counter>::default();
        let rate_limit_overflows = Family::<Labels, Counter>::default();
        let rate_limit_redis_errors = Family::<Labels, Counter>::default();
        let listener_rate_limited = Family::<Labels, Counter>::default();
        let listener_rate_overflows = Family::<Labels, Counter>::default();
        let listener_rate_redis_errors = Family::<Labels, Counter>::default();
        registry.register(
            "ballast_listener_rate_limited",
            "Requests answered 429 (HTTP) or connections closed (TCP) because their client was over the listener's rate, by listener",
            listener_rate_limited.clone(),
        );
        registry.register(
            "ballast_listener_rate_limit_overflows",
            "New clients let past a listener's rate limit because its memory was full of clients over their rate",
            listener_rate_overflows.clone(),
        );
        registry.register(
            "ballast_listener_rate_limit_redis_errors",
            "Requests or connections a listener's fleet-wide rate limit's Redis gave no verdict for in time",
            listener_rate_redis_errors.clone(),
        );
        registry.register(
            "ballast_rate_limit_redis_errors",
            "Requests a fleet-wide rate limit's Redis gave no verdict for in time (on_redis_error decided)",
            rate_limit_redis_errors.clone(),
        );
        let access_log_lines = Counter::default();
        registry.register(
            "ballast_rate_limited",
            "Requests answered 429 because their client was over the route's rate, by table and route",
            rate_limited.clone(),
        );
        registry.register(
            "ballast_rate_limit_overflows",
            "New clients let past a rate limit because its memory was full of clients over their rate",
            rate_limit_overflows.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "ballast_access_log_lines",
            "Access log lines handed to the log's writer",
            access_log_lines.clone(),
        );
        registry.register(
            "ballast_access_log_dropped",
            "Access log lines dropped because the writer fell behind (its buffer was full)",
            access_log_dropped.clone(),
        );
        registry.register(
            "ballast_route_misses",
            "Requests no route of the listener's route table matched (answered 404), by table",
            route_misses.clone(),
        );
        // Both results exist from the start, so that `increase(...{result="error"})` has a
        // series to compare with before the first failure.
        for result in ["ok", "error"] {
            let _ = config_reloads.get_or_create(&vec![("result", result.to_owned())]);
        }
        registry.register(
            "ballast_config_reloads",
            "Configuration reloads (SIGHUP), by result: ok (applied whole) or error (nothing changed)",
            config_reloads.clone(),
        );
        registry.register(
            "ballast_config_revision",
            "The configuration revision this LB applied (0 for a static configuration)",
            config_revision.clone(),
        );
        registry.register(
            "ballast_config_unreachable_seconds",
            "How long the configuration database has been unreachable (0 when it is reachable)",
            config_unreachable_seconds.clone(),
        );
        registry.register(
            "ballast_requests",
            "Responses sent to clients, by pool, backend and status class",
            requests.clone(),
        );
        registry.register(
            "ballast_errors",
            "Responses the LB made itself (no backend, timeouts, bad requests), by kind",
            errors.clone(),
        );
        registry.register(
            "ballast_request_duration_seconds",
            "Time from request to the end of the response, by pool",
            durations.clone(),
        );
        registry.register(
            "ballast_backend_ejections",
            "Passive outlier ejections, by backend",
            ejections.clone(),
        );
        registry.register(
            "ballast_backend_stray_bytes",
            "Backend connections closed because the backend sent bytes nobody asked for (after a complete response, or while idle); such a backend's connections are then used once",
            stray.clone(),
        );
        registry.register(
            "ballast_backend_in_flight",
            "Requests (HTTP) or connections (TCP) in flight to each backend",
            in_flight.clone(),
        );
        registry.register(
            "ballast_backend_weight",
            "The weight each backend is picked by now: its own, or while slow start ramps the pool, every weight scaled by 20 and the ramping backend's by its progress",
            weights.clone(),
        );
        registry.register(
            "ballast_pool_queued_requests",
            "Requests waiting for a backend under its max_requests or max_connections, by pool",
            queued.clone(),
        );
        registry.register(
            "ballast_pool_queue_wait_seconds",
            "How long requests waited in the pool's queue before a backend took them",
            queue_waits.clone(),
        );
        registry.register(
            "ballast_retry_budget_exhausted",
            "Retries not made because the pool's retry budget was spent",
            retries_refused.clone(),
        );
        registry.register(
            "ballast_backend_pooled_connections",
            "Idle keep-alive connections to each backend",
            pooled.clone(),
        );
        registry.register(
            "ballast_backend_connections",
            "Connections open to each backend, busy or idle, over every worker (what max_connections caps)",
            open.clone(),
        );
        registry.register(
            "ballast_client_connections",
            "Open client connections",
            client_connections.clone(),
        );
        registry.register(
            "ballast_accept_errors",
            "Failed accepts (out of file descriptors, most often), by which clients were kept waiting",
            accept_errors.clone(),
        );
        registry.register(
            "ballast_proxy_protocol_errors",
            "Connections closed because they did not open with a valid PROXY protocol header in time",
            proxy_header_errors.clone(),
        );
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time of the process",
            cpu_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            resident_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors of the process",
            open_fds.clone(),
        );
        Self {
            registry,
            requests,
            errors,
            durations,
            ejections,
            stray,
            in_flight,
            weights,
            queued,
            queue_waits,
            retries_refused,
            pooled,
            open,
            client_connections,
            accept_errors,
            proxy_header_errors,
            open_client_connections: Arc::default(),
            cpu_seconds,
            resident_bytes,
            open_fds,
            config_revision,
            config_unreachable_seconds,
            config_reloads,
            route_misses,
            rate_limited,
            rate_limit_overflows,
            rate_limit_redis_errors,
            listener_rate_limited,
            listener_rate_overflows,
            listener_rate_redis_errors,
            access_log_lines,
            access_log_dropped,
        }
    }

    /// The access log's counters: lines handed to its writer, and lines dropped.
    pub(crate) fn access_log(&self) -> (Counter, Counter) {
        (
            self.access_log_lines.clone(),
            self.access_log_dropped.clone(),
        )
    }

    /// The 429s, overflows and Redis errors of the rate limit of route `position` of `table`.
    pub(crate) fn rate_limit(
        &self,
        table: &str,
        position: usize,
    ) -> crate::rate_limit::RateCounters {
        let labels = vec![("table", table.to_owned()), ("route", position.to_string())];
        crate::rate_limit::RateCounters {
            limited: self.rate_limited.get_or_create(&labels).clone(),
            overflowed: self.rate_limit_overflows.get_or_create(&labels).clone(),
            redis_errors: self.rate_limit_redis_errors.get_or_create(&labels).clone(),
        }
    }

    /// The counters of the rate limit on every request of the listener at `address`.
    pub(crate) fn listener_rate_limit(&self, address: &str) -> crate::rate_limit::RateCounters {
        let labels = vec![("listener", address.to_owned())];
        crate::rate_limit::RateCounters {
            limited: self.listener_rate_limited.get_or_create(&labels).clone(),
            overflowed: self.listener_rate_overflows.get_or_create(&labels).clone(),
            redis_errors: self
                .listener_rate_redis_errors
                .get_or_create(&labels)
                .clone(),
        }
    }

    /// The counter of requests route table `table` had no route for.
    pub fn route_misses(&self, table: &str) -> Counter {
        self.route_misses
            .get_or_create(&vec![("table", table.to_owned())])
            .clone()
    }

    /// Counts a configuration reload: applied whole (`ok`) or refused.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    }

    /// Records the configuration revision in force and how stale it may be.
    pub fn set_config(&self, revision: u64, unreachable_for: Option<std::time::Duration>) {
        self.config_revision
            .set(i64::try_from(revision).unwrap_or(i64::MAX));
        self.config_unreachable_seconds
            .set(unreachable_for.map_or(0.0, |d| d.as_secs_f64()));
    }

    /// The counters of one backend of `pool`, made once and kept by the backend.
    pub fn backend(&self, pool: &str, backend: &str) -> BackendCounters {
        let labels = |class: &str| -> Labels {
            vec![
                ("pool", pool.to_owned()),
                ("backend", backend.to_owned()),
                ("class", class.to_owned()),
            ]
        };
        let plain: Labels = vec![("pool", pool.to_owned()), ("backend", backend.to_owned())];
        BackendCounters {
            by_class: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|class| self.requests.get_or_create(&labels(class)).clone()),
            ejections: self.ejections.get_or_create(&plain).clone(),
            stray: self.stray.get_or_create(&plain).clone(),
            in_flight: self.in_flight.get_or_create(&plain).clone(),
            weight: self.weights.get_or_create(&plain).clone(),
            pooled: self.pooled.get_or_create(&plain).clone(),
            open: self.open.get_or_create(&plain).clone(),
            pooled_now: Arc::default(),
        }
    }

    /// The handles of one pool.
    pub fn pool(&self, pool: &str) -> PoolCounters {
        let kinds = ErrorKind::ALL;
        PoolCounters {
            duration: self
                .durations
                .get_or_create(&vec![("pool", pool.to_owned())])
                .clone(),
            errors: kinds.map(|kind| {
                self.errors
                    .get_or_create(&vec![
                        ("pool", pool.to_owned()),
                        ("kind", kind.label().to_owned()),
                    ])
                    .clone()
            }),
            queued: self
                .queued
                .get_or_create(&vec![("pool", pool.to_owned())])
                .clone(),
            queue_waits: self
                .queue_waits
                .get_or_create(&vec![("pool", pool.to_owned())])
                .clone(),
            retries_refused: self
                .retries_refused
                .get_or_create(&vec![("pool", pool.to_owned())])
                .clone(),
        }
    }

    /// The live count of open client connections, shared by every worker.
    pub fn client_connections(&self) -> &Arc<AtomicI64> {
        &self.open_client_connections
    }

    /// The count of failed accepts.
    pub fn accept_errors(&self) -> &Counter {
        &self.accept_errors
    }

    /// The count of connections refused for their PROXY protocol header.
    pub fn proxy_header_errors(&self) -> &Counter {
        &self.proxy_header_errors
    }

    /// The page in `format`, after reading the live gauges: `backends` gives each backend's
    /// counters, its in-flight count and its open connections.
    pub fn render<'a>(
        &self,
        format: Format,
        backends: impl Iterator<Item = (&'a BackendCounters, u64, u32)>,
    ) -> Page {
        for (counters, in_flight, open) in backends {
            counters
                .in_flight
                .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
            counters.open.set(i64::from(open));
            counters
                .pooled
                .set(counters.pooled_now.load(Ordering::Relaxed));
        }
        self.client_connections
            .set(self.open_client_connections.load(Ordering::Relaxed));
        let process = crate::process::Usage::read();
        let cpu_delta = process.cpu_seconds - self.cpu_seconds.get();
        if cpu_delta > 0.0 {
            self.cpu_seconds.inc_by(cpu_delta);
        }
        self.resident_bytes
            .set(i64::try_from(process.resident_bytes).unwrap_or(i64::MAX));
        self.open_fds
            .set(i64::try_from(process.open_fds).unwrap_or(i64::MAX));
        format.encode(&self.registry)
    }
}
