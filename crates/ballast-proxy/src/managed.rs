//! Managed mode: the LB server's pools come from the configuration database. A follower (see
//! `ballast_config::follow`) publishes each revision; this module turns it into the proxy's pools
//! and swaps a new snapshot in, off the request path. While the database is unreachable the last
//! configuration stays in force, and the metrics say for how long.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_balance::Algorithm;
use ballast_config::{Config, Followed};
use tokio::sync::watch;

use crate::key::HashKey;
use crate::settings::{BackendAddress, Pool, PoolOverrides};
use crate::state::Shared;

/// The proxy's pools for a configuration. A pool or backend that the proxy cannot use (which the
/// store's validation should have prevented) is left out with a warning rather than stopping the
/// others.
pub(crate) fn pools(config: &Config) -> Vec<Pool> {
    config
        .pools
        .iter()
        .filter_map(|pool| {
            let spec = &pool.spec;
            let algorithm = Algorithm::with_parameters(&spec.algorithm.algorithm, &spec.algorithm.parameters())
                .map_err(|error| tracing::warn!(pool = %spec.name, %error, "pool left out"))
                .ok()?;
            let hash_key = spec.hash_key.parse::<HashKey>().unwrap_or_else(|error| {
                tracing::warn!(pool = %spec.name, %error, "hashing the client address instead");
                HashKey::ClientIp
            });
            let backends = pool
                .backends
                .iter()
                .filter_map(|backend| match backend.address.parse() {
                    Ok(address) => Some(BackendAddress {
                        address,
                        weight: backend.weight,
                        accepting: backend.takes_traffic(),
                    }),
                    Err(_) => {
                        tracing::warn!(pool = %spec.name, address = %backend.address, "backend left out");
                        None
                    }
                })
                .collect();
            let policy = &spec.policy;
            Some(Pool {
                name: spec.name.clone(),
                algorithm,
                hash_key,
                backends,
                overrides: PoolOverrides {
                    retries: policy.retries,
                    connect: policy.connect_timeout_ms.map(Duration::from_millis),
                    backend_response: policy.response_timeout_ms.map(Duration::from_millis),
                },
            })
        })
        .collect()
}

/// Applies every revision the follower publishes until it stops, saving each to `cache`.
pub(crate) async fn apply_revisions(
    shared: Arc<Shared>,
    mut followed: watch::Receiver<Followed>,
    cache: Option<PathBuf>,
) {
    let mut saved = None;
    loop {
        let current = followed.borrow_and_update().clone();
        *shared
            .config_unreachable_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = current.unreachable_since;
        if current.config.revision != shared.snapshot.load().revision {
            install(&shared, &current.config);
        }
        if let Some(path) = &cache
            && saved != Some(current.config.revision)
            && current.unreachable_since.is_none()
        {
            saved = Some(current.config.revision);
            let (config, path) = (Arc::clone(&current.config), path.clone());
            // Off the event loop: a file write must not stall requests.
            let written = tokio::task::spawn_blocking(move || config.save(&path)).await;
            if let Ok(Err(error)) = written {
                tracing::warn!(%error, "could not save the configuration cache");
            }
        }
        if followed.changed().await.is_err() {
            return;
        }
    }
}

/// Installs one configuration revision.
pub(crate) fn install(shared: &Shared, config: &Config) {
    let started = Instant::now();
    match shared.replace_pools(&pools(config), config.revision) {
        Ok(()) => tracing::info!(
            revision = config.revision,
            took_us = started.elapsed().as_micros() as u64,
            "configuration applied"
        ),
        Err(error) => {
            tracing::error!(revision = config.revision, %error, "configuration not applied")
        }
    }
}
