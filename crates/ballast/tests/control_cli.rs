//! The whole configuration loop as a user drives it: `ballast control` on a SQLite database, two
//! managed `ballast lb` servers following it, and `ballast pool` / `ballast backend` changing
//! pools and backends — each change taking effect on both LBs.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use support::{backend_of, echo, eventually, get, metric};

const TOKEN: &str = "cli-test-token-0123456789";

struct Cli {
    control: SocketAddr,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        support::cli(self.control, TOKEN, args)
    }

    /// Stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "ballast {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    /// The revision a write command printed.
    fn revision(&self, args: &[&str]) -> f64 {
        support::cli_revision(self.control, TOKEN, args)
    }
}

#[test]
fn on_sqlite() {
    let dir = std::env::temp_dir().join(format!("ballast-cli-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("config.db").display());
    pool_and_backend_commands_reach_every_managed_lb(&url, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn on_postgres() {
    let dir = std::env::temp_dir().join(format!("ballast-cli-postgres-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = runtime.block_on(ballast_testkit::postgres::database());
    pool_and_backend_commands_reach_every_managed_lb(&url, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

fn pool_and_backend_commands_reach_every_managed_lb(url: &str, dir: &std::path::Path) {
    // A trailing newline in the token file, as an editor leaves it, is not part of the token.
    let token = format!("{TOKEN}\n");
    let control = support::control(url, dir, &token, &["--scrape-interval", "200ms"]);
    let cli = Cli {
        control: control.listen_addr(0),
    };
    let (_b1, b1) = echo("b1", &[]);
    let (_b2, b2) = echo("b2", &[]);
    let (_b3, b3) = echo("b3", &["--latency", "1500ms"]);
    let (b1, b2, b3) = (b1.to_string(), b2.to_string(), b3.to_string());

    assert_eq!(
        cli.revision(&["pool", "create", "web", "--algorithm", "round_robin"]),
        1.0
    );
    cli.revision(&["backend", "add", "web", &b1]);
    cli.revision(&["backend", "add", "web", &b2, "--weight", "3"]);
    // The weight has one shape, `--weight N`, whether added or changed.
    cli.revision(&["backend", "set-weight", "web", &b2, "--weight", "2"]);
    let listed = cli.ok(&["backend", "list", "web", "--json"]);
    let backends: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
    let weight = backends
        .as_array()
        .and_then(|all| all.iter().find(|b| b["address"] == b2.as_str()))
        .map(|b| b["weight"].clone());
    assert_eq!(weight, Some(serde_json::json!(2)), "{listed}");

    cli.revision(&["pool", "create", "slow"]);
    cli.revision(&["backend", "add", "slow", &b3]);

    // `--control` and `--token` may follow the subcommand, as every subcommand's help shows.
    let listed = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["pool", "list", "--control"])
        .arg(format!("http://{}", cli.control))
        .args(["--token", TOKEN])
        .env_remove("BALLAST_CONTROL")
        .env_remove("BALLAST_TOKEN")
        .output()
        .expect("ballast runs");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && text.contains("web") && text.contains("slow"),
        "{text}{}",
        String::from_utf8_lossy(&listed.stderr)
    );

    // lb-2 serves a second pool on a second listener.
    let mut lbs = vec![
        support::managed_lb(url, "web", &["--name", "lb-1"]),
        support::managed_lb(
            url,
            "web",
            &[
                "--name",
                "lb-2",
                "--listen",
                "127.0.0.1:0",
                "--pool",
                "slow",
            ],
        ),
    ];
    assert_eq!(backend_of(&get(lbs[1].listen_addr(1), "/", &[])), "b3");
    for lb in &lbs {
        let seen: HashSet<String> = (0..6)
            .map(|_| backend_of(&get(lb.listen_addr(0), "/", &[])))
            .collect();
        assert_eq!(seen.len(), 2, "{seen:?}");
    }

    let applied_everywhere = |revision: f64| {
        for lb in &lbs {
            eventually(
                Duration::from_secs(10),
                "every LB to apply the change",
                || metric(lb.admin_addr(), "ballast_config_revision ") == Some(revision),
            );
        }
    };
    let drained = cli.revision(&["backend", "drain", "web", &b1]);
    applied_everywhere(drained);
    for lb in &lbs {
        for _ in 0..5 {
            assert_eq!(backend_of(&get(lb.listen_addr(0), "/", &[])), "b2");
        }
    }

    // The hash key is tuned live with the algorithm.
    let changed = cli.revision(&[
        "pool",
        "set-algorithm",
        "web",
        "--algorithm",
        "maglev",
        "--hash-key",
        "header:x-user",
    ]);
    applied_everywhere(changed);
    let policy = cli.revision(&[
        "pool",
        "set-policy",
        "web",
        "--retries",
        "0",
        "--response-timeout",
        "2s",
        "--protocol",
        "http1",
    ]);
    applied_everywhere(policy);
    let shown = cli.ok(&["pool", "show", "web", "--json"]);
    assert!(shown.contains("\"response_timeout_ms\":2000"), "{shown}");
    assert!(shown.contains("\"protocol\":\"http1\""), "{shown}");
    let refused = cli.run(&["pool", "set-policy", "web", "--protocol", "spdy"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unknown protocol `spdy`"),
        "{refused:?}"
    );
    let listing = cli.ok(&["pool", "list"]);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("web") && l.contains("maglev") && l.contains("header:x-user")),
        "{listing}"
    );
    let refused = cli.run(&[
        "pool",
        "set-algorithm",
        "web",
        "--algorithm",
        "maglev",
        "--hash-key",
        "body",
    ]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("hash_key: `body`"),
        "{refused:?}"
    );
    let backends = cli.ok(&["backend", "list", "web"]);
    assert!(backends.contains("draining"), "{backends}");
    let enabled = cli.revision(&["backend", "enable", "web", &b1]);
    applied_everywhere(enabled);

    // Both LBs have reported themselves, with the revision they applied.
    eventually(
        Duration::from_secs(10),
        "both heartbeats at the last revision",
        || {
            let fleet = cli.ok(&["fleet", "list"]);
            let rows: Vec<&str> = fleet.lines().skip(1).collect();
            rows.len() == 2
                && rows.iter().all(|row| {
                    let cells: Vec<&str> = row.split_whitespace().collect();
                    cells.get(1) == Some(&"serving")
                        && cells.get(3..5) == Some(&[&enabled.to_string(), "0"][..])
                })
        },
    );
    let fleet = cli.ok(&["fleet", "list"]);
    assert!(
        fleet
            .lines()
            .any(|l| l.starts_with("lb-2") && l.ends_with("web,slow")),
        "{fleet}"
    );

    for (address, reason) in [
        ("nowhere", "address: `nowhere` is a host name"),
        ("127.0.0.1:0", "address: port 0 is no backend's port"),
        ("0.0.0.0:9101", "address: 0.0.0.0 means every local address"),
    ] {
        let refused = cli.run(&["backend", "add", "web", address]);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains(&format!("400 Bad Request: {reason}")),
            "{address}: {stderr}"
        );
    }
    let unauthorized = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["pool", "list", "--token", "wrong"])
        .env("BALLAST_CONTROL", format!("http://{}", cli.control))
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&unauthorized.stderr).contains("401 Unauthorized"));

    // The orchestrator scrapes both LBs: alive, with their figures.
    let fleet_json = || -> serde_json::Value {
        serde_json::from_str(&cli.ok(&["fleet", "list", "--json"])).expect("json")
    };
    eventually(Duration::from_secs(10), "figures for both LBs", || {
        let fleet = fleet_json();
        let lbs = fleet["lbs"].as_array().cloned().unwrap_or_default();
        lbs.len() == 2
            && lbs.iter().all(|lb| {
                lb["liveness"] == "up"
                    && lb["figures"]["resident_bytes"]
                        .as_f64()
                        .is_some_and(|b| b > 0.0)
            })
    });
    eventually(Duration::from_secs(10), "lb-1's request rate", || {
        for _ in 0..20 {
            get(lbs[0].listen_addr(0), "/", &[]);
        }
        fleet_json()["lbs"][0]["figures"]["requests_per_second"]
            .as_f64()
            .is_some_and(|rate| rate > 0.0)
    });

    // An LB told to stop says it is draining while its requests finish, then that it stopped.
    let slow = {
        let address = lbs[1].listen_addr(1);
        std::thread::spawn(move || get(address, "/", &[]))
    };
    let admin = lbs[1].admin_addr();
    eventually(
        Duration::from_secs(10),
        "the slow request in flight",
        || {
            get(admin, "/metrics", &[]).body.lines().any(|l| {
                l.starts_with("ballast_backend_in_flight")
                    && l.contains("slow")
                    && l.ends_with(" 1")
            })
        },
    );
    lbs[1].terminate();
    let state_of_lb_2 = || {
        let fleet: serde_json::Value =
            serde_json::from_str(&cli.ok(&["fleet", "list", "--json"])).expect("json");
        fleet["lbs"][1]["state"].as_str().unwrap_or("").to_owned()
    };
    eventually(Duration::from_secs(10), "lb-2 draining", || {
        state_of_lb_2() == "draining"
    });
    let reply = slow.join().expect("slow request");
    assert_eq!(reply.status, 200, "the request in flight finished");
    assert_eq!(backend_of(&reply), "b3");
    assert!(lbs[1].wait(Duration::from_secs(10)).success());
    assert_eq!(state_of_lb_2(), "stopped");

    // An LB that dies without a word (SIGKILL) is found dead by its scrapes.
    lbs[0].kill();
    eventually(Duration::from_secs(10), "lb-1 marked down", || {
        let fleet = fleet_json();
        fleet["lbs"][0]["liveness"] == "down"
            && fleet["lbs"][0]["liveness_reason"]
                .as_str()
                .is_some_and(|r| r.contains("failed probes in a row") || r.starts_with("phi "))
    });
    assert_eq!(
        fleet_json()["lbs"][0]["state"],
        "serving",
        "what it last said itself"
    );

    drop(lbs);
    drop(control);
}
