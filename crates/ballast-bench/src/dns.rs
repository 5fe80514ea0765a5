//! `ballast bench dns`: answers per second and latency of `ballast dns` over UDP, beside Knot DNS
//! and NSD when they are installed, serving the same zone and answering the same queries in the
//! same run.
//!
//! The zone comes from a fresh SQLite configuration: one pool whose name answers with `--lbs` LB
//! servers. Each server runs on the CPUs `--server-cpus` (one core by default, through `taskset`)
//! while this process, the one client, sends A queries for the pool's name from one UDP socket,
//! keeping `--window` of them outstanding, for `--duration`. Only full answers count: NOERROR
//! with all `--lbs` addresses. Latency is from the send to the answer of each query.

use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ballast_config::{AlgorithmSpec, LbServer, LbState, Liveness, PoolSpec, SqlStore, Write};
use ballast_dns::proto::op::{Message, Query};
use ballast_dns::proto::rr::{Name, RecordType};
use clap::Args;

use crate::dns_peers::Peer;
use crate::harness::{Started, address_after, start_on};
use crate::table::{Table, quantile};

const ZONE: &str = "ballast.local";
const NAME: &str = "lb.bench.ballast.local.";

#[derive(Debug, Args)]
pub struct DnsBenchArgs {
    /// How long to send queries to each server.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// LB servers in the answer.
    #[arg(long, default_value_t = 3)]
    lbs: usize,
    /// Queries kept outstanding by the client.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// The CPUs every server runs on, as a `taskset` list; `all` leaves them unpinned.
    #[arg(long, value_name = "LIST", default_value = "1")]
    server_cpus: String,
    /// Measure Ballast only, even where Knot DNS or NSD is installed.
    #[arg(long)]
    no_peers: bool,
}

/// What one server did under load.
struct Measured {
    answers: u64,
    wrong: u64,
    lost: u64,
    elapsed: Duration,
    latencies_us: Vec<f64>,
}

impl DnsBenchArgs {
    pub fn run(&self) -> Result<()> {
        if self.lbs == 0 || self.lbs > 250 {
            bail!("--lbs: between 1 and 250");
        }
        if self.window == 0 || self.window > 60_000 {
            bail!("--window: between 1 and 60000");
        }
        let dir = std::env::temp_dir().join(format!("ballast-bench-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let result = self.measure_all(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn measure_all(&self, dir: &Path) -> Result<()> {
        let db = format!("sqlite://{}", dir.join("config.db").display());
        let zone_file = self.prepare(&db)?;
        let cpus = (self.server_cpus != "all").then_some(self.server_cpus.as_str());
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "# UDP A queries for {NAME} ({} addresses each), one client, {} outstanding, {} per \
             server; servers on CPUs {}",
            self.lbs,
            self.window,
            humantime::format_duration(self.duration),
            self.server_cpus,
        )?;
        out.flush()?;

        let ballast = start_on(
            cpus,
            &[
                "dns",
                "--db",
                &db,
                "--listen",
                "127.0.0.1:0",
                "--zone",
                ZONE,
            ],
            1,
        )?;
        let address = address_after(&ballast.ready, "listening dns ")?;
        let mut results = vec![("ballast dns".to_owned(), self.measure(address)?)];
        drop::<Started>(ballast);
        if !self.no_peers {
            for peer in Peer::ALL {
                match peer.start(dir, &zone_file, ZONE, cpus, &query_bytes()?) {
                    Ok(Some(running)) => {
                        let measured = self.measure(running.address)?;
                        results.push((running.label(), measured));
                    }
                    Ok(None) => writeln!(out, "# {}: not installed, skipped", peer.name())?,
                    Err(error) => writeln!(out, "# {}: not measured: {error:#}", peer.name())?,
                }
            }
        }

        let baseline = results[0].1.rate();
        let mut table = Table::new(&[
            "server",
            "answers/s",
            "p50_us",
            "p99_us",
            "lost",
            "wrong",
            "ballast/server",
        ]);
        for (label, measured) in &mut results {
            measured.latencies_us.sort_by(f64::total_cmp);
            let at = |q| quantile(&measured.latencies_us, q);
            table.row(vec![
                label.clone(),
                format!("{:.0}", measured.rate()),
                format!("{:.0}", at(0.5)),
                format!("{:.0}", at(0.99)),
                measured.lost.to_string(),
                measured.wrong.to_string(),
                format!("{:.2}", baseline / measured.rate().max(f64::MIN_POSITIVE)),
            ]);
        }
        table.write(&mut out)?;
        out.flush()?;
        Ok(())
    }

    /// Writes the benchmark's pool and fleet into the database at `db` and returns the same zone
    /// as a zone file, for the peers.
    fn prepare(&self, db: &str) -> Result<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let store = SqlStore::connect(db).await.context("benchmark database")?;
            store
                .apply(Write::CreatePool(PoolSpec {
                    name: "bench".into(),
                    algorithm: AlgorithmSpec::named("round_robin"),
                    hash_key: "client_ip".into(),
                    dns_name: Some(NAME.into()),
                    policy: Default::default(),
                }))
                .await?;
            for i in 0..self.lbs {
                store
                    .heartbeat(&LbServer {
                        name: format!("lb-{i}"),
                        addresses: vec![format!("127.0.1.{}:8080", i + 1)],
                        pools: vec!["bench".into()],
                        admin: None,
                        applied_revision: 1,
                        state: LbState::Serving,
                        last_heartbeat_ms: 0,
                        figures: None,
                        liveness: Liveness::Up,
                        liveness_reason: None,
                    })
                    .await?;
            }
            let zone = ballast_dns::Zone::build(
                ZONE,
                5,
                &store.config().await?,
                &store.lb_servers().await?,
            );
            Ok(zone.to_zone_file("127.0.0.1".parse()?))
        })
    }

    /// Half a second of warm-up, then `--duration` of queries to `server`.
    fn measure(&self, server: SocketAddr) -> Result<Measured> {
        let query = query_bytes()?;
        let socket = UdpSocket::bind("127.0.0.1:0").context("client socket")?;
        socket.connect(server)?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let _ = load(&socket, &query, self.window, Duration::from_millis(500), 0);
        load(&socket, &query, self.window, self.duration, self.lbs as u16)
    }
}

impl Measured {
    fn rate(&self) -> f64 {
        self.answers as f64 / self.elapsed.as_secs_f64()
    }
}

/// An A query for the benchmark's name, recursion not desired; its first two bytes (the ID) are
/// rewritten for every send.
fn query_bytes() -> Result<Vec<u8>> {
    let mut message = Message::new();
    message.add_query(Query::query(Name::from_ascii(NAME)?, RecordType::A));
    message.set_recursion_desired(false);
    Ok(message.to_vec()?)
}

/// Sends `query` over `socket` for `duration`, `window` outstanding, and counts the answers that
/// carry NOERROR and `expected` records (any answer when `expected` is 0).
fn load(
    socket: &UdpSocket,
    query: &[u8],
    window: usize,
    duration: Duration,
    expected: u16,
) -> Result<Measured> {
    let mut packet = query.to_vec();
    let mut sent_at: Vec<Option<Instant>> = vec![None; 1 << 16];
    let mut measured = Measured {
        answers: 0,
        wrong: 0,
        lost: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    let mut next_id: u16 = 0;
    let mut outstanding = 0usize;
    let mut buffer = [0u8; 4096];
    let started = Instant::now();
    let deadline = started + duration;
    while Instant::now() < deadline {
        while outstanding < window {
            packet[..2].copy_from_slice(&next_id.to_be_bytes());
            socket.send(&packet).context("sending a query")?;
            sent_at[usize::from(next_id)] = Some(Instant::now());
            next_id = next_id.wrapping_add(1);
            outstanding += 1;
        }
        match socket.recv(&mut buffer) {
            Ok(length) if length >= 12 => {
                let id = u16::from_be_bytes([buffer[0], buffer[1]]);
                let Some(sent) = sent_at[usize::from(id)].take() else {
                    continue;
                };
                outstanding -= 1;
                let rcode = buffer[3] & 0x0f;
                let answers = u16::from_be_bytes([buffer[6], buffer[7]]);
                if rcode == 0 && (expected == 0 || answers == expected) {
                    measured.answers += 1;
                    measured
                        .latencies_us
                        .push(sent.elapsed().as_secs_f64() * 1e6);
                } else {
                    measured.wrong += 1;
                }
            }
            Ok(_) => measured.wrong += 1,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // Nothing came back for a while: whatever is outstanding was dropped.
                let dropped = sent_at.iter_mut().filter_map(Option::take).count();
                measured.lost += dropped as u64;
                outstanding = 0;
            }
            Err(error) => return Err(error).context("receiving an answer"),
        }
    }
    measured.elapsed = started.elapsed();
    // Collect what is still on its way, uncounted, so the next run starts from a quiet socket.
    while outstanding > 0 && socket.recv(&mut buffer).is_ok() {
        outstanding -= 1;
    }
    Ok(measured)
}
