//! Ballast behind PgBouncer in transaction pooling mode, as many PostgreSQL deployments run:
//! a real `pgbouncer` (Debian's) with a small server pool in front of a private PostgreSQL.
//!
//! Before: `ballast lb|control|dns --db postgres://<pgbouncer>` exited with `prepared statement
//! "sqlx_s_1" already exists` (named statements outlive a transaction on a server connection
//! the next client gets), and with the cache LBs never heard a push (LISTEN needs a session
//! connection) without saying so.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ballast_config::SqlStore;
use ballast_testkit::pgbouncer::Bouncer;
use support::{Process, backend_of, cli, echo, eventually, get};

const TOKEN: &str = "pgbouncer-test-token-0123456789";

fn revision_of(admin: SocketAddr) -> u64 {
    get(admin, "/config/revision", &[])
        .body
        .trim()
        .parse()
        .unwrap_or(0)
}

/// A runtime, a bouncer, and a new database's URL straight to PostgreSQL and through it.
fn bounced() -> (tokio::runtime::Runtime, Bouncer, String, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let direct = runtime.block_on(ballast_testkit::postgres::database());
    let (bouncer, pooled) = Bouncer::in_front_of(&direct);
    (runtime, bouncer, direct, pooled)
}

#[test]
fn lbs_control_and_dns_work_through_a_transaction_pooling_pgbouncer() {
    let (runtime, _bouncer, direct, pooled) = bounced();
    // The schema and the pool, written through the bouncer.
    let store = runtime
        .block_on(SqlStore::connect(&pooled))
        .expect("a store through pgbouncer");
    let (_b1, b1) = echo("b1", &[]);
    let (_b2, b2) = echo("b2", &[]);
    support::create_pool(&runtime, &store, "web", &[b1, b2]);

    let dir = std::env::temp_dir().join(format!("ballast-pgbouncer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let control = support::control(&pooled, &dir, TOKEN, &["--listen-db", &direct]);
    // Changes can only arrive by push: the pull interval is ten minutes.
    let lbs: Vec<Process> = (1..=3)
        .map(|i| {
            support::managed_lb(
                &pooled,
                "web",
                &[
                    "--name",
                    &format!("lb-{i}"),
                    "--listen-db",
                    &direct,
                    "--pull-interval",
                    "10m",
                ],
            )
        })
        .collect();
    let _dns = support::dns(&pooled, &["--listen-db", &direct]);

    // Several changes, each pushed to every LB, with clients sharing two server connections.
    let control_addr = control.listen_addr(0);
    for weight in ["0", "1", "0"] {
        let output = cli(
            control_addr,
            TOKEN,
            &[
                "backend",
                "set-weight",
                "web",
                &b1.to_string(),
                "--weight",
                weight,
            ],
        );
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let revision: u64 = said
            .trim()
            .strip_prefix("revision ")
            .and_then(|r| r.parse().ok())
            .expect("a revision");
        eventually(
            Duration::from_secs(20),
            "every LB applies it by push",
            || {
                lbs.iter()
                    .all(|lb| revision_of(lb.admin_addr()) >= revision)
            },
        );
    }
    for lb in &lbs {
        for _ in 0..4 {
            assert_eq!(backend_of(&get(lb.listen_addr(0), "/", &[])), "b2");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_lb_whose_listen_goes_through_the_pooler_says_push_is_silent_and_pulls() {
    let (runtime, _bouncer, _, pooled) = bounced();
    let store = runtime
        .block_on(SqlStore::connect(&pooled))
        .expect("a store through pgbouncer");
    let (_b1, b1) = echo("b1", &[]);
    support::create_pool(&runtime, &store, "web", &[b1]);

    let mut lb = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["lb", "--db", &pooled, "--name", "lb-1", "--pool", "web"])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .args(["--pull-interval", "1s"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ballast lb starts");
    let (tx, said) = mpsc::channel();
    for stream in [
        Box::new(lb.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(lb.stderr.take().expect("stderr")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let mut lines = Vec::new();
    let mut wait_for = |text: &str| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match said.recv_timeout(left) {
                Ok(line) => {
                    lines.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => {
                    support::stop_group(&mut lb, Duration::from_secs(5));
                    panic!("no line with `{text}`; said {lines:#?}");
                }
            }
        }
    };
    let admin: SocketAddr = wait_for("admin ")
        .trim_start_matches("admin ")
        .parse()
        .expect("admin address");
    let warning = wait_for("pushed changes do not arrive");
    assert!(warning.contains("--listen-db"), "{warning}");

    // Pull keeps it current all the same.
    let revision = runtime
        .block_on(ballast_config::ConfigStore::apply(
            &store,
            ballast_config::Write::SetWeight {
                pool: "web".into(),
                address: b1.to_string(),
                weight: 3,
            },
        ))
        .expect("a write through pgbouncer");
    eventually(Duration::from_secs(20), "the LB applies it by pull", || {
        revision_of(admin) >= revision
    });
    support::stop_group(&mut lb, Duration::from_secs(10));
}
