//! `ballast control`: the admin API over the configuration database and the orchestrator (see
//! `ballast_control::run`). Prints `listening http ADDR control` when ready; SIGTERM or SIGINT
//! stops it after the requests in flight.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ballast_control::{Orchestration, Provisioner, Scaling, Settings};
use clap::Args;

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
    /// Keep leading after the lease is lost: a deliberately broken leader, for the lab's checks
    /// to show they catch it. Never in production.
    #[arg(long, hide = true)]
    unsafe_ignore_lease_loss: bool,
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
    /// The autoscaling the flags describe, if any.
    fn scaling(&self) -> Result<Option<Scaling>> {
        let Some(target) = self.autoscale else {
            return Ok(None);
        };
        let provisioner = match self.provisioner {
            ProvisionerKind::Local => Provisioner::Local {
                program: std::env::current_exe().context("finding the ballast binary")?,
                pools: self.lb_pool.clone(),
                port: self.lb_port,
                drain_delay: self.lb_drain_delay,
                log_dir: self.lb_log_dir.clone(),
            },
            ProvisionerKind::Command => match (&self.scale_up_cmd, &self.scale_down_cmd) {
                (Some(up), Some(down)) => Provisioner::Commands {
                    up: up.clone(),
                    down: down.clone(),
                },
                _ => bail!("--provisioner command needs --scale-up-cmd and --scale-down-cmd"),
            },
        };
        Ok(Some(Scaling {
            target,
            min_lbs: self.min_lbs,
            max_lbs: self.max_lbs,
            tolerance: self.scale_tolerance,
            down_window: self.scale_down_window,
            interval: self.scale_interval,
            provisioner,
        }))
    }
}

impl ControlArgs {
    pub(crate) fn run(self) -> Result<()> {
        let token = std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("--token-file {}", self.token_file.display()))?
            .trim()
            .to_owned();
        let orchestrator = match self.no_health_checks {
            true => None,
            false => Some(Orchestration {
                identity: self.name.clone().unwrap_or_else(super::host_and_pid),
                redis: self.redis.clone(),
                lease_ttl: self.lease_ttl,
                scrape_interval: self.scrape_interval,
                prometheus: self.prometheus.clone(),
                scaling: self.scaling.scaling()?,
                ignore_lease_loss: self.unsafe_ignore_lease_loss,
            }),
        };
        let settings = Settings {
            db: self.db,
            listen_db: self.listen_db,
            listen: self.listen,
            token,
            keep_changes: self.keep_changes,
            orchestrator,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        runtime.block_on(ballast_control::run(settings, |address| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening http {address} control");
            let _ = out.flush();
        }))?;
        Ok(())
    }
}
