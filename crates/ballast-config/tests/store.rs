//! The store's one test suite, run against both databases: SQLite in a temp file, and a private
//! PostgreSQL server the suite starts itself. Round trips, refused writes that leave the
//! revision alone, and concurrent writers.

mod support;

use support::TempDb;

use std::sync::Arc;

use ballast_config::route::Route;
use ballast_config::{AdminState, AlgorithmSpec, Health, PoolSpec, SqlStore, StoreError, Write};

fn pool(name: &str, algorithm: &str) -> Write {
    Write::CreatePool(PoolSpec {
        name: name.into(),
        algorithm: AlgorithmSpec::named(algorithm),
        hash_key: "client_ip".into(),
        dns_name: Some(format!("{name}.lb.test")),
        policy: Default::default(),
    })
}

fn backend(pool: &str, address: &str, weight: u32) -> Write {
    Write::AddBackend {
        pool: pool.into(),
        address: address.into(),
        weight,
    }
}

async fn every_write_round_trips_and_is_logged(store: SqlStore) {
    assert_eq!(store.revision().await.expect("revision"), 0);
    let writes = [
        pool("web", "round_robin"),
        backend("web", "127.0.0.1:9001", 3),
        backend("web", "[::1]:9002", 1),
        Write::SetAlgorithm {
            pool: "web".into(),
            algorithm: AlgorithmSpec {
                table_size: Some(65_537),
                ..AlgorithmSpec::named("maglev")
            },
            hash_key: None,
        },
        Write::SetWeight {
            pool: "web".into(),
            address: "127.0.0.1:9001".into(),
            weight: 5,
        },
        Write::SetAdminState {
            pool: "web".into(),
            address: "[0:0::1]:9002".into(),
            state: AdminState::Draining,
        },
        Write::SetHealth {
            pool: "web".into(),
            address: "127.0.0.1:9001".into(),
            health: Health::Healthy,
            phi: Some(0.3),
            reason: Some("2 successful probes in a row".into()),
        },
    ];
    for (i, write) in writes.iter().enumerate() {
        assert_eq!(
            store.apply(write.clone()).await.expect("valid write"),
            i as u64 + 1
        );
    }

    let config = store.config().await.expect("config");
    assert_eq!(config.revision, 7);

    let web = &config.pools[0];
    assert_eq!(web.spec.algorithm.algorithm, "maglev");
    assert_eq!(web.spec.algorithm.table_size, Some(65_537));
    assert_eq!(web.spec.dns_name.as_deref(), Some("web.lb.test"));
    let first = &web.backends[0];
    assert_eq!(
        (first.address.as_str(), first.weight, first.health),
        ("127.0.0.1:9001", 5, Health::Healthy)
    );
    assert_eq!(first.phi, Some(0.3));
    assert_eq!(
        first.health_reason.as_deref(),
        Some("2 successful probes in a row")
    );
    let second = &web.backends[1];
    assert_eq!(
        (second.address.as_str(), second.admin_state),
        ("[::1]:9002", AdminState::Draining)
    );
    assert!(!second.takes_traffic());

    let changes = store.changes_since(0, 100).await.expect("changes");
    assert_eq!(changes.len(), 7);
    for (change, write) in changes.iter().zip(&writes) {
        assert_eq!(change.operation, write.operation());
        let logged: Write = serde_json::from_value(change.value.clone()).expect("a write");
        assert_eq!(&logged, write);
    }
    assert_eq!(store.changes_since(5, 100).await.expect("changes").len(), 2);

    store
        .apply(Write::RemoveBackend {
            pool: "web".into(),
            address: "127.0.0.1:9001".into(),
        })
        .await
        .expect("remove");
    store
        .apply(Write::DeletePool { pool: "web".into() })
        .await
        .expect("delete");
    let config = store.config().await.expect("config");
    assert!(config.pools.is_empty());
    assert_eq!(config.revision, 9);
}

async fn refused_writes_name_the_field_and_leave_the_revision_alone(store: SqlStore) {
    store.apply(pool("web", "round_robin")).await.expect("pool");
    store
        .apply(backend("web", "127.0.0.1:9001", 1))
        .await
        .expect("backend");
    let before = store.revision().await.expect("revision");

    let refusals: [(Write, &str); 6] = [
        (
            pool("web", "fastest"),
            "algorithm: unknown `fastest`; expected one of",
        ),
        (pool("web", "maglev"), "name: pool `web` already exists"),
        (
            backend("web", "127.0.0.1:9001", 2),
            "address: `127.0.0.1:9001` is already in pool `web`",
        ),
        (
            backend("web", "not-an-address", 1),
            "address: `not-an-address` is a host name",
        ),
        (
            backend("shop", "127.0.0.1:9002", 1),
            "pool `shop` does not exist",
        ),
        (
            Write::SetWeight {
                pool: "web".into(),
                address: "127.0.0.1:9999".into(),
                weight: 1,
            },
            "backend `127.0.0.1:9999` in pool `web` does not exist",
        ),
    ];
    for (write, expected) in refusals {
        let error = store.apply(write).await.expect_err("refused");
        assert!(
            matches!(
                error,
                StoreError::Invalid(_) | StoreError::Conflict(_) | StoreError::NotFound(_)
            ),
            "{error:?}"
        );
        assert!(
            error.to_string().starts_with(expected),
            "{error} vs {expected}"
        );
        assert_eq!(
            store.revision().await.expect("revision"),
            before,
            "after {expected}"
        );
    }
    assert_eq!(
        store
            .changes_since(before, 10)
            .await
            .expect("changes")
            .len(),
        0
    );
}

async fn concurrent_writers_get_strictly_increasing_revisions(store: SqlStore) {
    let store = Arc::new(store);
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let name = format!("pool-{w}");
                let mut revisions = vec![
                    store
                        .apply(pool(&name, "least_request"))
                        .await
                        .expect("pool"),
                ];
                for i in 0..99 {
                    let address = format!("10.0.{w}.{i}:80");
                    revisions.push(
                        store
                            .apply(backend(&name, &address, 1))
                            .await
                            .expect("backend"),
                    );
                }
                revisions
            })
        })
        .collect();
    let mut all = Vec::new();
    for writer in writers {
        let revisions = writer.await.expect("writer");
        assert!(
            revisions.windows(2).all(|pair| pair[0] < pair[1]),
            "{revisions:?}"
        );
        all.extend(revisions);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=800).collect::<Vec<u64>>(),
        "every write its own revision"
    );

    let config = store.config().await.expect("config");
    assert_eq!(config.revision, 800);
    assert_eq!(config.pools.len(), 8);
    assert!(config.pools.iter().all(|p| p.backends.len() == 99));
    let changes = store.changes_since(0, 1000).await.expect("changes");
    assert_eq!(changes.len(), 800);
    assert!(
        changes
            .windows(2)
            .all(|pair| pair[0].revision + 1 == pair[1].revision)
    );
}

async fn heartbeats_record_the_fleet_without_moving_the_revision(store: SqlStore) {
    use ballast_config::{LbServer, LbState};
    store.apply(pool("web", "maglev")).await.expect("pool");
    let mut server = LbServer {
        name: "lb-1".into(),
        addresses: vec!["127.0.0.11:8080".into()],
        pools: vec!["web".into()],
        admin: Some("127.0.0.11:9180".into()),
        applied_revision: 1,
        state: LbState::Serving,
        last_heartbeat_ms: 0,
        figures: None,
        liveness: Default::default(),
        liveness_reason: None,
    };
    store.heartbeat(&server).await.expect("heartbeat");
    server.applied_revision = 7;
    server.state = LbState::Stopped;
    store.heartbeat(&server).await.expect("heartbeat");
    let mut second = server.clone();
    second.name = "lb-0".into();
    store.heartbeat(&second).await.expect("heartbeat");
    let fleet = store.lb_servers().await.expect("fleet");
    assert_eq!(
        fleet.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["lb-0", "lb-1"]
    );
    assert_eq!(
        (fleet[1].applied_revision, fleet[1].state),
        (7, LbState::Stopped)
    );
    assert_eq!(fleet[1].addresses, ["127.0.0.11:8080"]);
    assert!(fleet[1].last_heartbeat_ms > 0);
    assert_eq!(
        store.revision().await.expect("revision"),
        1,
        "heartbeats are not changes"
    );
    // What the orchestrator observes survives the next heartbeat, and is not a change either.
    let figures = ballast_config::LbFigures {
        cpu_cores: 0.25,
        resident_bytes: 14 << 20,
        connections: 12,
        requests_per_second: 950.5,
        scraped_ms: 1_700_000_000_000,
    };
    let fence = |token| ballast_config::Fence {
        name: "orchestrator".into(),
        token,
    };
    store
        .record_lb_figures("lb-1", &figures, Some(&fence(5)))
        .await
        .expect("figures");
    store
        .set_lb_liveness("lb-1", ballast_config::Liveness::Down, "phi 9.1 > 8", None)
        .await
        .expect("liveness");
    let stale = store
        .set_lb_liveness(
            "lb-1",
            ballast_config::Liveness::Up,
            "late",
            Some(&fence(4)),
        )
        .await
        .expect_err("a stale leader");
    assert!(
        matches!(stale, ballast_config::StoreError::Fenced { .. }),
        "{stale:?}"
    );
    store.heartbeat(&server).await.expect("heartbeat");
    let fleet = store.lb_servers().await.expect("fleet");
    assert_eq!(fleet[1].figures, Some(figures));
    assert_eq!(fleet[1].liveness, ballast_config::Liveness::Down);
    assert_eq!(fleet[1].liveness_reason.as_deref(), Some("phi 9.1 > 8"));
    assert_eq!(fleet[0].figures, None);
    assert_eq!(store.revision().await.expect("revision"), 1);

    server.name = "LB 1".into();
    let error = store.heartbeat(&server).await.expect_err("invalid name");
    assert!(error.to_string().starts_with("name: `LB 1`"), "{error}");
}

async fn pool_policies_round_trip(store: SqlStore) {
    let shop = PoolSpec {
        name: "shop".into(),
        algorithm: AlgorithmSpec::named("least_request"),
        hash_key: "cookie:cart".into(),
        dns_name: None,
        policy: ballast_config::PoolPolicy {
            retries: Some(0),
            connect_timeout_ms: Some(250),
            response_timeout_ms: Some(5_000),
            health_path: Some("/health".into()),
            health_interval_ms: Some(1_000),
            health_timeout_ms: Some(400),
            health_rise: Some(3),
            health_fall: Some(2),
            phi_threshold: Some(10.5),
            phi_window: Some(500),
            phi_min_std_dev_ms: Some(50),
            phi_acceptable_pause_ms: Some(250),
            protocol: Some(ballast_config::UpstreamProtocol::Auto),
            send_proxy_protocol: Some(ballast_config::ProxyProtocol::V2),
            slow_start_ms: Some(30_000),
            max_requests: Some(64),
            max_connections: None,
            queue_size: Some(128),
            queue_timeout_ms: Some(250),
            retry_budget_percent: Some(10.0),
            retry_budget_min: Some(5),
            sticky_cookie: Some("ballast".into()),
            tls: Some(true),
            ca_file: Some("/etc/ballast/ca.pem".into()),
            server_name: Some("api.internal".into()),
            client_cert: Some("/etc/ballast/lb.pem".into()),
            client_key: Some("/etc/ballast/lb.key".into()),
            insecure_skip_verify: Some(false),
        },
    };
    store
        .apply(Write::CreatePool(shop.clone()))
        .await
        .expect("pool with a policy");
    let config = store.config().await.expect("config");
    assert_eq!(config.pools[0].spec, shop);

    // Replaced whole: what is left out falls back to the defaults.
    let policy = ballast_config::PoolPolicy {
        retries: Some(5),
        max_connections: Some(32),
        queue_size: Some(8),
        ..Default::default()
    };
    store
        .apply(Write::SetPolicy {
            pool: "shop".into(),
            policy: policy.clone(),
        })
        .await
        .expect("set policy");
    let config = store.config().await.expect("config");
    assert_eq!(config.pools[0].spec.policy, policy);
    let refused = store
        .apply(Write::SetPolicy {
            pool: "nowhere".into(),
            policy,
        })
        .await
        .expect_err("unknown pool");
    assert_eq!(refused.to_string(), "pool `nowhere` does not exist");
}

async fn leases_elect_one_holder_and_fences_refuse_the_former(store: SqlStore) {
    use ballast_config::{Fence, StoreError};
    use std::time::Duration;
    let ttl = Duration::from_millis(300);
    let a = store
        .acquire_lease("orchestrator", "a", ttl)
        .await
        .expect("lease")
        .expect("free");
    assert_eq!(
        store
            .acquire_lease("orchestrator", "b", ttl)
            .await
            .expect("lease"),
        None
    );
    assert!(
        store
            .renew_lease("orchestrator", "a", a.token, ttl)
            .await
            .expect("renew")
    );
    let again = store
        .acquire_lease("orchestrator", "a", ttl)
        .await
        .expect("lease");
    assert_eq!(
        again.map(|l| l.token),
        Some(a.token),
        "the holder keeps its token"
    );

    store.apply(pool("web", "maglev")).await.expect("pool");
    let fenced = |token| Fence {
        name: "orchestrator".into(),
        token,
    };
    let write = || backend("web", "127.0.0.1:9001", 1);
    store
        .apply_fenced(write(), &fenced(a.token))
        .await
        .expect("the holder writes");

    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let b = store
        .acquire_lease("orchestrator", "b", ttl)
        .await
        .expect("lease")
        .expect("expired, so free");
    assert!(b.token > a.token);
    assert!(
        !store
            .renew_lease("orchestrator", "a", a.token, ttl)
            .await
            .expect("renew")
    );
    store
        .apply_fenced(
            Write::SetWeight {
                pool: "web".into(),
                address: "127.0.0.1:9001".into(),
                weight: 2,
            },
            &fenced(b.token),
        )
        .await
        .expect("the new holder writes");
    let before = store.revision().await.expect("revision");
    let late = store
        .apply_fenced(
            Write::SetWeight {
                pool: "web".into(),
                address: "127.0.0.1:9001".into(),
                weight: 9,
            },
            &fenced(a.token),
        )
        .await
        .expect_err("the former holder is fenced out");
    assert!(matches!(late, StoreError::Fenced { .. }), "{late:?}");
    assert!(late.to_string().starts_with("fenced out: token"), "{late}");
    assert_eq!(store.revision().await.expect("revision"), before);
    assert_eq!(
        store.config().await.expect("config").pools[0].backends[0].weight,
        2
    );

    // A token from elsewhere (a Redis lease) raises the bar for the database's own leases too.
    store
        .apply_fenced(
            Write::SetWeight {
                pool: "web".into(),
                address: "127.0.0.1:9001".into(),
                weight: 3,
            },
            &fenced(1_000),
        )
        .await
        .expect("a newer token");
    store
        .release_lease("orchestrator", "b", b.token)
        .await
        .expect("release");
    let c = store
        .acquire_lease("orchestrator", "c", ttl)
        .await
        .expect("lease")
        .expect("released, so free");
    assert!(c.token > 1_000, "{}", c.token);
}

async fn route_tables_are_edited_in_place_and_guard_their_pools(store: SqlStore) {
    let route = |text: &str| -> Route { toml::from_str(text).expect("a route") };
    let add = |position: Option<u32>, text: &str| Write::AddRoute {
        table: "main".into(),
        position,
        route: route(text),
    };
    store.apply(pool("api", "round_robin")).await.expect("api");
    store.apply(pool("web", "round_robin")).await.expect("web");
    store
        .apply(add(None, "host = \"*.example.test\"\npool = \"web\""))
        .await
        .expect("first route");
    store
        .apply(add(Some(0), "path_prefix = \"/v1\"\npool = \"api\""))
        .await
        .expect("a route in front");
    store
        .apply(add(None, "status = 410"))
        .await
        .expect("a route at the end");
    let pools = |table: &ballast_config::route::RouteTable| {
        table
            .routes
            .iter()
            .map(|r| r.pool.clone().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let config = store.config().await.expect("config");
    assert_eq!(config.route_tables.len(), 1);
    assert_eq!(pools(&config.route_tables[0]), ["api", "web", ""]);

    let revision = store.revision().await.expect("revision");
    let refused = store
        .apply(add(None, "pool = \"nowhere\""))
        .await
        .expect_err("a route to a missing pool");
    assert!(
        matches!(&refused, StoreError::Invalid(e) if e.field == "pool"),
        "{refused}"
    );
    let refused = store
        .apply(Write::DeletePool { pool: "web".into() })
        .await
        .expect_err("a pool a route uses");
    assert!(
        matches!(&refused, StoreError::Conflict(_))
            && refused
                .to_string()
                .contains("route 1 of route table `main`"),
        "{refused}"
    );
    let refused = store
        .apply(Write::RemoveRoute {
            table: "main".into(),
            position: 3,
        })
        .await
        .expect_err("no such route");
    assert!(matches!(refused, StoreError::NotFound(_)), "{refused}");
    assert_eq!(store.revision().await.expect("revision"), revision);

    store
        .apply(Write::MoveRoute {
            table: "main".into(),
            from: 0,
            to: 2,
        })
        .await
        .expect("moved");
    let table = store
        .route_table("main")
        .await
        .expect("read")
        .expect("there");
    assert_eq!(pools(&table), ["web", "", "api"]);
    for _ in 0..3 {
        store
            .apply(Write::RemoveRoute {
                table: "main".into(),
                position: 0,
            })
            .await
            .expect("removed");
    }
    assert_eq!(store.route_table("main").await.expect("read"), None);
    store
        .apply(Write::DeletePool { pool: "web".into() })
        .await
        .expect("no route uses it now");
    let changes = store.changes_since(revision, 100).await.expect("changes");
    assert!(
        changes
            .iter()
            .all(|c| c.entity == "route" || c.operation == "delete_pool")
    );
}

/// Runs each suite function against a fresh SQLite file and a fresh PostgreSQL database.
macro_rules! on_both_stores {
    ($($suite:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $suite() {
                    let db = super::TempDb::new();
                    super::$suite(db.open().await).await;
                }
            )+
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $suite() {
                    let url = ballast_testkit::postgres::database().await;
                    let store = ballast_config::SqlStore::connect(&url).await.expect("connect");
                    super::$suite(store).await;
                }
            )+
        }
    };
}

on_both_stores!(
    every_write_round_trips_and_is_logged,
    refused_writes_name_the_field_and_leave_the_revision_alone,
    concurrent_writers_get_strictly_increasing_revisions,
    heartbeats_record_the_fleet_without_moving_the_revision,
    pool_policies_round_trip,
    leases_elect_one_holder_and_fences_refuse_the_former,
    route_tables_are_edited_in_place_and_guard_their_pools,
);

#[tokio::test]
async fn a_sqlite_file_keeps_everything_across_reopening() {
    let db = TempDb::new();
    let store = db.open().await;
    store.apply(pool("web", "maglev")).await.expect("pool");
    store
        .apply(backend("web", "127.0.0.1:9001", 2))
        .await
        .expect("backend");
    drop(store);
    let config = db.open().await.config().await.expect("config");
    assert_eq!(config.revision, 2);
    assert_eq!(config.pools[0].backends[0].weight, 2);
}
