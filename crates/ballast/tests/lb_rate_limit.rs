//! Rate limits per route, seen from outside: a client gets its burst, then 429 with a
//! `Retry-After` it can act on, while other clients and other routes are untouched; a header can
//! tell clients apart instead of their address. The rates are per hour so that no
//! request of the test is let through again by the clock, however slow the machine.

mod support;

use support::{TempDir, echo, get, metric};

/// The `Retry-After` seconds in `head`.
fn retry_after(head: &str) -> Option<u64> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

#[test]
fn a_client_over_its_routes_rate_gets_429_with_retry_after_and_no_one_else_does() {
    let (_b1, b1) = echo("b1", &[]);
    let dir = TempDir::new("rate-limit");
    let config = format!(
        r#"
admin = "127.0.0.1:0"
workers = 2

[[listeners]]
listen = "127.0.0.1:0"
routes = "main"

[[listeners]]
listen = "127.0.0.1:0"
routes = "main"
tls_cert = "{dir}/cert.pem"
tls_key = "{dir}/key.pem"

[[route_tables]]
name = "main"

[[route_tables.routes]]
path_prefix = "/limited"
pool = "web"
rate = "3/h"
burst = 3

[[route_tables.routes]]
path_prefix = "/keyed"
pool = "web"
rate = "1/h"
rate_key = "header:x-api-key"

[[route_tables.routes]]
pool = "web"

[[pools]]
name = "web"
backends = ["{b1}"]
"#,
        dir = dir.path().display()
    );
    support::localhost_tls_files(dir.path());
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, config).expect("write the configuration");
    let lb = support::Process::start(&["lb", "--config", path.to_str().expect("utf-8")], 3);
    let (address, tls, admin) = (lb.listen_addr(0), lb.listen_addr(1), lb.admin_addr());

    // The burst passes, then 429, on the fast path and over TLS alike (one client:
    // 127.0.0.1); each listener counts for itself.
    for _ in 0..3 {
        assert_eq!(get(address, "/limited/a", &[]).status, 200);
    }
    let over = get(address, "/limited", &[]);
    assert_eq!(over.status, 429, "{over:?}");
    // 3/h: one request each 20 minutes, and the client is a full interval over.
    let wait = retry_after(&over.head).expect("a Retry-After");
    assert!((1..=1200).contains(&wait), "{}", over.head);
    let over_tls =
        |path: &str| support::get_over_tls_with(tls, "localhost", "localhost", path, &[]);
    for _ in 0..3 {
        assert_eq!(over_tls("/limited").status, 200);
    }
    let refused = over_tls("/limited");
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(retry_after(&refused.head).is_some(), "{}", refused.head);
    // Other routes are not limited.
    for _ in 0..10 {
        assert_eq!(get(address, "/free", &[]).status, 200);
        assert_eq!(over_tls("/free").status, 200);
    }
    assert_eq!(
        metric(
            admin,
            "ballast_rate_limited_total{table=\"main\",route=\"0\"}"
        ),
        Some(2.0)
    );

    // By header: each key has its own allowance; a request without the header counts by its
    // address.
    let with_key = |key: &str| get(address, "/keyed", &[("X-Api-Key", key)]).status;
    assert_eq!(with_key("alice"), 200);
    assert_eq!(with_key("alice"), 429);
    assert_eq!(with_key("bob"), 200);
    assert_eq!(get(address, "/keyed", &[]).status, 200);
    assert_eq!(get(address, "/keyed", &[]).status, 429);
}

#[test]
fn a_fleet_wide_rate_is_one_count_over_every_lb_and_redis_failing_is_the_routes_choice() {
    let (_b1, b1) = echo("b1", &[]);
    let redis = ballast_testkit::redis::Server::start();
    let dir = TempDir::new("rate-limit-fleet");
    let config = format!(
        r#"
admin = "127.0.0.1:0"
workers = 1
rate_limit_redis = ["{redis}"]
rate_limit_redis_timeout = "10s"    # a loaded machine's Redis is slow, not gone

[[listeners]]
listen = "127.0.0.1:0"
routes = "main"

[[listeners]]
listen = "127.0.0.1:0"
routes = "main"
rate = "2/h"
rate_key = "header:x-tenant"
rate_scope = "fleet"

[[route_tables]]
name = "main"

[[route_tables.routes]]
path_prefix = "/open"
pool = "web"
rate = "3/h"
rate_scope = "fleet"

[[route_tables.routes]]
path_prefix = "/strict"
pool = "web"
rate = "100/h"
rate_scope = "fleet"
on_redis_error = "deny"

[[pools]]
name = "web"
backends = ["{b1}"]
"#,
        redis = redis.url()
    );
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, config).expect("write the configuration");
    let start = || support::Process::start(&["lb", "--config", path.to_str().expect("utf-8")], 3);
    let (first, second) = (start(), start());
    let (one, two) = (first.listen_addr(0), second.listen_addr(0));

    // A burst of 3 for the fleet, whichever LB the requests reach.
    assert_eq!(get(one, "/open", &[]).status, 200);
    assert_eq!(get(two, "/open", &[]).status, 200);
    assert_eq!(get(one, "/open", &[]).status, 200);
    let over = get(two, "/open", &[]);
    assert_eq!(over.status, 429, "{over:?}");
    assert!(
        retry_after(&over.head).is_some_and(|s| (1..=1200).contains(&s)),
        "{}",
        over.head
    );
    assert_eq!(get(one, "/open", &[]).status, 429);
    assert_eq!(get(one, "/strict", &[]).status, 200);

    // A listener's fleet-wide rate is counted before the route's, one count for the fleet.
    let tenant =
        |lb: &support::Process| get(lb.listen_addr(1), "/strict", &[("X-Tenant", "carol")]).status;
    assert_eq!(tenant(&first), 200);
    assert_eq!(tenant(&second), 200);
    assert_eq!(tenant(&first), 429);
    assert_eq!(tenant(&second), 429);

    // Redis gone: the limit lapses where the route allows it, and holds where it denies.
    redis.kill();
    assert_eq!(get(one, "/open", &[]).status, 200, "on_redis_error = allow");
    let denied = get(two, "/strict", &[]);
    assert_eq!(denied.status, 429, "on_redis_error = deny: {denied:?}");
    assert_eq!(
        metric(
            first.admin_addr(),
            "ballast_rate_limit_redis_errors_total{table=\"main\",route=\"0\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn a_listeners_rate_counts_every_request_before_any_routes_and_closes_tcp_connections_over_it() {
    let (_b1, b1) = echo("b1", &[]);
    let dir = TempDir::new("listener-rate");
    let config = format!(
        r#"
admin = "127.0.0.1:0"
workers = 2

[[listeners]]
listen = "127.0.0.1:0"
routes = "main"
rate = "4/h"
rate_key = "header:x-api-key"

[[listeners]]
listen = "127.0.0.1:0"
mode = "tcp"
pool = "web"
rate = "2/h"

[[route_tables]]
name = "main"

[[route_tables.routes]]
path_prefix = "/limited"
pool = "web"
rate = "2/h"
rate_key = "header:x-api-key"

[[route_tables.routes]]
pool = "web"

[[pools]]
name = "web"
backends = ["{b1}"]
"#
    );
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, config).expect("write the configuration");
    let lb = support::Process::start(&["lb", "--config", path.to_str().expect("utf-8")], 3);
    let (http, tcp, admin) = (lb.listen_addr(0), lb.listen_addr(1), lb.admin_addr());

    let status = |path: &str, key: &str| get(http, path, &[("X-Api-Key", key)]).status;
    // The route's own rate ends first…
    assert_eq!(status("/limited", "alice"), 200);
    assert_eq!(status("/limited", "alice"), 200);
    assert_eq!(status("/limited", "alice"), 429);
    // …and the listener's counts every request, the route's 429 included, on every route.
    assert_eq!(status("/free", "alice"), 200);
    let over = get(http, "/free", &[("X-Api-Key", "alice")]);
    assert_eq!(over.status, 429, "{over:?}");
    assert!(retry_after(&over.head).is_some(), "{}", over.head);
    // Another client has its own allowance.
    for _ in 0..4 {
        assert_eq!(status("/free", "bob"), 200);
    }
    assert_eq!(status("/free", "bob"), 429);

    // TCP: connections are counted; the one over the rate is closed before any backend.
    assert_eq!(get(tcp, "/", &[]).status, 200);
    assert_eq!(get(tcp, "/", &[]).status, 200);
    let closed = get(tcp, "/", &[]);
    assert_eq!((closed.status, closed.head.as_str()), (0, ""), "{closed:?}");

    // Both listeners' limits count under their address as written (here the same).
    assert_eq!(
        metric(
            admin,
            "ballast_listener_rate_limited_total{listener=\"127.0.0.1:0\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            admin,
            "ballast_rate_limited_total{table=\"main\",route=\"0\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn a_listeners_rate_is_checked_with_the_field_named() {
    let dir = TempDir::new("listener-rate-check");
    let check = |listener: &str| {
        let config = format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\npool = \"web\"\n{listener}\n\n\
             [[pools]]\nname = \"web\"\nbackends = [\"127.0.0.1:9\"]\n"
        );
        let path = dir.path().join("lb.toml");
        std::fs::write(&path, config).expect("write the configuration");
        support::rejected(&["lb", "--check-config", path.to_str().expect("utf-8")])
    };
    let refused = check("rate = \"10/d\"");
    assert!(refused.contains("listeners[0].rate: `10/d`"), "{refused}");
    let refused = check("mode = \"tcp\"\nrate = \"10/s\"\nrate_key = \"header:x-api-key\"");
    assert!(
        refused.contains("listeners[0].rate_key: a TCP listener"),
        "{refused}"
    );
    let refused = check("rate = \"10/s\"\nrate_scope = \"fleet\"");
    assert!(
        refused.contains("listeners[0].rate_scope: a fleet-wide rate"),
        "{refused}"
    );
    let refused = support::rejected(&[
        "lb",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "127.0.0.1:9",
        "--rate",
        "5/s",
        "--burst",
        "0",
    ]);
    assert!(refused.contains("--burst: from 1 to 1000000"), "{refused}");
}
