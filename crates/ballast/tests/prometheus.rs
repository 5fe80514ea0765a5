//! `ballast control --prometheus URL`: the orchestrator reads the LB fleet's figures from a real,
//! private Prometheus server scraping the LBs, rather than scraping them itself, and marks an LB
//! down when Prometheus finds it down.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Process, echo, eventually, get};

const TOKEN: &str = "prometheus-test-token-0123456789";

#[test]
fn lb_figures_and_liveness_come_from_prometheus() {
    let dir = std::env::temp_dir().join(format!("ballast-prometheus-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("config.db").display());
    let (_b1, b1) = echo("b1", &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt
        .block_on(ballast_config::SqlStore::connect(&url))
        .expect("store");
    support::create_pool(&rt, &store, "web", &[b1]);
    let mut lbs: Vec<Process> = ["lb-1", "lb-2"]
        .iter()
        .map(|name| support::managed_lb(&url, "web", &["--name", name]))
        .collect();
    let prometheus =
        ballast_testkit::prometheus::Server::start(&[lbs[0].admin_addr(), lbs[1].admin_addr()]);
    let prometheus_url = prometheus.url();
    let control = support::control(
        &url,
        &dir,
        TOKEN,
        &[
            "--scrape-interval",
            "300ms",
            "--prometheus",
            &prometheus_url,
        ],
    );
    let control_addr = control.listen_addr(0);
    let fleet = || -> Vec<Value> {
        let output = support::cli(control_addr, TOKEN, &["fleet", "list", "--json"]);
        let json: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        json["lbs"].as_array().cloned().unwrap_or_default()
    };
    eventually(Duration::from_secs(20), "both LBs up, with figures", || {
        let lbs = fleet();
        lbs.len() == 2
            && lbs.iter().all(|lb| {
                lb["liveness"] == "up"
                    && lb["figures"]["resident_bytes"]
                        .as_f64()
                        .is_some_and(|b| b > 0.0)
            })
    });
    eventually(Duration::from_secs(20), "lb-1's request rate", || {
        for _ in 0..20 {
            get(lbs[0].listen_addr(0), "/", &[]);
        }
        fleet()[0]["figures"]["requests_per_second"]
            .as_f64()
            .is_some_and(|rate| rate > 0.0)
    });

    lbs[0].kill();
    eventually(Duration::from_secs(20), "lb-1 down by Prometheus", || {
        let lbs = fleet();
        lbs[0]["liveness"] == "down" && lbs[1]["liveness"] == "up"
    });
    let reason = fleet()[0]["liveness_reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        reason.contains("prometheus: up is 0") || reason.starts_with("phi "),
        "{reason}"
    );
    drop(control);
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}
