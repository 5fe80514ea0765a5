//! The whole configuration loop as a user drives it: `ballast control` on a SQLite database, two
//! managed `ballast lb` servers following it, and `ballast pool` / `ballast backend` changing
//! pools and backends — each change taking effect on both LBs.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use support::{Process, backend_of, echo, eventually, get, metric};

const TOKEN: &str = "cli-test-token-0123456789";

struct Cli {
    control: SocketAddr,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ballast"))
            .args(args)
            .env("BALLAST_CONTROL", format!("http://{}", self.control))
            .env("BALLAST_TOKEN", TOKEN)
            .output()
            .expect("ballast runs")
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
        let out = self.ok(args);
        out.trim()
            .strip_prefix("revision ")
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("ballast {args:?} printed {out:?}"))
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
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");

    let control = Process::start(
        &[
            "control",
            "--db",
            url,
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            token_file.to_str().expect("utf-8"),
        ],
        1,
    );
    let cli = Cli {
        control: control.listen_addr(0),
    };
    let (_b1, b1) = echo("b1", &[]);
    let (_b2, b2) = echo("b2", &[]);
    let (b1, b2) = (b1.to_string(), b2.to_string());

    assert_eq!(
        cli.revision(&["pool", "create", "web", "--algorithm", "round_robin"]),
        1.0
    );
    cli.revision(&["backend", "add", "web", &b1]);
    cli.revision(&["backend", "add", "web", &b2, "--weight", "2"]);

    let mut lbs: Vec<Process> = ["lb-1", "lb-2"]
        .iter()
        .map(|name| support::managed_lb(url, "web", &["--name", name]))
        .collect();
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

    let changed = cli.revision(&["pool", "set-algorithm", "web", "--algorithm", "maglev"]);
    applied_everywhere(changed);
    let policy = cli.revision(&[
        "pool",
        "set-policy",
        "web",
        "--retries",
        "0",
        "--response-timeout",
        "2s",
    ]);
    applied_everywhere(policy);
    let shown = cli.ok(&["pool", "show", "web", "--json"]);
    assert!(shown.contains("\"response_timeout_ms\":2000"), "{shown}");
    let listing = cli.ok(&["pool", "list"]);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("web") && l.contains("maglev")),
        "{listing}"
    );
    let backends = cli.ok(&["backend", "list", "web"]);
    assert!(backends.contains("draining"), "{backends}");
    let enabled = cli.revision(&["backend", "enable", "web", &b1]);
    applied_everywhere(enabled);

    // Both LBs have reported themselves, with the revision they applied.
    let token = format!("Bearer {TOKEN}");
    eventually(
        Duration::from_secs(10),
        "both heartbeats at the last revision",
        || {
            let reply = get(cli.control, "/v1/lbs", &[("authorization", &token)]);
            let fleet: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
            let lbs = fleet["lbs"].as_array().cloned().unwrap_or_default();
            lbs.len() == 2
                && lbs.iter().all(|lb| {
                    lb["applied_revision"].as_f64() == Some(enabled) && lb["state"] == "serving"
                })
        },
    );

    let refused = cli.run(&["backend", "add", "web", "nowhere"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("400 Bad Request: address: `nowhere` is not an IP:port address"),
        "{stderr}"
    );
    let unauthorized = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["pool", "list", "--token", "wrong"])
        .env("BALLAST_CONTROL", format!("http://{}", cli.control))
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&unauthorized.stderr).contains("401 Unauthorized"));

    // A drained, exited LB says so.
    lbs[1].terminate();
    assert!(lbs[1].wait(Duration::from_secs(10)).success());
    let reply = get(cli.control, "/v1/lbs", &[("authorization", &token)]);
    let fleet: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
    assert_eq!(fleet["lbs"][1]["name"], "lb-2");
    assert_eq!(fleet["lbs"][1]["state"], "stopped");

    drop(lbs);
    drop(control);
}
