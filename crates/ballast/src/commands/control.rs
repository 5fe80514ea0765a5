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
use ballast_control::leader::Election;
use ballast_control::orchestrator::Status;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Args)]
pub(crate) struct ControlArgs {
    /// The configuration database: sqlite://PATH (created if missing) or postgres://….
    #[arg(long, value_name = "URL")]
    db: String,
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
                .with_context(|| format!("--db {}", self.db))?;
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
            let orchestrator = if self.no_health_checks {
                None
            } else {
                let followed = ballast_config::follow(
                    store.clone(),
                    &self.db,
                    ballast_config::FollowOptions::default(),
                )
                .await
                .with_context(|| format!("--db {}", self.db))?;
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
                let identity = self.name.clone().unwrap_or_else(|| {
                    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                    format!("{}/{}", host.trim(), std::process::id())
                });
                let status = Status::default();
                let settings = ballast_control::orchestrator::Settings {
                    identity,
                    election,
                    lease_ttl: self.lease_ttl,
                    scrape_interval: self.scrape_interval,
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
            Ok(())
        })
    }
}
