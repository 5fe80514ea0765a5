//! Reading the LB fleet's figures from a Prometheus server's query API instead of scraping the
//! LBs directly (`ballast control --prometheus URL`), for users who already run one scraping
//! their LBs. Each figure is one instant query over every LB at once, keyed by the `instance`
//! label — the LB's admin address, as Prometheus scraped it — and `up` says whether Prometheus
//! could scrape it.

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

/// What Prometheus knows of one LB.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Known {
    /// Whether its last scrape succeeded (`up`).
    pub up: bool,
    /// CPU cores in use.
    pub cpu_cores: f64,
    /// Resident memory, in bytes.
    pub resident_bytes: f64,
    /// Open client connections.
    pub connections: f64,
    /// Responses per second.
    pub requests_per_second: f64,
}

/// Where one query's answer goes.
type Put = fn(&mut Known, f64);

/// The queries, and where each answer goes.
const QUERIES: [(&str, Put); 5] = [
    ("up", |k, v| k.up = v >= 1.0),
    ("irate(process_cpu_seconds_total[1m])", |k, v| {
        k.cpu_cores = v
    }),
    ("process_resident_memory_bytes", |k, v| k.resident_bytes = v),
    ("ballast_client_connections", |k, v| k.connections = v),
    (
        "sum by (instance) (irate(ballast_requests_total[1m]))",
        |k, v| {
            k.requests_per_second = v;
        },
    ),
];

/// Asks the Prometheus server at `base` about every instance it scrapes.
pub async fn fleet(
    client: &Client<HttpConnector, Empty<Bytes>>,
    base: &str,
) -> Result<HashMap<String, Known>, String> {
    let mut known: HashMap<String, Known> = HashMap::new();
    for (query, put) in QUERIES {
        for (instance, value) in vector(client, base, query).await? {
            put(known.entry(instance).or_default(), value);
        }
    }
    Ok(known)
}

/// One instant query: `(instance, value)` per series of the answer.
async fn vector(
    client: &Client<HttpConnector, Empty<Bytes>>,
    base: &str,
    query: &str,
) -> Result<Vec<(String, f64)>, String> {
    let url = format!(
        "{}/api/v1/query?query={}",
        base.trim_end_matches('/'),
        utf8_percent_encode(query, NON_ALPHANUMERIC)
    );
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let response = client
        .get(uri)
        .await
        .map_err(|e| format!("prometheus: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("prometheus: {e}"))?
        .to_bytes();
    let answer: Value =
        serde_json::from_slice(&body).map_err(|e| format!("prometheus: {status}: {e}"))?;
    if answer["status"] != "success" {
        return Err(format!("prometheus: `{query}`: {}", answer["error"]));
    }
    Ok(answer["data"]["result"]
        .as_array()
        .map_or(&[][..], |r| r)
        .iter()
        .filter_map(|series| {
            let instance = series["metric"]["instance"].as_str()?.to_owned();
            let value = series["value"][1].as_str()?.parse().ok()?;
            Some((instance, value))
        })
        .collect())
}
