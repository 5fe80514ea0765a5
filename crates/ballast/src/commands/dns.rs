//! `ballast dns`: the authoritative DNS server for the LB fleet (see `ballast_dns`). Each pool's
//! DNS name inside `--zone` answers with the LB servers that serve the pool and are up. Prints
//! `listening dns ADDR` once it answers over UDP and TCP; SIGTERM or SIGINT stops it.
//! `ballast dns export` writes the same zone as a zone file instead.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ballast_config::SqlStore;
use ballast_dns::{Answerer, Metrics, follow_zone, serve};
use ballast_telemetry::Format;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct DnsArgs {
    #[command(subcommand)]
    action: Option<DnsAction>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, clap::Subcommand)]
enum DnsAction {
    /// Write the zone as a standard zone file (RFC 1035) on stdout, for CoreDNS or BIND.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// The configuration database: sqlite://PATH or postgres://….
    #[arg(long, value_name = "URL")]
    db: String,
    /// The zone.
    #[arg(long, value_name = "NAME", default_value = "ballast.local")]
    zone: String,
    /// The records' TTL, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    ttl: u32,
    /// The address of the zone's name server (`ns.ZONE`): where CoreDNS or BIND answers.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    ns_address: std::net::IpAddr,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The configuration database: sqlite://PATH or postgres://….
    #[arg(long, value_name = "URL")]
    db: Option<String>,
    /// A session connection to the same database for PostgreSQL's LISTEN, when --db goes
    /// through a transaction-pooling PgBouncer (which cannot keep one) [default: --db].
    #[arg(long, value_name = "URL")]
    listen_db: Option<String>,
    /// Where to answer, over UDP and TCP (port 0: any free port, printed when ready).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5353")]
    listen: SocketAddr,
    /// The zone this server is authoritative for.
    #[arg(long, value_name = "NAME", default_value = "ballast.local")]
    zone: String,
    /// How long resolvers may cache an answer, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    ttl: u32,
    /// Answer with at most this many addresses, a stable subset per client subnet.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    max_answers: Option<u64>,
    /// How often the fleet (LB states and liveness) is read.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = humantime::parse_duration)]
    fleet_interval: Duration,
    /// The address `ns.ZONE` (the apex NS record's target) answers with [default: the --listen
    /// address, unless it is 0.0.0.0 or ::].
    #[arg(long, value_name = "IP")]
    ns_address: Option<std::net::IpAddr>,
    /// Serve /metrics here (queries by type and code, answer sizes, revision).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
}

impl DnsArgs {
    pub(crate) fn run(self) -> Result<()> {
        match self.action {
            Some(DnsAction::Export(args)) => args.run(),
            None => self.serve.run(),
        }
    }
}

impl ExportArgs {
    fn run(self) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let zone = runtime.block_on(async {
            let store = SqlStore::connect(&self.db)
                .await
                .with_context(|| format!("--db {}", ballast_telemetry::redact(&self.db)))?;
            let config = store.config().await?;
            let fleet = store.lb_servers().await?;
            anyhow::Ok(ballast_dns::Zone::build(
                &self.zone, self.ttl, &config, &fleet,
            ))
        })?;
        let mut out = std::io::stdout().lock();
        out.write_all(zone.to_zone_file(self.ns_address).as_bytes())?;
        Ok(())
    }
}

impl ServeArgs {
    fn run(self) -> Result<()> {
        let Some(db) = self.db.clone() else {
            bail!("--db: the configuration database to serve the zone from");
        };
        if self.zone.trim_end_matches('.').is_empty() {
            bail!("--zone: a domain name, e.g. ballast.local");
        }
        // One worker per CPU this process may run on: on a pinned core, one worker answers without
        // waking a sibling thread for every datagram.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        runtime.block_on(async {
            let store = SqlStore::connect(&db)
                .await
                .with_context(|| format!("--db {}", ballast_telemetry::redact(&db)))?;
            let listen_db = self.listen_db.clone().unwrap_or_else(|| db.clone());
            let zone = follow_zone(store, &listen_db, &self.zone, self.ttl, self.fleet_interval)
                .await
                .with_context(|| format!("--db {}", ballast_telemetry::redact(&db)))?;
            let (udp, tcp) = ballast_dns::bind(self.listen).await?;
            let address = udp.local_addr()?;
            let max_answers = self.max_answers.map(|k| k as usize);
            let metrics = Arc::new(Metrics::new());
            let admin = match self.admin {
                Some(address) => {
                    let listener = tokio::net::TcpListener::bind(address)
                        .await
                        .with_context(|| format!("--admin {address}"))?;
                    let bound = listener.local_addr()?;
                    let (metrics, zone) = (Arc::clone(&metrics), Arc::clone(&zone));
                    let app = axum::Router::new().route(
                        "/metrics",
                        axum::routing::get(move |headers: axum::http::HeaderMap| {
                            let accept = headers
                                .get(axum::http::header::ACCEPT)
                                .and_then(|v| v.to_str().ok());
                            let page =
                                metrics.encode(Format::negotiate(accept), zone.load().serial());
                            async move {
                                (
                                    [(axum::http::header::CONTENT_TYPE, page.content_type)],
                                    page.body,
                                )
                            }
                        }),
                    );
                    tokio::spawn(async move { axum::serve(listener, app).await });
                    Some(bound)
                }
                None => None,
            };
            let mut answerer = Answerer::with_metrics(zone, max_answers, metrics);
            let listen_ip = (!address.ip().is_unspecified()).then_some(address.ip());
            if let Some(ns) = self.ns_address.or(listen_ip) {
                answerer = answerer.with_name_server(ns);
            }
            let mut server = serve(answerer, udp, tcp);
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            {
                let mut out = std::io::stdout().lock();
                writeln!(out, "listening dns {address} zone {}", self.zone)?;
                if let Some(admin) = admin {
                    writeln!(out, "admin {admin}")?;
                }
                out.flush()?;
            }
            tokio::select! {
                done = server.block_until_done() => done.context("DNS server")?,
                _ = term.recv() => server.shutdown_gracefully().await.context("DNS server")?,
                _ = int.recv() => server.shutdown_gracefully().await.context("DNS server")?,
            }
            Ok(())
        })
    }
}
