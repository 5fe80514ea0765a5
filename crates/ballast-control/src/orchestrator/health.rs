//! The orchestrator's health checking. It follows the configuration (the same change feed as
//! the LB servers), probes every backend of every pool as the pool's policy says, feeds each
//! outcome to that backend's [`Tracker`] (phi accrual plus rise and fall), and writes the verdicts
//! to the configuration database, from where they reach every LB.
//!
//! Writing is level-triggered: every tick, each backend whose verdict differs from what the
//! database says is written, so a failed write is simply tried again. When more than half of all
//! backends (at least three checked) are failing at once — unhealthy, or their last probe failed,
//! which every backend's does within one interval of a network cut, well before the first
//! reaches its `fall` count — the orchestrator more likely lost the network than the backends all
//! died: unhealthy verdicts are held back, and the logs and the `ballast_health_held` metric say
//! so, until the count drops again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_config::{
    Config, Fence, Followed, Health as StoredHealth, PoolPolicy, SqlStore, StoreError, Write,
};
use ballast_health::{BackendTls, Check, Health, Outcome, PhiSettings, Thresholds, Tracker, probe};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How often verdicts are weighed and written between probe outcomes.
const TICK: Duration = Duration::from_millis(50);

/// One backend's current state, as `GET /v1/health` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    /// The pool.
    pub pool: String,
    /// The backend.
    pub address: String,
    /// The checker's verdict: unknown, healthy or unhealthy.
    pub health: &'static str,
    /// φ now (capped for JSON).
    pub phi: f64,
    /// Why the last verdict was reached.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    pool: String,
    backend: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    health: String,
}

/// What the checker shares with the API: the current status and the metrics.
#[derive(Clone, Default)]
pub struct HealthHandle {
    status: Arc<Mutex<Vec<BackendStatus>>>,
    phi: Family<BackendLabels, Gauge<f64, AtomicU64>>,
    verdicts: Family<VerdictLabels, Counter>,
    held: Gauge,
    fenced: Counter,
}

impl std::fmt::Debug for HealthHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HealthHandle")
    }
}

impl HealthHandle {
    /// Registers the checker's metrics.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ballast_backend_phi",
            "The phi accrual detector's value for each backend",
            self.phi.clone(),
        );
        registry.register(
            "ballast_health_verdicts",
            "Health verdicts written to the configuration database",
            self.verdicts.clone(),
        );
        registry.register(
            "ballast_fenced_writes_refused",
            "Verdicts the store refused because another instance leads (a newer fencing token)",
            self.fenced.clone(),
        );
        registry.register(
            "ballast_health_held",
            "1 while unhealthy verdicts are held back because most backends fail at once",
            self.held.clone(),
        );
    }

    /// Every checked backend's state.
    pub fn status(&self) -> Vec<BackendStatus> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

type Key = (String, String);

/// One checked backend.
struct Target {
    tracker: Tracker,
    policy: PoolPolicy,
    prober: JoinHandle<()>,
    reason: Option<String>,
    /// What was last written, until the change feed shows it.
    written: Option<StoredHealth>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.prober.abort();
    }
}

/// Checks every backend of `followed`'s configuration, writing verdicts to `store` (each carrying
/// `fence`, when given) and publishing state through `handle`. Returns why it stopped: the feed
/// ended, or the store refused a write as fenced out (another instance leads now).
pub async fn run(
    store: SqlStore,
    mut followed: watch::Receiver<Followed>,
    handle: HealthHandle,
    fence: Option<Fence>,
) -> String {
    let (outcomes_tx, mut outcomes) = mpsc::channel::<(Key, Outcome, Instant)>(1024);
    let mut targets: HashMap<Key, Target> = HashMap::new();
    let mut config = followed.borrow_and_update().config.clone();
    reconcile(&config, &mut targets, &outcomes_tx);
    let mut ticks = tokio::time::interval(TICK);
    let mut holding = false;
    loop {
        tokio::select! {
            changed = followed.changed() => {
                if changed.is_err() {
                    return "the configuration feed ended".to_owned();
                }
                config = followed.borrow_and_update().config.clone();
                reconcile(&config, &mut targets, &outcomes_tx);
            }
            Some((key, outcome, at)) = outcomes.recv() => {
                if let Some(target) = targets.get_mut(&key)
                    && let Some(verdict) = target.tracker.record(&outcome, at)
                {
                    tracing::info!(pool = %key.0, backend = %key.1, health = ?verdict.health, reason = %verdict.reason, "verdict");
                    target.reason = Some(verdict.reason);
                }
            }
            _ = ticks.tick() => {
                let now = Instant::now();
                for (key, target) in &mut targets {
                    if let Some(verdict) = target.tracker.check(now) {
                        tracing::info!(pool = %key.0, backend = %key.1, health = ?verdict.health, reason = %verdict.reason, "verdict");
                        target.reason = Some(verdict.reason);
                    }
                }
                let written = write_verdicts(&store, fence.as_ref(), &config, &mut targets, &handle, holding).await;
                holding = match written {
                    Ok(holding) => holding,
                    Err(fenced) => {
                        handle.status.lock().unwrap_or_else(|e| e.into_inner()).clear();
                        return fenced;
                    }
                };
                publish(&targets, &handle, now);
            }
        }
    }
}

/// Starts checking new backends, stops checking removed ones, restarts those whose pool policy
/// changed.
fn reconcile(
    config: &Config,
    targets: &mut HashMap<Key, Target>,
    outcomes: &mpsc::Sender<(Key, Outcome, Instant)>,
) {
    let mut wanted = HashMap::new();
    for pool in &config.pools {
        for backend in &pool.backends {
            let key = (pool.spec.name.clone(), backend.address.clone());
            wanted.insert(key, (&pool.spec.policy, backend.address.as_str()));
        }
    }
    targets.retain(|key, target| wanted.get(key).is_some_and(|(p, _)| **p == target.policy));
    for (key, (policy, address)) in wanted {
        if targets.contains_key(&key) {
            continue;
        }
        let Ok(address) = address.parse::<SocketAddr>() else {
            continue;
        };
        let prober = tokio::spawn(probe_forever(
            key.clone(),
            address,
            policy.clone(),
            outcomes.clone(),
        ));
        targets.insert(
            key,
            Target {
                tracker: Tracker::new(thresholds(policy)),
                policy: policy.clone(),
                prober,
                reason: None,
                written: None,
            },
        );
    }
}

/// A pool's tracker parameters, defaults where it sets none.
fn thresholds(policy: &PoolPolicy) -> Thresholds {
    let defaults = Thresholds::default();
    let interval = interval_of(policy);
    Thresholds {
        rise: policy.health_rise.unwrap_or(defaults.rise),
        fall: policy.health_fall.unwrap_or(defaults.fall),
        phi: PhiSettings {
            window: policy
                .phi_window
                .map_or(defaults.phi.window, |n| n as usize),
            min_std_dev: policy
                .phi_min_std_dev_ms
                .map_or(defaults.phi.min_std_dev, Duration::from_millis),
            acceptable_pause: policy
                .phi_acceptable_pause_ms
                .map_or(defaults.phi.acceptable_pause, Duration::from_millis),
            threshold: policy.phi_threshold.unwrap_or(defaults.phi.threshold),
            first_interval: interval,
        },
    }
}

fn interval_of(policy: &PoolPolicy) -> Duration {
    Duration::from_millis(policy.health_interval_ms.unwrap_or(1_000))
}

/// Probes one backend at the pool's interval (±10%, so that probes do not march in step), for
/// ever; the task is aborted when the backend goes.
async fn probe_forever(
    key: Key,
    address: SocketAddr,
    policy: PoolPolicy,
    outcomes: mpsc::Sender<(Key, Outcome, Instant)>,
) {
    let check = match &policy.health_path {
        Some(path) => match BackendTls::of(&policy) {
            Ok(tls) => Check::Http {
                path: path.clone(),
                tls,
            },
            Err(error) => {
                // A file this host lacks (its LBs may have it): the backend is still probed,
                // by connecting.
                tracing::warn!(%address, %error, "backend TLS cannot be set up here: probing by TCP connect");
                Check::Tcp
            }
        },
        None => Check::Tcp,
    };
    let interval = interval_of(&policy);
    let timeout = Duration::from_millis(policy.health_timeout_ms.unwrap_or(500)).min(interval);
    loop {
        let outcome = probe(address, &check, timeout).await;
        if outcomes
            .send((key.clone(), outcome, Instant::now()))
            .await
            .is_err()
        {
            return;
        }
        let jitter = interval.mul_f64(0.9 + 0.2 * fastrand::f64());
        tokio::time::sleep(jitter).await;
    }
}

/// Writes each verdict that differs from the database; returns whether verdicts are held, or why
/// this instance may write no more (fenced out).
async fn write_verdicts(
    store: &SqlStore,
    fence: Option<&Fence>,
    config: &Config,
    targets: &mut HashMap<Key, Target>,
    handle: &HealthHandle,
    was_holding: bool,
) -> Result<bool, String> {
    let now = Instant::now();
    let checked = targets.len();
    let failing = targets.values().filter(|t| t.tracker.failing()).count();
    let holding = checked >= 3 && failing * 2 > checked;
    if holding != was_holding {
        if holding {
            tracing::warn!(
                failing,
                checked,
                "most backends fail at once: holding unhealthy verdicts (is this orchestrator cut off?)"
            );
        } else {
            tracing::info!(failing, checked, "no longer holding verdicts");
        }
        handle.held.set(i64::from(holding));
    }
    for pool in &config.pools {
        for backend in &pool.backends {
            let key = (pool.spec.name.clone(), backend.address.clone());
            let Some(target) = targets.get_mut(&key) else {
                continue;
            };
            let wanted = match target.tracker.health() {
                Health::Unknown => continue,
                Health::Healthy => StoredHealth::Healthy,
                Health::Unhealthy if holding => continue,
                Health::Unhealthy => StoredHealth::Unhealthy,
            };
            if backend.health == wanted {
                target.written = None;
                continue;
            }
            if target.written == Some(wanted) {
                continue;
            }
            let write = Write::SetHealth {
                pool: key.0.clone(),
                address: key.1.clone(),
                health: wanted,
                phi: Some(target.tracker.phi(now).min(f64::MAX)),
                reason: target.reason.clone(),
            };
            let applied = match fence {
                Some(fence) => store.apply_fenced(write, fence).await,
                None => store.apply(write).await,
            };
            match applied {
                Ok(_) => {
                    target.written = Some(wanted);
                    handle
                        .verdicts
                        .get_or_create(&VerdictLabels {
                            health: wanted.as_str().to_owned(),
                        })
                        .inc();
                }
                Err(fenced @ StoreError::Fenced { .. }) => {
                    handle.fenced.inc();
                    tracing::warn!(error = %fenced, "verdict refused: another instance leads");
                    return Err(fenced.to_string());
                }
                Err(error) => {
                    tracing::warn!(%error, pool = %key.0, backend = %key.1, "verdict not written")
                }
            }
        }
    }
    Ok(holding)
}

fn publish(targets: &HashMap<Key, Target>, handle: &HealthHandle, now: Instant) {
    // Backends that went must not linger in the metrics.
    handle.phi.clear();
    let mut status: Vec<BackendStatus> = targets
        .iter()
        .map(|((pool, address), target)| {
            let phi = target.tracker.phi(now);
            handle
                .phi
                .get_or_create(&BackendLabels {
                    pool: pool.clone(),
                    backend: address.clone(),
                })
                .set(phi);
            BackendStatus {
                pool: pool.clone(),
                address: address.clone(),
                health: match target.tracker.health() {
                    Health::Unknown => "unknown",
                    Health::Healthy => "healthy",
                    Health::Unhealthy => "unhealthy",
                },
                phi: phi.min(f64::MAX),
                reason: target.reason.clone(),
            }
        })
        .collect();
    status.sort_by(|a, b| (&a.pool, &a.address).cmp(&(&b.pool, &b.address)));
    *handle.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
}
