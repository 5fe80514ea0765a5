//! `ballast control`: the admin API over the configuration database and the orchestrator's
//! health checking (see `ballast_control::health`). Prints
//! `listening http ADDR control` when ready; SIGTERM or SIGINT stops it after the requests in
//! flight.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ballast_config::SqlStore;
use std::sync::Arc;

use ballast_control::autoscale::Policy;
use ballast_control::leader::Election;
use ballast_control::orchestrator::Status;
use ballast_control::provision::{Commands, Local, Provision};
use ballast_control::scaler::Autoscaling;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

/// How long the LBs this instance started may take to stop when it stops: their drain delay
/// (6 s by default) and drain timeout (30 s), and some.
const LB_STOP_GRACE: Duration = Duration::from_secs(45);

#[derive(Debug, Args)]
pub(crate) struct ControlArgs {
    /// The configuration database: sqlite://PATH (created if missing) or postgres://….
    #[arg(long, value_name = "URL")]
    db: String,
    /// A session connection to the same database for PostgreSQL's LISTEN, when --db goes
    /// through a transaction-pooling PgBouncer (which cannot keep one) [default: --db].
    #[arg(long, value_name = "URL")]
    listen_db: Option<String>,
    /// Where the admin API listens (port 0: any free port, printed when ready).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// A file holding the bearer token clients must present.
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// Keep this many of the latest revisions in the change log (pruned once a minute). An LB
    /// further behind reloads the whole configuration instead of replaying changes.
    #[arg(long, value_name = "N", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    keep_changes: u64,
    /// Serve the admin API only: no orchestrator loops (another instance runs them).
    #[arg(long)]
    no_health_checks: bool,
    /// This instance's name among the orchestrators [default: HOST/PID].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Elect the leader with a lock on these Redis nodes (one, or an odd number for Redlock)
    /// instead of a lease row in the configuration database.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    redis: Vec<String>,
    /// The leader's lease: a paused or cut-off leader is replaced this long after its last
    /// renewal.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    lease_ttl: std::time::Duration,
    /// How often the leader scrapes every LB server's /metrics.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    scrape_interval: std::time::Duration,
    /// Read the LBs' figures from this Prometheus server's query API (it must scrape their
    /// admin endpoints) instead of scraping them.
    #[arg(long, value_name = "URL")]
    prometheus: Option<String>,
    #[command(flatten)]
    scaling: ScalingArgs,
}

/// Autoscaling the LB fleet.
#[derive(Debug, Args)]
struct ScalingArgs {
    /// Scale the LB fleet on METRIC:TARGET per LB: cpu:60% (of one core; `cpu` alone means
    /// that), connections:N or rps:N. Without it the fleet is not scaled.
    #[arg(long, value_name = "METRIC:TARGET")]
    autoscale: Option<ballast_control::scaler::Target>,
    /// The fewest LB servers.
    #[arg(long, value_name = "N", default_value_t = 1)]
    min_lbs: u32,
    /// The most LB servers.
    #[arg(long, value_name = "N", default_value_t = 10)]
    max_lbs: u32,
    /// No change while the metric is within this fraction of its target.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.1)]
    scale_tolerance: f64,
    /// Scale down only to the highest size recommended over this long.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = humantime::parse_duration)]
    scale_down_window: std::time::Duration,
    /// How often the autoscaler decides.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    scale_interval: std::time::Duration,
    /// How LB servers are added and removed.
    #[arg(long, value_enum, default_value_t = ProvisionerKind::Local)]
    provisioner: ProvisionerKind,
    /// Local provisioner: a pool each LB serves, on --lb-port, --lb-port + 1, … (repeat).
    #[arg(long, value_name = "POOL")]
    lb_pool: Vec<String>,
    /// Local provisioner: the port every LB listens on, each on its own 127.0.0.x.
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    lb_port: u16,
    /// Local provisioner: how long a stopped LB still accepts while DNS drops it (`ballast
    /// dns`'s TTL, 5 s by default, and a second for its fleet poll and the heartbeat).
    #[arg(long, value_name = "DURATION", default_value = "6s", value_parser = humantime::parse_duration)]
    lb_drain_delay: Duration,
    /// Local provisioner: each LB's log in a file of its own in DIR (`lb-01.log`, …) rather
    /// than in this process's standard error.
    #[arg(long, value_name = "DIR")]
    lb_log_dir: Option<std::path::PathBuf>,
    /// Command provisioner: run to add an LB (BALLAST_LB_NAME, BALLAST_LB_ADDRESS set).
    #[arg(long, value_name = "COMMAND")]
    scale_up_cmd: Option<String>,
    /// Command provisioner: run to remove an LB (BALLAST_LB_NAME set).
    #[arg(long, value_name = "COMMAND")]
    scale_down_cmd: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ProvisionerKind {
    /// `ballast lb` processes on this machine, on 127.0.0.11, .12, …
    Local,
    /// --scale-up-cmd and --scale-down-cmd.
    Command,
}

impl ScalingArgs {
    /// The autoscaler the flags describe, if any.
    fn autoscaling(&self, db: &str) -> Result<Option<Autoscaling>> {
        let Some(target) = self.autoscale else {
            return Ok(None);
        };
        if self.min_lbs > self.max_lbs || self.max_lbs == 0 {
            bail!(
                "--min-lbs {} and --max-lbs {}: need 0 <= min <= max, max >= 1",
                self.min_lbs,
                self.max_lbs
            );
        }
        if !(0.0..1.0).contains(&self.scale_tolerance) {
            bail!("--scale-tolerance: a fraction from 0 to 1");
        }
        let provisioner: Box<dyn Provision> = match self.provisioner {
            ProvisionerKind::Local => {
                if self.lb_pool.is_empty() {
                    bail!("--lb-pool: the local provisioner needs the pools its LBs serve");
                }
                let local = Local::new(
                    std::env::current_exe().context("finding the ballast binary")?,
                    db.to_owned(),
                    self.lb_pool.clone(),
                    self.lb_port,
                    self.lb_drain_delay,
                );
                Box::new(match &self.lb_log_dir {
                    Some(dir) => local.with_log_dir(dir.clone()),
                    None => local,
                })
            }
            ProvisionerKind::Command => match (&self.scale_up_cmd, &self.scale_down_cmd) {
                (Some(up), Some(down)) => Box::new(Commands::new(up.clone(), down.clone())),
                _ => bail!("--provisioner command needs --scale-up-cmd and --scale-down-cmd"),
            },
        };
        Ok(Some(Autoscaling {
            target,
            policy: Policy {
                target: target.value,
                tolerance: self.scale_tolerance,
                min: self.min_lbs,
                max: self.max_lbs,
                stabilisation: self.scale_down_window,
            },
            interval: self.scale_interval,
            provisioner: Arc::new(tokio::sync::Mutex::new(provisioner)),
        }))
    }
}

impl ControlArgs {
    pub(crate) fn run(self) -> Result<()> {
        let token = std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("--token-file {}", self.token_file.display()))?
            .trim()
            .to_owned();
        if token.len() < 16 {
            bail!(
                "--token-file {}: the token must be at least 16 characters",
                self.token_file.display()
            );
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        runtime.block_on(async {
            let store = SqlStore::connect(&self.db)
                .await
                .with_context(|| format!("--db {}", ballast_telemetry::redact(&self.db)))?;
            let listener = tokio::net::TcpListener::bind(self.listen)
                .await
                .with_context(|| format!("cannot listen on {}", self.listen))?;
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            {
                let mut out = std::io::stdout().lock();
                writeln!(out, "listening http {} control", listener.local_addr()?)?;
                out.flush()?;
            }
            let pruning = tokio::spawn(ballast_control::retention::prune_every(
                store.clone(),
                self.keep_changes,
                Duration::from_secs(60),
            ));
            let autoscaling = self.scaling.autoscaling(&self.db)?;
            let orchestrator = if self.no_health_checks {
                None
            } else {
                let followed = ballast_config::follow(
                    store.clone(),
                    self.listen_db.as_deref().unwrap_or(&self.db),
                    ballast_config::FollowOptions::default(),
                )
                .await
                .with_context(|| format!("--db {}", ballast_telemetry::redact(&self.db)))?;
                let election = if self.redis.is_empty() {
                    Election::Database {
                        store: store.clone(),
                    }
                } else {
                    let locks = ballast_lock::LockManager::from_urls(
                        &self.redis,
                        ballast_lock::Options::default(),
                    )
                    .context("--redis")?;
                    Election::Redis(locks)
                };
                let identity = self.name.clone().unwrap_or_else(super::host_and_pid);
                let status = Status::default();
                let settings = ballast_control::orchestrator::Settings {
                    identity,
                    election,
                    lease_ttl: self.lease_ttl,
                    scrape_interval: self.scrape_interval,
                    prometheus: self.prometheus.clone(),
                    autoscaling: autoscaling.clone(),
                };
                tokio::spawn(ballast_control::orchestrator::run(
                    settings,
                    store.clone(),
                    followed,
                    status.clone(),
                ));
                Some(status)
            };
            let app = ballast_control::api::router(store, token, orchestrator);
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                })
                .await
                .context("admin API")?;
            pruning.abort();
            if let Some(autoscaling) = autoscaling {
                // The LBs this instance started drain and stop with it, before it exits.
                let mut provisioner = autoscaling.provisioner.lock().await;
                if let Err(error) = provisioner.stop_all(LB_STOP_GRACE).await {
                    tracing::warn!(%error, "stopping the LBs");
                }
            }
            Ok(())
        })
    }
}
