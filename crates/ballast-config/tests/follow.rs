//! Followers (what managed LB servers run) against both databases: push brings every change to
//! three followers, each a whole revision at a time, and pull repairs what push missed.

mod support;

use std::time::Duration;

use ballast_config::{
    AdminState, AlgorithmSpec, FollowOptions, Followed, PoolSpec, SqlStore, Write, catch_up, follow,
};
use tokio::sync::watch;

/// Waits (bounded) until the follower holds `revision`.
async fn reaches(follower: &mut watch::Receiver<Followed>, revision: u64) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while follower.borrow_and_update().config.revision < revision {
            follower.changed().await.expect("the follower runs");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("follower stuck at {}", follower.borrow().config.revision));
}

fn writes() -> Vec<Write> {
    let mut writes = vec![Write::CreatePool(PoolSpec {
        name: "web".into(),
        algorithm: AlgorithmSpec::named("round_robin"),
        hash_key: "client_ip".into(),
        dns_name: None,
        policy: Default::default(),
    })];
    for i in 0..12 {
        writes.push(Write::AddBackend {
            pool: "web".into(),
            address: format!("127.0.0.{}:80", 20 - i),
            weight: 1,
        });
    }
    writes.push(Write::SetAlgorithm {
        pool: "web".into(),
        algorithm: AlgorithmSpec::named("maglev"),
        hash_key: Some("header:x-user".into()),
    });
    writes.push(Write::SetPolicy {
        pool: "web".into(),
        policy: ballast_config::PoolPolicy {
            retries: Some(1),
            health_path: Some("/health".into()),
            ..Default::default()
        },
    });
    writes.push(Write::SetAdminState {
        pool: "web".into(),
        address: "127.0.0.10:80".into(),
        state: AdminState::Draining,
    });
    writes.push(Write::RemoveBackend {
        pool: "web".into(),
        address: "127.0.0.15:80".into(),
    });
    writes
}

async fn push_reaches_every_follower(store: SqlStore, url: String) {
    let options = FollowOptions {
        pull_interval: Duration::from_secs(3600),
        ..FollowOptions::default()
    };
    let mut followers = Vec::new();
    for _ in 0..3 {
        followers.push(follow(store.clone(), &url, options).await.expect("follow"));
    }
    let mut revision = 0;
    for write in writes() {
        revision = store.apply(write).await.expect("write");
    }
    let truth = store.config().await.expect("config");
    for follower in &mut followers {
        reaches(follower, revision).await;
        assert_eq!(
            *follower.borrow().config,
            truth,
            "applied change by change, equal to a reload"
        );
        assert!(follower.borrow().unreachable_since.is_none());
    }
}

async fn pull_repairs_what_push_missed(store: SqlStore, url: String) {
    let options = FollowOptions {
        push: false,
        pull_interval: Duration::from_millis(200),
        ..FollowOptions::default()
    };
    let mut follower = follow(store.clone(), &url, options).await.expect("follow");
    let mut revision = 0;
    for write in writes() {
        revision = store.apply(write).await.expect("write");
    }
    reaches(&mut follower, revision).await;
    assert_eq!(
        *follower.borrow().config,
        store.config().await.expect("config")
    );
}

async fn a_follower_behind_the_pruned_log_reloads_everything(store: SqlStore) {
    let writes = writes();
    let (early, late) = writes.split_at(3);
    for write in early {
        store.apply(write.clone()).await.expect("write");
    }
    let behind = store.config().await.expect("config");
    for write in late {
        store.apply(write.clone()).await.expect("write");
    }
    let near = store.config().await.expect("config");
    let revision = near.revision;
    store
        .apply(Write::SetWeight {
            pool: "web".into(),
            address: "127.0.0.20:80".into(),
            weight: 4,
        })
        .await
        .expect("write");
    let truth = store.config().await.expect("config");

    let latest = revision + 1;
    assert_eq!(store.prune_changes(5).await.expect("prune"), latest - 5);
    let log = store.changes_since(0, 100).await.expect("changes");
    assert_eq!(
        log.iter().map(|c| c.revision).collect::<Vec<_>>(),
        (truth.revision - 4..=truth.revision).collect::<Vec<_>>()
    );
    assert_eq!(store.prune_changes(5).await.expect("prune again"), 0);

    // Far behind: the log starts after the follower's next revision, so it reloads.
    let reloaded = catch_up(&store, &behind).await.expect("catch up");
    assert_eq!(reloaded.as_ref(), Some(&truth));
    // Close behind: the log still reaches back, so one change is applied.
    let applied = catch_up(&store, &near).await.expect("catch up");
    assert_eq!(applied.as_ref(), Some(&truth));
    assert_eq!(catch_up(&store, &truth).await.expect("catch up"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pruned_log() {
    let (store, _url, _db) = support::sqlite().await;
    a_follower_behind_the_pruned_log_reloads_everything(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pruned_log() {
    let (store, _url) = support::postgres().await;
    a_follower_behind_the_pruned_log_reloads_everything(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_push() {
    let (store, url, _db) = support::sqlite().await;
    push_reaches_every_follower(store, url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pull() {
    let (store, url, _db) = support::sqlite().await;
    pull_repairs_what_push_missed(store, url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_push() {
    let (store, url) = support::postgres().await;
    push_reaches_every_follower(store, url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pull() {
    let (store, url) = support::postgres().await;
    pull_repairs_what_push_missed(store, url).await;
}
