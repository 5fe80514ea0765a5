//! Watching the LB fleet: every scrape interval the leader reads each reporting LB server's
//! `/metrics` (Prometheus text, parsed with `prometheus-parse`), stores its figures — CPU in use,
//! resident memory, client connections, responses per second — and judges whether it is alive
//! with the same tracker as backends: phi accrual over the signs of life (a scrape that answered,
//! or a new heartbeat), `fall` definite failures in a row. A dead LB is marked down (and leaves
//! DNS); two signs of life bring it back.
//! LBs that said they stopped are not watched. With `--prometheus URL` the figures and `up` come
//! from that Prometheus server's query API instead (see [`crate::prometheus`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ballast_config::{Fence, LbFigures, LbServer, LbState, Liveness, SqlStore, StoreError};
use ballast_health::{Health, Outcome, PhiSettings, Thresholds, Tracker};
use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The counters and gauges read from one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// `process_cpu_seconds_total`.
    pub cpu_seconds: f64,
    /// `process_resident_memory_bytes`.
    pub resident_bytes: f64,
    /// `ballast_client_connections`.
    pub connections: f64,
    /// The sum of `ballast_requests_total` over every label.
    pub requests: f64,
}

/// Reads the figures out of a `/metrics` page.
pub fn read(page: &str) -> Result<Reading, String> {
    let mut reading = Reading::default();
    for (sample, value) in numeric_samples(page)? {
        match sample.metric.trim_end_matches("_total") {
            "process_cpu_seconds" => reading.cpu_seconds = value,
            "process_resident_memory_bytes" => reading.resident_bytes = value,
            "ballast_client_connections" => reading.connections = value,
            "ballast_requests" => reading.requests += value,
            _ => {}
        }
    }
    Ok(reading)
}

/// Every counter, gauge and untyped sample of a `/metrics` page, with its value (histograms
/// and summaries are left out).
pub(crate) fn numeric_samples(page: &str) -> Result<Vec<(prometheus_parse::Sample, f64)>, String> {
    let lines = page.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).map_err(|e| e.to_string())?;
    Ok(scrape
        .samples
        .into_iter()
        .filter_map(|sample| match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some((sample, v)),
            _ => None,
        })
        .collect())
}

/// One watched LB.
struct Watched {
    tracker: Tracker,
    last: Option<(Instant, Reading)>,
    liveness: Liveness,
    /// The last heartbeat seen, so that a new one counts as a sign of life.
    heartbeat_ms: i64,
}

/// Watches the fleet in `store` every `interval`, each write carrying `fence`, until the store
/// refuses one as fenced out (another instance leads): returns why. The caller also aborts it on
/// losing the lead.
pub async fn run(
    store: SqlStore,
    interval: Duration,
    prometheus: Option<String>,
    fence: Option<Fence>,
) -> String {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut watched: HashMap<String, Watched> = HashMap::new();
    let thresholds = Thresholds {
        phi: PhiSettings {
            first_interval: interval,
            ..PhiSettings::default()
        },
        ..Thresholds::default()
    };
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        let servers = match store.lb_servers().await {
            Ok(servers) => servers,
            Err(error) => {
                tracing::warn!(%error, "cannot read the fleet");
                continue;
            }
        };
        let targets: Vec<(&LbServer, SocketAddr)> = servers
            .iter()
            .filter(|s| s.state != LbState::Stopped)
            .filter_map(|s| Some((s, s.admin.as_ref()?.parse().ok()?)))
            .collect();
        watched.retain(|name, _| targets.iter().any(|(s, _)| &s.name == name));
        let scrapes: Vec<Result<Observed, Outcome>> = match &prometheus {
            None => join_all(
                targets
                    .iter()
                    .map(|(_, admin)| scrape(&client, *admin, interval)),
            )
            .await
            .into_iter()
            .map(|scraped| scraped.map(Observed::Reading))
            .collect(),
            Some(base) => match crate::prometheus::fleet(&client, base).await {
                Ok(known) => targets
                    .iter()
                    .map(|(_, admin)| from_prometheus(known.get(&admin.to_string())))
                    .collect(),
                Err(error) => {
                    // Prometheus itself is down: that says nothing about the LBs.
                    tracing::warn!(%error, "cannot query Prometheus");
                    continue;
                }
            },
        };
        let now = Instant::now();
        for ((server, _), scraped) in targets.into_iter().zip(scrapes) {
            let name = server.name.clone();
            let entry = watched.entry(name.clone()).or_insert_with(|| Watched {
                tracker: Tracker::new(thresholds),
                last: None,
                liveness: server.liveness,
                heartbeat_ms: server.last_heartbeat_ms,
            });
            // A scrape answered, or a new heartbeat arrived: either is a sign of life (an LB
            // whose admin endpoint fails but which still reports is not dead).
            let heartbeat = server.last_heartbeat_ms > entry.heartbeat_ms;
            entry.heartbeat_ms = server.last_heartbeat_ms;
            let outcome = match &scraped {
                Ok(_) => Outcome::Up,
                Err(_) if heartbeat => Outcome::Up,
                Err(outcome) => outcome.clone(),
            };
            let mut verdict = entry.tracker.record(&outcome, now);
            if verdict.is_none() {
                verdict = entry.tracker.check(now);
            }
            if let Ok(observed) = scraped {
                let figures = match observed {
                    Observed::Reading(reading) => {
                        let figures = figures(entry.last, now, reading);
                        entry.last = Some((now, reading));
                        figures
                    }
                    Observed::Figures(figures) => figures,
                };
                match store
                    .record_lb_figures(&name, &figures, fence.as_ref())
                    .await
                {
                    Ok(()) => {}
                    Err(fenced @ StoreError::Fenced { .. }) => return fenced.to_string(),
                    Err(error) => tracing::warn!(%error, lb = %name, "figures not recorded"),
                }
            }
            let Some(verdict) = verdict else { continue };
            let liveness = match verdict.health {
                Health::Healthy => Liveness::Up,
                Health::Unhealthy => Liveness::Down,
                Health::Unknown => continue,
            };
            if liveness == entry.liveness {
                continue;
            }
            tracing::info!(lb = %name, ?liveness, reason = %verdict.reason, "LB liveness");
            let recorded = store
                .set_lb_liveness(&name, liveness, &verdict.reason, fence.as_ref())
                .await;
            match recorded {
                Ok(()) => entry.liveness = liveness,
                Err(fenced @ StoreError::Fenced { .. }) => return fenced.to_string(),
                Err(error) => tracing::warn!(%error, lb = %name, "liveness not recorded"),
            }
        }
    }
}

/// What one round found of an LB: raw counters from its own page, or figures (rates included)
/// from Prometheus.
enum Observed {
    Reading(Reading),
    Figures(LbFigures),
}

/// An LB as Prometheus knows it: up with its figures, down (`up` is 0), or not scraped at all.
fn from_prometheus(known: Option<&crate::prometheus::Known>) -> Result<Observed, Outcome> {
    match known {
        Some(known) if known.up => Ok(Observed::Figures(LbFigures {
            cpu_cores: known.cpu_cores.max(0.0),
            resident_bytes: known.resident_bytes.max(0.0) as u64,
            connections: known.connections.max(0.0) as u64,
            requests_per_second: known.requests_per_second.max(0.0),
            scraped_ms: now_ms(),
        })),
        Some(_) => Err(Outcome::Failed("prometheus: up is 0".to_owned())),
        None => Err(Outcome::TimedOut),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Figures from a reading, with rates against the previous one.
fn figures(last: Option<(Instant, Reading)>, now: Instant, reading: Reading) -> LbFigures {
    let (cpu_cores, requests_per_second) = match last {
        Some((then, before)) => {
            let seconds = now.duration_since(then).as_secs_f64().max(1e-3);
            (
                ((reading.cpu_seconds - before.cpu_seconds) / seconds).max(0.0),
                ((reading.requests - before.requests) / seconds).max(0.0),
            )
        }
        None => (0.0, 0.0),
    };
    LbFigures {
        cpu_cores,
        resident_bytes: reading.resident_bytes.max(0.0) as u64,
        connections: reading.connections.max(0.0) as u64,
        requests_per_second,
        scraped_ms: now_ms(),
    }
}

/// One scrape of `admin`'s `/metrics`, within `timeout`.
async fn scrape(
    client: &Client<HttpConnector, Empty<Bytes>>,
    admin: SocketAddr,
    timeout: Duration,
) -> Result<Reading, Outcome> {
    let page = fetch_metrics(client, admin, timeout).await?;
    read(&page).map_err(Outcome::Failed)
}

/// The `/metrics` page of the LB whose admin endpoint is `admin`, within `timeout`.
pub(crate) async fn fetch_metrics(
    client: &Client<HttpConnector, Empty<Bytes>>,
    admin: SocketAddr,
    timeout: Duration,
) -> Result<String, Outcome> {
    let uri: hyper::Uri = format!("http://{admin}/metrics")
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| Outcome::Failed(e.to_string()))?;
    let fetch = async {
        let response = client
            .get(uri)
            .await
            .map_err(|e| Outcome::Failed(format!("scrape: {e}")))?;
        if !response.status().is_success() {
            return Err(Outcome::Failed(format!("scrape: {}", response.status())));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Outcome::Failed(format!("scrape: {e}")))?
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .unwrap_or(Err(Outcome::TimedOut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_figures_of_an_lb_page() {
        let page = "# HELP process_cpu_seconds User and system CPU time of the process.\n\
                    # TYPE process_cpu_seconds counter\n\
                    process_cpu_seconds_total 1.5\n\
                    # TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes 14680064\n\
                    # TYPE ballast_client_connections gauge\n\
                    ballast_client_connections 7\n\
                    # TYPE ballast_requests counter\n\
                    ballast_requests_total{pool=\"web\",backend=\"127.0.0.1:9001\",class=\"2xx\"} 10\n\
                    ballast_requests_total{pool=\"web\",backend=\"127.0.0.1:9002\",class=\"2xx\"} 32\n\
                    # EOF\n";
        let reading = read(page).expect("a page");
        assert_eq!(
            reading,
            Reading {
                cpu_seconds: 1.5,
                resident_bytes: 14_680_064.0,
                connections: 7.0,
                requests: 42.0,
            }
        );
        let start = Instant::now();
        let later = Reading {
            cpu_seconds: 2.0,
            requests: 142.0,
            ..reading
        };
        let figures = figures(
            Some((start, reading)),
            start + Duration::from_secs(2),
            later,
        );
        assert!((figures.cpu_cores - 0.25).abs() < 1e-9);
        assert!((figures.requests_per_second - 50.0).abs() < 1e-9);
        assert_eq!(figures.connections, 7);
    }
}
