//! The dashboard: one page served by `ballast control` at `/`, its script and uPlot (the charting
//! library, vendored in `assets/uplot` and compiled into the binary), and `GET /v1/dashboard`, the
//! one JSON document the page polls every second: pools with their algorithm and DNS answer,
//! backends with weight, admin state, health, phi, in-flight requests and requests/s, LB servers
//! with CPU, memory, connections, applied revision and lag, route tables, the recent change log
//! and the leader.
//!
//! The page and its assets are public (they hold no data); the document and every action go
//! through the admin API with the token, which the page asks for once (or takes from the URL's
//! `#token=` fragment, which browsers never send to the server).
//!
//! In-flight requests and requests/s per backend come from the LB servers' own `/metrics`, read
//! when the document is asked for (500 ms at most per LB): summed over the fleet, the rate taken
//! against the previous read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use ballast_config::LbServer;
use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::api::{Answer, Api};

const PAGE: &str = include_str!("../../assets/dashboard.html");
const SCRIPT: &str = include_str!("../../assets/dashboard.js");
const UPLOT_JS: &str = include_str!("../../assets/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/uplot/uPlot.min.css");

/// How long one LB's `/metrics` may take before the document goes without it.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);

/// How many change-log entries the document carries.
const RECENT_CHANGES: u64 = 15;

/// `GET /`: the page.
pub(crate) async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// `GET /dashboard/{file}`: its script and uPlot.
pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "dashboard.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "uPlot.iife.min.js" => (UPLOT_JS, "text/javascript; charset=utf-8"),
        "uPlot.min.css" => (UPLOT_CSS, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// The per-backend traffic read from the LBs, and the previous read for the rate.
#[derive(Debug)]
pub(crate) struct Traffic {
    client: Client<HttpConnector, Empty<Bytes>>,
    previous: Mutex<Option<(Instant, HashMap<BackendKey, f64>)>>,
}

/// The longest a previous read stays the start of a rate (the dashboard polls every second or
/// two while it is open).
const RATE_WINDOW_MAX: Duration = Duration::from_secs(5);

/// The window a rate is taken over when there is no recent read to start from.
const RATE_WINDOW_MIN: Duration = Duration::from_secs(1);

/// Requests so far per backend.
fn totals(traffic: &HashMap<BackendKey, BackendTraffic>) -> HashMap<BackendKey, f64> {
    traffic
        .iter()
        .map(|(k, t)| (k.clone(), t.requests))
        .collect()
}

/// A backend as the LBs label it: pool and address.
type BackendKey = (String, String);

/// What the fleet reports of one backend.
#[derive(Debug, Default, Clone, Copy)]
struct BackendTraffic {
    in_flight: f64,
    requests: f64,
}

impl Traffic {
    pub(crate) fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            previous: Mutex::new(None),
        }
    }

    /// In-flight requests and requests/s per backend, summed over `lbs`. The rate is taken over
    /// the time since the previous read when that is recent; otherwise (the first read, or a
    /// dashboard opened again after a while) over a fresh second, as the fleet scraper takes its
    /// own over its interval: a rate over the minutes nobody looked would be diluted.
    async fn read(&self, lbs: &[LbServer]) -> HashMap<BackendKey, (f64, f64)> {
        let previous = self
            .previous
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .filter(|(then, _)| then.elapsed() <= RATE_WINDOW_MAX);
        let previous = match previous {
            Some(previous) => previous,
            None => {
                let (at, traffic) = self.sample(lbs).await;
                tokio::time::sleep(RATE_WINDOW_MIN).await;
                (at, totals(&traffic))
            }
        };
        let (at, now) = self.sample(lbs).await;
        *self.previous.lock().unwrap_or_else(|e| e.into_inner()) = Some((at, totals(&now)));
        let (then, before) = previous;
        let seconds = at.duration_since(then).as_secs_f64();
        now.into_iter()
            .map(|(key, traffic)| {
                let rate = before
                    .get(&key)
                    .filter(|_| seconds > 0.05)
                    // An LB that restarted counts from zero again: no negative rate.
                    .map_or(0.0, |before| {
                        ((traffic.requests - before) / seconds).max(0.0)
                    });
                (key, (traffic.in_flight, rate))
            })
            .collect()
    }

    /// Every live LB's figures per backend, summed, and when they were read.
    async fn sample(&self, lbs: &[LbServer]) -> (Instant, HashMap<BackendKey, BackendTraffic>) {
        let pages = join_all(
            lbs.iter()
                .filter(|lb| lb.is_live())
                .filter_map(|lb| lb.admin.as_deref()?.parse::<SocketAddr>().ok())
                .map(|admin| self.scrape(admin)),
        )
        .await;
        let mut now: HashMap<BackendKey, BackendTraffic> = HashMap::new();
        for page in pages.into_iter().flatten() {
            for (key, traffic) in backend_traffic(&page) {
                let sum = now.entry(key).or_default();
                sum.in_flight += traffic.in_flight;
                sum.requests += traffic.requests;
            }
        }
        (Instant::now(), now)
    }

    async fn scrape(&self, admin: SocketAddr) -> Option<String> {
        crate::fleet::fetch_metrics(&self.client, admin, SCRAPE_TIMEOUT)
            .await
            .ok()
    }
}

/// `ballast_backend_in_flight` and `ballast_requests_total` by pool and backend, from one LB's
/// `/metrics` page.
fn backend_traffic(page: &str) -> HashMap<BackendKey, BackendTraffic> {
    let mut traffic: HashMap<BackendKey, BackendTraffic> = HashMap::new();
    for (sample, value) in crate::fleet::numeric_samples(page).unwrap_or_default() {
        let (Some(pool), Some(backend)) = (sample.labels.get("pool"), sample.labels.get("backend"))
        else {
            continue;
        };
        let entry = traffic
            .entry((pool.to_owned(), backend.to_owned()))
            .or_default();
        match sample.metric.trim_end_matches("_total") {
            "ballast_backend_in_flight" => entry.in_flight += value,
            "ballast_requests" => entry.requests += value,
            _ => {}
        }
    }
    traffic
}

/// `GET /v1/dashboard`: everything the page shows, in one document.
pub(crate) async fn document(State(api): State<Api>) -> Answer {
    let config = api.store.config().await?;
    let lbs = api.store.lb_servers().await?;
    let changes = api
        .store
        .changes_since(config.revision.saturating_sub(RECENT_CHANGES), 1000)
        .await?;
    let traffic = api.traffic.read(&lbs).await;
    let pools: Vec<Value> = config
        .pools
        .iter()
        .map(|pool| {
            let name = &pool.spec.name;
            let backends: Vec<Value> = pool
                .backends
                .iter()
                .map(|backend| {
                    let (in_flight, rate) = traffic
                        .get(&(name.clone(), backend.address.clone()))
                        .copied()
                        .unwrap_or_default();
                    json!({
                        "address": backend.address,
                        "weight": backend.weight,
                        "admin_state": backend.admin_state,
                        "health": backend.health,
                        "phi": backend.phi,
                        "health_reason": backend.health_reason,
                        "in_flight": in_flight,
                        "requests_per_second": rate,
                    })
                })
                .collect();
            json!({
                "name": name,
                "algorithm": pool.spec.algorithm,
                "hash_key": pool.spec.hash_key,
                "protocol": pool.spec.policy.protocol.unwrap_or_default(),
                "policy": pool.spec.policy,
                "dns_name": pool.spec.dns_name,
                "dns_answer": pool.spec.dns_name.as_ref().map(|_| dns_answer(&lbs, name)),
                "backends": backends,
            })
        })
        .collect();
    let fleet: Vec<Value> = lbs
        .iter()
        .map(|lb| {
            json!({
                "name": lb.name,
                "addresses": lb.addresses,
                "pools": lb.pools,
                "state": lb.state,
                "liveness": lb.liveness,
                "liveness_reason": lb.liveness_reason,
                "applied_revision": lb.applied_revision,
                "lag": config.revision.saturating_sub(lb.applied_revision),
                "figures": lb.figures,
            })
        })
        .collect();
    let mut recent = changes;
    recent.reverse();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Ok((
        StatusCode::OK,
        axum::Json(json!({
            "revision": config.revision,
            "at_ms": now_ms,
            "leader": api.orchestrator.as_ref().map(|status| status.leader()),
            "pools": pools,
            "lbs": fleet,
            "route_tables": config.route_tables,
            "changes": recent,
        })),
    ))
}

/// The addresses `ballast dns` answers with for `pool`: its live LB servers'.
fn dns_answer(lbs: &[LbServer], pool: &str) -> Vec<String> {
    let mut ips: Vec<String> = lbs
        .iter()
        .filter(|lb| lb.is_live() && lb.pools.iter().any(|p| p == pool))
        .flat_map(|lb| &lb.addresses)
        .filter_map(|address| address.parse::<SocketAddr>().ok())
        .map(|address| address.ip().to_string())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_traffic_sums_classes_and_reads_in_flight() {
        let page = "\
# TYPE ballast_requests counter
ballast_requests_total{pool=\"demo\",backend=\"127.0.0.1:9101\",class=\"2xx\"} 40
ballast_requests_total{pool=\"demo\",backend=\"127.0.0.1:9101\",class=\"5xx\"} 2
ballast_requests_total{pool=\"demo\",backend=\"127.0.0.1:9102\",class=\"2xx\"} 7
# TYPE ballast_backend_in_flight gauge
ballast_backend_in_flight{pool=\"demo\",backend=\"127.0.0.1:9101\"} 3
# TYPE ballast_client_connections gauge
ballast_client_connections 5
";
        let traffic = backend_traffic(page);
        let first = traffic[&("demo".to_owned(), "127.0.0.1:9101".to_owned())];
        assert_eq!((first.requests, first.in_flight), (42.0, 3.0));
        let second = traffic[&("demo".to_owned(), "127.0.0.1:9102".to_owned())];
        assert_eq!((second.requests, second.in_flight), (7.0, 0.0));
        assert_eq!(traffic.len(), 2);
    }
}
