//! The scenarios `ballast lab check` runs: each builds a lab of the shape it needs, runs a
//! workload, injects its faults, and judges from the recorded history. One file per scenario.

use std::path::Path;

use anyhow::{Result, bail};

use crate::check::{Outcome, seconds};
use crate::client::Request;
use crate::system::Lab;
use redis_partition::Cut;

mod backend_blackhole;
mod lb_blackhole;
mod lb_db_partition;
mod leader_partition;
mod redis_partition;

/// Every scenario, by the name `ballast lab check` takes.
pub const NAMES: &[&str] = &[
    "backend-blackhole",
    "lb-db-partition",
    "lb-blackhole",
    "redis-minority",
    "redis-majority",
    "leader-partition",
];

/// Runs the scenario `name` (its deliberately broken variant if `broken`) in a lab under `dir`,
/// `program` being this `ballast` binary; `step` hears its progress. The lab is removed whatever
/// the scenario found.
pub async fn run(
    name: &str,
    broken: bool,
    dir: &Path,
    program: &Path,
    step: &dyn Fn(&str),
) -> Result<Outcome> {
    let mut shape = match name {
        "backend-blackhole" => backend_blackhole::SHAPE,
        "lb-db-partition" => lb_db_partition::SHAPE,
        "lb-blackhole" => lb_blackhole::SHAPE,
        "redis-minority" | "redis-majority" => redis_partition::SHAPE,
        "leader-partition" => leader_partition::SHAPE,
        other => bail!(
            "no scenario `{other}`; the scenarios are: {}",
            NAMES.join(", ")
        ),
    };
    if broken {
        match name {
            "leader-partition" => shape.leaders_ignore_lease_loss = true,
            other => bail!("`{other}` has no broken variant; leader-partition has"),
        }
    }
    let mut lab = Lab::up(dir, shape, program, step).await?;
    let outcome = match name {
        "backend-blackhole" => backend_blackhole::measure(&lab, step).await,
        "lb-db-partition" => lb_db_partition::measure(&lab, step).await,
        "lb-blackhole" => lb_blackhole::measure(&lab, step).await,
        "leader-partition" => leader_partition::measure(&lab, step).await,
        "redis-minority" => redis_partition::measure(&mut lab, Cut::Minority, program, step).await,
        _ => redis_partition::measure(&mut lab, Cut::Majority, program, step).await,
    };
    step("removing the lab");
    lab.down();
    outcome
}

/// The first few failed requests, for the notes under a verdict table.
fn failure_notes(failed: &[&Request]) -> Vec<String> {
    let described = failed.iter().map(|r| {
        format!(
            "at {}: {}",
            seconds(r.at),
            match &r.outcome {
                Ok(status) => format!("status {status}"),
                Err(error) => error.clone(),
            }
        )
    });
    first_notes(described, "failures")
}

/// The first five of `notes` (only those are made), and how many more `what` there were.
fn first_notes(notes: impl ExactSizeIterator<Item = String>, what: &str) -> Vec<String> {
    const SHOWN: usize = 5;
    let total = notes.len();
    let mut shown: Vec<String> = notes.take(SHOWN).collect();
    if total > SHOWN {
        shown.push(format!("… and {} more {what}", total - SHOWN));
    }
    shown
}
