//! Keeps the change log from growing without bound: every so often, everything but the latest
//! revisions is deleted. A follower that was away for longer than the log reaches back reloads the
//! whole configuration instead of replaying changes (see `ballast_config::catch_up`), so pruning
//! costs a late follower one full read, never correctness.
//!
//! ```no_run
//! # async fn demo(store: ballast_config::SqlStore) {
//! use std::time::Duration;
//! tokio::spawn(ballast_control::retention::prune_every(store, 100_000, Duration::from_secs(60)));
//! # }
//! ```

use std::time::Duration;

/// Prunes the log down to the latest `keep` revisions now and then every `interval`, for ever. A
/// failed prune (the database down) is logged and tried again at the next tick.
pub async fn prune_every(store: ballast_config::SqlStore, keep: u64, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.prune_changes(keep).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, keep, "change log pruned"),
            Err(error) => tracing::warn!(%error, "change log not pruned"),
        }
    }
}
