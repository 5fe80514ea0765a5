//! A leader that stops cleanly gives its lease up, so another instance leads at once instead of
//! when the lease lapses. The leases here live ten minutes, far longer than the tests wait: a
//! lease left to lapse fails them.

use std::time::Duration;

use ballast_config::{Config, Followed, SqlStore};
use ballast_control::leader::{Election, LEASE};
use ballast_control::orchestrator::{self, Settings, Status};
use ballast_lock::{LockManager, Options};
use ballast_testkit::redis::Server;
use tokio::sync::watch;

const TTL: Duration = Duration::from_secs(600);

async fn store(test: &str) -> SqlStore {
    let dir = std::env::temp_dir().join(format!("ballast-leader-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    SqlStore::open_sqlite(&dir.join("config.db"))
        .await
        .expect("store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_that_stops_hands_its_lease_on_at_once() {
    let store = store("orchestrator").await;
    let status = Status::default();
    let (stop, stopping) = watch::channel(false);
    let (_followed_tx, followed) = watch::channel(Followed {
        config: std::sync::Arc::new(Config {
            revision: 0,
            pools: Vec::new(),
            route_tables: Vec::new(),
        }),
        unreachable_since: None,
    });
    let settings = Settings {
        identity: "control-a".into(),
        election: Election::Database {
            store: store.clone(),
        },
        lease_ttl: TTL,
        scrape_interval: Duration::from_secs(60),
        prometheus: None,
        autoscaling: None,
        ignore_lease_loss: false,
    };
    let running = tokio::spawn(orchestrator::run(
        settings,
        store.clone(),
        followed,
        status.clone(),
        stopping,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !status.leader().leading {
        assert!(
            tokio::time::Instant::now() < deadline,
            "control-a never led"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let token = status.leader().token.expect("a leader has a token");
    assert!(
        store
            .acquire_lease(LEASE, "control-b", TTL)
            .await
            .expect("store")
            .is_none(),
        "the lease is control-a's while it leads"
    );

    stop.send_replace(true);
    running.await.expect("the orchestrator stops");
    let lease = store
        .acquire_lease(LEASE, "control-b", TTL)
        .await
        .expect("store")
        .expect("control-a gave the lease up as it stopped");
    assert!(lease.token > token, "a new term, a higher token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resigned_redis_lease_is_free_at_once() {
    let redis = Server::start();
    let locks = |_| LockManager::from_urls(&[redis.url()], Options::default()).expect("locks");
    let term = Election::Redis(locks(0)).campaign("control-a", TTL).await;
    let other = locks(1);
    assert!(
        other.try_acquire(LEASE, TTL).await.is_err(),
        "the lease is control-a's while it leads"
    );
    let token = term.token();
    term.resign(Duration::from_secs(30)).await;
    let lease = other
        .try_acquire(LEASE, TTL)
        .await
        .expect("control-a gave the lease up");
    assert!(lease.fencing_token() > token, "a new term, a higher token");
}
