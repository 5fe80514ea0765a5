//! The orchestrator's health checking with real processes: `ballast control` on SQLite, echo
//! backends, a managed LB. A killed backend is marked unhealthy and the LB stops sending it
//! traffic; it comes back after `rise` successful probes; a backend with jittery latency is never
//! marked down; and when most backends fail at once the verdicts are held.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Process, backend_of, echo, eventually, get, metric};

const TOKEN: &str = "health-test-token-0123456789";

struct Control {
    address: SocketAddr,
}

impl Control {
    fn ballast(&self, args: &[&str]) -> String {
        let output = support::cli(self.address, TOKEN, args);
        assert!(
            output.status.success(),
            "ballast {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn api(&self, path: &str) -> Value {
        let reply = get(
            self.address,
            path,
            &[("authorization", &format!("Bearer {TOKEN}"))],
        );
        serde_json::from_str(&reply.body).unwrap_or(Value::Null)
    }

    /// The stored health of each backend of `pool`, by address.
    fn stored(&self, pool: &str) -> Vec<(String, String)> {
        self.api(&format!("/v1/pools/{pool}/backends"))
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|b| {
                (
                    b["address"].as_str().unwrap_or("").to_owned(),
                    b["health"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    fn stored_health(&self, pool: &str, address: SocketAddr) -> String {
        self.stored(pool)
            .into_iter()
            .find(|(a, _)| *a == address.to_string())
            .map(|(_, h)| h)
            .unwrap_or_default()
    }
}

fn restart_echo(name: &str, address: SocketAddr) -> Process {
    Process::start(
        &["echo", "--listen", &address.to_string(), "--name", name],
        1,
    )
}

#[test]
fn on_sqlite() {
    a_killed_backend_leaves_every_lb_and_comes_back(None, "sqlite");
}

#[test]
fn on_postgres() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = runtime.block_on(ballast_testkit::postgres::database());
    a_killed_backend_leaves_every_lb_and_comes_back(Some(&url), "postgres");
}

fn a_killed_backend_leaves_every_lb_and_comes_back(db: Option<&str>, tag: &str) {
    let dir = std::env::temp_dir().join(format!("ballast-health-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = db.map_or_else(
        || format!("sqlite://{}", dir.join("config.db").display()),
        str::to_owned,
    );
    let control_process = support::control(&url, &dir, TOKEN, &[]);
    let control = Control {
        address: control_process.listen_addr(0),
    };
    let (mut b1, a1) = echo("b1", &[]);
    let (mut b2, a2) = echo("b2", &[]);
    let (mut b3, a3) = echo("b3", &[]);
    let (_jittery, aj) = echo("jittery", &["--latency", "20ms", "--jitter", "15ms"]);
    let probing = [
        "--health-path",
        "/health",
        "--health-interval",
        "200ms",
        "--health-timeout",
        "100ms",
    ];
    let mut create = vec!["pool", "create", "web"];
    create.extend(probing);
    control.ballast(&create);
    let mut create = vec!["pool", "create", "steady"];
    create.extend(probing);
    control.ballast(&create);
    for address in [a1, a2, a3] {
        control.ballast(&["backend", "add", "web", &address.to_string()]);
    }
    control.ballast(&["backend", "add", "steady", &aj.to_string()]);

    let all_healthy = |pool: &str| {
        let stored = control.stored(pool);
        !stored.is_empty() && stored.iter().all(|(_, h)| h == "healthy")
    };
    eventually(Duration::from_secs(15), "every backend healthy", || {
        all_healthy("web") && all_healthy("steady")
    });
    let lb = support::managed_lb(&url, "web", &[]);
    let lb_addr = lb.listen_addr(0);
    let served = |n: usize| -> HashSet<String> {
        (0..n)
            .map(|_| {
                let reply = get(lb_addr, "/", &[]);
                assert_eq!(reply.status, 200, "{reply:?}");
                backend_of(&reply)
            })
            .collect()
    };
    assert_eq!(served(9).len(), 3);

    // Killed: refused probes, unhealthy after `fall`, and the LB stops sending it traffic.
    b2.kill();
    let killed_at = Instant::now();
    eventually(Duration::from_secs(10), "b2 marked unhealthy", || {
        control.stored_health("web", a2) == "unhealthy"
    });
    let detected = killed_at.elapsed();
    let revision = control.api("/v1/revision")["revision"].as_f64();
    eventually(
        Duration::from_secs(10),
        "the LB to apply the verdict",
        || metric(lb.admin_addr(), "ballast_config_revision ") == revision,
    );
    let seen = served(30);
    assert!(!seen.contains("b2"), "{seen:?}");
    let listing = control.ballast(&["backend", "list", "web"]);
    let b2_row = listing
        .lines()
        .find(|l| l.starts_with(&a2.to_string()))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(
        b2_row.contains("failed probes in a row: connect:"),
        "{b2_row}"
    );
    eprintln!("b2 marked unhealthy {detected:?} after it was killed");

    // Back: healthy after `rise` successes, and in the LB's rotation again.
    let mut b2 = restart_echo("b2", a2);
    eventually(Duration::from_secs(10), "b2 healthy again", || {
        control.stored_health("web", a2) == "healthy"
    });
    eventually(
        Duration::from_secs(10),
        "the LB to send to b2 again",
        || served(6).contains("b2"),
    );

    // Three of four backends down at once looks like the orchestrator's own network: held.
    b1.kill();
    b2.kill();
    b3.kill();
    let unhealthy_in_view = || {
        control.api("/v1/health")["backends"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|b| b["health"] == "unhealthy")
            .count()
    };
    eventually(Duration::from_secs(10), "three unhealthy verdicts", || {
        unhealthy_in_view() == 3
    });
    let metrics = get(
        control.address,
        "/metrics",
        &[("authorization", &format!("Bearer {TOKEN}"))],
    );
    assert!(
        metrics.body.lines().any(|l| l == "ballast_health_held 1"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l.starts_with("ballast_backend_phi{") && l.contains("pool=\"web\"")),
        "{}",
        metrics.body
    );
    std::thread::sleep(Duration::from_millis(600));
    for address in [a1, a2, a3] {
        assert_eq!(
            control.stored_health("web", address),
            "healthy",
            "held, not written"
        );
    }

    // All the while the jittery backend stayed healthy, with a modest phi.
    assert!(all_healthy("steady"));
    let view = control.api("/v1/health");
    let steady = view["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .find(|b| b["pool"] == "steady")
        .expect("steady is checked");
    assert_eq!(steady["health"], "healthy", "{steady}");
    assert!(
        steady["phi"].as_f64().is_some_and(|phi| phi < 8.0),
        "{steady}"
    );
    assert_eq!(steady["reason"], "2 successful probes in a row", "{steady}");

    drop(lb);
    drop(control_process);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_detection_benchmark_reports_every_lb_and_no_client_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args([
            "bench",
            "detect",
            "--interval",
            "200ms",
            "--lbs",
            "2",
            "--jitter-run",
            "1s",
        ])
        .env("RUST_LOG", "error")
        .output()
        .expect("ballast runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for lb in ["lb-1", "lb-2"] {
        assert!(stdout.lines().any(|l| l.starts_with(lb)), "{stdout}");
    }
    // Retries on another backend hide the dead one from clients entirely.
    assert!(stdout.contains(", errors: 0\n"), "{stdout}");
    assert!(stdout.contains("unhealthy verdicts: 0"), "{stdout}");
}
