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
    let start = || support::Process::start(&["lb", "--config", path.to_str().expect("utf-8")], 2);
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
