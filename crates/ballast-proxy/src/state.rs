//! What every worker shares: the long-lived state of pools and backends (loads, failure records,
//! metric handles), and the immutable [`Snapshot`] the request path reads through one `ArcSwap`.
//!
//! A snapshot holds, per pool, the picker built for the backends that take traffic now. When
//! that changes (an ejection starts or ends, a configuration revision), a new snapshot is built
//! off the request path and swapped in whole; requests already running keep the one they loaded.
//! Only the pools that changed are rebuilt: the others' [`PoolSnapshot`]s (a 65537-entry Maglev
//! table among them) are shared by the new snapshot as they are. Backend state lives in `Arc`s
//! that successive snapshots share, so in-flight counts, failure records and counters carry over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use ballast_balance::{Algorithm, Backend, InFlight, Picker};
use tokio::sync::Notify;

use ballast_config::route::RouteTable;

use crate::key::HashKey;
use crate::metrics::{BackendCounters, Metrics, PoolCounters};
use crate::outlier::{Clock, Outlier};
use crate::protection::Queue;
use crate::rate_limit::{Limiter, RateLimit};
use crate::routes::{Action, Rated, Router};
use crate::settings::Protection;
use crate::settings::{Listener, Pool, Serves, Settings};
use crate::slow_start::{self, Ramp};
use ballast_config::UpstreamProtocol;

/// A backend's state for the life of the server.
#[derive(Debug)]
pub(crate) struct BackendState {
    /// Where to connect.
    pub address: SocketAddr,
    /// Its index in every worker's upstream connection cache.
    pub slot: usize,
    /// What the pickers see: id (the address), weight, live load.
    pub balance: Backend,
    /// Its failure record.
    pub outlier: Arc<Outlier>,
    /// Its slow-start ramp, if it is on one.
    pub ramp: Arc<Ramp>,
    /// What a sticky cookie names it by ([`crate::sticky`]).
    pub sticky_token: u64,
    /// The connections open to it.
    pub connections: Arc<crate::protection::Connections>,
    /// Its metric handles.
    pub counters: BackendCounters,
}

/// A pool's state for the life of the server.
#[derive(Debug)]
pub(crate) struct PoolState {
    /// The pool's name.
    pub name: String,
    /// The definition it was built from, to tell whether a revision changed it.
    pub source: Pool,
    /// The algorithm its pickers run.
    pub algorithm: Algorithm,
    /// What hash-based algorithms hash.
    pub hash_key: HashKey,
    /// Its backends, in configuration order.
    pub backends: Vec<Arc<BackendState>>,
    /// Its metric handles.
    pub counters: PoolCounters,
    /// Extra tries for replayable requests (the pool's, or the LB's default).
    pub retries: u32,
    /// Connecting to a backend.
    pub connect_timeout: std::time::Duration,
    /// A backend starting its response, and each read of its body.
    pub response_timeout: std::time::Duration,
    /// What the LB speaks to the backends.
    pub protocol: UpstreamProtocol,
    /// The PROXY protocol header each backend connection opens with, if any.
    pub send_proxy_protocol: Option<ballast_config::ProxyProtocol>,
    /// The slow-start window of a backend that (re)joins, where the algorithm ramps by weight.
    pub slow_start: Option<std::time::Duration>,
    /// Its backends' cap, queue and retry budget.
    pub protection: Protection,
    /// Requests waiting for a backend under its cap, if the pool queues them (kept across
    /// rebuilds, so that a request waiting hears of slots freed under the next snapshot).
    pub queue: Option<Arc<Queue>>,
    /// Retries in progress (kept across rebuilds).
    pub retrying: Arc<AtomicUsize>,
    /// The cookie that keeps a client on its backend, if the pool keeps clients.
    pub sticky_cookie: Option<String>,
    /// TLS to the backends, if the pool speaks it.
    pub tls: Option<Arc<ballast_health::BackendTls>>,
}

impl PoolState {
    /// Whether the LB speaks plain-text HTTP/1.1 to the backends, as the fast path does.
    pub(crate) fn speaks_plain_http1(&self) -> bool {
        self.tls.is_none()
            && matches!(
                self.protocol,
                UpstreamProtocol::Http1 | UpstreamProtocol::Auto
            )
    }
}

/// One immutable view of every pool, as the request path reads it.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Every pool, in configuration order.
    pub pools: Vec<Arc<PoolSnapshot>>,
    /// By listener id: what it serves in this snapshot.
    pub by_listener: Vec<Serving>,
    /// By listener id: whether every pool it reaches speaks HTTP/1.1 to its backends, so that
    /// its plain-text HTTP/1.1 clients can take the fast path ([`crate::h1`]).
    pub http1_only: Vec<bool>,
    /// By listener id: its rate limit, if it has one.
    pub listener_limits: Vec<Option<Arc<RateLimit>>>,
    /// The configuration revision it was built from (0 for a static configuration).
    pub revision: u64,
}

/// What one listener serves in a snapshot.
#[derive(Debug)]
pub(crate) enum Serving {
    /// This pool (by position), if the configuration has it now.
    Pool(Option<usize>),
    /// Requests by this route table; its pools by position, where the configuration has them.
    Routes {
        router: Arc<Router>,
        pools: Vec<Option<usize>>,
    },
}

/// Where one HTTP request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Routed {
    /// To the snapshot's pool in this position.
    Pool(usize),
    /// To a pool the configuration does not have (now): 503.
    NoPool,
    /// A redirect the LB answers itself.
    Redirect { location: String, status: u16 },
    /// A status the LB answers itself.
    Status(u16),
    /// 429: the client is over the route's rate; it may come back in this many seconds.
    Limited(u64),
    /// Where `then` says, if the fleet's Redis finds the client with `key` within the route's
    /// rate ([`crate::rate_limit::settle`]).
    AskFleet {
        key: u64,
        by: crate::rate_limit::Limiter,
        then: Box<Routed>,
    },
    /// No route matched: 404.
    NoRoute,
}

impl Routed {
    /// The snapshot's pool it goes to (once the fleet agrees, where it asks).
    pub(crate) fn pool(&self) -> Option<usize> {
        match self {
            Self::Pool(pool) => Some(*pool),
            Self::AskFleet { then, .. } => then.pool(),
            _ => None,
        }
    }
}

/// The parts of a request that routes match on and redirects repeat.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLine<'a> {
    pub scheme: &'a str,
    pub method: &'a str,
    /// By the one host rule ([`crate::headers::backend_host`]).
    pub host: Option<&'a [u8]>,
    /// Origin form, with the query string.
    pub target: &'a str,
}

impl Snapshot {
    /// The pool listener `listener` serves, if it serves one (not a route table).
    #[inline]
    pub(crate) fn for_listener(&self, listener: usize) -> Option<&PoolSnapshot> {
        match self.by_listener.get(listener)? {
            Serving::Pool(pool) => pool.map(|pool| &*self.pools[pool]),
            Serving::Routes { .. } => None,
        }
    }

    /// Where a request on `listener` goes, and the position of the route that sent it there
    /// (for a listener that serves a route table); `header` finds a request header by
    /// lower-case name. A listener's rate limit counts the request first: over it, no route is
    /// looked for.
    #[inline]
    pub(crate) fn route<'h>(
        &self,
        listener: usize,
        request: RequestLine<'_>,
        client: std::net::IpAddr,
        header: impl Fn(&str) -> Option<&'h [u8]> + Copy,
    ) -> (Routed, Option<u32>) {
        let rated = match self.listener_limit(listener) {
            Some(limit) => limit.rate(request.target, header, client),
            None => Rated::Within,
        };
        if let Rated::Over(wait) = rated {
            return (
                Routed::Limited(crate::rate_limit::retry_after_secs(wait)),
                None,
            );
        }
        let (routed, position) = self.route_within(listener, request, client, header);
        (rated.then(Limiter::Listener, routed), position)
    }

    /// The rate limit on every request or connection of `listener`, if it has one.
    #[inline]
    pub(crate) fn listener_limit(&self, listener: usize) -> Option<&RateLimit> {
        self.listener_limits.get(listener)?.as_deref()
    }

    /// [`Snapshot::route`] once the listener's rate limit let the request through.
    #[inline]
    fn route_within<'h>(
        &self,
        listener: usize,
        request: RequestLine<'_>,
        client: std::net::IpAddr,
        header: impl Fn(&str) -> Option<&'h [u8]> + Copy,
    ) -> (Routed, Option<u32>) {
        let (router, pools) = match self.by_listener.get(listener) {
            None | Some(Serving::Pool(None)) => return (Routed::NoPool, None),
            Some(Serving::Pool(Some(pool))) => return (Routed::Pool(*pool), None),
            Some(Serving::Routes { router, pools }) => (router, pools),
        };
        let path = request.target;
        let Some((position, action)) =
            router.find_route(request.host, path, request.method, header)
        else {
            router.misses.inc();
            return (Routed::NoRoute, None);
        };
        let routed = match action {
            Action::Pool(slot) => pools
                .get(*slot)
                .copied()
                .flatten()
                .map_or(Routed::NoPool, Routed::Pool),
            Action::Redirect { template, status } => Routed::Redirect {
                location: crate::routes::location(template, request.scheme, request.host, path),
                status: *status,
            },
            Action::Status(status) => Routed::Status(*status),
        };
        let rated = router.check_rate(position, path, header, client);
        (rated.then(Limiter::Route, routed), Some(position))
    }

    /// The retries and timeouts of a request on `listener` that `route` (its position, if a
    /// route table chose) sent to `pool`: the route's own where it sets them, else the pool's.
    pub(crate) fn limits(
        &self,
        listener: usize,
        route: Option<u32>,
        pool: &PoolState,
    ) -> crate::attempt::Limits {
        let overrides = match (self.by_listener.get(listener), route) {
            (Some(Serving::Routes { router, .. }), Some(position)) => router.overrides(position),
            _ => Default::default(),
        };
        crate::attempt::Limits {
            retries: overrides.retries.unwrap_or(pool.retries),
            connect_timeout: overrides.connect_timeout.unwrap_or(pool.connect_timeout),
            response_timeout: overrides.response_timeout.unwrap_or(pool.response_timeout),
        }
    }

    /// The router of the route table `listener` serves by, if it serves one.
    pub(crate) fn router(&self, listener: usize) -> Option<&Router> {
        match self.by_listener.get(listener)? {
            Serving::Routes { router, .. } => Some(router),
            Serving::Pool(_) => None,
        }
    }

    /// The name of the route table `listener` serves by, if it serves one.
    pub(crate) fn route_table(&self, listener: usize) -> Option<&str> {
        match self.by_listener.get(listener)? {
            Serving::Routes { router, .. } => Some(&router.name),
            Serving::Pool(_) => None,
        }
    }
}

/// What a listener serves, as snapshots are built from it.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Pool(String),
    Routes(Arc<Router>),
}

impl Target {
    /// For `serves`, with its route table compiled from `tables` (checked: it is there).
    pub(crate) fn of(serves: &Serves, tables: &[RouteTable], metrics: &Metrics) -> Self {
        match serves {
            Serves::Pool(pool) => Self::Pool(pool.clone()),
            Serves::Routes(name) => {
                let table = named(tables, name);
                let empty = RouteTable {
                    name: name.clone(),
                    routes: Vec::new(),
                };
                Self::Routes(Arc::new(Router::new(table.unwrap_or(&empty), metrics)))
            }
        }
    }
}

/// The rate limit of `listener`, if it has one, counted under `metrics`.
pub(crate) fn listener_limit(listener: &Listener, metrics: &Metrics) -> Option<Arc<RateLimit>> {
    let spec = listener.rate_limit.as_ref()?;
    let address = listener.address.to_string();
    // The same name on every LB of a fleet listening alike, and a new one for a new limit.
    let name = format!(
        "ballast:rate:listener:{address}:{}:{}:",
        spec.rate.count,
        spec.rate.per.as_secs()
    );
    let counters = metrics.listener_rate_limit(&address);
    Some(Arc::new(RateLimit::new(spec, name, counters)))
}

/// The table of `tables` named `name`.
fn named<'t>(tables: &'t [RouteTable], name: &str) -> Option<&'t RouteTable> {
    tables.iter().find(|t| t.name == name)
}

/// One pool in a snapshot.
#[derive(Debug)]
pub(crate) struct PoolSnapshot {
    /// The pool's long-lived state.
    pub state: Arc<PoolState>,
    /// The picker over the backends that take traffic in this snapshot.
    pub picker: Picker,
    /// Whether the picker needs the request's key.
    pub uses_key: bool,
    /// Per backend: whether it takes traffic in this snapshot.
    pub taking: Vec<bool>,
    /// When a ramp's next step changes the weights (server clock, ms).
    pub next_step: Option<u64>,
    /// Where the pool keeps clients on their backend: the sticky tokens of the backends that
    /// take traffic, sorted, with each one's index.
    pub sticky: Vec<(u64, usize)>,
}

/// What [`PoolSnapshot::choose_within`] found.
#[derive(Debug)]
pub(crate) enum Chosen {
    /// This backend, now holding one more request.
    Admitted(usize, InFlight),
    /// Backends could take it, but every one is at its cap.
    AllBusy,
    /// No backend takes traffic that was not tried.
    Nothing,
}

impl PoolSnapshot {
    /// The backend a sticky cookie's `token` names, if it takes traffic in this snapshot.
    pub(crate) fn stuck_to(&self, token: u64) -> Option<usize> {
        let found = self.sticky.binary_search_by_key(&token, |(t, _)| *t).ok()?;
        Some(self.sticky[found].1)
    }

    /// As [`PoolSnapshot::choose`], for a pool whose backends take at most `limit` requests in
    /// flight: the picker's choice if it is under its cap, else another (from a random start)
    /// that is; the request is counted on the backend in the same step.
    pub(crate) fn choose_within(&self, limit: u64, key: u64, tried: &[usize]) -> Chosen {
        let backends = &self.state.backends;
        let mut candidates = false;
        if let Some(first) = self.picker.pick(key)
            && !tried.contains(&first)
        {
            candidates = true;
            if let Some(held) = backends[first].balance.load().try_start(limit) {
                return Chosen::Admitted(first, held);
            }
        }
        let n = self.taking.len();
        let start = if n == 0 { 0 } else { fastrand::usize(..n) };
        for i in (0..n).map(|i| (start + i) % n) {
            if self.taking[i] && !tried.contains(&i) {
                candidates = true;
                if let Some(held) = backends[i].balance.load().try_start(limit) {
                    return Chosen::Admitted(i, held);
                }
            }
        }
        if candidates {
            Chosen::AllBusy
        } else {
            Chosen::Nothing
        }
    }

    /// The backend for a request with `key`, or if that one was `tried` already, another that
    /// takes traffic and was not tried (for retries); `None` when there is none.
    pub(crate) fn choose(&self, key: u64, tried: &[usize]) -> Option<usize> {
        let first = self.picker.pick(key)?;
        if !tried.contains(&first) {
            return Some(first);
        }
        let n = self.taking.len();
        let start = fastrand::usize(..n);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|i| self.taking[*i] && !tried.contains(i))
    }
}

/// Everything the workers share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The settings the server started with.
    pub settings: Settings,
    /// The current snapshot.
    pub snapshot: ArcSwap<Snapshot>,
    /// By listener id: what it serves (a reload may change it; read only when a snapshot is
    /// built). A removed listener keeps its target for the connections it accepted.
    listener_targets: std::sync::Mutex<Vec<Option<Target>>>,
    /// By listener id: its rate limit (kept while a reload leaves it as it was).
    listener_limits: std::sync::Mutex<Vec<Option<Arc<RateLimit>>>>,
    /// The listeners, their sockets and certificates, for reloads.
    pub listeners: std::sync::Mutex<crate::listeners::Registry>,
    /// The metrics.
    pub metrics: Metrics,
    /// The clock ejections are timed by.
    pub clock: Clock,
    /// Woken when an ejection starts, so the snapshot is rebuilt.
    pub changed: Notify,
    /// Bumped when a request waits for room under a backend's `max_connections`: each worker
    /// then closes idle connections to backends that requests wait for.
    pub reap: tokio::sync::watch::Sender<u64>,
    /// Set once SIGTERM or SIGINT has arrived.
    pub draining: AtomicBool,
    /// Managed mode: since when the configuration database cannot be reached, if it cannot.
    pub config_unreachable_since: std::sync::Mutex<Option<std::time::Instant>>,
    /// The next upstream connection cache slot for a new backend.
    next_slot: AtomicUsize,
    /// Serializes snapshot rebuilds (ejections, configuration changes), which are rare.
    rebuilding: std::sync::Mutex<()>,
    /// Where each request's line goes, if the access log is on.
    pub access_log: Option<crate::access_log::AccessLog>,
    /// The Redis nodes fleet-wide rate limits count on, if the LB has any.
    pub fleet: Option<Arc<crate::fleet_rate::FleetCounter>>,
    /// The route tables the listeners' routers were compiled from: the file's at start, then in
    /// managed mode each revision's (the next one recompiles the routers whose table changed,
    /// and a reload's new listeners are compiled from them).
    route_tables: std::sync::Mutex<Arc<[RouteTable]>>,
}

impl Shared {
    /// Builds the state and first snapshot for `settings` (which must be valid).
    pub(crate) fn new(settings: Settings) -> Result<Self, ballast_balance::BuildError> {
        let metrics = Metrics::new();
        let targets = settings
            .listeners
            .iter()
            .map(|l| Some(Target::of(&l.serves, &settings.route_tables, &metrics)))
            .collect();
        let shared = Self {
            snapshot: ArcSwap::from_pointee(Snapshot {
                pools: Vec::new(),
                by_listener: Vec::new(),
                http1_only: Vec::new(),
                listener_limits: Vec::new(),
                revision: 0,
            }),
            listener_targets: std::sync::Mutex::new(targets),
            listener_limits: std::sync::Mutex::new(
                settings
                    .listeners
                    .iter()
                    .map(|l| listener_limit(l, &metrics))
                    .collect(),
            ),
            listeners: std::sync::Mutex::default(),
            metrics,
            clock: Clock::default(),
            changed: Notify::new(),
            reap: tokio::sync::watch::Sender::new(0),
            draining: AtomicBool::new(false),
            config_unreachable_since: std::sync::Mutex::new(None),
            next_slot: AtomicUsize::new(0),
            rebuilding: std::sync::Mutex::new(()),
            access_log: None,
            fleet: (!settings.rate_limit_redis.is_empty())
                .then(|| {
                    let timeout = settings.rate_limit_redis_timeout;
                    crate::fleet_rate::FleetCounter::new(&settings.rate_limit_redis, timeout).ok()
                })
                .flatten()
                .map(Arc::new),
            route_tables: std::sync::Mutex::new(Arc::from(settings.route_tables.as_slice())),
            settings,
        };
        let pools = Pool::all_of(&shared.settings.pools);
        shared.replace_pools(&pools, 0)?;
        Ok(shared)
    }

    /// Counts a response the LB made itself on `listener`'s pool (if the pool exists now).
    pub(crate) fn count_error(&self, listener: usize, kind: crate::metrics::ErrorKind) {
        if let Some(pool) = self.snapshot.load().for_listener(listener) {
            pool.state.counters.error(kind);
        }
    }

    /// Whether a plain-text HTTP/1.1 client of `listener` can take the fast path: every pool
    /// the listener reaches speaks HTTP/1.1 to its backends.
    pub(crate) fn http1_only(&self, listener: usize) -> bool {
        self.snapshot
            .load()
            .http1_only
            .get(listener)
            .copied()
            .unwrap_or(true)
    }

    /// How many upstream connection cache slots backends have used.
    pub(crate) fn slots(&self) -> usize {
        self.next_slot.load(Ordering::Relaxed)
    }

    /// Every backend of the current snapshot.
    pub(crate) fn backends(&self) -> Vec<Arc<BackendState>> {
        self.snapshot
            .load()
            .pools
            .iter()
            .flat_map(|p| p.state.backends.iter().cloned())
            .collect()
    }

    /// Installs a new set of pools (a configuration revision): a pool whose definition did not
    /// change keeps its snapshot; in the others, backends that stay keep their load, failure
    /// record, counters and connections, and new ones start fresh. Built off the request path
    /// and swapped in whole.
    pub(crate) fn replace_pools(
        &self,
        pools: &[Pool],
        revision: u64,
    ) -> Result<(), ballast_balance::BuildError> {
        let _one_at_a_time = self.lock_rebuilds();
        let built = self.build_pools(pools)?;
        self.swap_in(built, revision, None);
        Ok(())
    }

    /// Installs a configuration revision from the database: its pools as
    /// [`replace_pools`](Self::replace_pools) does, and its route tables for the listeners that
    /// route by one (a table that did not change keeps its compiled router; a table the
    /// configuration lacks routes nothing: 404).
    pub(crate) fn replace_config(
        &self,
        pools: &[Pool],
        tables: &[RouteTable],
        revision: u64,
    ) -> Result<(), ballast_balance::BuildError> {
        let _one_at_a_time = self.lock_rebuilds();
        let built = self.build_pools(pools)?;
        let before = std::mem::replace(
            &mut *self.route_tables.lock().unwrap_or_else(|e| e.into_inner()),
            Arc::from(tables),
        );
        let targets = self
            .targets()
            .into_iter()
            .map(|target| match target {
                // Compiled from the revision before's table (or none): kept while it is the same.
                Some(Target::Routes(router))
                    if named(&before, &router.name) != named(tables, &router.name) =>
                {
                    let serves = Serves::Routes(router.name.clone());
                    Some(Target::of(&serves, tables, &self.metrics))
                }
                other => other,
            })
            .collect();
        self.swap_in(built, revision, Some(targets));
        Ok(())
    }

    /// Managed mode: the route tables of the revision in force.
    pub(crate) fn route_tables(&self) -> Arc<[RouteTable]> {
        Arc::clone(&self.route_tables.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Holds off every other snapshot rebuild, for a reload to build and swap as one step.
    pub(crate) fn lock_rebuilds(&self) -> std::sync::MutexGuard<'_, ()> {
        self.rebuilding.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn listener_targets(&self) -> std::sync::MutexGuard<'_, Vec<Option<Target>>> {
        self.listener_targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// What each listener serves, by id.
    pub(crate) fn targets(&self) -> Vec<Option<Target>> {
        self.listener_targets().clone()
    }

    /// Each listener's rate limit, by id.
    pub(crate) fn listener_limits(&self) -> std::sync::MutexGuard<'_, Vec<Option<Arc<RateLimit>>>> {
        self.listener_limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The snapshots of `pools`, reusing the current one of each pool that did not change;
    /// nothing is swapped in (call with the rebuild lock held).
    pub(crate) fn build_pools(
        &self,
        pools: &[Pool],
    ) -> Result<Vec<Arc<PoolSnapshot>>, ballast_balance::BuildError> {
        let current = self.snapshot.load();
        let now_ms = self.clock.now_ms();
        pools
            .iter()
            .map(|pool| {
                let before = current.pools.iter().find(|p| p.state.name == pool.name);
                match before {
                    Some(before) if before.state.source == *pool => Ok(Arc::clone(before)),
                    _ => {
                        let state = self.pool_state(pool, before.map(|p| &*p.state));
                        let previous = before.map(|p| &**p);
                        Ok(Arc::new(pool_snapshot(Arc::new(state), now_ms, previous)?))
                    }
                }
            })
            .collect()
    }

    /// Swaps in a snapshot of `pools`, with what each listener serves changed if given (call
    /// with the rebuild lock held).
    pub(crate) fn swap_in(
        &self,
        pools: Vec<Arc<PoolSnapshot>>,
        revision: u64,
        targets: Option<Vec<Option<Target>>>,
    ) {
        if let Some(targets) = targets {
            *self.listener_targets() = targets;
        }
        let ramping = pools.iter().any(|p| p.next_step.is_some());
        self.snapshot
            .store(Arc::new(self.snapshot_of(pools, revision)));
        if ramping {
            // The ramp's steps are the snapshot maintainer's to take.
            self.changed.notify_one();
        }
    }

    /// Rebuilds the pickers of the pools whose ejections changed; returns when the next
    /// ejection ends.
    pub(crate) fn rebuild(&self) -> Option<u64> {
        let _one_at_a_time = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot.load();
        let now_ms = self.clock.now_ms();
        let mut failed = None;
        let built: Vec<Arc<PoolSnapshot>> = current
            .pools
            .iter()
            .map(|pool| {
                let ramp_due = pool.next_step.is_some_and(|at| at <= now_ms);
                if taking(&pool.state, now_ms) == pool.taking && !ramp_due {
                    return Arc::clone(pool);
                }
                match pool_snapshot(Arc::clone(&pool.state), now_ms, Some(pool)) {
                    Ok(rebuilt) => Arc::new(rebuilt),
                    Err(error) => {
                        failed = Some(error);
                        Arc::clone(pool)
                    }
                }
            })
            .collect();
        if let Some(error) = failed {
            // The same backends and algorithms built before; only `accepting` changed.
            tracing::error!(%error, "picker rebuild failed; keeping the last one");
        }
        let ejection_ends = built
            .iter()
            .flat_map(|p| &p.state.backends)
            .filter_map(|b| b.outlier.ejected_until(now_ms));
        let next = ejection_ends
            .chain(built.iter().filter_map(|p| p.next_step))
            .min();
        self.snapshot
            .store(Arc::new(self.snapshot_of(built, current.revision)));
        next
    }

    fn snapshot_of(&self, pools: Vec<Arc<PoolSnapshot>>, revision: u64) -> Snapshot {
        let position = |name: &str| pools.iter().position(|p| p.state.name == name);
        let by_listener = self
            .listener_targets()
            .iter()
            .map(|target| match target {
                None => Serving::Pool(None),
                Some(Target::Pool(name)) => Serving::Pool(position(name)),
                Some(Target::Routes(router)) => Serving::Routes {
                    pools: router.pools.iter().map(|name| position(name)).collect(),
                    router: Arc::clone(router),
                },
            })
            .collect::<Vec<_>>();
        let speaks_http1 =
            |pool: &Option<usize>| pool.is_none_or(|pool| pools[pool].state.speaks_plain_http1());
        let http1_only = by_listener
            .iter()
            .map(|serving| match serving {
                Serving::Pool(pool) => speaks_http1(pool),
                Serving::Routes { pools, .. } => pools.iter().all(speaks_http1),
            })
            .collect();
        Snapshot {
            pools,
            by_listener,
            http1_only,
            listener_limits: self.listener_limits().clone(),
            revision,
        }
    }

    fn pool_state(&self, pool: &Pool, before: Option<&PoolState>) -> PoolState {
        // Connections cached for a backend are of the pool's transport: one that changes it
        // (TLS on or off, other certificates) gives its backends fresh places in the caches.
        let same_transport = before.is_some_and(|before| before.tls == pool.tls);
        PoolState {
            name: pool.name.clone(),
            source: pool.clone(),
            algorithm: pool.algorithm.clone(),
            hash_key: pool.hash_key.clone(),
            backends: pool
                .backends
                .iter()
                .map(|b| {
                    let id = b.address.to_string();
                    let kept =
                        before.and_then(|p| p.backends.iter().find(|k| k.address == b.address));
                    let balance = Backend::new(id.clone(), b.weight).accepting(b.accepting);
                    if let Some(kept) = kept
                        && b.accepting
                        && !kept.balance.takes_traffic()
                    {
                        // Back from unhealthy or drained: what the LB saw fail before is over.
                        kept.outlier.readmit();
                    }
                    Arc::new(match kept {
                        Some(kept) => BackendState {
                            address: b.address,
                            slot: if same_transport {
                                kept.slot
                            } else {
                                self.next_slot.fetch_add(1, Ordering::Relaxed)
                            },
                            balance: balance.with_load(Arc::clone(kept.balance.load())),
                            outlier: Arc::clone(&kept.outlier),
                            ramp: Arc::clone(&kept.ramp),
                            sticky_token: kept.sticky_token,
                            connections: Arc::clone(&kept.connections),
                            counters: kept.counters.clone(),
                        },
                        None => BackendState {
                            address: b.address,
                            slot: self.next_slot.fetch_add(1, Ordering::Relaxed),
                            balance,
                            outlier: Arc::default(),
                            ramp: Arc::default(),
                            sticky_token: crate::sticky::token(b.address),
                            connections: Arc::default(),
                            counters: self.metrics.backend(&pool.name, &id),
                        },
                    })
                })
                .collect(),
            counters: self.metrics.pool(&pool.name),
            retries: pool.overrides.retries.unwrap_or(self.settings.retries),
            connect_timeout: pool
                .overrides
                .connect
                .unwrap_or(self.settings.timeouts.connect),
            response_timeout: pool
                .overrides
                .backend_response
                .unwrap_or(self.settings.timeouts.backend_response),
            protocol: pool.protocol,
            send_proxy_protocol: pool.send_proxy_protocol,
            slow_start: pool.slow_start.filter(|_| pool.algorithm.ramps_by_weight()),
            protection: pool.protection,
            queue: match before {
                Some(before) if before.protection == pool.protection => before.queue.clone(),
                _ => (pool.protection.in_flight_cap().is_some() && pool.protection.queue_size > 0)
                    .then(|| {
                        let protection = &pool.protection;
                        Arc::new(Queue::new(protection.queue_size, protection.queue_timeout))
                    }),
            },
            retrying: before.map_or_else(Arc::default, |before| Arc::clone(&before.retrying)),
            sticky_cookie: pool.sticky_cookie.clone(),
            tls: pool.tls.clone(),
        }
    }

    /// Records a connect failure or 5xx from backend `index` of `pool`, ejecting it when its
    /// record says so and no more than half the pool would be ejected.
    /// The backend sent bytes nobody asked for: count it, and use its connections once for a
    /// while (see [`crate::outlier`]).
    pub(crate) fn distrust(&self, backend: &BackendState) {
        backend.counters.stray_bytes();
        let now = self.clock.now_ms();
        if backend.outlier.reuses_connections(now) {
            tracing::warn!(
                backend = %backend.address,
                "backend sent bytes after a complete response; its connections are used once for a while"
            );
        }
        backend.outlier.distrust(now);
    }

    pub(crate) fn failure(&self, pool: &PoolState, index: usize) {
        let backend = &pool.backends[index];
        let policy = &self.settings.outlier;
        if !backend.outlier.failure(policy) {
            return;
        }
        let now = self.clock.now_ms();
        if backend.outlier.is_ejected(now) {
            return;
        }
        let ejected = pool
            .backends
            .iter()
            .filter(|b| b.outlier.is_ejected(now))
            .count();
        if (ejected + 1) * 2 > pool.backends.len() {
            return;
        }
        let until = backend.outlier.eject(policy, now);
        backend.counters.ejected();
        tracing::warn!(
            pool = %pool.name,
            backend = %backend.address,
            back_in_ms = until - now,
            "backend ejected after consecutive failures"
        );
        self.changed.notify_one();
    }
}

/// Per backend of `pool`: whether it takes traffic at `now_ms` (accepting and not ejected).
fn taking(pool: &PoolState, now_ms: u64) -> Vec<bool> {
    pool.backends
        .iter()
        .map(|b| b.balance.takes_traffic() && !b.outlier.is_ejected(now_ms))
        .collect()
}

/// The picker over the backends of `pool` that take traffic at `now_ms`. A backend that takes
/// traffic now but did not in the `previous` snapshot of the pool (or was not in it) starts its
/// slow-start ramp; with no previous snapshot (the server starting) every backend is new and
/// none ramps.
fn pool_snapshot(
    pool: Arc<PoolState>,
    now_ms: u64,
    previous: Option<&PoolSnapshot>,
) -> Result<PoolSnapshot, ballast_balance::BuildError> {
    let taking = taking(&pool, now_ms);
    if let (Some(previous), Some(_)) = (previous, pool.slow_start) {
        for (backend, _) in pool.backends.iter().zip(&taking).filter(|(_, t)| **t) {
            let took_before = previous
                .state
                .backends
                .iter()
                .zip(&previous.taking)
                .any(|(b, &took)| took && b.address == backend.address);
            if !took_before {
                backend.ramp.start(now_ms);
            }
        }
    }
    let configured: Vec<u32> = pool.backends.iter().map(|b| b.balance.weight()).collect();
    let ramps: Vec<&Ramp> = pool.backends.iter().map(|b| &*b.ramp).collect();
    let (weights, next_step) = slow_start::weights(&configured, &ramps, pool.slow_start, now_ms);
    let backends: Vec<Backend> = pool
        .backends
        .iter()
        .zip(&taking)
        .zip(&weights)
        .map(|((b, &taking), &weight)| b.balance.clone().accepting(taking).weighted(weight))
        .collect();
    for (backend, &weight) in pool.backends.iter().zip(&weights) {
        backend.counters.set_weight(weight);
    }
    let mut sticky: Vec<(u64, usize)> = if pool.sticky_cookie.is_some() {
        (pool.backends.iter().enumerate())
            .filter(|(index, _)| taking[*index])
            .map(|(index, b)| (b.sticky_token, index))
            .collect()
    } else {
        Vec::new()
    };
    sticky.sort_unstable();
    Ok(PoolSnapshot {
        picker: Picker::build(&pool.algorithm, &backends)?,
        sticky,
        uses_key: pool.algorithm.uses_key(),
        state: pool,
        taking,
        next_step,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{BackendAddress, Listener, Mode, PoolOverrides, Serves};
    use std::time::Duration;

    fn pool(name: &str, algorithm: &str, ports: &[u16]) -> Pool {
        Pool {
            name: name.to_owned(),
            algorithm: algorithm.parse().expect("algorithm"),
            hash_key: HashKey::ClientIp,
            backends: ports
                .iter()
                .map(|port| BackendAddress {
                    address: SocketAddr::from(([127, 0, 0, 1], *port)),
                    weight: 1,
                    accepting: true,
                })
                .collect(),
            overrides: PoolOverrides::default(),
            protocol: UpstreamProtocol::Http1,
            send_proxy_protocol: None,
            slow_start: None,
            protection: crate::settings::Protection::of(&ballast_config::PoolPolicy::default()),
            sticky_cookie: None,
            tls: None,
        }
    }

    fn shared(pools: &[Pool]) -> Shared {
        let listeners = pools
            .iter()
            .map(|pool| Listener {
                address: SocketAddr::from(([127, 0, 0, 1], 0)),
                mode: Mode::Http,
                serves: Serves::Pool(pool.name.clone()),
                tls: Vec::new(),
                proxy_protocol: false,
                rate_limit: None,
            })
            .collect();
        let shared = Shared::new(Settings::new(listeners, Vec::new())).expect("no pools yet");
        shared.replace_pools(pools, 0).expect("valid pools");
        shared
    }

    /// How many of `picks` picks of the first pool go to each backend.
    fn shares(shared: &Shared, picks: usize) -> Vec<usize> {
        let snapshot = shared.snapshot.load();
        let pool = &snapshot.pools[0];
        let mut counts = vec![0; pool.taking.len()];
        for _ in 0..picks {
            counts[pool.choose(0, &[]).expect("a backend")] += 1;
        }
        counts
    }

    #[test]
    fn a_backend_that_joins_ramps_up_while_the_ones_there_keep_their_share() {
        let mut web = pool("web", "weighted_round_robin", &[9001, 9002]);
        web.slow_start = Some(Duration::from_secs(600));
        let running = shared(std::slice::from_ref(&web));
        // Starting up, nothing ramps: every backend is new.
        assert_eq!(running.snapshot.load().pools[0].next_step, None);
        assert_eq!(shares(&running, 100), [50, 50]);

        web.backends.push(BackendAddress {
            address: SocketAddr::from(([127, 0, 0, 1], 9003)),
            weight: 1,
            accepting: true,
        });
        running
            .replace_pools(std::slice::from_ref(&web), 1)
            .expect("built");
        // A tenth of a share to start: 20 : 20 : 2.
        assert!(running.snapshot.load().pools[0].next_step.is_some());
        assert_eq!(shares(&running, 420), [200, 200, 20]);

        // Without a window, or with an algorithm that must keep keys, a joiner takes its share.
        for (algorithm, window) in [("weighted_round_robin", None), ("maglev", Some(600))] {
            let mut web = pool("web", algorithm, &[9001]);
            web.slow_start = window.map(Duration::from_secs);
            let other = shared(std::slice::from_ref(&web));
            web.backends.push(BackendAddress {
                address: SocketAddr::from(([127, 0, 0, 1], 9002)),
                weight: 1,
                accepting: true,
            });
            other
                .replace_pools(std::slice::from_ref(&web), 1)
                .expect("built");
            assert_eq!(
                other.snapshot.load().pools[0].next_step,
                None,
                "{algorithm}"
            );
        }
    }

    #[test]
    fn the_retry_budget_is_a_share_of_requests_in_flight_with_a_floor() {
        let mut web = pool("web", "round_robin", &[9001, 9002]);
        web.protection.retry_budget = 0.2;
        web.protection.retry_budget_min = 2;
        let running = shared(std::slice::from_ref(&web));
        let snapshot = running.snapshot.load();
        let pool = &snapshot.pools[0];
        let admit = |retry| {
            block_on(crate::protection::admit(
                pool,
                Default::default(),
                &[],
                retry,
            ))
            .expect("a backend")
        };
        // The floor: two retries at once however little is in flight.
        let retries: Vec<_> = (0..2).map(|_| admit(true)).collect();
        assert!(!crate::protection::retry_allowed(&pool.state));
        // Twenty requests in flight make room for four (20%).
        let plain: Vec<_> = (0..18).map(|_| admit(false)).collect();
        assert!(crate::protection::retry_allowed(&pool.state));
        let more: Vec<_> = (0..2).map(|_| admit(true)).collect();
        // 22 in flight: 4.4 → 4 retries, all taken.
        assert!(!crate::protection::retry_allowed(&pool.state));
        drop((retries, more));
        assert!(crate::protection::retry_allowed(&pool.state));
        drop(plain);
    }

    #[test]
    fn a_sticky_token_wins_over_the_picker_while_its_backend_takes_traffic_and_has_room() {
        let mut web = pool("web", "round_robin", &[9001, 9002, 9003]);
        web.sticky_cookie = Some("lb".into());
        web.protection.max_requests = Some(1);
        let running = shared(std::slice::from_ref(&web));
        let snapshot = running.snapshot.load();
        let pool = &snapshot.pools[0];
        let token = crate::sticky::token(SocketAddr::from(([127, 0, 0, 1], 9002)));
        let stuck = crate::key::Affinity {
            key: 0,
            sticky: Some(token),
        };
        let admit = |affinity, tried: &[usize]| {
            block_on(crate::protection::admit(pool, affinity, tried, false))
        };
        let (index, held) = admit(stuck, &[]).expect("admitted");
        assert_eq!(index, 1);
        // At its cap, or tried already: another backend, as the picker chooses.
        let (other, _other_held) = admit(stuck, &[]).expect("admitted");
        assert_ne!(other, 1);
        drop(held);
        assert_ne!(admit(stuck, &[1]).expect("admitted").0, 1);
        // A token that names no backend is no preference.
        let unknown = crate::key::Affinity {
            key: 0,
            sticky: Some(token ^ 1),
        };
        assert!(admit(unknown, &[]).is_ok());
        // Once the backend is ejected, its token names nothing.
        let now = running.clock.now_ms();
        pool.state.backends[1]
            .outlier
            .eject(&running.settings.outlier, now);
        running.rebuild();
        let rebuilt = running.snapshot.load();
        assert_eq!(rebuilt.pools[0].stuck_to(token), None);
        assert_eq!(
            pool.stuck_to(token),
            Some(1),
            "the old snapshot is unchanged"
        );
    }

    /// Runs a future that never waits (admission without a cap) to its end.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn a_reload_moves_listeners_and_pools_in_one_snapshot() {
        let web = pool("web", "maglev", &[9001, 9002]);
        let api = pool("api", "round_robin", &[9101]);
        let shared = shared(&[web.clone(), api]);
        let name = |shared: &Shared, listener| {
            shared
                .snapshot
                .load()
                .for_listener(listener)
                .map(|p| p.state.name.clone())
        };
        assert_eq!(name(&shared, 1).as_deref(), Some("api"));

        // `api` goes away and its listener serves `web`: never a snapshot without either.
        let kept = shared.snapshot.load_full();
        {
            let _reloading = shared.lock_rebuilds();
            let built = shared
                .build_pools(std::slice::from_ref(&web))
                .expect("builds");
            shared.swap_in(
                built,
                0,
                Some(vec![
                    Some(Target::Pool("web".into())),
                    Some(Target::Pool("web".into())),
                ]),
            );
        }
        assert_eq!(name(&shared, 1).as_deref(), Some("web"));
        assert!(Arc::ptr_eq(
            &kept.pools[0],
            &shared.snapshot.load().pools[0]
        ));

        // Managed mode: the pools stay, the listener moves.
        {
            let _reloading = shared.lock_rebuilds();
            let pools = shared.snapshot.load().pools.clone();
            shared.swap_in(
                pools,
                0,
                Some(vec![
                    Some(Target::Pool("web".into())),
                    Some(Target::Pool("gone".into())),
                ]),
            );
        }
        assert_eq!(name(&shared, 1), None, "a pool the configuration lacks");
        assert_eq!(name(&shared, 0).as_deref(), Some("web"));
    }

    #[test]
    fn a_revision_rebuilds_only_the_pools_it_changed() {
        let web = pool("web", "maglev", &[9001, 9002, 9003]);
        let api = pool("api", "round_robin", &[9101, 9102]);
        let shared = shared(&[web.clone(), api.clone()]);
        let before = shared.snapshot.load_full();

        let mut reweighed = api.clone();
        reweighed.backends[0].weight = 5;
        shared
            .replace_pools(&[web.clone(), reweighed], 1)
            .expect("builds");
        let after = shared.snapshot.load_full();
        assert_eq!(after.revision, 1);
        assert!(
            Arc::ptr_eq(&before.pools[0], &after.pools[0]),
            "the untouched pool keeps its Maglev table"
        );
        assert!(!Arc::ptr_eq(&before.pools[1], &after.pools[1]));
        assert_eq!(after.pools[1].state.source.backends[0].weight, 5);
        // The changed pool's backends keep their state across the rebuild.
        assert!(Arc::ptr_eq(
            &before.pools[1].state.backends[1].outlier,
            &after.pools[1].state.backends[1].outlier
        ));

        // The same definitions again: nothing is rebuilt at all.
        let unchanged = after;
        let mut reweighed = api;
        reweighed.backends[0].weight = 5;
        shared.replace_pools(&[web, reweighed], 2).expect("builds");
        let again = shared.snapshot.load_full();
        for (a, b) in unchanged.pools.iter().zip(&again.pools) {
            assert!(Arc::ptr_eq(a, b));
        }
    }

    #[test]
    fn an_ejection_rebuilds_only_its_pool() {
        let web = pool("web", "maglev", &[9001, 9002, 9003]);
        let api = pool("api", "round_robin", &[9101, 9102, 9103]);
        let shared = shared(&[web, api]);
        let before = shared.snapshot.load_full();
        let api_state = Arc::clone(&before.pools[1].state);
        for _ in 0..shared.settings.outlier.consecutive_failures {
            shared.failure(&api_state, 0);
        }
        assert!(
            shared.rebuild().is_some(),
            "the ejection ends at a known time"
        );
        let after = shared.snapshot.load_full();
        assert!(Arc::ptr_eq(&before.pools[0], &after.pools[0]));
        assert_eq!(after.pools[1].taking, vec![false, true, true]);
        assert_eq!(before.pools[1].taking, vec![true, true, true]);
    }
}
