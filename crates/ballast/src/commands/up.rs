//! `ballast up`: the whole system on this machine in one command. It keeps its state in `--dir`
//! (the SQLite configuration database, the admin token, the children's logs, private Redis
//! nodes' data) and starts, as supervised children: `--backends` demo backends (`ballast echo`)
//! in a pool `demo`, `ballast control` (admin API, dashboard and orchestrator, which keeps `--lbs`
//! managed LB servers running on 127.0.0.11, .12, …), and `ballast dns` answering
//! `lb.demo.ballast.local` with those LBs. A child that dies is started again (the orchestrator
//! replaces the LBs); Ctrl-C or SIGTERM stops everything in order — control first, which drains
//! its LBs — and leaves no process. Started again on the same `--dir`, it resumes the same
//! configuration.

use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ballast_config::{AlgorithmSpec, PoolSpec, SqlStore, Write};
use ballast_lock::local::LocalNode;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use super::supervise::{Group, Supervised};
use super::up_display::{Display, Status};

/// The demo pool and its DNS name.
const POOL: &str = "demo";
const ZONE: &str = "ballast.local";
const DNS_NAME: &str = "lb.demo.ballast.local";
/// Private Redis nodes for the leader election: a majority survives one loss.
const REDIS_NODES: usize = 3;

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Where the database, the token, the logs and the Redis nodes' data live.
    #[arg(long, value_name = "DIR", default_value = ".ballast")]
    dir: PathBuf,
    /// Make a new admin token instead of keeping the one in --dir (exported `BALLAST_TOKEN`s
    /// and open dashboard tabs then need the new one).
    #[arg(long)]
    rotate_token: bool,
    /// LB servers the orchestrator keeps running, on 127.0.0.11, .12, …
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=50))]
    lbs: u32,
    /// Demo backends (`ballast echo`) in the pool `demo`, the first time.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..=50))]
    backends: u16,
    /// The configuration database: `sqlite` (a file in --dir) or a postgres:// URL.
    #[arg(long, value_name = "sqlite|URL", default_value = "sqlite")]
    db: String,
    /// `auto`: private redis-server nodes for the leader election where redis-server is
    /// installed; `off`: the database lease; or the nodes' URLs, comma-separated.
    #[arg(long, value_name = "auto|off|URLS", default_value = "auto")]
    redis: String,
    /// The admin API and the dashboard.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9000")]
    admin: SocketAddr,
    /// The DNS server, over UDP and TCP.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5353")]
    dns: SocketAddr,
    /// The port every LB server listens on, each on its own loopback address.
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    lb_port: u16,
    /// The first demo backend's port on 127.0.0.1; the others follow it.
    #[arg(long, value_name = "PORT", default_value_t = 9101)]
    backend_port: u16,
}

/// What runs, in the order it starts (and the reverse of the order it stops, but for control,
/// which stops first so that its LBs drain while the backends still answer).
struct System {
    redis: Vec<LocalNode>,
    backends: Vec<Supervised>,
    control: Supervised,
    dns: Supervised,
    group: Group,
}

impl UpArgs {
    pub(crate) fn run(self) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        runtime.block_on(self.up())
    }

    async fn up(self) -> Result<()> {
        std::fs::create_dir_all(self.dir.join("logs"))
            .with_context(|| format!("--dir {}", self.dir.display()))?;
        let dir = self
            .dir
            .canonicalize()
            .with_context(|| format!("--dir {}", self.dir.display()))?;
        let _running = PidFile::claim(&dir)?;
        self.check_ports()?;
        let display = Display::new(std::io::stdout().is_terminal());
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;

        let db = match self.db.as_str() {
            "sqlite" => format!("sqlite://{}", dir.join("ballast.db").display()),
            url => url.to_owned(),
        };
        let step = display.step("configuration database");
        let store = SqlStore::connect(&db)
            .await
            .with_context(|| format!("--db {}", ballast_telemetry::redact(&db)))?;
        let resumed = self.seed(&store).await?;
        let shown = ballast_telemetry::redact(&db);
        step.done(&if resumed {
            format!("{shown} (resumed at revision {})", store.revision().await?)
        } else {
            format!("{shown} (pool `{POOL}` created)")
        });

        let token = admin_token(&dir, self.rotate_token)?;
        let mut system = System {
            redis: Vec::new(),
            backends: Vec::new(),
            control: Supervised::new("control", Vec::new(), 1, dir.join("logs/control.log")),
            dns: Supervised::new("dns", Vec::new(), 1, dir.join("logs/dns.log")),
            group: Group::default(),
        };
        let started = tokio::select! {
            started = self.start(&mut system, &dir, &db, &display) => started,
            _ = term.recv() => Err(anyhow::anyhow!("stopped while starting")),
            _ = int.recv() => Err(anyhow::anyhow!("stopped while starting")),
        };
        let election = match started {
            Ok(election) => election,
            Err(error) => {
                system.stop(&display, &store).await;
                return Err(error);
            }
        };
        let step = display.step(&format!("{} LB servers", self.lbs));
        match self.wait_for_lbs(&store, &mut term, &mut int).await {
            Ok(true) => step.done(&format!("serving on 127.0.0.11+ port {}", self.lb_port)),
            Ok(false) => {
                step.done("stopped while starting");
                system.stop(&display, &store).await;
                return Ok(());
            }
            Err(error) => {
                step.failed(&format!("{error:#}"));
                system.stop(&display, &store).await;
                return Err(error);
            }
        }
        display.summary(&self.summary(&dir, &token, &election));

        let outcome = self
            .supervise(&mut system, &store, &display, &mut term, &mut int)
            .await;
        system.stop(&display, &store).await;
        outcome
    }

    /// Creates the pool `demo` and its backends, unless the database has it already (a resumed
    /// `--dir`): then the configuration stays as it was left. Returns whether it resumed.
    async fn seed(&self, store: &SqlStore) -> Result<bool> {
        let config = store.config().await?;
        if config.pools.iter().any(|pool| pool.spec.name == POOL) {
            return Ok(true);
        }
        store
            .apply(Write::CreatePool(PoolSpec {
                name: POOL.into(),
                algorithm: AlgorithmSpec::named("round_robin"),
                hash_key: "client_ip".into(),
                dns_name: Some(DNS_NAME.into()),
                policy: Default::default(),
            }))
            .await?;
        for address in self.backend_addresses() {
            store
                .apply(Write::AddBackend {
                    pool: POOL.into(),
                    address: address.to_string(),
                    weight: 1,
                })
                .await?;
        }
        Ok(false)
    }

    /// Every address this run listens on must be free before anything starts: otherwise a child
    /// fails halfway ("backend-1 did not become ready") and what started must be taken down.
    fn check_ports(&self) -> Result<()> {
        let taken = |address: SocketAddr, udp: bool| {
            std::net::TcpListener::bind(address).is_err()
                || udp && std::net::UdpSocket::bind(address).is_err()
        };
        let mut wanted = vec![
            (self.admin, false, "--admin ADDR"),
            (self.dns, true, "--dns ADDR"),
        ];
        for address in self.backend_addresses() {
            wanted.push((address, false, "--backend-port PORT"));
        }
        // The autoscaler may keep up to twice --lbs.
        for n in 0..self.lbs.saturating_mul(2).min(200) {
            let ip = std::net::Ipv4Addr::new(127, 0, 0, 11u8.saturating_add(n as u8));
            wanted.push(((ip, self.lb_port).into(), false, "--lb-port PORT"));
        }
        for (address, udp, flag) in wanted {
            if taken(address, udp) {
                bail!(
                    "{address} is in use (another `ballast up`, or another program, listens \
                     there); nothing was started: stop it, or move this one with {flag}"
                );
            }
        }
        Ok(())
    }

    fn backend_addresses(&self) -> Vec<SocketAddr> {
        (0..self.backends)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], self.backend_port.saturating_add(i))))
            .collect()
    }

    /// Starts Redis (per `--redis`), the backends, control and DNS; returns how the leader is
    /// elected, for the summary.
    async fn start(
        &self,
        system: &mut System,
        dir: &Path,
        db: &str,
        display: &Display,
    ) -> Result<String> {
        let (redis_urls, election) = match self.redis.as_str() {
            "off" => (Vec::new(), "the database lease (--redis off)".to_owned()),
            "auto" if ballast_bench::find_program("redis-server", &[]).is_none() => (
                Vec::new(),
                "the database lease (redis-server is not installed)".to_owned(),
            ),
            "auto" => {
                let step = display.step(&format!("{REDIS_NODES} private Redis nodes"));
                for i in 1..=REDIS_NODES {
                    let node = LocalNode::start(&dir.join(format!("redis-{i}")))
                        .await
                        .context("starting a private Redis node")?;
                    system.redis.push(node);
                }
                let urls: Vec<String> = system.redis.iter().map(LocalNode::url).collect();
                step.done(&urls.join(" "));
                let election = format!("Redlock over {REDIS_NODES} private Redis nodes");
                (urls, election)
            }
            urls => {
                let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
                let election = format!(
                    "Redlock over {}",
                    ballast_telemetry::redact(&urls.join(", "))
                );
                (urls, election)
            }
        };

        let step = display.step(&format!("{} demo backends", self.backends));
        for (i, address) in self.backend_addresses().into_iter().enumerate() {
            let name = format!("backend-{}", i + 1);
            let args = vec![
                "echo".into(),
                "--listen".into(),
                address.to_string(),
                "--name".into(),
                name.clone(),
            ];
            let mut backend = Supervised::new(&name, args, 1, dir.join(format!("logs/{name}.log")));
            backend.start(&mut system.group).await?;
            system.backends.push(backend);
        }
        step.done(&format!(
            "{} … in pool `{POOL}`",
            self.backend_addresses()[0]
        ));

        let step = display.step("control (admin API, dashboard, orchestrator)");
        let token_file = dir.join("token").display().to_string();
        let mut args: Vec<String> = [
            "control",
            "--db",
            db,
            "--listen",
            &self.admin.to_string(),
            "--token-file",
            &token_file,
            "--name",
            "control",
            "--autoscale",
            "rps:500",
            "--min-lbs",
            &self.lbs.to_string(),
            "--max-lbs",
            &(self.lbs * 2).to_string(),
            "--scale-interval",
            "2s",
            "--scale-down-window",
            "60s",
            "--lb-pool",
            POOL,
            "--lb-port",
            &self.lb_port.to_string(),
            "--lb-log-dir",
            &dir.join("logs").display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        if !redis_urls.is_empty() {
            args.extend(["--redis".to_owned(), redis_urls.join(",")]);
        }
        system.control = Supervised::new("control", args, 1, dir.join("logs/control.log"));
        system.control.start(&mut system.group).await?;
        step.done(&format!("http://{}", self.admin));

        let step = display.step("DNS");
        let args = [
            "dns",
            "--db",
            db,
            "--listen",
            &self.dns.to_string(),
            "--zone",
            ZONE,
        ]
        .map(str::to_owned)
        .to_vec();
        system.dns = Supervised::new("dns", args, 1, dir.join("logs/dns.log"));
        system.dns.start(&mut system.group).await?;
        step.done(&format!("{DNS_NAME} on {}", self.dns));
        Ok(election)
    }

    /// Waits until `--lbs` LB servers serve (60 s at most); `false` when stopped meanwhile.
    async fn wait_for_lbs(
        &self,
        store: &SqlStore,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) -> Result<bool> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let serving = store
                .lb_servers()
                .await?
                .iter()
                .filter(|lb| lb.is_live())
                .count();
            if serving >= self.lbs as usize {
                return Ok(true);
            }
            if Instant::now() > deadline {
                bail!("{serving} of {} LB servers serve after 60 s", self.lbs);
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = term.recv() => return Ok(false),
                _ = int.recv() => return Ok(false),
            }
        }
    }

    /// What is where, and what to try next.
    fn summary(&self, dir: &Path, token: &str, election: &str) -> String {
        let lb = format!("127.0.0.11:{}", self.lb_port);
        let admin = self.admin;
        let mut env = format!("export BALLAST_TOKEN=$(cat {}/token)", dir.display());
        if admin != SocketAddr::from(([127, 0, 0, 1], 9000)) {
            env.push_str(&format!(" BALLAST_CONTROL=http://{admin}"));
        }
        // The hints say `ballast …`; when that is not this binary (cargo run, a fresh clone),
        // say how to make it so.
        let this = std::env::current_exe()
            .ok()
            .and_then(|p| p.canonicalize().ok());
        let found = ballast_bench::find_program("ballast", &[]).and_then(|p| p.canonicalize().ok());
        if let Some(this) = this.filter(|this| found.as_ref() != Some(this))
            && let Some(bin) = this.parent()
        {
            env = format!("export PATH={}:$PATH\n  {env}", bin.display());
        }
        format!(
            "\nBallast is up.\n\
             \n  dashboard     http://{admin}/#token={token}\
             \n  admin token   {token} (also in {dir}/token)\
             \n  LB servers    {lb} … (the orchestrator keeps {lbs})\
             \n  DNS           {dns}: {DNS_NAME}\
             \n  leader        elected by {election}\
             \n  logs          {dir}/logs/\
             \n\nTry:\
             \n  curl http://{lb}/\
             \n  dig @{ip} -p {dns_port} {DNS_NAME} +short\
             \n  {env}\
             \n  ballast pool show {POOL}\
             \n  ballast pool set-algorithm {POOL} --algorithm least_connections\
             \n  ballast echo --listen 127.0.0.1:9200 --name extra &\
             \n  ballast backend add {POOL} 127.0.0.1:9200\
             \n  ballast backend drain {POOL} {first_backend}\
             \n\nCtrl-C stops everything.\n",
            dir = dir.display(),
            lbs = self.lbs,
            dns = self.dns,
            ip = self.dns.ip(),
            dns_port = self.dns.port(),
            first_backend = self.backend_addresses()[0],
        )
    }

    /// Restarts children that die and shows the status until SIGTERM or SIGINT.
    async fn supervise(
        &self,
        system: &mut System,
        store: &SqlStore,
        display: &Display,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) -> Result<()> {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
            }
            for child in system
                .backends
                .iter_mut()
                .chain([&mut system.control, &mut system.dns])
            {
                if let Some(status) = child.exited() {
                    display.event(&format!(
                        "{} exited ({status}); starting it again",
                        child.name
                    ));
                }
                if !child.running() {
                    child.restarts += 1;
                    match child.start(&mut system.group).await {
                        Ok(()) => display.event(&format!(
                            "{} started again (restart {})",
                            child.name, child.restarts
                        )),
                        Err(error) => {
                            display.event(&format!("{error:#}; trying again in a second"));
                        }
                    }
                }
            }
            for node in &mut system.redis {
                if !node.is_running() {
                    display.event(&format!("Redis {} exited; starting it again", node.url()));
                    if let Err(error) = node.restart().await {
                        display.event(&format!("{error:#}"));
                    }
                }
            }
            if let Ok(status) = Status::read(store).await {
                display.status(&status);
            }
        }
    }
}

impl System {
    /// Control first (it drains the LBs it started while the backends still answer), then DNS,
    /// the backends and Redis; anything left in the group is killed last.
    async fn stop(&mut self, display: &Display, store: &SqlStore) {
        display.event(
            "stopping: the LB servers drain first (each accepts a few seconds more while DNS \
             drops it, then finishes what is in flight)",
        );
        // The drain takes seconds: the status shows the LBs going from serving to draining.
        let control = self.control.stop(Duration::from_secs(50));
        tokio::pin!(control);
        loop {
            tokio::select! {
                () = &mut control => break,
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    if let Ok(status) = Status::read(store).await {
                        display.status(&status);
                    }
                }
            }
        }
        self.dns.stop(Duration::from_secs(5)).await;
        for backend in &mut self.backends {
            backend.stop(Duration::from_secs(5)).await;
        }
        for node in &mut self.redis {
            node.kill().await;
        }
        self.group.kill_all();
        display.event("stopped");
    }
}

/// The admin token in `DIR/token`, kept across starts so that an exported `BALLAST_TOKEN` and an
/// open dashboard keep working; a fresh one (readable by this user alone) the first time, or
/// when `rotate`.
fn admin_token(dir: &Path, rotate: bool) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("token");
    if !rotate
        && let Ok(kept) = std::fs::read_to_string(&path)
        && !kept.trim().is_empty()
    {
        return Ok(kept.trim().to_owned());
    }
    let token = format!("{:032x}", fastrand::u128(..));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{token}")?;
    Ok(token)
}

/// `DIR/up.pid` while `ballast up` runs there: a second one on the same directory is refused.
struct PidFile(PathBuf);

impl PidFile {
    fn claim(dir: &Path) -> Result<Self> {
        let path = dir.join("up.pid");
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Some(pid) = text
                .trim()
                .parse()
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            && rustix::process::test_kill_process(pid).is_ok()
        {
            bail!(
                "ballast up already runs on {} (pid {}); stop it first",
                dir.display(),
                text.trim()
            );
        }
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
