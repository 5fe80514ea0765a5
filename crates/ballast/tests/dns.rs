//! `ballast dns` with real processes: managed LB servers on their own loopback addresses report
//! to the configuration database; a real resolver asks `ballast dns` for the pool's name and gets
//! the LBs that serve it; an LB that drains leaves the answer and a new one joins it.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ballast_config::{AlgorithmSpec, ConfigStore, PoolSpec, SqlStore, Write};
use support::{Process, echo, resolver};

fn lb(url: &str, name: &str, ip: &str) -> Process {
    Process::start(
        &[
            "lb",
            "--db",
            url,
            "--name",
            name,
            "--pool",
            "web",
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
    for write in [
        Write::CreatePool(PoolSpec {
            name: "web".into(),
            algorithm: AlgorithmSpec::named("round_robin"),
            hash_key: "client_ip".into(),
            dns_name: Some("lb.web.ballast.local".into()),
            policy: Default::default(),
        }),
        Write::AddBackend {
            pool: "web".into(),
            address: b1.to_string(),
            weight: 1,
        },
    ] {
        runtime.block_on(store.apply(write)).expect("write");
    }
    let dns = Process::start(
        &[
            "dns",
            "--db",
            &url,
            "--listen",
            "127.0.0.1:0",
            "--zone",
            "ballast.local",
            "--fleet-interval",
            "100ms",
            "--admin",
            "127.0.0.1:0",
        ],
        2,
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

    let mut a = lb(&url, "lb-a", "127.0.0.21");
    let _b = lb(&url, "lb-b", "127.0.0.22");
    until(ips(&["127.0.0.21", "127.0.0.22"]), "both LBs in the answer");

    a.terminate();
    assert!(a.wait(Duration::from_secs(10)).success());
    until(ips(&["127.0.0.22"]), "the drained LB gone from the answer");

    let _c = lb(&url, "lb-c", "127.0.0.23");
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
