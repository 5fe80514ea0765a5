//! The whole system across hosts, as `ballast up` runs it on loopback: the configuration
//! database (SQLite, a file every host opens, so no host of its own; or PostgreSQL on the host
//! `db`, which faults can cut off), Redis nodes for the leader election, `ballast control`
//! instances (one leads), managed LB servers, demo backends, `ballast dns`, and a client host
//! with nothing on it, from which workloads run.
//!
//! The lab itself reads and writes the database past the network: the SQLite file, or
//! PostgreSQL's Unix socket. So what it observes is never cut off by the faults it injects.
//!
//! Every host has a fixed address, so that a user reads the same map each time:
//!
//! | host | address |
//! |---|---|
//! | client | 198.18.0.2 |
//! | dns | 198.18.0.3 (port 53) |
//! | db | 198.18.0.4 (PostgreSQL, port 5432) |
//! | control-N | 198.18.0.(10+N) (port 9000) |
//! | redis-N | 198.18.0.(20+N) (port 6379) |
//! | lb-N | 198.18.0.(50+N) (port 8080, admin 9090) |
//! | backend-N | 198.18.0.(100+N) (port 8080) |

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ballast_config::{AlgorithmSpec, Health, Liveness, PoolPolicy, PoolSpec, SqlStore, Write};
use serde::{Deserialize, Serialize};

use crate::net::{Host, Network};
use crate::process::{self, Ready};
use crate::state::{self, Launch, State};
use crate::wait;

/// The demo pool every LB serves.
pub const POOL: &str = "demo";
/// The zone `ballast dns` serves, and the pool's name in it.
pub const ZONE: &str = "ballast.local";
/// The demo pool's name in DNS.
pub const DNS_NAME: &str = "lb.demo.ballast.local";
/// How often the orchestrator checks each backend: the unit the scenarios' bounds are in.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// The controls' leader lease: a cut-off leader is replaced this long after its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// How many of each part.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Shape {
    pub lbs: u8,
    pub backends: u8,
    pub controls: u8,
    /// Redis nodes for the leader election (0: the database lease).
    pub redis: u8,
    pub db: Db,
    /// Controls keep leading after losing their lease: a broken system on purpose, for a
    /// check to show it catches one (`--unsafe-ignore-lease-loss`).
    pub leaders_ignore_lease_loss: bool,
}

/// Where the configuration lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Db {
    /// A file every host opens: no network between the parts and the database.
    Sqlite,
    /// A server on a host of its own, reached over the lab's network.
    Postgres,
}

impl std::str::FromStr for Db {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" => Ok(Self::Postgres),
            other => Err(format!("`{other}`: sqlite or postgres")),
        }
    }
}

impl Shape {
    fn check(&self) -> Result<()> {
        let within = |what: &str, n: u8, most: u8| {
            if (1..=most).contains(&n) {
                Ok(())
            } else {
                bail!("--{what}: from 1 to {most}")
            }
        };
        within("lbs", self.lbs, 40)?;
        within("backends", self.backends, 99)?;
        within("controls", self.controls, 9)?;
        if self.redis > 9 {
            bail!("--redis: from 0 to 9");
        }
        Ok(())
    }
}

/// A running lab.
#[allow(missing_docs)]
#[derive(Debug)]
pub struct Lab {
    pub dir: PathBuf,
    pub state: State,
    /// The configuration database's URL, as every host opens it.
    db: String,
    /// The same database's URL for the lab's own reads and writes (past the network).
    observer_db: String,
    token: String,
}

/// The address of the `n`th (from 1) host of a kind.
pub fn address(kind: &str, n: u8) -> Ipv4Addr {
    let last = match kind {
        "client" => 2,
        "dns" => 3,
        "db" => 4,
        "control" => 10 + n,
        "redis" => 20 + n,
        "lb" => 50 + n,
        _ => 100 + n,
    };
    Ipv4Addr::new(198, 18, 0, last)
}

/// Where clients reach the `n`th LB.
pub fn lb_address(n: u8) -> SocketAddr {
    (address("lb", n), 8080).into()
}

/// Where the `n`th backend listens.
pub fn backend_address(n: u8) -> SocketAddr {
    (address("backend", n), 8080).into()
}

impl Lab {
    /// Builds the network in `dir` and starts every part on it, `program` being this `ballast`
    /// binary; `step` hears what starts. On any failure what was made is removed.
    pub async fn up(dir: &Path, shape: Shape, program: &Path, step: &dyn Fn(&str)) -> Result<Self> {
        shape.check()?;
        std::fs::create_dir_all(dir).with_context(|| format!("--dir {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("--dir {}", dir.display()))?;
        if state::clean_stale(&dir)? {
            step("removed what an earlier lab in this directory left behind");
        }
        let mut network = Network::plan();
        network.add("client", address("client", 0));
        network.add("dns", address("dns", 0));
        if shape.db == Db::Postgres {
            network.add("db", address("db", 0));
        }
        for n in 1..=shape.controls {
            network.add(&format!("control-{n}"), address("control", n));
        }
        // Without redis-server the controls elect their leader by the database lease.
        let redis_server = ballast_bench::find_program("redis-server", &[]);
        let redis_nodes = if redis_server.is_some() {
            shape.redis
        } else {
            0
        };
        for n in 1..=redis_nodes {
            network.add(&format!("redis-{n}"), address("redis", n));
        }
        for n in 1..=shape.lbs {
            network.add(&format!("lb-{n}"), address("lb", n));
        }
        for n in 1..=shape.backends {
            network.add(&format!("backend-{n}"), address("backend", n));
        }
        let (db, observer_db) = match shape.db {
            Db::Sqlite => {
                let url = format!("sqlite://{}", dir.join("ballast.db").display());
                (url.clone(), url)
            }
            Db::Postgres => (
                format!("postgres://postgres@{}:5432/postgres", address("db", 0)),
                format!(
                    "postgres://postgres@localhost/postgres?host={}",
                    dir.join("postgres").display()
                ),
            ),
        };
        let mut lab = Self {
            db,
            observer_db,
            token: format!("{:032x}", fastrand::u128(..)),
            state: State {
                owner: std::process::id(),
                network,
                launches: Vec::new(),
            },
            dir,
        };
        // Written before anything exists, so that a crash halfway leaves a map to clean by.
        lab.state.write(&lab.dir)?;
        let started = lab
            .start(shape, program, redis_server.as_deref(), step)
            .await;
        if let Err(error) = started {
            lab.down();
            return Err(error);
        }
        Ok(lab)
    }

    async fn start(
        &mut self,
        shape: Shape,
        program: &Path,
        redis_server: Option<&Path>,
        step: &dyn Fn(&str),
    ) -> Result<()> {
        self.state.network.create()?;
        step(&format!(
            "network bl{}: {} hosts on a bridge, 198.18.0.0/24",
            self.state.network.id,
            self.state.network.hosts.len()
        ));
        if shape.db == Db::Postgres {
            self.start_postgres()?;
            step("PostgreSQL on db");
        }
        self.seed(shape).await?;
        let token_file = self.dir.join("token");
        std::fs::write(&token_file, format!("{}\n", self.token))
            .with_context(|| format!("writing {}", token_file.display()))?;
        let token_file = token_file.display().to_string();
        let ballast = |host: &str, args: Vec<String>, lines: usize| Launch {
            host: host.to_owned(),
            program: program.to_owned(),
            args,
            ready: Ready::Lines(lines),
        };
        let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

        let mut redis_urls = Vec::new();
        let redis_hosts: Vec<Host> = self
            .state
            .network
            .hosts
            .iter()
            .filter(|h| h.name.starts_with("redis-"))
            .cloned()
            .collect();
        for host in &redis_hosts {
            let launch = self.redis_launch(host, redis_server.context("redis-server")?, &[])?;
            self.launch(launch)?;
            redis_urls.push(format!("redis://{}:6379", host.address));
        }
        if !redis_hosts.is_empty() {
            step(&format!("{} Redis nodes", redis_hosts.len()));
        }

        for n in 1..=shape.backends {
            let name = format!("backend-{n}");
            let listen = backend_address(n).to_string();
            self.launch(ballast(
                &name,
                args(&["echo", "--listen", &listen, "--name", &name]),
                1,
            ))?;
        }
        step(&format!(
            "{} backends (ballast echo) in pool `{POOL}`",
            shape.backends
        ));

        let lease_ttl = format!("{}ms", LEASE_TTL.as_millis());
        for n in 1..=shape.controls {
            let name = format!("control-{n}");
            let listen = SocketAddr::from((address("control", n), 9000)).to_string();
            let mut list = args(&[
                "control",
                "--db",
                &self.db,
                "--listen",
                &listen,
                "--token-file",
                &token_file,
                "--name",
                &name,
                "--lease-ttl",
                &lease_ttl,
                "--scrape-interval",
                "1s",
            ]);
            if !redis_urls.is_empty() {
                list.extend(["--redis".to_owned(), redis_urls.join(",")]);
            }
            if shape.leaders_ignore_lease_loss {
                list.push("--unsafe-ignore-lease-loss".to_owned());
            }
            self.launch(ballast(&name, list, 1))?;
        }
        step(&format!(
            "{} control (admin API, orchestrator)",
            shape.controls
        ));

        for n in 1..=shape.lbs {
            let name = format!("lb-{n}");
            let listen = lb_address(n).to_string();
            let admin = SocketAddr::from((address("lb", n), 9090)).to_string();
            self.launch(ballast(
                &name,
                args(&[
                    "lb",
                    "--db",
                    &self.db,
                    "--name",
                    &name,
                    "--listen",
                    &listen,
                    "--pool",
                    POOL,
                    "--admin",
                    &admin,
                    "--workers",
                    "1",
                    "--pull-interval",
                    "250ms",
                ]),
                2,
            ))?;
        }
        step(&format!("{} LB servers", shape.lbs));

        let dns = SocketAddr::from((address("dns", 0), 53)).to_string();
        self.launch(ballast(
            "dns",
            args(&["dns", "--db", &self.db, "--listen", &dns, "--zone", ZONE]),
            1,
        ))?;
        step(&format!("DNS: {DNS_NAME} on {dns}"));

        self.wait_until_healthy(shape.backends).await?;
        self.wait_until_lbs_up(shape.lbs).await?;
        step("every backend checked healthy, every LB seen alive");
        Ok(())
    }

    /// Starts `launch` and records it (for `fault restart`).
    fn launch(&mut self, launch: Launch) -> Result<()> {
        let host = self.state.network.host(&launch.host)?.clone();
        process::start(&host, &launch, &self.dir.join("logs"))?;
        self.state.launches.push(launch);
        self.state.write(&self.dir)
    }

    /// How `redis-server` runs on `host`: on its lab address, port 6379, keeping nothing on
    /// disk; `extra` adds to its arguments.
    fn redis_launch(&self, host: &Host, redis_server: &Path, extra: &[String]) -> Result<Launch> {
        let data = self.dir.join(&host.name);
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let mut args: Vec<String> = [
            "--bind",
            &host.address.to_string(),
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            &data.display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend_from_slice(extra);
        Ok(Launch {
            host: host.name.clone(),
            program: redis_server.to_owned(),
            args,
            ready: Ready::Contains("Ready to accept connections".into()),
        })
    }

    /// Starts a Redis server on the client host, for a resource that workloads guard with a
    /// lock (fencing tokens): it is never cut off from the clients. Returns its URL on the lab's
    /// network and the URL of its Unix socket, for the lab's own reads (past the network).
    pub fn start_resource_redis(&mut self) -> Result<(String, String)> {
        let redis_server = ballast_bench::find_program("redis-server", &[])
            .context("the resource needs redis-server (Debian's redis-server package)")?;
        let host = self.host("client")?.clone();
        let socket = self.dir.join("client").join("redis.sock");
        let launch = self.redis_launch(
            &host,
            &redis_server,
            &[
                "--unixsocket".to_owned(),
                socket.display().to_string(),
                "--unixsocketperm".to_owned(),
                "700".to_owned(),
            ],
        )?;
        self.launch(launch)?;
        Ok((
            format!("redis://{}:6379", host.address),
            format!("unix://{}", socket.display()),
        ))
    }

    /// A fresh PostgreSQL cluster in `DIR/postgres`, serving the lab's network on the `db` host
    /// and the lab itself on a Unix socket in the same directory. PostgreSQL refuses to run as
    /// root: the cluster belongs to the `postgres` user.
    fn start_postgres(&mut self) -> Result<()> {
        let bin = postgres_bin()?;
        let data = self.dir.join("postgres");
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let data_arg = data.display().to_string();
        crate::tool::run("chown", &["postgres:postgres", &data_arg])?;
        crate::tool::run(
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                &bin.join("initdb").display().to_string(),
                "-D",
                &data_arg,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )
        .with_context(|| {
            format!(
                "initdb in {data_arg} as the postgres user (it must reach --dir; one under /tmp \
                 does)"
            )
        })?;
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).unwrap_or_default();
        rules.push_str("host all all 198.18.0.0/24 trust\n");
        std::fs::write(&hba, rules).with_context(|| format!("writing {}", hba.display()))?;
        let host = address("db", 0).to_string();
        self.launch(Launch {
            host: "db".to_owned(),
            program: "runuser".into(),
            args: [
                "-u",
                "postgres",
                "--",
                &bin.join("postgres").display().to_string(),
                "-D",
                &data_arg,
                "-k",
                &data_arg,
                "-h",
                &host,
                "-p",
                "5432",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
            ready: Ready::Contains("database system is ready to accept connections".into()),
        })
    }

    /// A fresh database with the pool `demo`: health checks every second, short timeouts and
    /// two retries, so that faults show within seconds.
    async fn seed(&self, shape: Shape) -> Result<()> {
        for file in ["ballast.db", "ballast.db-wal", "ballast.db-shm"] {
            let _ = std::fs::remove_file(self.dir.join(file));
        }
        let store = self.store().await?;
        store
            .apply(Write::CreatePool(PoolSpec {
                name: POOL.into(),
                algorithm: AlgorithmSpec::named("round_robin"),
                hash_key: "client_ip".into(),
                dns_name: Some(DNS_NAME.into()),
                policy: PoolPolicy {
                    retries: Some(2),
                    connect_timeout_ms: Some(500),
                    response_timeout_ms: Some(2000),
                    health_interval_ms: Some(millis(HEALTH_INTERVAL)),
                    health_timeout_ms: Some(500),
                    // A silent backend's requests time out together (round robin keeps sending
                    // it some until it is ejected): the default budget (3 retries in progress)
                    // would answer the rest of the scenarios' 8 clients 504.
                    retry_budget_min: Some(16),
                    ..PoolPolicy::default()
                },
            }))
            .await?;
        for n in 1..=shape.backends {
            store
                .apply(Write::AddBackend {
                    pool: POOL.into(),
                    address: backend_address(n).to_string(),
                    weight: 1,
                })
                .await?;
        }
        Ok(())
    }

    /// Waits (60 s at most) until the orchestrator has checked every backend healthy.
    async fn wait_until_healthy(&self, backends: u8) -> Result<()> {
        let store = self.store().await?;
        wait::until(Duration::from_secs(60), async || {
            let healthy = backend_health(&store)
                .await?
                .iter()
                .filter(|(_, health)| *health == Health::Healthy)
                .count();
            Ok(if healthy >= usize::from(backends) {
                Ok(())
            } else {
                Err(format!("{healthy} of {backends} backends checked healthy"))
            })
        })
        .await
    }

    /// Waits (60 s at most) until the orchestrator has seen every LB alive.
    async fn wait_until_lbs_up(&self, lbs: u8) -> Result<()> {
        let store = self.store().await?;
        wait::until(Duration::from_secs(60), async || {
            let up = store
                .lb_servers()
                .await?
                .iter()
                .filter(|lb| lb.liveness == Liveness::Up)
                .count();
            Ok(if up >= usize::from(lbs) {
                Ok(())
            } else {
                Err(format!("{up} of {lbs} LB servers seen alive"))
            })
        })
        .await
    }

    /// The configuration database, as the lab reads and writes it: past the network, so
    /// faults never cut it off.
    pub async fn store(&self) -> Result<SqlStore> {
        SqlStore::connect(&self.observer_db)
            .await
            .context("the lab's database")
    }

    /// The admin token every control accepts.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Result<&Host> {
        self.state.network.host(name)
    }

    /// Where things are, for a user: each host and its address, the ports, the logs.
    pub fn summary(&self) -> Vec<String> {
        let hosts = &self.state.network.hosts;
        let mut lines: Vec<String> = hosts
            .iter()
            .map(|host| format!("  {:<12} {}", host.name, host.address))
            .collect();
        let lbs: Vec<&Host> = hosts.iter().filter(|h| h.name.starts_with("lb-")).collect();
        if let (Some(first), Some(last)) = (lbs.first(), lbs.last()) {
            lines.push(String::new());
            lines.push(format!(
                "LB servers listen on port 8080 ({} … {}), control on 9000, DNS on 53.",
                first.address, last.address
            ));
        }
        lines.push(format!("Logs in {}/logs/.", self.dir.display()));
        lines
    }

    /// Stops every process and removes the network and the state file.
    pub fn down(&self) {
        self.state.network.remove();
        let _ = State::clear(&self.dir);
    }
}

/// Each backend of the demo pool by address, with the orchestrator's verdict on it.
pub async fn backend_health(store: &SqlStore) -> Result<Vec<(String, Health)>> {
    Ok(store
        .config()
        .await?
        .pools
        .iter()
        .filter(|p| p.spec.name == POOL)
        .flat_map(|p| &p.backends)
        .map(|b| (b.address.clone(), b.health))
        .collect())
}

/// The directory with `initdb` and `postgres` (Debian keeps them off the PATH), newest version.
fn postgres_bin() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    found.retain(|bin| bin.join("initdb").is_file() && bin.join("postgres").is_file());
    found.sort();
    found
        .pop()
        .context("--db postgres needs PostgreSQL's server (Debian's postgresql package)")
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
