//! Ballast behind PgBouncer in transaction pooling mode, as many PostgreSQL deployments run:
//! a real `pgbouncer` (Debian's) with a small server pool in front of a private PostgreSQL.
//!
//! Before: `ballast lb|control|dns --db postgres://<pgbouncer>` failed with `prepared statement
//! "sqlx_s_1" already exists` (named statements outlive a transaction on a server connection
//! the next client gets), and LISTEN through the pool heard no push. LISTEN needs a session
//! connection: `--listen-db` gives it one. (Without it, LISTEN through the pool is worse than
//! silent: the listening server connection goes on to other clients, whose queries then fail on
//! its notifications; see the README.)

mod support;

use std::net::SocketAddr;
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
