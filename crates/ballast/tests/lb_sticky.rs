//! Sticky sessions seen from outside: a client that keeps the LB's cookie stays on its backend
//! whatever the algorithm would choose, and moves (with a new cookie) once that backend is
//! drained; the same over TLS, where the cookie is `Secure`.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use ballast_config::{AdminState, AlgorithmSpec, PoolPolicy, PoolSpec, SqlStore, Write};
use support::{Reply, TempDir, backend_of, echo, eventually, get, lb, metric};

/// The cookie the LB set in `reply`, as `NAME=VALUE`, and its attributes.
fn set_cookie(reply: &Reply) -> Option<(String, String)> {
    reply.head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.eq_ignore_ascii_case("set-cookie") {
            return None;
        }
        let (pair, attributes) = value.trim().split_once(';').unwrap_or((value.trim(), ""));
        Some((pair.to_owned(), attributes.trim().to_owned()))
    })
}

#[test]
fn a_client_with_the_cookie_stays_on_its_backend_until_it_is_drained() {
    let dir = TempDir::new("sticky");
    let url = format!("sqlite://{}", dir.path().join("config.db").display());
    let backends: Vec<(support::Process, SocketAddr)> =
        ["b1", "b2", "b3"].iter().map(|n| echo(n, &[])).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt.block_on(SqlStore::connect(&url)).expect("store");
    let apply = |write: Write| rt.block_on(store.apply(write)).expect("write");
    apply(Write::CreatePool(PoolSpec {
        name: "web".into(),
        algorithm: AlgorithmSpec::named("round_robin"),
        hash_key: "client_ip".into(),
        dns_name: None,
        policy: PoolPolicy {
            sticky_cookie: Some("lb".into()),
            ..PoolPolicy::default()
        },
    }));
    for (_, address) in &backends {
        apply(Write::AddBackend {
            pool: "web".into(),
            address: address.to_string(),
            weight: 1,
        });
    }
    let lb = support::managed_lb(&url, "web", &[]);
    let (address, admin) = (lb.listen_addr(0), lb.admin_addr());

    // Without the cookie, round robin spreads the requests, and each answer names its backend.
    let first = get(address, "/", &[]);
    let home = backend_of(&first);
    let (cookie, attributes) = set_cookie(&first).expect("the LB sets its cookie");
    assert!(
        cookie.starts_with("lb=") && cookie.len() == "lb=".len() + 16,
        "{cookie}"
    );
    assert_eq!(attributes, "Path=/; HttpOnly");
    let without: HashSet<String> = (0..6)
        .map(|_| backend_of(&get(address, "/", &[])))
        .collect();
    assert_eq!(
        without.len(),
        3,
        "round robin without the cookie: {without:?}"
    );

    // With it, every request goes home, and the cookie is not set again.
    for _ in 0..100 {
        let reply = get(
            address,
            "/",
            &[("Cookie", &format!("theme=dark; {cookie}"))],
        );
        assert_eq!(backend_of(&reply), home);
        assert_eq!(set_cookie(&reply), None, "{}", reply.head);
    }
    // A cookie that names no backend is replaced.
    let forged = get(address, "/", &[("Cookie", "lb=0123456789abcdef")]);
    assert_ne!(
        set_cookie(&forged).expect("a new cookie").0,
        "lb=0123456789abcdef"
    );

    let home_address = backends[["b1", "b2", "b3"]
        .iter()
        .position(|n| **n == home)
        .expect("a known backend")]
    .1;
    let revision = apply(Write::SetAdminState {
        pool: "web".into(),
        address: home_address.to_string(),
        state: AdminState::Draining,
    });
    eventually(Duration::from_secs(10), "the drain to apply", || {
        metric(admin, "ballast_config_revision ") == Some(revision as f64)
    });
    let moved = get(address, "/", &[("Cookie", &cookie)]);
    let new_home = backend_of(&moved);
    assert_ne!(new_home, home, "a drained backend takes no sticky client");
    let (new_cookie, _) = set_cookie(&moved).expect("the cookie is rewritten");
    assert_ne!(new_cookie, cookie);
    for _ in 0..20 {
        let reply = get(address, "/", &[("Cookie", &new_cookie)]);
        assert_eq!(backend_of(&reply), new_home);
        assert_eq!(set_cookie(&reply), None);
    }
}

#[test]
fn over_tls_the_cookie_is_secure_and_sticks() {
    let (_b1, b1) = echo("b1", &[]);
    let (_b2, b2) = echo("b2", &[]);
    let dir = TempDir::new("sticky-tls");
    let (cert_path, key_path, _) = support::localhost_tls_files(dir.path());
    let (_lb, address) = lb(
        &[b1, b2],
        &[
            "--sticky-cookie",
            "srv",
            "--tls-cert",
            &cert_path,
            "--tls-key",
            &key_path,
        ],
    );
    let first = support::get_over_tls(address, "localhost", "localhost");
    let home = backend_of(&first);
    let (cookie, attributes) = set_cookie(&first).expect("the LB sets its cookie");
    assert!(cookie.starts_with("srv="), "{cookie}");
    assert_eq!(attributes, "Path=/; HttpOnly; Secure");
    for _ in 0..20 {
        let reply = support::get_over_tls_with(
            address,
            "localhost",
            "localhost",
            "/",
            &[("Cookie", &cookie)],
        );
        assert_eq!(backend_of(&reply), home);
        assert_eq!(set_cookie(&reply), None, "{}", reply.head);
    }
}
