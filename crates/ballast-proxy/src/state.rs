//! What every worker shares: the long-lived state of pools and backends (loads, failure records,
//! metric handles), and the immutable [`Snapshot`] the request path reads through one `ArcSwap`.
//!
//! A snapshot holds, per pool, the picker built for the backends that take traffic now. When
//! that changes (an ejection starts or ends; later, a configuration revision), a new snapshot is
//! built off the request path and swapped in whole; requests already running keep the one they
//! loaded. Backend state lives in `Arc`s that successive snapshots share, so in-flight counts,
//! failure records and counters carry over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use ballast_balance::{Algorithm, Backend, Picker};
use tokio::sync::Notify;

use crate::key::HashKey;
use crate::metrics::{BackendCounters, Metrics, PoolCounters};
use crate::outlier::{Clock, Outlier};
use crate::settings::{Pool, Settings};

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
    pub outlier: Outlier,
    /// Its metric handles.
    pub counters: BackendCounters,
}

/// A pool's state for the life of the server.
#[derive(Debug)]
pub(crate) struct PoolState {
    /// The pool's name.
    pub name: String,
    /// The algorithm its pickers run.
    pub algorithm: Algorithm,
    /// What hash-based algorithms hash.
    pub hash_key: HashKey,
    /// Its backends, in configuration order.
    pub backends: Vec<Arc<BackendState>>,
    /// Its metric handles.
    pub counters: PoolCounters,
}

/// One immutable view of every pool, as the request path reads it.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// By pool index (listeners hold the index).
    pub pools: Vec<PoolSnapshot>,
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
}

impl PoolSnapshot {
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
    /// The long-lived pool states, by pool index.
    pub pools: Vec<Arc<PoolState>>,
    /// The metrics.
    pub metrics: Metrics,
    /// The clock ejections are timed by.
    pub clock: Clock,
    /// Woken when an ejection starts, so the snapshot is rebuilt.
    pub changed: Notify,
    /// Set once SIGTERM or SIGINT has arrived.
    pub draining: AtomicBool,
    /// How many upstream connection cache slots the backends use.
    pub slots: usize,
}

impl Shared {
    /// Builds the state and first snapshot for `settings` (which must be valid).
    pub(crate) fn new(settings: Settings) -> Result<Self, ballast_balance::BuildError> {
        let metrics = Metrics::new();
        let next_slot = AtomicUsize::new(0);
        let pools: Vec<Arc<PoolState>> = settings
            .pools
            .iter()
            .map(|pool| Arc::new(pool_state(pool, &metrics, &next_slot)))
            .collect();
        let clock = Clock::default();
        let snapshot = build_snapshot(&pools, clock.now_ms())?;
        Ok(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            slots: next_slot.load(Ordering::Relaxed),
            settings,
            pools,
            metrics,
            clock,
            changed: Notify::new(),
            draining: AtomicBool::new(false),
        })
    }

    /// The index of the pool called `name`.
    pub(crate) fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }

    /// Rebuilds the snapshot for the ejections in force now; returns when the next one ends.
    pub(crate) fn rebuild(&self) -> Option<u64> {
        let now = self.clock.now_ms();
        match build_snapshot(&self.pools, now) {
            Ok(snapshot) => self.snapshot.store(Arc::new(snapshot)),
            // The same backends and algorithms built before; only `accepting` changed.
            Err(error) => tracing::error!(%error, "snapshot rebuild failed; keeping the last one"),
        }
        self.pools
            .iter()
            .flat_map(|p| &p.backends)
            .filter_map(|b| b.outlier.ejected_until(now))
            .min()
    }

    /// Records a connect failure or 5xx from backend `index` of `pool`, ejecting it when its
    /// record says so and no more than half the pool would be ejected.
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

fn pool_state(pool: &Pool, metrics: &Metrics, next_slot: &AtomicUsize) -> PoolState {
    PoolState {
        name: pool.name.clone(),
        algorithm: pool.algorithm.clone(),
        hash_key: pool.hash_key.clone(),
        backends: pool
            .backends
            .iter()
            .map(|b| {
                let id = b.address.to_string();
                Arc::new(BackendState {
                    address: b.address,
                    slot: next_slot.fetch_add(1, Ordering::Relaxed),
                    counters: metrics.backend(&pool.name, &id),
                    balance: Backend::new(id, b.weight),
                    outlier: Outlier::default(),
                })
            })
            .collect(),
        counters: metrics.pool(&pool.name),
    }
}

fn build_snapshot(
    pools: &[Arc<PoolState>],
    now_ms: u64,
) -> Result<Snapshot, ballast_balance::BuildError> {
    let pools = pools
        .iter()
        .map(|pool| {
            let taking: Vec<bool> = pool
                .backends
                .iter()
                .map(|b| b.balance.takes_traffic() && !b.outlier.is_ejected(now_ms))
                .collect();
            let backends: Vec<Backend> = pool
                .backends
                .iter()
                .zip(&taking)
                .map(|(b, &taking)| b.balance.clone().accepting(taking))
                .collect();
            Ok(PoolSnapshot {
                picker: Picker::build(&pool.algorithm, &backends)?,
                uses_key: pool.algorithm.uses_key(),
                state: Arc::clone(pool),
                taking,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Snapshot { pools })
}
