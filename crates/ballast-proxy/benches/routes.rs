//! Criterion benchmark of route matching: a table of 1,000 virtual hosts (exact names) with a
//! wildcard and a catch-all route after them, matched for an exact host, a wildcard host and a
//! request no host route takes. Hosts are indexed, so the figure should not grow with the table.
//!
//! Beside it, what a route's rate limit costs a request.
//!
//! `cargo bench -p ballast-proxy --bench routes`

use std::hint::black_box;

use ballast_config::route::{Route, RouteTable};
use ballast_proxy::metrics::Metrics;
use ballast_proxy::routes::Router;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn table(hosts: usize) -> RouteTable {
    let mut routes: Vec<Route> = (0..hosts)
        .map(|i| Route {
            host: Some(format!("site{i}.example.test")),
            path_prefix: Some("/api".to_owned()),
            pool: Some(format!("pool{}", i % 16)),
            ..Route::default()
        })
        .collect();
    routes.push(Route {
        host: Some("*.wild.test".to_owned()),
        pool: Some("wild".to_owned()),
        ..Route::default()
    });
    routes.push(Route {
        path_prefix: Some("/".to_owned()),
        pool: Some("fallback".to_owned()),
        ..Route::default()
    });
    RouteTable {
        name: "bench".to_owned(),
        routes,
    }
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for hosts in [10, 1_000, 10_000] {
        let router = Router::new(&table(hosts), &Metrics::new());
        let exact = format!("Site{}.Example.Test:443", hosts - 1);
        let cases = [
            ("exact", exact.as_str(), "/api/users?page=2"),
            ("wildcard", "a.b.wild.test", "/"),
            ("fallback", "unknown.test", "/index.html"),
        ];
        for (case, host, path) in cases {
            group.bench_function(BenchmarkId::new(case, hosts), |b| {
                b.iter(|| {
                    router.find(
                        Some(black_box(host.as_bytes())),
                        black_box(path),
                        "GET",
                        |_| None,
                    )
                })
            });
        }
    }
    group.finish();
}

/// What a rate limit adds to a request: the key of its client (its address, or a header) and
/// one GCRA step under a shard's lock, for a client within its rate.
fn rate_limiting(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit");
    for (case, key) in [("client_ip", None), ("header", Some("header:x-api-key"))] {
        let table = RouteTable {
            name: "bench".to_owned(),
            routes: vec![Route {
                pool: Some("web".to_owned()),
                rate: Some("1000000000/s".to_owned()),
                rate_key: key.map(str::to_owned),
                ..Route::default()
            }],
        };
        let router = Router::new(&table, &Metrics::new());
        let client: std::net::IpAddr = "203.0.113.7".parse().expect("address");
        group.bench_function(case, |b| {
            b.iter(|| {
                router.check_rate(
                    0,
                    black_box("/"),
                    |name| (name == "x-api-key").then_some(&b"key-1234"[..]),
                    black_box(client),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, matching, rate_limiting);
criterion_main!(benches);
