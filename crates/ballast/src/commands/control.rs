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
    /// Do not check backends' health here (another orchestrator does).
    #[arg(long)]
    no_health_checks: bool,
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
            let health = if self.no_health_checks {
                None
            } else {
                let followed = ballast_config::follow(
                    store.clone(),
                    &self.db,
                    ballast_config::FollowOptions::default(),
                )
                .await
                .with_context(|| format!("--db {}", self.db))?;
                let handle = ballast_control::health::HealthHandle::default();
                tokio::spawn(ballast_control::health::run(
                    store.clone(),
                    followed,
                    handle.clone(),
                ));
                Some(handle)
            };
            let app = ballast_control::api::router(store, token, health);
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
