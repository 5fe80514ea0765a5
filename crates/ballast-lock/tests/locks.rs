//! The locks against real, private `redis-server` processes: one for the remote lock, five for
//! Redlock, killed, paused and restarted as a test needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ballast_lock::{LockError, LockManager, NodeError, Options, Renewal};
use ballast_testkit::redis::Server;

fn urls(servers: &[Server]) -> Vec<String> {
    servers.iter().map(Server::url).collect()
}

fn redlock(servers: &[Server]) -> LockManager {
    LockManager::redlock(&urls(servers), Options::default()).expect("redlock")
}

/// Opens every node's connection before a short-TTL attempt, so that connecting on a busy
/// machine does not count against the attempt's per-node timeout (a few ms for a 300 ms TTL).
async fn connected(locks: &LockManager) {
    let unreachable = locks.connect(Duration::from_secs(10)).await;
    assert!(unreachable.is_empty(), "{unreachable:?}");
}

/// Runs `contenders` tasks that each take the lock `rounds` times, counting holders inside the
/// critical section: it must never be more than one.
async fn mutual_exclusion(locks: LockManager, contenders: usize, rounds: usize) {
    let inside = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..contenders {
        let (locks, inside, entered) = (locks.clone(), inside.clone(), entered.clone());
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            for _ in 0..rounds {
                let lease = locks
                    .acquire("shared", Duration::from_secs(5), Duration::from_secs(60))
                    .await
                    .expect("acquired in time");
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                tokens.push(lease.fencing_token());
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                entered.fetch_add(1, Ordering::SeqCst);
                // Every node it was granted on; others may have been held by a rival's attempt.
                assert!(lease.release().await.nodes >= locks.quorum());
            }
            tokens
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("contender"));
    }
    assert_eq!(entered.load(Ordering::SeqCst), contenders * rounds);
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), contenders * rounds, "every grant its own token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_excludes_20_concurrent_acquirers() {
    let server = Server::start();
    let locks = LockManager::single(&server.url(), Options::default()).expect("lock");
    mutual_exclusion(locks, 20, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_excludes_20_concurrent_acquirers() {
    let servers = Server::cluster(5);
    mutual_exclusion(redlock(&servers), 20, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_with_every_grant() {
    let servers = Server::cluster(5);
    let (a, b) = (redlock(&servers), redlock(&servers));
    let mut last = 0;
    for round in 0..20 {
        let locks = if round % 2 == 0 { &a } else { &b };
        let lease = locks
            .try_acquire("fenced", Duration::from_secs(2))
            .await
            .expect("free");
        assert!(
            lease.fencing_token() > last,
            "{} after {last}",
            lease.fencing_token()
        );
        last = lease.fencing_token();
        lease.release().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_frees_a_crashed_holders_lock() {
    let server = Server::start();
    let locks = LockManager::single(&server.url(), Options::default()).expect("lock");
    connected(&locks).await;
    let crashed = locks
        .try_acquire("job", Duration::from_millis(300))
        .await
        .expect("free");
    let first = crashed.fencing_token();
    drop(crashed); // never released, as if its holder died
    let refused = locks.try_acquire("job", Duration::from_secs(1)).await;
    assert!(
        matches!(refused, Err(LockError::NotAcquired { held: 1, .. })),
        "{refused:?}"
    );
    let lease = locks
        .acquire("job", Duration::from_secs(1), Duration::from_secs(5))
        .await
        .expect("free after the TTL");
    assert!(lease.fencing_token() > first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_by_a_non_holder_does_nothing() {
    let server = Server::start();
    let locks = LockManager::single(&server.url(), Options::default()).expect("lock");
    let lease = locks
        .try_acquire("job", Duration::from_secs(5))
        .await
        .expect("free");
    let released = locks.release("job", "someone-else", 0).await;
    assert_eq!(released.nodes, 0);
    let status = locks.status("job").await;
    let holding = status[0].holding.as_ref().expect("answered");
    assert_eq!(holding.value.as_deref(), Some(lease.value()));
    assert!(holding.ttl.is_some_and(|t| t > Duration::from_secs(4)));
    assert_eq!(holding.last_token, lease.fencing_token());
    assert_eq!(lease.release().await.nodes, 1);
    let status = locks.status("job").await;
    assert_eq!(status[0].holding.as_ref().expect("answered").value, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_grants_with_two_of_five_down_and_refuses_with_three() {
    let servers = Server::cluster(5);
    let locks = redlock(&servers);
    servers[0].kill();
    servers[1].kill();
    let lease = locks
        .try_acquire("job", Duration::from_secs(2))
        .await
        .expect("three of five grant it");
    lease.release().await;

    servers[2].kill();
    let refused = locks
        .try_acquire("job", Duration::from_secs(2))
        .await
        .expect_err("two of five cannot");
    let LockError::NotAcquired {
        granted,
        quorum,
        failures,
        ..
    } = &refused
    else {
        panic!("{refused:?}")
    };
    assert_eq!((*granted, *quorum, failures.len()), (2, 3, 3));
    for (failure, server) in failures.iter().zip(&servers) {
        assert!(
            matches!(failure, NodeError::Unreachable { node, .. } if *node == server.url()),
            "{failure:?}"
        );
    }
    assert!(refused.to_string().contains(&servers[0].url()), "{refused}");
    // Refused means released: the two nodes that granted it hold nothing.
    for status in locks.status("job").await.iter().skip(3) {
        assert_eq!(status.holding.as_ref().expect("up").value, None);
    }

    // A node back (empty) restores the majority.
    servers[0].start_again();
    let lease = locks
        .acquire("job", Duration::from_secs(2), Duration::from_secs(5))
        .await
        .expect("three of five again");
    lease.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_time_out_are_released_anyway() {
    let servers = Server::cluster(5);
    let options = Options {
        node_timeout: Some(Duration::from_millis(50)),
        ..Options::default()
    };
    let locks = LockManager::redlock(&urls(&servers), options).expect("redlock");
    // Warm every connection up, so that the requests below queue on open sockets.
    for status in locks.status("job").await {
        status.holding.expect("up");
    }
    for server in &servers[..3] {
        server.pause();
    }
    let refused = locks
        .try_acquire("job", Duration::from_secs(10))
        .await
        .expect_err("two of five answer");
    let LockError::NotAcquired { failures, .. } = &refused else {
        panic!("{refused:?}")
    };
    assert!(
        failures
            .iter()
            .all(|f| matches!(f, NodeError::TimedOut { .. })),
        "{failures:?}"
    );
    // The frozen nodes now run what queued up: the acquire, then the release sent after it.
    for server in &servers[..3] {
        server.resume();
    }
    let statuses = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let statuses = locks.status("job").await;
            if statuses.iter().all(|s| s.holding.is_ok()) {
                break statuses;
            }
        }
    })
    .await
    .expect("the nodes answer again");
    for status in statuses {
        let holding = status.holding.expect("up");
        assert_eq!(holding.value, None, "{} still holds it", status.node);
        assert!(
            holding.last_token > 0,
            "{} granted it before the release",
            status.node
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_a_lock_across_five_ttls() {
    let servers = Server::cluster(5);
    let locks = redlock(&servers);
    connected(&locks).await;
    let ttl = Duration::from_millis(300);
    let held = locks
        .try_acquire("job", ttl)
        .await
        .expect("free")
        .keep_alive(Renewal::default());
    for _ in 0..5 {
        tokio::time::sleep(ttl).await;
        assert!(held.lost_reason().is_none(), "{:?}", held.lost_reason());
        let other = locks.try_acquire("job", ttl).await;
        assert!(
            matches!(other, Err(LockError::NotAcquired { .. })),
            "{other:?}"
        );
    }
    assert_eq!(held.release().await.nodes, 5);
    locks.try_acquire("job", ttl).await.expect("free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lost_signal_fires_when_a_majority_of_nodes_die() {
    let servers = Server::cluster(5);
    let locks = redlock(&servers);
    connected(&locks).await;
    let ttl = Duration::from_millis(600);
    let held = locks
        .try_acquire("job", ttl)
        .await
        .expect("free")
        .keep_alive(Renewal::default());
    for server in &servers[..3] {
        server.kill();
    }
    let reason = tokio::time::timeout(ttl * 2, held.lost())
        .await
        .expect("lost within the validity");
    assert!(reason.contains("renewal failed"), "{reason}");
    assert!(
        reason.contains("extended on 2 of 5 nodes, 3 needed"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_renewal_lets_the_lease_run_out() {
    let server = Server::start();
    let locks = LockManager::single(&server.url(), Options::default()).expect("lock");
    connected(&locks).await;
    let ttl = Duration::from_millis(200);
    let held = locks
        .try_acquire("job", ttl)
        .await
        .expect("free")
        .keep_alive(Renewal {
            every: None,
            max_renewals: Some(2),
        });
    let reason = tokio::time::timeout(Duration::from_secs(3), held.lost())
        .await
        .expect("lost after two renewals");
    assert_eq!(reason, "its validity ran out");
}

#[test]
fn bad_settings_are_refused_with_the_reason() {
    let even = LockManager::redlock(
        &["redis://127.0.0.1:1", "redis://127.0.0.1:2"],
        Options::default(),
    )
    .expect_err("even");
    assert_eq!(
        even.to_string(),
        "redis: Redlock needs an odd number of independent nodes, at least 3; got 2"
    );
    let none = LockManager::from_urls::<&str>(&[], Options::default()).expect_err("none");
    assert_eq!(none.to_string(), "redis: no Redis node given");
    let bad = LockManager::single("http://nowhere", Options::default()).expect_err("scheme");
    assert!(
        bad.to_string().starts_with("redis: `http://nowhere`:"),
        "{bad}"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let locks = LockManager::single("redis://127.0.0.1:1", Options::default()).expect("lock");
    let zero = runtime
        .block_on(locks.try_acquire("job", Duration::ZERO))
        .expect_err("zero TTL");
    assert!(zero.to_string().starts_with("ttl: "), "{zero}");
}

/// Kleppmann's scenario: A holds the lock and pauses past its lease; B acquires and writes; A
/// wakes and writes with its old token — and the resource refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holders_late_write_is_refused_by_fencing() {
    let servers = Server::cluster(5);
    let resource = Server::start();
    let register = ballast_lock::fenced::Register::open(&resource.url(), "storage")
        .await
        .expect("register");
    let (a, b) = (redlock(&servers), redlock(&servers));
    connected(&a).await;
    connected(&b).await;
    let ttl = Duration::from_millis(300);

    let lease_a = a.try_acquire("storage", ttl).await.expect("A acquires");
    assert!(
        register
            .write(lease_a.fencing_token(), "A1")
            .await
            .expect("write")
    );
    // A pauses (a GC pause, a swapped-out process) past its lease; B's wait ends when it lapses.
    let lease_b = b
        .acquire("storage", ttl, Duration::from_secs(5))
        .await
        .expect("B acquires once A's lease ran out");
    assert!(lease_b.fencing_token() > lease_a.fencing_token());
    assert!(
        register
            .write(lease_b.fencing_token(), "B1")
            .await
            .expect("write")
    );
    // A wakes, unaware, and writes with the token it was given.
    assert!(!lease_a.is_valid());
    let accepted = register
        .write(lease_a.fencing_token(), "A2")
        .await
        .expect("write");
    assert!(!accepted, "A's late write must be refused");
    let log: Vec<String> = register
        .log()
        .await
        .expect("log")
        .into_iter()
        .map(|(_, payload)| payload)
        .collect();
    assert_eq!(log, ["A1", "B1"]);
}

/// The nodes' fencing counters disagree — node 1's is far ahead, as after a spell with a fast
/// clock. A is granted by all five and gets node 1's large token, then pauses; node 1 becomes
/// unreachable; B is granted by the other four. B's token must still be larger than A's, or the
/// resource would refuse the rightful holder and take A's late write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_grow_in_grant_order_when_one_nodes_counter_is_ahead() {
    let servers = Server::cluster(5);
    let resource = Server::start();
    let register = ballast_lock::fenced::Register::open(&resource.url(), "skewed")
        .await
        .expect("register");
    let ahead = {
        let client = redis::Client::open(servers[0].url()).expect("url");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("node 1");
        let (seconds, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut connection)
            .await
            .expect("TIME");
        // 30 s ahead of the node's clock, in the clock-based token's unit (µs).
        let ahead = seconds * 1_000_000 + micros + 30_000_000;
        let () = redis::cmd("SET")
            .arg("skewed:fence")
            .arg(ahead)
            .query_async(&mut connection)
            .await
            .expect("SET");
        ahead
    };
    let (a, b) = (redlock(&servers), redlock(&servers));
    connected(&a).await;
    connected(&b).await;
    let ttl = Duration::from_millis(300);
    let lease_a = a.try_acquire("skewed", ttl).await.expect("A acquires");
    assert!(
        lease_a.fencing_token() > ahead,
        "A's token comes from node 1"
    );
    // A pauses before its first renewal; node 1 is cut off.
    servers[0].kill();
    let lease_b = b
        .acquire("skewed", ttl, Duration::from_secs(5))
        .await
        .expect("B acquires from nodes 2-5 once A's lease ran out");
    assert!(
        lease_b.fencing_token() > lease_a.fencing_token(),
        "B {} must be above A {}",
        lease_b.fencing_token(),
        lease_a.fencing_token()
    );
    assert!(
        register
            .write(lease_b.fencing_token(), "B1")
            .await
            .expect("write"),
        "the rightful holder's write is taken"
    );
    let late = register
        .write(lease_a.fencing_token(), "A1")
        .await
        .expect("write");
    assert!(!late, "A's late write must be refused");
}
