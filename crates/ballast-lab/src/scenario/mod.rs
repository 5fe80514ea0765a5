//! The scenarios `ballast lab check` runs: each builds a lab of the shape it needs, runs a
//! workload, injects its faults, and judges from the recorded history. One file per scenario.

use std::path::Path;

use anyhow::{Result, bail};

use crate::check::Outcome;

mod backend_blackhole;

/// Every scenario, by the name `ballast lab check` takes.
pub const NAMES: &[&str] = &["backend-blackhole"];

/// Runs the scenario `name` in a lab under `dir`, `program` being this `ballast` binary; `step`
/// hears its progress.
pub async fn run(name: &str, dir: &Path, program: &Path, step: &dyn Fn(&str)) -> Result<Outcome> {
    match name {
        "backend-blackhole" => backend_blackhole::run(dir, program, step).await,
        other => bail!(
            "no scenario `{other}`; the scenarios are: {}",
            NAMES.join(", ")
        ),
    }
}
