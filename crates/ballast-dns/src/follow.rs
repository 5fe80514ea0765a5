//! Keeping the zone current: the configuration comes through the same change feed the LB servers
//! follow (`ballast_config::follow`: push, pull, last known good), and the fleet — which LB serves
//! what and whether it is up, which heartbeats and the orchestrator record beside the
//! configuration — is read every `fleet_interval`. Either change rebuilds the zone off the
//! answering path and swaps it in; while the database is unreachable the last zone stays.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ballast_config::{FollowOptions, SqlStore, StoreError, follow};

use crate::zone::Zone;

/// Follows `store` (PostgreSQL's LISTEN at `listen_url`) and returns the zone for `origin`,
/// kept current in the background for as long as the runtime runs.
pub async fn follow_zone(
    store: SqlStore,
    listen_url: &str,
    origin: &str,
    ttl: u32,
    fleet_interval: Duration,
) -> Result<Arc<ArcSwap<Zone>>, StoreError> {
    let mut followed = follow(store.clone(), listen_url, FollowOptions::default()).await?;
    let mut fleet = store.lb_servers().await?;
    let config = followed.borrow_and_update().config.clone();
    let zone = Arc::new(ArcSwap::from_pointee(Zone::build(
        origin, ttl, &config, &fleet,
    )));
    let (shared, origin) = (Arc::clone(&zone), origin.to_owned());
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(fleet_interval);
        loop {
            tokio::select! {
                changed = followed.changed() => if changed.is_err() { return },
                _ = ticks.tick() => match store.lb_servers().await {
                    Ok(now) if now != fleet => fleet = now,
                    Ok(_) => continue,
                    Err(error) => {
                        tracing::debug!(%error, "fleet not read; answering from the last one");
                        continue;
                    }
                },
            }
            let config = followed.borrow_and_update().config.clone();
            let rebuilt = Zone::build(&origin, ttl, &config, &fleet);
            if **shared.load() != rebuilt {
                tracing::info!(revision = config.revision, "zone updated");
                shared.store(Arc::new(rebuilt));
            }
        }
    });
    Ok(zone)
}
