//! Waiting on what the system says, never on elapsed time alone: a lab runs on shared, loaded
//! machines, so every wait looks again and again until what it waits for is there, within a
//! generous bound, and says what it saw last when the bound runs out.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How often a wait looks: fine enough for the figures the scenarios report.
const EVERY: Duration = Duration::from_millis(20);

/// Looks until `look` finds what it waits for (`Ok(found)`), or fails after `within` with what it
/// saw last (`Err(seen)`, e.g. "2 of 3 backends checked healthy").
pub(crate) async fn until<T>(
    within: Duration,
    mut look: impl AsyncFnMut() -> Result<Result<T, String>>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        match look().await? {
            Ok(found) => return Ok(found),
            Err(seen) if Instant::now() > deadline => {
                bail!("{seen} after {} s", within.as_secs())
            }
            Err(_) => tokio::time::sleep(EVERY).await,
        }
    }
}
