//! Managed LB servers on PostgreSQL, under load, through a database restart: push (LISTEN)
//! brings changes to both LBs, the LBs keep serving their last configuration while the server
//! is down (zero failed requests), and catch up once it is back.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ballast_config::{SqlStore, Write};
use support::{Process, backend_of, echo, eventually, get, metric};

#[test]
fn lbs_serve_through_a_database_restart_and_catch_up_after() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = ballast_testkit::postgres::Server::start();
    let url = runtime.block_on(server.create_database());
    let store = runtime.block_on(SqlStore::connect(&url)).expect("store");
    let (_b1, b1) = echo("b1", &[]);
    let (_b2, b2) = echo("b2", &[]);
    support::create_pool(&runtime, &store, "web", &[b1]);

    let lbs: Vec<Process> = (0..2)
        .map(|_| support::managed_lb(&url, "web", &["--pull-interval", "1s"]))
        .collect();
    let addresses: Vec<_> = lbs.iter().map(|lb| lb.listen_addr(0)).collect();

    // Traffic on both LBs for the whole test, bounded in time.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for address in &addresses {
                    statuses.push(get(*address, "/", &[]).status);
                }
            }
            statuses
        })
    };

    let applied_everywhere = |revision: f64, what: &str| {
        for lb in &lbs {
            eventually(Duration::from_secs(20), what, || {
                metric(lb.admin_addr(), "ballast_config_revision ") == Some(revision)
            });
        }
    };
    let revision = runtime
        .block_on(store.apply(Write::AddBackend {
            pool: "web".into(),
            address: b2.to_string(),
            weight: 1,
        }))
        .expect("backend");
    applied_everywhere(revision as f64, "the pushed change");

    server.stop();
    for lb in &lbs {
        eventually(
            Duration::from_secs(20),
            "the LB to notice the database is down",
            || {
                metric(lb.admin_addr(), "ballast_config_unreachable_seconds ")
                    .is_some_and(|s| s > 0.0)
            },
        );
    }
    server.start_again();

    // The store's pool reconnects on its own; its first query may meet a dead connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    let revision = loop {
        let drain = store.apply(Write::SetAdminState {
            pool: "web".into(),
            address: b1.to_string(),
            state: ballast_config::AdminState::Draining,
        });
        match runtime.block_on(drain) {
            Ok(revision) => break revision,
            Err(error) if Instant::now() < deadline => {
                eprintln!("retrying after the restart: {error}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => panic!("the database did not come back: {error}"),
        }
    };
    applied_everywhere(revision as f64, "the change after the restart");
    for lb in &lbs {
        assert_eq!(
            metric(lb.admin_addr(), "ballast_config_unreachable_seconds "),
            Some(0.0)
        );
        for _ in 0..4 {
            assert_eq!(backend_of(&get(lb.listen_addr(0), "/", &[])), "b2");
        }
    }

    stop.store(true, Ordering::Relaxed);
    let statuses = traffic.join().expect("traffic thread");
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert!(statuses.len() > 20, "only {} requests", statuses.len());
    assert_eq!(failed, 0, "{failed} of {} requests failed", statuses.len());
}
