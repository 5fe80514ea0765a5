//! `ballast dns` with real processes: managed LB servers on their own loopback addresses report
//! to the configuration database; a real resolver asks `ballast dns` for the pool's name and gets
//! the LBs that serve it; an LB that drains leaves the answer and a new one joins it.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ballast_config::{AlgorithmSpec, PoolSpec, SqlStore, Write};
use support::{Process, echo, resolver};

/// A managed LB named `name` serving `pool` on `ip`.
fn lb(url: &str, pool: &str, name: &str, ip: &str) -> Process {
    Process::start(
        &[
            "lb",
            "--db",
            url,
            "--name",
            name,
            "--pool",
            pool,
            "--listen",
            &format!("{ip}:0"),
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ],
        2,
    )
}

/// A round-robin pool `pool` served under `dns_name`, with `backend`.
async fn named_pool(store: &SqlStore, pool: &str, dns_name: &str, backend: std::net::SocketAddr) {
    let writes = [
        Write::CreatePool(PoolSpec {
            name: pool.into(),
            algorithm: AlgorithmSpec::named("round_robin"),
            hash_key: "client_ip".into(),
            dns_name: Some(dns_name.into()),
            policy: Default::default(),
        }),
        Write::AddBackend {
            pool: pool.into(),
            address: backend.to_string(),
            weight: 1,
        },
    ];
    for write in writes {
        store.apply(write).await.expect("write");
    }
}

#[test]
fn the_pool_name_resolves_to_its_live_lbs_and_follows_the_fleet() {
    let dir = std::env::temp_dir().join(format!("ballast-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("config.db").display());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let store = runtime.block_on(SqlStore::connect(&url)).expect("store");
    let (_b1, b1) = echo("b1", &[]);
    runtime.block_on(named_pool(&store, "web", "lb.web.ballast.local", b1));
    let dns = support::dns(
        &url,
        &["--fleet-interval", "100ms", "--admin", "127.0.0.1:0"],
    );
    let resolver = resolver(dns.listen_addr(0));
    let answer = || -> BTreeSet<IpAddr> {
        runtime
            .block_on(resolver.ipv4_lookup("lb.web.ballast.local."))
            .map(|lookup| lookup.iter().map(|a| IpAddr::V4(a.0)).collect())
            .unwrap_or_default()
    };
    let ips = |list: &[&str]| -> BTreeSet<IpAddr> {
        list.iter().map(|ip| ip.parse().expect("ip")).collect()
    };
    let until = |want: BTreeSet<IpAddr>, what: &str| {
        let started = Instant::now();
        support::eventually(Duration::from_secs(10), what, || answer() == want);
        eprintln!("{what}: {:?}", started.elapsed());
    };

    let mut a = lb(&url, "web", "lb-a", "127.0.0.21");
    let _b = lb(&url, "web", "lb-b", "127.0.0.22");
    until(ips(&["127.0.0.21", "127.0.0.22"]), "both LBs in the answer");

    a.terminate();
    assert!(a.wait(Duration::from_secs(10)).success());
    until(ips(&["127.0.0.22"]), "the drained LB gone from the answer");

    let _c = lb(&url, "web", "lb-c", "127.0.0.23");
    until(
        ips(&["127.0.0.22", "127.0.0.23"]),
        "the new LB in the answer",
    );

    // The same zone as a zone file, for CoreDNS or BIND.
    let export = std::process::Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["dns", "export", "--db", &url, "--zone", "ballast.local"])
        .output()
        .expect("ballast runs");
    let file = String::from_utf8_lossy(&export.stdout);
    assert!(export.status.success(), "{file}");
    assert!(file.contains("$ORIGIN ballast.local.\n"), "{file}");
    assert!(file.contains("lb.web\tIN\tA\t127.0.0.22\n"), "{file}");
    assert!(file.contains("lb.web\tIN\tA\t127.0.0.23\n"), "{file}");
    assert!(!file.contains("127.0.0.21"), "{file}");

    // Outside the zone: refused, never resolved on anyone's behalf.
    assert!(
        runtime
            .block_on(resolver.ipv4_lookup("example.com."))
            .is_err()
    );
    // Its metrics count what it answered, and the revision it serves.
    let page = support::get(dns.admin_addr(), "/metrics", &[]).body;
    let count = |prefix: &str| -> f64 {
        page.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        count("ballast_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\"}") >= 3.0,
        "{page}"
    );
    assert!(
        count("ballast_dns_queries_total{qtype=\"A\",rcode=\"REFUSED\"}") >= 1.0,
        "{page}"
    );
    assert_eq!(count("ballast_dns_revision "), 2.0, "{page}");
    assert!(page.contains("ballast_dns_answer_bytes_bucket"), "{page}");
    drop(dns);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serving_without_a_database_says_what_is_missing() {
    let stderr = support::rejected(&["dns", "--listen", "127.0.0.1:0"]);
    assert!(
        stderr.contains("--db: the configuration database"),
        "{stderr}"
    );
}

/// A private `unbound` (Debian's package, installed by `scripts/test`) on a free loopback port,
/// with strict QNAME minimisation and a stub zone pointing at `ballast dns`: a resolver as strict
/// as any that meets a pool name on the Internet. Stopped (its group) when dropped.
struct Unbound {
    child: std::process::Child,
    address: std::net::SocketAddr,
    dir: std::path::PathBuf,
}

impl Unbound {
    fn start(zone: &str, server: std::net::SocketAddr) -> Self {
        use std::os::unix::process::CommandExt;
        let dir = std::env::temp_dir().join(format!("ballast-unbound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for _ in 0..5 {
            // A port free for UDP and TCP now; unbound exits if it is taken by the time it binds,
            // and another is tried.
            let port = {
                let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
                let port = udp.local_addr().expect("addr").port();
                if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                    continue;
                }
                port
            };
            let config = format!(
                "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-daemonize: no\n  \
                 username: \"\"\n  chroot: \"\"\n  directory: \"{dir}\"\n  pidfile: \"\"\n  \
                 use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n  num-threads: 1\n  \
                 do-ip6: no\n  do-not-query-localhost: no\n  access-control: 127.0.0.0/8 allow\n  \
                 module-config: \"iterator\"\n  qname-minimisation: yes\n  \
                 qname-minimisation-strict: yes\n  harden-referral-path: no\n  \
                 domain-insecure: \"{zone}\"\n  local-zone: \"{zone}.\" nodefault\n\
                 stub-zone:\n  name: \"{zone}\"\n  stub-addr: {ip}@{server_port}\n",
                dir = dir.display(),
                ip = server.ip(),
                server_port = server.port(),
            );
            let file = dir.join("unbound.conf");
            std::fs::write(&file, config).expect("config");
            let child = std::process::Command::new("unbound")
                .arg("-c")
                .arg(&file)
                .process_group(0)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .expect("unbound runs (scripts/test installs the unbound package)");
            let mut unbound = Self {
                child,
                address: ([127, 0, 0, 1], port).into(),
                dir: dir.clone(),
            };
            if unbound.answers() {
                return unbound;
            }
            support::stop_group(&mut unbound.child, Duration::from_secs(5));
        }
        panic!("unbound did not start");
    }

    /// Waits (bounded) until it answers a query of its own (a name outside every zone it knows,
    /// which it refuses or fails: any answer says it listens).
    fn answers(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            // A query for `.` NS with ID 0x4242.
            let query = [0x42, 0x42, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1];
            let mut answer = [0u8; 512];
            if socket.send_to(&query, self.address).is_ok()
                && socket
                    .recv(&mut answer)
                    .is_ok_and(|n| n >= 2 && answer[..2] == [0x42, 0x42])
            {
                return true;
            }
        }
        false
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        support::stop_group(&mut self.child, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_strict_resolver_resolves_every_pool_name_and_follows_the_fleet() {
    let dir = std::env::temp_dir().join(format!("ballast-dns-strict-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("config.db").display());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let store = runtime.block_on(SqlStore::connect(&url)).expect("store");
    let (_b1, b1) = echo("b1", &[]);
    runtime.block_on(named_pool(&store, "web", "lb.web.ballast.local", b1));
    runtime.block_on(named_pool(&store, "api", "api.ballast.local", b1));
    let dns = support::dns(&url, &["--ttl", "1", "--fleet-interval", "100ms"]);
    let unbound = Unbound::start("ballast.local", dns.listen_addr(0));
    let resolver = resolver(unbound.address);
    let answer = |name: &str| -> BTreeSet<IpAddr> {
        runtime
            .block_on(resolver.ipv4_lookup(name))
            .map(|lookup| lookup.iter().map(|a| IpAddr::V4(a.0)).collect())
            .unwrap_or_default()
    };
    let ips = |list: &[&str]| -> BTreeSet<IpAddr> {
        list.iter().map(|ip| ip.parse().expect("ip")).collect()
    };

    let mut a = lb(&url, "web", "lb-a", "127.0.0.31");
    let _b = lb(&url, "web", "lb-b", "127.0.0.32");
    let _c = lb(&url, "api", "lb-c", "127.0.0.33");
    // Strict QNAME minimisation asks `ballast.local`, `web.ballast.local` (an empty
    // non-terminal: NODATA, not NXDOMAIN) and only then the pool name.
    support::eventually(Duration::from_secs(20), "web through unbound", || {
        answer("lb.web.ballast.local.") == ips(&["127.0.0.31", "127.0.0.32"])
    });
    support::eventually(Duration::from_secs(20), "api through unbound", || {
        answer("api.ballast.local.") == ips(&["127.0.0.33"])
    });

    // An LB leaves: the resolver's answer follows once its copy (TTL 1 s) expires.
    a.terminate();
    assert!(a.wait(Duration::from_secs(10)).success());
    let left = Instant::now();
    support::eventually(Duration::from_secs(15), "lb-a gone through unbound", || {
        answer("lb.web.ballast.local.") == ips(&["127.0.0.32"])
    });
    eprintln!(
        "lb-a left the resolver's answer {:?} after it stopped",
        left.elapsed()
    );
    drop((unbound, dns));
    let _ = std::fs::remove_dir_all(&dir);
}
