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
    pub outlier: Arc<Outlier>,
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
    /// Extra tries for replayable requests (the pool's, or the LB's default).
    pub retries: u32,
    /// Connecting to a backend.
    pub connect_timeout: std::time::Duration,
    /// A backend starting its response, and each read of its body.
    pub response_timeout: std::time::Duration,
}

/// One immutable view of every pool, as the request path reads it.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Every pool, in configuration order.
    pub pools: Vec<PoolSnapshot>,
    /// By listener index: the pool it serves, if the configuration has that pool now.
    pub by_listener: Vec<Option<usize>>,
    /// The configuration revision it was built from (0 for a static configuration).
    pub revision: u64,
}

impl Snapshot {
    /// The pool listener `listener` serves.
    #[inline]
    pub(crate) fn for_listener(&self, listener: usize) -> Option<&PoolSnapshot> {
        self.by_listener
            .get(listener)
            .copied()
            .flatten()
            .map(|pool| &self.pools[pool])
    }
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
    /// By listener index: the name of the pool it serves.
    pub listener_pools: Vec<String>,
    /// The metrics.
    pub metrics: Metrics,
    /// The clock ejections are timed by.
    pub clock: Clock,
    /// Woken when an ejection starts, so the snapshot is rebuilt.
    pub changed: Notify,
    /// Set once SIGTERM or SIGINT has arrived.
    pub draining: AtomicBool,
    /// Managed mode: since when the configuration database cannot be reached, if it cannot.
    pub config_unreachable_since: std::sync::Mutex<Option<std::time::Instant>>,
    /// The next upstream connection cache slot for a new backend.
    next_slot: AtomicUsize,
    /// Serializes snapshot rebuilds (ejections, configuration changes), which are rare.
    rebuilding: std::sync::Mutex<()>,
}

impl Shared {
    /// Builds the state and first snapshot for `settings` (which must be valid).
    pub(crate) fn new(settings: Settings) -> Result<Self, ballast_balance::BuildError> {
        let shared = Self {
            snapshot: ArcSwap::from_pointee(Snapshot {
                pools: Vec::new(),
                by_listener: Vec::new(),
                revision: 0,
            }),
            listener_pools: settings.listeners.iter().map(|l| l.pool.clone()).collect(),
            metrics: Metrics::new(),
            clock: Clock::default(),
            changed: Notify::new(),
            draining: AtomicBool::new(false),
            config_unreachable_since: std::sync::Mutex::new(None),
            next_slot: AtomicUsize::new(0),
            rebuilding: std::sync::Mutex::new(()),
            settings,
        };
        let pools = shared.settings.pools.clone();
        shared.replace_pools(&pools, 0)?;
        Ok(shared)
    }

    /// Counts a response the LB made itself on `listener`'s pool (if the pool exists now).
    pub(crate) fn count_error(&self, listener: usize, kind: crate::metrics::ErrorKind) {
        if let Some(pool) = self.snapshot.load().for_listener(listener) {
            pool.state.counters.error(kind);
        }
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

    /// Installs a new set of pools (a configuration revision): backends that stay keep their
    /// load, failure record, counters and connections; new ones start fresh. Built off the
    /// request path and swapped in whole.
    pub(crate) fn replace_pools(
        &self,
        pools: &[Pool],
        revision: u64,
    ) -> Result<(), ballast_balance::BuildError> {
        let _one_at_a_time = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot.load();
        let states: Vec<Arc<PoolState>> = pools
            .iter()
            .map(|pool| {
                let before = current.pools.iter().find(|p| p.state.name == pool.name);
                Arc::new(self.pool_state(pool, before.map(|p| &*p.state)))
            })
            .collect();
        let snapshot = self.build_snapshot(&states, revision)?;
        self.snapshot.store(Arc::new(snapshot));
        Ok(())
    }

    /// Rebuilds the snapshot for the ejections in force now; returns when the next one ends.
    pub(crate) fn rebuild(&self) -> Option<u64> {
        let _one_at_a_time = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot.load();
        let states: Vec<Arc<PoolState>> =
            current.pools.iter().map(|p| Arc::clone(&p.state)).collect();
        match self.build_snapshot(&states, current.revision) {
            Ok(snapshot) => self.snapshot.store(Arc::new(snapshot)),
            // The same backends and algorithms built before; only `accepting` changed.
            Err(error) => tracing::error!(%error, "snapshot rebuild failed; keeping the last one"),
        }
        let now = self.clock.now_ms();
        states
            .iter()
            .flat_map(|p| &p.backends)
            .filter_map(|b| b.outlier.ejected_until(now))
            .min()
    }

    fn pool_state(&self, pool: &Pool, before: Option<&PoolState>) -> PoolState {
        PoolState {
            name: pool.name.clone(),
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
                            slot: kept.slot,
                            balance: balance.with_load(Arc::clone(kept.balance.load())),
                            outlier: Arc::clone(&kept.outlier),
                            counters: kept.counters.clone(),
                        },
                        None => BackendState {
                            address: b.address,
                            slot: self.next_slot.fetch_add(1, Ordering::Relaxed),
                            balance,
                            outlier: Arc::default(),
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
        }
    }

    fn build_snapshot(
        &self,
        pools: &[Arc<PoolState>],
        revision: u64,
    ) -> Result<Snapshot, ballast_balance::BuildError> {
        let now_ms = self.clock.now_ms();
        let built = pools
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
            .collect::<Result<Vec<_>, _>>()?;
        let by_listener = self
            .listener_pools
            .iter()
            .map(|name| built.iter().position(|p| p.state.name == *name))
            .collect();
        Ok(Snapshot {
            pools: built,
            by_listener,
            revision,
        })
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
