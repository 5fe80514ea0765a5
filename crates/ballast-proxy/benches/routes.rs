//! Criterion benchmark of route matching: a table of 1,000 virtual hosts (exact names) with a
//! wildcard and a catch-all route after them, matched for an exact host, a wildcard host and a
//! request no host route takes. Hosts are indexed, so the figure should not grow with the table.
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

criterion_group!(benches, matching);
criterion_main!(benches);
