//! `ballast echo`: a demo backend that answers with its name (see `ballast_proxy::echo`).

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ballast_proxy::echo::{self, EchoSettings};
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Args)]
pub(crate) struct EchoArgs {
    /// Where to listen (port 0: any free port, printed when ready).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// The name to answer with.
    #[arg(long)]
    name: String,
    /// Delay every response by this much (e.g. 5ms).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Vary the delay uniformly by up to this much either way.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    jitter: Duration,
    /// Answer this share of requests (0 to 1) with 500.
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    fail_rate: f64,
}

impl EchoArgs {
    pub(crate) fn run(self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.fail_rate) {
            bail!("--fail-rate: {} is not between 0 and 1", self.fail_rate);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(self.listen)
                .await
                .with_context(|| format!("cannot listen on {}", self.listen))?;
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let address = listener.local_addr()?;
            {
                let mut out = std::io::stdout().lock();
                writeln!(out, "listening http {address} echo {}", self.name)?;
                out.flush()?;
            }
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let settings = EchoSettings {
                name: self.name,
                latency: self.latency,
                jitter: self.jitter,
                fail_rate: self.fail_rate,
            };
            let server = tokio::spawn(echo::serve(listener, settings, stopped));
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
            Ok(())
        })
    }
}
