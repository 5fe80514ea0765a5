//! One `ballast control` instance, wired: the store, the admin API, change-log retention and
//! (unless another instance runs them) the orchestrator's loops. Its shutdown order matters:
//! the API stops taking requests, then the LBs this instance started drain and stop, so that it
//! never exits leaving a child behind.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ballast_config::{FollowOptions, SqlStore, StoreError};
use tokio::signal::unix::{SignalKind, signal};

use crate::autoscale::Policy;
use crate::leader::Election;
use crate::orchestrator::Status;
use crate::provision::{Commands, Local, Provision};
use crate::scaler::{Autoscaling, Target};

/// How long the LBs this instance started may take to stop when it stops: their drain delay
/// (6 s by default) and drain timeout (30 s), and some.
const LB_STOP_GRACE: Duration = Duration::from_secs(45);

/// What one instance runs with (`ballast control`'s flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration database: `sqlite://PATH` (created if missing) or `postgres://…`.
    pub db: String,
    /// A session connection for PostgreSQL's `LISTEN` when `db` goes through a
    /// transaction-pooling PgBouncer; `db` itself otherwise.
    pub listen_db: Option<String>,
    /// Where the admin API listens (port 0: any free port).
    pub listen: SocketAddr,
    /// The bearer token clients must present (16 characters or more).
    pub token: String,
    /// How many of the latest revisions the change log keeps.
    pub keep_changes: u64,
    /// `None`: serve the admin API only (another instance runs the orchestrator).
    pub orchestrator: Option<Orchestration>,
}

/// The orchestrator's part of [`Settings`].
#[allow(missing_docs)]
#[derive(Debug, Clone)]
pub struct Orchestration {
    /// This instance's name among the orchestrators.
    pub identity: String,
    /// Redis nodes to elect the leader on (one, or an odd number for Redlock); none: a lease
    /// row in the configuration database.
    pub redis: Vec<String>,
    pub lease_ttl: Duration,
    pub scrape_interval: Duration,
    /// Read the LBs' figures from this Prometheus server's query API instead of scraping them.
    pub prometheus: Option<String>,
    pub scaling: Option<Scaling>,
    /// Keep leading after the lease is lost — wrong on purpose: only for `ballast lab check
    /// leader-partition --broken`, which shows that its checker catches two leaders. Fencing
    /// still refuses such a leader's writes once a newer one has written.
    pub ignore_lease_loss: bool,
}

/// Autoscaling the LB fleet.
#[allow(missing_docs)]
#[derive(Debug, Clone)]
pub struct Scaling {
    pub target: Target,
    pub min_lbs: u32,
    pub max_lbs: u32,
    /// No change while the metric is within this fraction of its target.
    pub tolerance: f64,
    /// Scale down only to the highest size recommended over this long.
    pub down_window: Duration,
    pub interval: Duration,
    pub provisioner: Provisioner,
}

/// How LB servers are added and removed.
#[allow(missing_docs)]
#[derive(Debug, Clone)]
pub enum Provisioner {
    /// `ballast lb` processes on this machine, each on its own 127.0.0.x.
    Local {
        /// The `ballast` binary to start them from.
        program: PathBuf,
        /// The pools each LB serves, on `port`, `port + 1`, …
        pools: Vec<String>,
        port: u16,
        /// How long a stopped LB still accepts while DNS drops it.
        drain_delay: Duration,
        /// Each LB's log in a file of its own there, rather than in this process's stderr.
        log_dir: Option<PathBuf>,
    },
    /// Commands run to add an LB (`BALLAST_LB_NAME`, `BALLAST_LB_ADDRESS` set) and to remove
    /// one (`BALLAST_LB_NAME` set).
    Commands { up: String, down: String },
}

/// Why an instance could not start or stopped with an error.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A setting is out of range; `field` is the flag that sets it.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("--db {url}: {source}")]
    Database { url: String, source: StoreError },
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("--redis: {0}")]
    Redis(#[from] ballast_lock::LockError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Settings {
    /// Every setting checked, before anything starts.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let invalid = |field, reason: &str| {
            Err(ServiceError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.token.len() < 16 {
            return invalid("--token-file", "the token must be at least 16 characters");
        }
        let Some(scaling) = self.orchestrator.as_ref().and_then(|o| o.scaling.as_ref()) else {
            return Ok(());
        };
        if scaling.min_lbs > scaling.max_lbs || scaling.max_lbs == 0 {
            return Err(ServiceError::Invalid {
                field: "--min-lbs",
                reason: format!(
                    "{} and --max-lbs {}: need 0 <= min <= max, max >= 1",
                    scaling.min_lbs, scaling.max_lbs
                ),
            });
        }
        if !(0.0..1.0).contains(&scaling.tolerance) {
            return invalid("--scale-tolerance", "a fraction from 0 to 1");
        }
        if let Provisioner::Local { pools, .. } = &scaling.provisioner
            && pools.is_empty()
        {
            return invalid(
                "--lb-pool",
                "the local provisioner needs the pools its LBs serve",
            );
        }
        Ok(())
    }
}

impl Scaling {
    fn autoscaling(&self, db: &str) -> Autoscaling {
        let provisioner: Box<dyn Provision> = match &self.provisioner {
            Provisioner::Local {
                program,
                pools,
                port,
                drain_delay,
                log_dir,
            } => {
                let local = Local::new(
                    program.clone(),
                    db.to_owned(),
                    pools.clone(),
                    *port,
                    *drain_delay,
                );
                Box::new(match log_dir {
                    Some(dir) => local.with_log_dir(dir.clone()),
                    None => local,
                })
            }
            Provisioner::Commands { up, down } => Box::new(Commands::new(up.clone(), down.clone())),
        };
        Autoscaling {
            target: self.target,
            policy: Policy {
                target: self.target.value,
                tolerance: self.tolerance,
                min: self.min_lbs,
                max: self.max_lbs,
                stabilisation: self.down_window,
            },
            interval: self.interval,
            provisioner: Arc::new(tokio::sync::Mutex::new(provisioner)),
        }
    }
}

/// Runs one instance until SIGTERM or SIGINT; `on_listening` is told the API's address once it
/// accepts.
pub async fn run(
    settings: Settings,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServiceError> {
    settings.validate()?;
    let database = |source| ServiceError::Database {
        url: ballast_telemetry::redact(&settings.db).into_owned(),
        source,
    };
    let store = SqlStore::connect(&settings.db).await.map_err(database)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServiceError::Listen {
            address: settings.listen,
            source,
        })?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    on_listening(listener.local_addr()?);
    let pruning = tokio::spawn(crate::retention::prune_every(
        store.clone(),
        settings.keep_changes,
        Duration::from_secs(60),
    ));
    let mut autoscaling = None;
    let mut orchestrating = None;
    let stop_orchestrating = tokio::sync::watch::Sender::new(false);
    let status = match &settings.orchestrator {
        None => None,
        Some(orchestration) => {
            let listen_url = settings.listen_db.as_deref().unwrap_or(&settings.db);
            let followed =
                ballast_config::follow(store.clone(), listen_url, FollowOptions::default())
                    .await
                    .map_err(database)?;
            let election = if orchestration.redis.is_empty() {
                Election::Database {
                    store: store.clone(),
                }
            } else {
                let locks = ballast_lock::LockManager::from_urls(
                    &orchestration.redis,
                    ballast_lock::Options::default(),
                )?;
                Election::Redis(locks)
            };
            autoscaling = orchestration
                .scaling
                .as_ref()
                .map(|scaling| scaling.autoscaling(&settings.db));
            let status = Status::default();
            let orchestrator = crate::orchestrator::Settings {
                identity: orchestration.identity.clone(),
                election,
                lease_ttl: orchestration.lease_ttl,
                scrape_interval: orchestration.scrape_interval,
                prometheus: orchestration.prometheus.clone(),
                autoscaling: autoscaling.clone(),
                ignore_lease_loss: orchestration.ignore_lease_loss,
            };
            orchestrating = Some(tokio::spawn(crate::orchestrator::run(
                orchestrator,
                store.clone(),
                followed,
                status.clone(),
                stop_orchestrating.subscribe(),
            )));
            Some(status)
        }
    };
    let app = crate::api::router(store, settings.token, status);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await?;
    pruning.abort();
    // The autoscaler stops first: LBs draining are not live, and it would start others.
    stop_orchestrating.send_replace(true);
    if let Some(orchestrating) = orchestrating {
        let _ = orchestrating.await;
    }
    if let Some(autoscaling) = autoscaling {
        // The LBs this instance started drain and stop with it, before it exits.
        let mut provisioner = autoscaling.provisioner.lock().await;
        if let Err(error) = provisioner.stop_all(LB_STOP_GRACE).await {
            tracing::warn!(%error, "stopping the LBs");
        }
    }
    Ok(())
}
