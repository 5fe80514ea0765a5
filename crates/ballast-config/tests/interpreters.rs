//! A `Write` has two interpreters: the SQL store, which is the truth, and `Config::apply`, which
//! every follower (managed LBs, DNS, the orchestrator) runs on the change log instead of
//! reloading everything. They must never disagree: for random sequences of writes — valid and
//! not, on a small set of names so that they collide — the store's configuration after each
//! accepted write equals the follower's, on SQLite and on PostgreSQL.

mod support;

use ballast_config::route::Route;
use ballast_config::{
    AdminState, AlgorithmSpec, Config, Health, PoolPolicy, PoolSpec, SqlStore, Write,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as Cases, TestRunner};

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_owned)
}

fn address() -> impl Strategy<Value = String> {
    // `[0:0::1]` and `[::1]` are one backend: the store canonicalises, so must the follower.
    prop::sample::select(vec![
        "127.0.0.1:9001",
        "127.0.0.1:9002",
        "127.0.0.2:9001",
        "[::1]:9003",
        "[0:0::1]:9003",
    ])
    .prop_map(str::to_owned)
}

fn algorithm() -> impl Strategy<Value = AlgorithmSpec> {
    (
        prop::sample::select(vec![
            "round_robin",
            "weighted_round_robin",
            "least_request",
            "maglev",
            "ring_hash",
            "bounded_load",
        ]),
        prop::option::of(prop::sample::select(vec![7u32, 65537])),
    )
        .prop_map(|(name, table_size)| AlgorithmSpec {
            // A table size on anything but Maglev is refused, which is worth trying too.
            table_size,
            ..AlgorithmSpec::named(name)
        })
}

fn hash_key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "client_ip",
        "path",
        "header:X-User",
        "cookie:s",
        "cookie:a,b",
    ])
    .prop_map(str::to_owned)
}

fn policy() -> impl Strategy<Value = PoolPolicy> {
    (
        prop::option::of(0u32..12),
        prop::option::of(1u64..5_000),
        prop::option::of(prop::sample::select(vec!["/health", "no-slash"])),
    )
        .prop_map(|(retries, connect, path)| PoolPolicy {
            retries,
            connect_timeout_ms: connect,
            health_path: path.map(str::to_owned),
            ..PoolPolicy::default()
        })
}

fn route() -> impl Strategy<Value = Route> {
    (
        prop::option::of(prop::sample::select(vec!["api.test", "*.test", "bad host"])),
        prop::option::of(prop::sample::select(vec!["/v1", "nope"])),
        prop::option::of(name()),
        prop::option::of(prop::sample::select(vec![301u16, 404, 200])),
    )
        .prop_map(|(host, path_prefix, pool, status)| Route {
            host: host.map(str::to_owned),
            path_prefix: path_prefix.map(str::to_owned),
            pool,
            status,
            ..Route::default()
        })
}

fn table() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["main", "edge", "bad name"]).prop_map(str::to_owned)
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        3 => (name(), algorithm(), hash_key(), policy()).prop_map(|(name, algorithm, hash_key, policy)| {
            Write::CreatePool(PoolSpec { name, algorithm, hash_key, dns_name: None, policy })
        }),
        1 => name().prop_map(|pool| Write::DeletePool { pool }),
        1 => (name(), algorithm(), prop::option::of(hash_key())).prop_map(|(pool, algorithm, hash_key)| {
            Write::SetAlgorithm { pool, algorithm, hash_key }
        }),
        1 => (name(), policy()).prop_map(|(pool, policy)| Write::SetPolicy { pool, policy }),
        4 => (name(), address(), 0u32..4).prop_map(|(pool, address, weight)| {
            Write::AddBackend { pool, address, weight }
        }),
        1 => (name(), address()).prop_map(|(pool, address)| Write::RemoveBackend { pool, address }),
        2 => (name(), address(), 0u32..4).prop_map(|(pool, address, weight)| {
            Write::SetWeight { pool, address, weight }
        }),
        2 => (name(), address(), prop::sample::select(vec![
            AdminState::Active, AdminState::Draining, AdminState::Disabled,
        ])).prop_map(|(pool, address, state)| Write::SetAdminState { pool, address, state }),
        2 => (
            name(),
            address(),
            prop::sample::select(vec![Health::Unknown, Health::Healthy, Health::Unhealthy]),
            prop::option::of(prop::sample::select(vec![0.0, 0.125, 8.5, 1e-9])),
            prop::option::of(prop::sample::select(vec!["timed out", "200"])),
        ).prop_map(|(pool, address, health, phi, reason)| Write::SetHealth {
            pool, address, health, phi, reason: reason.map(str::to_owned),
        }),
        3 => (table(), prop::option::of(0u32..4), route()).prop_map(|(table, position, route)| {
            Write::AddRoute { table, position, route }
        }),
        1 => (table(), 0u32..4).prop_map(|(table, position)| Write::RemoveRoute { table, position }),
        1 => (table(), 0u32..4, 0u32..4).prop_map(|(table, from, to)| Write::MoveRoute { table, from, to }),
    ]
}

/// Applies `writes` to the store and to a follower's copy of its configuration, comparing the
/// two after every write the store took.
async fn agree(store: &SqlStore, writes: Vec<Write>) -> Result<(), TestCaseError> {
    let mut follower: Config = store.config().await.expect("config");
    for write in writes {
        match store.apply(write.clone()).await {
            Ok(revision) => {
                follower
                    .apply(revision, &write)
                    .map_err(|error| TestCaseError::fail(format!("{error}")))?;
                let truth = store.config().await.expect("config");
                prop_assert_eq!(&truth, &follower, "after {:?}", write);
            }
            Err(_) => {
                let truth = store.config().await.expect("config");
                prop_assert_eq!(
                    truth.revision,
                    follower.revision,
                    "a refused write moved it"
                );
            }
        }
    }
    Ok(())
}

fn run_against(store: &SqlStore, runtime: &tokio::runtime::Runtime) {
    // One store for every case: each starts from whatever the last left, which a follower
    // must cope with too.
    let mut runner = TestRunner::new(Cases {
        cases: 24,
        failure_persistence: None,
        ..Cases::default()
    });
    let sequences = prop::collection::vec(write(), 1..40);
    if let Err(failure) = runner.run(&sequences, |writes| runtime.block_on(agree(store, writes))) {
        panic!("{failure}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn on_sqlite_the_store_and_config_apply_agree() {
    let runtime = runtime();
    let db = support::TempDb::new();
    let store = runtime.block_on(db.open());
    run_against(&store, &runtime);
}

#[test]
fn on_postgres_the_store_and_config_apply_agree() {
    let runtime = runtime();
    let store = runtime.block_on(async {
        let url = ballast_testkit::postgres::database().await;
        SqlStore::connect(&url).await.expect("connect")
    });
    run_against(&store, &runtime);
}
