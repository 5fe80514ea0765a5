//! SIGHUP, as nginx's and HAProxy's operators send it: the configuration is read again and applied
//! whole, or not at all. Before this, SIGHUP's default action ended the process (exit 129), so
//! an operator's `kill -HUP` took the LB down.
//!
//! A reload swaps in a new snapshot, as a configuration revision does in managed mode: requests
//! in flight finish on the pools they started with, connections stay open, backends that stay
//! keep their load, ejections and pooled connections. It applies the pools (backends, weights,
//! algorithms, hash keys, per-pool retries and timeouts), which pool each listener serves, and
//! TLS listeners' certificates (read again even from the same paths: a renewed certificate is
//! the commonest reason to reload). What a running server cannot change yet — its listeners'
//! addresses and modes, TLS turned on or off, its workers, admin address and server-wide
//! settings — refuses the reload naming the field, and the server keeps serving as before.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::settings::{Pool, Settings};
use crate::state::Shared;

/// Why reading the configuration again failed, as the caller's reader said it.
pub type ReadError = Box<dyn std::error::Error + Send + Sync>;

/// How to read the configuration again: the same file and flags the server started with.
pub struct Reload(Box<dyn Fn() -> Result<Settings, ReadError> + Send + Sync>);

impl Reload {
    /// A reload that calls `read` at each SIGHUP.
    pub fn new(read: impl Fn() -> Result<Settings, ReadError> + Send + Sync + 'static) -> Self {
        Self(Box::new(read))
    }
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reload")
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read, or is invalid (the message names the field).
    #[error("{0}")]
    Read(ReadError),
    /// It changes what only a restart can change.
    #[error(
        "{field} changed; that takes a restart (pools and the pool each listener serves reload)"
    )]
    NeedsRestart {
        /// The setting, e.g. `listeners[1].address` or `timeouts`.
        field: String,
    },
    /// A listener's certificate or key could not be loaded.
    #[error("listeners[{listener}].tls: {source}")]
    Tls {
        /// The listener's position.
        listener: usize,
        /// Why.
        source: crate::tls::TlsError,
    },
    /// A pool's picker could not be built.
    #[error(transparent)]
    Picker(#[from] ballast_balance::BuildError),
}

/// Reads the configuration with `reload` and applies it to `shared`; counts and logs the result.
pub(crate) fn reload(shared: &Arc<Shared>, reload: &Reload, metrics: &Metrics) {
    let applied = (reload.0)()
        .map_err(ReloadError::Read)
        .and_then(|next| apply(shared, &next));
    metrics.reloaded(applied.is_ok());
    match applied {
        Ok(()) => tracing::info!("SIGHUP: configuration reloaded"),
        Err(error) => tracing::error!(%error, "SIGHUP: reload refused; nothing changed"),
    }
}

/// Applies `next` whole, or returns why not having changed nothing.
pub(crate) fn apply(shared: &Shared, next: &Settings) -> Result<(), ReloadError> {
    let running = &shared.settings;
    restart_only(running, next)?;
    // Every certificate is read before anything changes: one that cannot be refuses it all.
    let slots = shared.certificates.get().map_or(&[][..], Vec::as_slice);
    let mut certificates = Vec::new();
    for (listener, (slot, settings)) in slots.iter().zip(&next.listeners).enumerate() {
        if let (Some(slot), Some(files)) = (slot, &settings.tls) {
            let loaded =
                crate::tls::load(files).map_err(|source| ReloadError::Tls { listener, source })?;
            certificates.push((slot, loaded));
        }
    }
    let listener_pools = next.listeners.iter().map(|l| l.pool.clone()).collect();
    if running.managed {
        // The pools are the database's: only which one each listener serves changes.
        shared.relink(listener_pools);
    } else {
        shared.reconfigure(&Pool::all_of(&next.pools), listener_pools)?;
    }
    for (slot, loaded) in certificates {
        slot.replace(loaded);
    }
    Ok(())
}

/// The first setting that differs where only a restart can apply it.
fn restart_only(running: &Settings, next: &Settings) -> Result<(), ReloadError> {
    let changed = |field: &str| {
        Err(ReloadError::NeedsRestart {
            field: field.to_owned(),
        })
    };
    if running.listeners.len() != next.listeners.len() {
        return changed("listeners (how many)");
    }
    for (i, (old, new)) in running.listeners.iter().zip(&next.listeners).enumerate() {
        if old.address != new.address {
            return changed(&format!("listeners[{i}].listen"));
        }
        if old.mode != new.mode {
            return changed(&format!("listeners[{i}].mode"));
        }
        if old.tls.is_some() != new.tls.is_some() {
            return changed(&format!("listeners[{i}].tls (on or off)"));
        }
    }
    let fields = [
        ("workers", running.workers != next.workers),
        ("admin", running.admin != next.admin),
        ("timeouts", running.timeouts != next.timeouts),
        ("retries", running.retries != next.retries),
        ("outlier", running.outlier != next.outlier),
        ("drain_timeout", running.drain_timeout != next.drain_timeout),
        ("drain_delay", running.drain_delay != next.drain_delay),
        (
            "request_buffering",
            running.request_buffering != next.request_buffering,
        ),
    ];
    match fields.iter().find(|(_, differs)| *differs) {
        Some((field, _)) => changed(field),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::settings::{Listener, Mode};

    fn settings(ports: &[u16], pools: &[&str]) -> Settings {
        let listeners = ports
            .iter()
            .zip(pools)
            .map(|(port, pool)| Listener {
                address: std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
                mode: Mode::Http,
                pool: (*pool).to_owned(),
                tls: None,
            })
            .collect();
        Settings::new(listeners, Vec::new())
    }

    #[test]
    fn what_takes_a_restart_is_named_and_the_rest_reloads() {
        let running = settings(&[8080, 8081], &["web", "api"]);
        let field = |next: &Settings| match restart_only(&running, next) {
            Err(ReloadError::NeedsRestart { field }) => Some(field),
            _ => None,
        };
        assert_eq!(field(&settings(&[8080, 8081], &["web", "web"])), None);
        assert_eq!(
            field(&settings(&[8080, 9090], &["web", "api"])).as_deref(),
            Some("listeners[1].listen")
        );
        assert_eq!(
            field(&settings(&[8080], &["web"])).as_deref(),
            Some("listeners (how many)")
        );
        let mut slower = settings(&[8080, 8081], &["web", "api"]);
        slower.timeouts.idle = Duration::from_secs(600);
        assert_eq!(field(&slower).as_deref(), Some("timeouts"));
    }
}
