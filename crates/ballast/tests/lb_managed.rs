//! `ballast lb --db`: a managed LB server follows the configuration database. Changes written to
//! the database (here straight through the store; the admin API comes next) take effect on the
//! running LB without a restart: draining a backend, adding one, changing the algorithm.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use ballast_config::{AdminState, AlgorithmSpec, PoolSpec, SqlStore, Write};
use support::{Process, backend_of, echo, eventually, get, metric};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_managed_lb_applies_each_change_while_serving() {
    let dir = std::env::temp_dir().join(format!("ballast-managed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("config.db").display());
    let (_b1, b1) = echo("b1", &[]);
    let (_b2, b2) = echo("b2", &[]);
    let (_b3, b3) = echo("b3", &[]);

    let rt = runtime();
    let store = rt.block_on(SqlStore::connect(&url)).expect("store");
    let apply = |write: Write| rt.block_on(store.apply(write)).expect("write");
    support::create_pool(&rt, &store, "web", &[b1, b2]);

    let lb = support::managed_lb(&url, "web", &[]);
    let (address, admin) = (lb.listen_addr(0), lb.admin_addr());
    let seen: HashSet<String> = (0..4)
        .map(|_| backend_of(&get(address, "/", &[])))
        .collect();
    assert_eq!(seen, HashSet::from(["b1".to_owned(), "b2".to_owned()]));

    let revision = apply(Write::SetAdminState {
        pool: "web".into(),
        address: b1.to_string(),
        state: AdminState::Draining,
    });
    eventually(Duration::from_secs(10), "the drain to apply", || {
        metric(admin, "ballast_config_revision ") == Some(revision as f64)
    });
    for _ in 0..6 {
        assert_eq!(backend_of(&get(address, "/", &[])), "b2", "b1 is draining");
    }

    apply(Write::AddBackend {
        pool: "web".into(),
        address: b3.to_string(),
        weight: 1,
    });
    let revision = apply(Write::SetAlgorithm {
        pool: "web".into(),
        algorithm: AlgorithmSpec::named("least_request"),
        hash_key: None,
    });
    eventually(
        Duration::from_secs(10),
        "the new backend and algorithm",
        || metric(admin, "ballast_config_revision ") == Some(revision as f64),
    );
    let seen: HashSet<String> = (0..40)
        .map(|_| backend_of(&get(address, "/", &[])))
        .collect();
    assert_eq!(seen, HashSet::from(["b2".to_owned(), "b3".to_owned()]));
    assert_eq!(
        metric(admin, "ballast_config_unreachable_seconds "),
        Some(0.0)
    );

    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_listener_whose_pool_does_not_exist_answers_503() {
    let dir = std::env::temp_dir().join(format!("ballast-managed-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("config.db").display());
    let lb = Process::start(
        &[
            "lb",
            "--db",
            &url,
            "--pool",
            "nowhere",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
        ],
        1,
    );
    let reply = get(lb.listen_addr(0), "/", &[]);
    assert_eq!(reply.status, 503, "{reply:?}");
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_managed_lb_restarted_while_the_database_is_down_serves_from_its_cache() {
    let dir = std::env::temp_dir().join(format!("ballast-managed-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("config.db").display());
    let cache = dir.join("lb-cache.json");
    let cache_arg = cache.to_str().expect("utf-8").to_owned();
    let (_b1, b1) = echo("b1", &[]);

    let rt = runtime();
    let store = rt.block_on(SqlStore::connect(&url)).expect("store");
    support::create_pool(&rt, &store, "web", &[b1]);

    let args = |db: &str| {
        vec![
            "lb".to_owned(),
            "--db".into(),
            db.to_owned(),
            "--pool".into(),
            "web".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--admin".into(),
            "127.0.0.1:0".into(),
            "--workers".into(),
            "1".into(),
            "--cache".into(),
            cache_arg.clone(),
        ]
    };
    let first_args = args(&url);
    let first = Process::start(
        &first_args.iter().map(String::as_str).collect::<Vec<_>>(),
        2,
    );
    eventually(Duration::from_secs(10), "the cache file", || cache.exists());
    drop(first);

    // A database that cannot be opened: its directory does not exist.
    let unreachable = format!("sqlite://{}", dir.join("gone").join("config.db").display());
    let second_args = args(&unreachable);
    let second = Process::start(
        &second_args.iter().map(String::as_str).collect::<Vec<_>>(),
        2,
    );
    assert_eq!(backend_of(&get(second.listen_addr(0), "/", &[])), "b1");
    let stale = metric(second.admin_addr(), "ballast_config_unreachable_seconds ");
    assert!(stale.is_some_and(|s| s > 0.0), "{stale:?}");

    // Without a cache, an unreachable database is an error at start.
    let stderr = support::rejected(&[
        "lb",
        "--db",
        &unreachable,
        "--pool",
        "web",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(stderr.contains("--db sqlite://"), "{stderr}");

    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pools_own_response_timeout_applies() {
    let dir = std::env::temp_dir().join(format!("ballast-managed-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("config.db").display());
    let (_slow, slow) = echo("slow", &["--latency", "3s"]);
    let rt = runtime();
    let store = rt.block_on(SqlStore::connect(&url)).expect("store");
    rt.block_on(store.apply(Write::CreatePool(PoolSpec {
        name: "impatient".into(),
        algorithm: AlgorithmSpec::named("round_robin"),
        hash_key: "client_ip".into(),
        dns_name: None,
        policy: ballast_config::PoolPolicy {
            response_timeout_ms: Some(300),
            ..Default::default()
        },
    })))
    .expect("pool");
    rt.block_on(store.apply(Write::AddBackend {
        pool: "impatient".into(),
        address: slow.to_string(),
        weight: 1,
    }))
    .expect("backend");
    // The LB's own default is 30 s; the pool's 300 ms decides.
    let lb = support::managed_lb(&url, "impatient", &[]);
    let started = std::time::Instant::now();
    let reply = get(lb.listen_addr(0), "/", &[]);
    assert_eq!(reply.status, 504, "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_managed_lb_takes_its_listeners_from_a_file_and_its_pools_from_the_database() {
    let dir = std::env::temp_dir().join(format!("ballast-managed-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("config.db").display());
    let (_a, a) = echo("a", &[]);
    let (_b, b) = echo("b", &[]);
    let rt = runtime();
    let store = rt.block_on(SqlStore::connect(&url)).expect("store");
    support::create_pool(&rt, &store, "api", &[a]);
    support::create_pool(&rt, &store, "static", &[b]);

    let file = dir.join("lb.toml");
    let listeners = "admin = \"127.0.0.1:0\"\nworkers = 1\n\n\
                     [[listeners]]\nlisten = \"127.0.0.1:0\"\npool = \"api\"\n\n\
                     [[listeners]]\nlisten = \"127.0.0.1:0\"\npool = \"static\"\n";
    std::fs::write(&file, listeners).expect("file");
    let file_arg = file.to_str().expect("utf-8");
    let lb = Process::start(
        &[
            "lb", "--db", &url, "--config", file_arg, "--name", "lb-file",
        ],
        3,
    );
    assert_eq!(backend_of(&get(lb.listen_addr(0), "/", &[])), "a");
    assert_eq!(backend_of(&get(lb.listen_addr(1), "/", &[])), "b");

    // SIGHUP: the file's listeners change (one removed, one added that routes by a table in
    // the database); the heartbeat reports the new addresses.
    let route = |path_prefix: Option<&str>, pool: &str| ballast_config::route::Route {
        path_prefix: path_prefix.map(str::to_owned),
        pool: Some(pool.to_owned()),
        ..Default::default()
    };
    rt.block_on(store.apply(Write::AddRoute {
        table: "main".into(),
        position: None,
        route: route(Some("/static"), "static"),
    }))
    .expect("route");
    let applied = rt
        .block_on(store.apply(Write::AddRoute {
            table: "main".into(),
            position: None,
            route: route(None, "api"),
        }))
        .expect("route");
    eventually(Duration::from_secs(10), "the routes applied", || {
        metric(lb.admin_addr(), "ballast_config_revision ") == Some(applied as f64)
    });
    let added = support::unused_addr();
    let reloaded = format!(
        "admin = \"127.0.0.1:0\"\nworkers = 1\n\n\
         [[listeners]]\nlisten = \"{}\"\npool = \"api\"\n\n\
         [[listeners]]\nlisten = \"{added}\"\nroutes = \"main\"\n",
        lb.listen_addr(0)
    );
    std::fs::write(&file, reloaded).expect("file");
    lb.signal("HUP");
    eventually(Duration::from_secs(30), "the reload applied", || {
        metric(
            lb.admin_addr(),
            "ballast_config_reloads_total{result=\"ok\"}",
        ) == Some(1.0)
    });
    assert_eq!(backend_of(&get(added, "/static/x.css", &[])), "b");
    assert_eq!(backend_of(&get(added, "/", &[])), "a");
    assert_eq!(backend_of(&get(lb.listen_addr(0), "/", &[])), "a");
    eventually(
        Duration::from_secs(30),
        "the removed listener closed",
        || std::net::TcpStream::connect(lb.listen_addr(1)).is_err(),
    );
    eventually(
        Duration::from_secs(30),
        "the heartbeat's new addresses",
        || {
            let fleet = rt.block_on(store.lb_servers()).expect("fleet");
            fleet.iter().any(|server| {
                server.name == "lb-file"
                    && server.addresses == [lb.listen_addr(0).to_string(), added.to_string()]
            })
        },
    );

    // Pools in the file would be a second source of truth: refused.
    let with_pools = format!("{listeners}\n[[pools]]\nname = \"api\"\nbackends = [\"{a}\"]\n");
    std::fs::write(&file, with_pools).expect("file");
    let stderr = support::rejected(&["lb", "--db", &url, "--config", file_arg]);
    assert!(stderr.contains("pools come from --db"), "{stderr}");

    let stderr = support::rejected(&[
        "lb",
        "--db",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--pool",
        "api",
        "--pool",
        "static",
    ]);
    assert!(
        stderr.contains("--pool: 2 pools for 3 listeners"),
        "{stderr}"
    );
    let stderr = support::rejected(&["lb", "--db", &url, "--listen", "127.0.0.1:0"]);
    assert!(stderr.contains("--pool: managed mode needs"), "{stderr}");

    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}
