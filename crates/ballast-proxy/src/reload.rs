//! SIGHUP, as nginx's and HAProxy's operators send it: the configuration is read again and applied
//! whole, or not at all. Before this, SIGHUP's default action ended the process (exit 129), so
//! an operator's `kill -HUP` took the LB down.
//!
//! A reload swaps in a new snapshot, as a configuration revision does in managed mode: requests
//! in flight finish on the pools they started with, connections stay open, backends that stay
//! keep their load, ejections and pooled connections. It applies the pools (backends, weights,
//! algorithms, hash keys, per-pool retries and timeouts), the listeners (added, removed — which
//! stops accepting while the connections it has finish — and which pool each serves), and TLS
//! listeners' certificates (read again even from the same paths: a renewed certificate is the
//! commonest reason to reload). A listener is the same one when its address, mode and whether it
//! has TLS are. A managed LB reloads its file's listeners and certificates the same way (its
//! pools and route tables are the database's), and its heartbeat reports the new addresses.
//! What a running server cannot change yet — its workers, admin address and server-wide
//! settings — refuses the reload naming the field, and the server keeps serving as before.

use crate::listeners;
use crate::settings::{Listener, Pool, Settings};
use crate::state::{Shared, Target};

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
        "{field} changed; that takes a restart (pools, listeners, route tables and certificates \
         reload)"
    )]
    NeedsRestart {
        /// The setting, e.g. `timeouts` or `workers`.
        field: String,
    },
    /// A new listener could not be set up (its address is taken, its certificate unreadable).
    #[error("listeners[{listener}]: {reason}")]
    Listener {
        /// The listener's position in the file.
        listener: usize,
        /// Why.
        reason: String,
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
pub(crate) fn reload(shared: &Shared, reload: &Reload) {
    let applied = (reload.0)()
        .map_err(ReloadError::Read)
        .and_then(|next| apply(shared, &next));
    shared.metrics.reloaded(applied.is_ok());
    match applied {
        Ok(()) => tracing::info!("SIGHUP: configuration reloaded"),
        Err(error) => tracing::error!(%error, "SIGHUP: reload refused; nothing changed"),
    }
}

/// Applies `next` whole, or returns why not having changed nothing. Everything that can fail
/// (pickers, certificates, binding new listeners) is done before anything is swapped in.
pub(crate) fn apply(shared: &Shared, next: &Settings) -> Result<(), ReloadError> {
    let running = &shared.settings;
    restart_only(running, next)?;
    let _one_at_a_time = shared.lock_rebuilds();
    let mut registry = shared.listeners.lock().unwrap_or_else(|e| e.into_inner());

    // Each listener of the file is one that runs (same address, mode, TLS or not, PROXY
    // protocol or not) or a new one.
    let same = |a: &Listener, b: &Listener| {
        a.address == b.address
            && a.mode == b.mode
            && a.tls.is_empty() == b.tls.is_empty()
            && a.proxy_protocol == b.proxy_protocol
    };
    let mut kept = Vec::new();
    let mut added = Vec::new();
    for (position, listener) in next.listeners.iter().enumerate() {
        match registry
            .running()
            .find(|(_, r)| same(&r.settings, listener))
        {
            Some((id, _)) => kept.push((id, position)),
            None => added.push(position),
        }
    }
    let removed: Vec<usize> = registry
        .running()
        .map(|(id, _)| id)
        .filter(|id| !kept.iter().any(|(kept, _)| kept == id))
        .collect();
    let certificate = |position: usize| {
        let files = &next.listeners[position].tls;
        (!files.is_empty())
            .then(|| crate::tls::load(files))
            .transpose()
            .map_err(|source| ReloadError::Tls {
                listener: position,
                source,
            })
    };
    let mut certificates = Vec::new();
    for &(id, position) in &kept {
        let slot = registry.by_id[id]
            .as_ref()
            .and_then(|r| r.certificate.clone());
        if let (Some(slot), Some(loaded)) = (slot, certificate(position)?) {
            certificates.push((slot, loaded));
        }
    }
    let mut prepared = Vec::new();
    for (n, &position) in added.iter().enumerate() {
        let id = registry.by_id.len() + n;
        let listener = &next.listeners[position];
        let bound = listeners::prepare(listener, id, running.workers).map_err(|error| {
            ReloadError::Listener {
                listener: position,
                reason: error.to_string(),
            }
        })?;
        prepared.push(bound);
    }
    let pools = match running.managed {
        true => None,
        false => Some(shared.build_pools(&Pool::all_of(&next.pools))?),
    };

    // Nothing can fail from here on.
    // Route tables are compiled again whether or not they changed: that is cheap, and off the
    // request path. A managed LB's come from the database, not the file.
    let managed_tables = running.managed.then(|| shared.route_tables());
    let tables = managed_tables.as_deref().unwrap_or(&next.route_tables);
    let target = |listener: &Listener| Target::of(&listener.serves, tables, &shared.metrics);
    let mut targets = shared.targets();
    targets.resize(registry.by_id.len() + prepared.len(), None);
    let limit = |listener: &Listener| crate::state::listener_limit(listener, &shared.metrics);
    let mut limits = shared.listener_limits();
    limits.resize(registry.by_id.len() + prepared.len(), None);
    for &(id, position) in &kept {
        let settings = &next.listeners[position];
        targets[id] = Some(target(settings));
        if let Some(running) = registry.by_id[id].as_mut() {
            // A limit that stays as it was keeps what it knows of each client.
            if running.settings.rate_limit != settings.rate_limit {
                limits[id] = limit(settings);
            }
            running.settings = settings.clone();
        }
    }
    for listener in &prepared {
        targets[listener.id] = Some(target(&listener.running.settings));
        limits[listener.id] = limit(&listener.running.settings);
    }
    drop(limits);
    let current = shared.snapshot.load_full();
    let pools = pools.unwrap_or_else(|| current.pools.clone());
    shared.swap_in(pools, current.revision, Some(targets));
    for (slot, loaded) in certificates {
        slot.replace(loaded);
    }
    for id in removed {
        if let Some(address) = registry.stop(id) {
            tracing::info!(%address, "listener removed");
        }
    }
    for listener in prepared {
        let (address, serves) = (listener.running.address, &listener.running.settings.serves);
        tracing::info!(%address, %serves, "listening");
        registry.start(listener);
    }
    // A managed LB's heartbeat reports the new addresses (its record in the fleet and DNS).
    registry.publish();
    Ok(())
}

/// The first setting that differs where only a restart can apply it.
fn restart_only(running: &Settings, next: &Settings) -> Result<(), ReloadError> {
    let changed = |field: &str| {
        Err(ReloadError::NeedsRestart {
            field: field.to_owned(),
        })
    };
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
        ("access_log", running.access_log != next.access_log),
        (
            "request_id_header",
            running.request_id_header != next.request_id_header,
        ),
        (
            "rate_limit_redis",
            running.rate_limit_redis != next.rate_limit_redis
                || running.rate_limit_redis_timeout != next.rate_limit_redis_timeout,
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
    use crate::settings::{Listener, Mode, Serves};

    fn settings(ports: &[u16], pools: &[&str]) -> Settings {
        let listeners = ports
            .iter()
            .zip(pools)
            .map(|(port, pool)| Listener {
                address: std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
                mode: Mode::Http,
                serves: Serves::Pool((*pool).to_owned()),
                tls: Vec::new(),
                proxy_protocol: false,
                rate_limit: None,
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
        // Listeners are the reload's to add, remove and relink.
        assert_eq!(field(&settings(&[8080, 8081], &["web", "web"])), None);
        assert_eq!(field(&settings(&[8080, 9090], &["web", "api"])), None);
        assert_eq!(field(&settings(&[8080], &["web"])), None);
        let mut slower = settings(&[8080, 8081], &["web", "api"]);
        slower.timeouts.idle = Duration::from_secs(600);
        assert_eq!(field(&slower).as_deref(), Some("timeouts"));
    }
}
