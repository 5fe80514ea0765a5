//! Two `ballast control` instances elect one leader — by a lease row in the database (SQLite or
//! PostgreSQL), or by a lock on a private Redis server. The leader is frozen (SIGSTOP) past its lease; the other takes
//! over and marks a killed backend unhealthy; the old leader is thawed (SIGCONT) with its stale
//! view of that backend — and none of its writes land: the store fences them out, and it steps
//! down.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{Process, echo, eventually, get};

const TOKEN: &str = "failover-test-token-0123456789";

fn api(control: SocketAddr, path: &str) -> Value {
    let reply = get(
        control,
        path,
        &[("authorization", &format!("Bearer {TOKEN}"))],
    );
    serde_json::from_str(&reply.body).unwrap_or(Value::Null)
}

fn leading(control: SocketAddr) -> bool {
    api(control, "/v1/leader")["leading"] == true
}

fn signal(process: &Process, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &process.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn health_of(control: SocketAddr, address: SocketAddr) -> String {
    api(control, "/v1/pools/web/backends")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .find(|b| b["address"] == address.to_string())
        .and_then(|b| b["health"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn a_frozen_leader_is_replaced_and_fenced_out(db: Option<&str>, election: &[&str], tag: &str) {
    let dir = std::env::temp_dir().join(format!("ballast-failover-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = db.map_or_else(
        || format!("sqlite://{}", dir.join("config.db").display()),
        str::to_owned,
    );
    let start = |name: &str| {
        let mut extra = vec!["--name", name, "--lease-ttl", "1s"];
        extra.extend_from_slice(election);
        support::control(&url, &dir, TOKEN, &extra)
    };
    let a = start("a");
    let a_addr = a.listen_addr(0);
    eventually(Duration::from_secs(10), "a to lead", || leading(a_addr));
    let b = start("b");
    let b_addr = b.listen_addr(0);
    let a_token = api(a_addr, "/v1/leader")["token"]
        .as_u64()
        .expect("a token");

    let (_b1, a1) = echo("b1", &[]);
    let (mut b2, a2) = echo("b2", &[]);
    let (_b3, a3) = echo("b3", &[]);
    let cli = |args: &[&str]| {
        let output = support::cli(b_addr, TOKEN, args);
        assert!(output.status.success(), "{args:?}");
    };
    cli(&[
        "pool",
        "create",
        "web",
        "--health-path",
        "/health",
        "--health-interval",
        "200ms",
        "--health-timeout",
        "100ms",
    ]);
    for address in [a1, a2, a3] {
        cli(&["backend", "add", "web", &address.to_string()]);
    }
    eventually(Duration::from_secs(10), "all healthy", || {
        [a1, a2, a3]
            .iter()
            .all(|address| health_of(b_addr, *address) == "healthy")
    });
    assert!(!leading(b_addr), "one leader at a time");

    // The leader freezes past its lease: the other instance takes over.
    signal(&a, "STOP");
    eventually(Duration::from_secs(10), "b to lead", || leading(b_addr));
    let b_token = api(b_addr, "/v1/leader")["token"]
        .as_u64()
        .expect("b token");
    assert!(b_token > a_token, "{b_token} after {a_token}");

    b2.kill();
    eventually(Duration::from_secs(10), "b2 marked unhealthy by b", || {
        health_of(b_addr, a2) == "unhealthy"
    });

    // The old leader wakes believing b2 healthy, and would write so: fenced out, it steps down.
    signal(&a, "CONT");
    eventually(Duration::from_secs(10), "a to step down", || {
        let status = api(a_addr, "/v1/leader");
        status["leading"] == false && status["last_step_down"].is_string()
    });
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(health_of(b_addr, a2), "unhealthy", "no stale write landed");
    assert!(leading(b_addr));
    assert!(!leading(a_addr));

    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_a_sqlite_lease() {
    a_frozen_leader_is_replaced_and_fenced_out(None, &[], "sqlite");
}

#[test]
fn with_a_postgres_lease() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = runtime.block_on(ballast_testkit::postgres::database());
    a_frozen_leader_is_replaced_and_fenced_out(Some(&url), &[], "postgres");
}

#[test]
fn with_a_redis_lease() {
    let redis = ballast_testkit::redis::Server::start();
    let url = redis.url();
    a_frozen_leader_is_replaced_and_fenced_out(None, &["--redis", &url], "redis");
}
