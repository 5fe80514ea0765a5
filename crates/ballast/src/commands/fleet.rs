//! `ballast fleet list`: the LB servers that have reported to the configuration database, through
//! the admin API: their state, whether the orchestrator finds them alive, the revision each
//! applied and how far behind that is, when each last reported, the figures scraped from their
//! metrics (CPU cores in use, resident memory, client connections, responses per second), and
//! where each listens.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use super::admin_client::ControlFlags;
use super::pool::text;
use ballast_bench::table::Table;

#[derive(Debug, Args)]
pub(crate) struct FleetCommand {
    #[command(flatten)]
    control: ControlFlags,
    #[command(subcommand)]
    action: FleetAction,
}

#[derive(Debug, Subcommand)]
enum FleetAction {
    /// List every LB server with its state, applied revision, lag and last heartbeat.
    List,
}

impl FleetCommand {
    pub(crate) fn run(self) -> Result<()> {
        let FleetAction::List = self.action;
        let fleet = self.control.call(Method::GET, "/v1/lbs", None)?;
        let revision = self.control.call(Method::GET, "/v1/revision", None)?["revision"]
            .as_u64()
            .unwrap_or(0);
        let mut out = std::io::stdout().lock();
        if self.control.json {
            let answer = json!({ "revision": revision, "lbs": fleet["lbs"] });
            writeln!(out, "{answer}")?;
            return Ok(());
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut table = Table::new(&[
            "lb",
            "state",
            "alive",
            "revision",
            "lag",
            "heartbeat",
            "cpu",
            "rss_mb",
            "conns",
            "req/s",
            "addresses",
            "pools",
        ]);
        for lb in fleet["lbs"].as_array().map_or(&[][..], |l| l) {
            let applied = lb["applied_revision"].as_u64().unwrap_or(0);
            let age_ms = now_ms - lb["last_heartbeat_ms"].as_i64().unwrap_or(now_ms);
            let figures = &lb["figures"];
            let figure = |field: &str, scale: f64, digits: usize| {
                figures[field]
                    .as_f64()
                    .map_or_else(|| "-".to_owned(), |v| format!("{:.digits$}", v / scale))
            };
            table.row(vec![
                text(&lb["name"]),
                text(&lb["state"]),
                text(&lb["liveness"]),
                applied.to_string(),
                revision.saturating_sub(applied).to_string(),
                format!("{:.1}s ago", age_ms.max(0) as f64 / 1000.0),
                figure("cpu_cores", 1.0, 2),
                figure("resident_bytes", 1_048_576.0, 1),
                figure("connections", 1.0, 0),
                figure("requests_per_second", 1.0, 0),
                joined(&lb["addresses"]),
                joined(&lb["pools"]),
            ]);
        }
        table.write(&mut out)?;
        Ok(())
    }
}

/// A JSON list of strings as one comma-separated cell.
fn joined(list: &Value) -> String {
    let items: Vec<String> = list
        .as_array()
        .map_or(&[][..], |l| l)
        .iter()
        .map(text)
        .collect();
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}
