//! The orchestrator's life: campaign for leadership; while leading, run the loops (health
//! checking) with the term's fencing token; step down when the term ends or the store fences a
//! write out; campaign again. Followers serve the read API and wait.
//!
//! Its loops live beside it: [`health`] checks every backend and writes its verdicts, [`fleet`]
//! scrapes the LB servers (or asks [`prometheus`]) and judges their liveness, [`scaler`] sizes
//! the fleet by the rule of [`autoscale`] through a [`provision`]er; [`leader`] is the election.

pub mod autoscale;
pub mod fleet;
pub mod health;
pub mod leader;
pub mod prometheus;
pub mod provision;
pub mod scaler;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ballast_config::{Fence, Followed, SqlStore};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

use self::health::HealthHandle;
use self::leader::{Election, LEASE};

/// Whether this instance leads, as `GET /v1/leader` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LeaderStatus {
    /// This instance's name.
    pub identity: String,
    /// Whether it leads now.
    pub leading: bool,
    /// Its term's fencing token, while it leads.
    pub token: Option<u64>,
    /// How the election works: `redis` or `database`.
    pub election: &'static str,
    /// Why the last term ended.
    pub last_step_down: Option<String>,
    /// When the current term began (ms since the epoch).
    pub since_ms: Option<u64>,
}

/// What the orchestrator shares with the API.
#[derive(Clone, Default)]
pub struct Status {
    /// The health checker's state.
    pub health: HealthHandle,
    leader: Arc<Mutex<LeaderStatus>>,
    leading: Gauge,
    terms: Counter,
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status")
            .field("leader", &self.leader())
            .finish()
    }
}

impl Status {
    /// Registers the orchestrator's metrics.
    pub fn register(&self, registry: &mut Registry) {
        self.health.register(registry);
        registry.register(
            "ballast_orchestrator_leading",
            "1 while this instance leads",
            self.leading.clone(),
        );
        registry.register(
            "ballast_orchestrator_terms",
            "Terms this instance has led",
            self.terms.clone(),
        );
    }

    /// Whether this instance leads.
    pub fn leader(&self) -> LeaderStatus {
        self.leader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut LeaderStatus)) {
        change(&mut self.leader.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// How the orchestrator runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This instance's name.
    pub identity: String,
    /// How instances elect their leader.
    pub election: Election,
    /// The leader's lease.
    pub lease_ttl: Duration,
    /// How often the leader scrapes every LB server's metrics.
    pub scrape_interval: Duration,
    /// Read the LBs' figures from this Prometheus server instead of scraping them.
    pub prometheus: Option<String>,
    /// Keep leading after the lease is lost — wrong on purpose: only for `ballast lab check
    /// leader-partition --broken`, which shows that its checker catches two leaders. Fencing
    /// still refuses such a leader's writes once a newer one has written.
    pub ignore_lease_loss: bool,
    /// The autoscaler, if the fleet is scaled.
    pub autoscaling: Option<crate::scaler::Autoscaling>,
}

/// Runs the orchestrator until `stop` turns true: campaigns through the election; while it
/// leads, the health checker follows `followed` and writes to `store` with the term's token, the
/// fleet watcher scrapes the LB servers and the autoscaler sizes the fleet. When it returns,
/// every loop it ran has stopped (so nothing starts an LB while the caller drains them) and its
/// term is given up.
pub async fn run(
    settings: Settings,
    store: SqlStore,
    followed: watch::Receiver<Followed>,
    status: Status,
    mut stop: watch::Receiver<bool>,
) {
    let Settings {
        identity,
        election,
        lease_ttl: ttl,
        scrape_interval,
        prometheus,
        autoscaling,
        ignore_lease_loss,
    } = settings;
    status.update(|s| {
        s.identity.clone_from(&identity);
        s.election = match election {
            Election::Redis(_) => "redis",
            Election::Database { .. } => "database",
        };
    });
    loop {
        let mut term = tokio::select! {
            term = election.campaign(&identity, ttl) => term,
            () = stopped(&mut stop) => return,
        };
        let token = term.token();
        tracing::info!(%identity, token, "leading");
        status.leading.set(1);
        status.terms.inc();
        status.update(|s| {
            s.leading = true;
            s.token = Some(token);
            s.since_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_millis() as u64);
        });
        let fence = Fence {
            name: LEASE.to_owned(),
            token,
        };
        let mut checking = tokio::spawn(health::run(
            store.clone(),
            followed.clone(),
            status.health.clone(),
            Some(fence.clone()),
        ));
        let mut watching = tokio::spawn(crate::fleet::run(
            store.clone(),
            scrape_interval,
            prometheus.clone(),
            Some(fence),
        ));
        let scaling = autoscaling
            .clone()
            .map(|autoscaling| tokio::spawn(crate::scaler::run(store.clone(), autoscaling)));
        let reason = tokio::select! {
            reason = term.lost(), if !ignore_lease_loss => reason,
            () = stopped(&mut stop) => "this instance is stopping".to_owned(),
            ended = &mut checking => ended.unwrap_or_else(|e| format!("the health checker failed: {e}")),
            ended = &mut watching => ended.unwrap_or_else(|e| format!("the fleet watcher failed: {e}")),
        };
        end(checking).await;
        end(watching).await;
        if let Some(scaling) = scaling {
            end(scaling).await;
        }
        // Every loop has stopped writing: the lease can go to the next leader now.
        term.resign(ttl).await;
        // The reason may quote a node's or the database's URL.
        let reason = ballast_telemetry::redact(&reason).into_owned();
        tracing::warn!(%identity, token, %reason, "stepped down");
        status.leading.set(0);
        status.update(|s| {
            s.leading = false;
            s.token = None;
            s.since_ms = None;
            s.last_step_down = Some(reason);
        });
        if *stop.borrow() {
            return;
        }
    }
}

/// Stops `task` and waits until it has, unless it ended already (its output may have been
/// taken: a finished handle must not be polled again).
async fn end<T>(task: tokio::task::JoinHandle<T>) {
    task.abort();
    if !task.is_finished() {
        let _ = task.await;
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
