//! The retention loop against a real SQLite database: it keeps the latest revisions of the change
//! log and nothing older, while writes go on.

use std::time::Duration;

use ballast_config::{AlgorithmSpec, PoolSpec, SqlStore, Write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_pruned_to_the_latest_revisions() {
    let dir = std::env::temp_dir().join(format!("ballast-retention-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = SqlStore::open_sqlite(&dir.join("config.db"))
        .await
        .expect("store");
    tokio::spawn(ballast_control::retention::prune_every(
        store.clone(),
        3,
        Duration::from_millis(20),
    ));
    store
        .apply(Write::CreatePool(PoolSpec {
            name: "web".into(),
            algorithm: AlgorithmSpec::named("round_robin"),
            hash_key: "client_ip".into(),
            dns_name: None,
            policy: Default::default(),
        }))
        .await
        .expect("pool");
    for port in 9001..9011 {
        store
            .apply(Write::AddBackend {
                pool: "web".into(),
                address: format!("127.0.0.1:{port}"),
                weight: 1,
            })
            .await
            .expect("backend");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let kept = loop {
        let kept: Vec<u64> = store
            .changes_since(0, 100)
            .await
            .expect("changes")
            .iter()
            .map(|c| c.revision)
            .collect();
        if kept.len() == 3 || tokio::time::Instant::now() > deadline {
            break kept;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(kept, [9, 10, 11]);
    assert_eq!(
        store.config().await.expect("config").pools[0]
            .backends
            .len(),
        10
    );
    let _ = std::fs::remove_dir_all(&dir);
}
