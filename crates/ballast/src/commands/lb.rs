//! `ballast lb`: one LB server, static (`--listen`, `--backend …`, or a TOML file with `--config`)
//! or managed (`--db URL --listen ADDR --pool NAME`, repeated for each listener, or `--db URL
//! --config FILE` with the file's listeners: the pools and their backends come from the
//! configuration database and follow every change). Prints one `listening …` line per listener
//! (and `admin …`) once it is ready, and exits 0 after SIGTERM or SIGINT has drained it. SIGHUP
//! reloads `--config`; `--check-config FILE` only checks one.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ballast_config::HashKeySpec;
use ballast_config::route::{OnRedisError, RateFields, RateLimitSpec, RateScope};
use ballast_config::{FollowOptions, Pool, PoolPolicy, PoolSpec, ProxyProtocol, UpstreamProtocol};
use ballast_proxy::settings::{BackendAddress, Listener, Mode, Serves, Settings, TlsFiles};
use ballast_proxy::{Bound, Managed, Reload, Source};
use clap::{Args, ValueEnum};

use super::algorithm_args::AlgorithmArgs;

#[derive(Debug, Clone, Args)]
#[group(id = "cap", multiple = true, args = ["max_requests", "max_connections"])]
pub(crate) struct LbArgs {
    /// Where clients connect (port 0: any free port, printed when ready). Repeat for several
    /// listeners; in managed mode each serves the --pool in the same position.
    #[arg(long, value_name = "ADDR", required_unless_present_any = ["config", "check_config"])]
    listen: Vec<SocketAddr>,
    /// A backend, ADDR or ADDR=WEIGHT; repeat for each.
    #[arg(long, value_name = "ADDR[=WEIGHT]", required_unless_present_any = ["config", "db", "check_config"])]
    backend: Vec<BackendAddress>,
    /// Managed mode: follow this configuration database (sqlite://PATH or postgres://…).
    #[arg(long, value_name = "URL", conflicts_with = "backend", required_unless_present_any = ["backend", "config", "check_config"])]
    db: Option<String>,
    /// Managed mode: a session connection to the same database for PostgreSQL's LISTEN, when --db goes
    /// through a transaction-pooling PgBouncer (which cannot keep one) [default: --db].
    #[arg(long, value_name = "URL", requires = "db")]
    listen_db: Option<String>,
    /// Managed mode: this LB's name in the fleet; it heartbeats its addresses, pools and applied
    /// revision into the database every few seconds.
    #[arg(long, value_name = "NAME", requires = "db")]
    name: Option<String>,
    /// Managed mode: the pool the --listen in the same position serves (one for all, or one per
    /// --listen).
    #[arg(long, value_name = "NAME", requires = "db", conflicts_with = "config")]
    pool: Vec<String>,
    /// Managed mode: the route table the --listen in the same position serves, routing each
    /// request by host, path, method and headers to the table's pools (one for all, or one per
    /// --listen); instead of --pool.
    #[arg(long, value_name = "TABLE", requires = "db", conflicts_with_all = ["config", "pool"])]
    routes: Vec<String>,
    /// Managed mode: keep the last applied configuration in this file, and start from it when
    /// the database cannot be reached.
    #[arg(long, value_name = "FILE", requires = "db")]
    cache: Option<PathBuf>,
    /// Managed mode: do not listen for pushed changes; rely on --pull-interval alone.
    #[arg(long, requires = "db")]
    pull_only: bool,
    /// Managed mode: how often to compare revisions with the database, whatever push said.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pull_interval: Duration,
    #[command(flatten)]
    algorithm: AlgorithmArgs,
    /// What hash-based algorithms hash: client_ip, header:NAME, cookie:NAME or path.
    #[arg(long, value_name = "SOURCE", default_value = "client_ip")]
    hash_key: HashKeySpec,
    /// Every connection opens with a PROXY protocol header (v1 or v2) from the load balancer in
    /// front (an NLB, HAProxy's send-proxy), whose client address is then used everywhere.
    #[arg(long)]
    proxy_protocol: bool,
    /// Proxy HTTP requests or raw TCP connections.
    #[arg(long, value_enum, default_value_t = ModeArg::Http)]
    mode: ModeArg,
    /// What the LB speaks to the backends: http1, h2c (HTTP/2 in clear text, as gRPC servers
    /// speak), h2 (HTTP/2 over TLS) or auto (over TLS, what each backend chooses by ALPN).
    #[arg(long, value_name = "PROTOCOL", default_value = "http1", conflicts_with_all = ["config", "db"])]
    protocol: UpstreamProtocol,
    /// Open each backend connection with a PROXY protocol header naming the client (v1 or v2).
    #[arg(long, value_name = "VERSION", conflicts_with_all = ["config", "db"])]
    send_proxy_protocol: Option<ProxyProtocol>,
    /// A backend that joins or comes back ramps from a tenth of its share to all of it over
    /// this long (weighted_round_robin, least_request, least_connections, random).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with_all = ["config", "db"])]
    slow_start: Option<Duration>,
    /// Requests one backend may have in flight at once, over every worker: past it, another
    /// backend, the queue (--queue-size) or 503 with Retry-After.
    #[arg(long, value_name = "N", conflicts_with_all = ["config", "db"])]
    max_requests: Option<u32>,
    /// Connections open to one backend, busy or idle, over every worker (HTTP/1.1 and TCP):
    /// each carries one request at a time, so it caps requests in flight as --max-requests does.
    #[arg(long, value_name = "N", conflicts_with_all = ["config", "db"])]
    max_connections: Option<u32>,
    /// Requests that may wait for a backend under its --max-requests or --max-connections
    /// [default: 0].
    #[arg(long, value_name = "N", requires = "cap")]
    queue_size: Option<u32>,
    /// How long a request may wait in the queue [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "cap")]
    queue_timeout: Option<Duration>,
    /// Keep each client on the backend it first reached, by a cookie of this name (set by the
    /// LB, an opaque token); a client whose backend stops taking traffic moves on.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["config", "db"])]
    sticky_cookie: Option<String>,
    /// Speak TLS to the backends, verifying their certificates against this PEM file of CAs.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["config", "db", "backend_insecure"])]
    backend_ca: Option<String>,
    /// Speak TLS to the backends without verifying their certificates (a warning is logged).
    #[arg(long, conflicts_with_all = ["config", "db"])]
    backend_insecure: bool,
    /// The name sent to TLS backends and checked in their certificates [default: their IPs].
    #[arg(long, value_name = "NAME", conflicts_with_all = ["config", "db"])]
    backend_server_name: Option<String>,
    /// Event-loop threads [default: the number of cores].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Terminate TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Read listeners, pools and settings from a TOML file instead (with --db: the listeners and
    /// settings; the pools come from the database). SIGHUP reads it again and applies it whole,
    /// or, if it is invalid or changes what takes a restart, changes nothing.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["listen", "backend", "tls_cert"])]
    config: Option<PathBuf>,
    /// Check a configuration file (with the other flags, as --config would run it) and exit: 0
    /// if it is valid, 1 naming what is not (as `nginx -t`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["config", "listen", "backend", "tls_cert"])]
    check_config: Option<PathBuf>,
    /// Connecting to a backend.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    connect_timeout: Option<Duration>,
    /// A client sending its request headers (also: a new connection's first request, and a TLS
    /// handshake) [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    header_timeout: Option<Duration>,
    /// A backend starting its response.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    response_timeout: Option<Duration>,
    /// Idle connections, client (HTTP and TCP) and backend, and writes to a client that stopped
    /// reading [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// Read request bodies up to this size whole before choosing a backend (0: stream every
    /// body) [default: 64KiB].
    #[arg(long, value_name = "SIZE")]
    request_buffering: Option<ballast_proxy::settings::ByteSize>,
    /// Extra tries on another backend for idempotent requests (0: none) [default: 2].
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// Consecutive failures that eject a backend (0: never) [default: 5].
    #[arg(long, value_name = "N")]
    eject_after: Option<u32>,
    /// How long SIGTERM waits for requests in flight.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    drain_timeout: Option<Duration>,
    /// After SIGTERM, keep accepting this long while the fleet (and DNS) learns this LB leaves,
    /// then close the listeners and drain [default: 0s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    drain_delay: Option<Duration>,
    /// Write one line per HTTP request to this file (`-`: standard output); SIGUSR1 reopens it
    /// (logrotate).
    #[arg(long, value_name = "PATH")]
    access_log: Option<ballast_proxy::access_log::LogTarget>,
    /// How access log lines are written: json, or nginx's combined [default: json].
    #[arg(long, value_name = "FORMAT", requires = "access_log")]
    access_log_format: Option<ballast_proxy::access_log::LogFormat>,
    /// Tell clients each request's ID in X-Request-Id (backends are told it whenever request
    /// IDs are on: with the access log, or with this).
    #[arg(long)]
    request_id_header: bool,
    /// A Redis node routes with `rate_scope = "fleet"` count on (repeat for several; a client's
    /// key picks its node): redis://[:PASSWORD@]HOST:PORT.
    #[arg(long, value_name = "URL")]
    rate_limit_redis: Vec<String>,
    /// At most this many requests (HTTP) or connections (TCP) from one client per second,
    /// minute or hour on each --listen (e.g. 100/s, 6000/m); past it 429 with Retry-After, or
    /// the connection closed.
    #[arg(long, value_name = "RATE", conflicts_with = "config")]
    rate: Option<String>,
    /// Requests one client may send at once above --rate [default: the rate's count].
    #[arg(long, value_name = "N", requires = "rate")]
    burst: Option<u32>,
    /// What tells clients apart for --rate: client_ip, header:NAME, cookie:NAME or path
    /// [default: client_ip].
    #[arg(long, value_name = "KEY", requires = "rate")]
    rate_key: Option<String>,
    /// Where --rate is counted: local (each LB for itself) or fleet (over --rate-limit-redis)
    /// [default: local].
    #[arg(long, value_name = "SCOPE", requires = "rate", value_parser = |s: &str| s.parse::<RateScope>())]
    rate_scope: Option<RateScope>,
    /// With --rate-scope fleet: allow or deny requests when Redis does not answer in time
    /// [default: allow].
    #[arg(long, value_name = "POLICY", requires = "rate_scope", value_parser = |s: &str| s.parse::<OnRedisError>())]
    on_redis_error: Option<OnRedisError>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Http,
    Tcp,
}

impl LbArgs {
    /// The rate limit --rate and its flags put on each listener, checked (errors name the flag).
    fn rate_limit(&self) -> Result<Option<RateLimitSpec>> {
        RateFields {
            rate: self.rate.as_deref(),
            burst: self.burst,
            rate_key: self.rate_key.as_deref(),
            rate_scope: self.rate_scope,
            on_redis_error: self.on_redis_error,
        }
        .spec()
        .map_err(|e| anyhow::anyhow!("--{}: {}", e.field.replace('_', "-"), e.reason))
    }

    /// The listeners the flags describe, each serving what is beside it.
    fn listeners(&self, serves: impl Iterator<Item = Serves>) -> Result<Vec<Listener>> {
        let rate_limit = self.rate_limit()?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => vec![TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }],
            _ => Vec::new(),
        };
        Ok(self
            .listen
            .iter()
            .zip(serves)
            .map(|(address, serves)| Listener {
                address: *address,
                mode: match self.mode {
                    ModeArg::Http => Mode::Http,
                    ModeArg::Tcp => Mode::Tcp,
                },
                serves,
                tls: tls.clone(),
                proxy_protocol: self.proxy_protocol,
                rate_limit: rate_limit.clone(),
            })
            .collect())
    }

    /// The settings the file and flags make, validated.
    fn settings(&self) -> Result<Settings> {
        let settings = self.unchecked_settings()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The settings the file and flags make, before they are validated.
    fn unchecked_settings(&self) -> Result<Settings> {
        let mut settings = match (&self.config, &self.db) {
            (Some(path), db) => Settings::read_file(path, db.is_some())
                .with_context(|| format!("--config {}", path.display()))?,
            (None, Some(_)) => {
                let (flag, what, names, serves): (_, _, _, fn(String) -> Serves) =
                    if self.routes.is_empty() {
                        ("--pool", "pools", &self.pool, Serves::Pool)
                    } else {
                        ("--routes", "route tables", &self.routes, Serves::Routes)
                    };
                let serves: Vec<Serves> = match (names.len(), self.listen.len()) {
                    (0, _) => bail!(
                        "--pool: managed mode needs the pool (or with --routes, the route table) \
                         each --listen serves"
                    ),
                    (1, l) => std::iter::repeat_n(serves(names[0].clone()), l).collect(),
                    (n, l) if n == l => names.iter().cloned().map(serves).collect(),
                    (n, l) => {
                        bail!("{flag}: {n} {what} for {l} listeners; give one, or one per --listen")
                    }
                };
                let mut settings = Settings::new(self.listeners(serves.into_iter())?, Vec::new());
                settings.managed = true;
                settings
            }
            (None, None) => {
                // Refused here with the flags' names; the settings' check repeats it.
                self.algorithm.algorithm()?;
                let pool = Pool {
                    spec: PoolSpec {
                        name: "default".to_owned(),
                        algorithm: self.algorithm.spec(),
                        hash_key: self.hash_key.to_string(),
                        dns_name: None,
                        policy: PoolPolicy {
                            protocol: Some(self.protocol),
                            send_proxy_protocol: self.send_proxy_protocol,
                            slow_start_ms: self.slow_start.map(millis),
                            max_requests: self.max_requests,
                            max_connections: self.max_connections,
                            queue_size: self.queue_size,
                            queue_timeout_ms: self.queue_timeout.map(millis),
                            sticky_cookie: self.sticky_cookie.clone(),
                            tls: (self.backend_ca.is_some() || self.backend_insecure)
                                .then_some(true),
                            ca_file: self.backend_ca.clone(),
                            insecure_skip_verify: self.backend_insecure.then_some(true),
                            server_name: self.backend_server_name.clone(),
                            ..PoolPolicy::default()
                        },
                    },
                    backends: self.backend.iter().map(|b| b.into_model()).collect(),
                };
                let listeners =
                    self.listeners(std::iter::repeat(Serves::Pool(pool.spec.name.clone())))?;
                Settings::new(listeners, vec![pool])
            }
        };
        settings.workers = self.workers.unwrap_or(settings.workers);
        settings.admin = self.admin.or(settings.admin);
        let t = &mut settings.timeouts;
        t.connect = self.connect_timeout.unwrap_or(t.connect);
        t.request_headers = self.header_timeout.unwrap_or(t.request_headers);
        t.backend_response = self.response_timeout.unwrap_or(t.backend_response);
        t.idle = self.idle_timeout.unwrap_or(t.idle);
        settings.retries = self.retries.unwrap_or(settings.retries);
        settings.outlier.consecutive_failures = self
            .eject_after
            .unwrap_or(settings.outlier.consecutive_failures);
        settings.drain_timeout = self.drain_timeout.unwrap_or(settings.drain_timeout);
        settings.drain_delay = self.drain_delay.unwrap_or(settings.drain_delay);
        settings.request_buffering = self.request_buffering.unwrap_or(settings.request_buffering);
        if let Some(target) = &self.access_log {
            let format = settings.access_log.as_ref().map(|log| log.format);
            settings.access_log = Some(ballast_proxy::access_log::AccessLogSettings {
                target: target.clone(),
                format: self.access_log_format.or(format).unwrap_or_default(),
            });
        }
        settings.request_id_header |= self.request_id_header;
        if !self.rate_limit_redis.is_empty() {
            settings.rate_limit_redis.clone_from(&self.rate_limit_redis);
        }
        Ok(settings)
    }

    pub(crate) fn run(self) -> Result<()> {
        if let Some(path) = &self.check_config {
            let checked = LbArgs {
                config: Some(path.clone()),
                check_config: None,
                ..self.clone()
            };
            let settings = checked.unchecked_settings()?;
            let problems = settings.problems();
            if !problems.is_empty() {
                // Every field at fault, as `nginx -t` lists them.
                let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
                match &listed[..] {
                    [one] => bail!("--config {}: {one}", path.display()),
                    many => bail!(
                        "--config {}: {} problems:\n  {}",
                        path.display(),
                        many.len(),
                        many.join("\n  ")
                    ),
                }
            }
            println!(
                "{}: valid ({} listeners, {} pools)",
                path.display(),
                settings.listeners.len(),
                settings.pools.len()
            );
            return Ok(());
        }
        let settings = self.settings()?;
        // SIGHUP reads the same file with the same flags again.
        let reload = self.config.is_some().then(|| {
            let args = self.clone();
            Reload::new(move || args.settings().map_err(|error| format!("{error:#}").into()))
        });
        let source = match self.db {
            None => Source::Static,
            Some(db) => Source::Managed(Managed {
                db,
                listen_db: self.listen_db,
                name: self.name,
                cache: self.cache,
                follow: FollowOptions {
                    push: !self.pull_only,
                    pull_interval: self.pull_interval,
                    ..FollowOptions::default()
                },
            }),
        };
        ballast_proxy::run(settings, source, reload, announce)?;
        Ok(())
    }
}

/// Tells whoever started us where we listen: one line each, flushed at once.
fn announce(bound: &Bound) {
    let mut out = std::io::stdout().lock();
    for (address, mode, serves) in &bound.listeners {
        let mode = match mode {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        };
        let _ = writeln!(out, "listening {mode} {address} {serves}");
    }
    if let Some(admin) = bound.admin {
        let _ = writeln!(out, "admin {admin}");
    }
    let _ = out.flush();
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
