//! Managed mode: the LB server's pools come from the configuration database. A follower (see
//! `ballast_config::follow`) publishes each revision; this module turns it into the proxy's pools
//! and swaps a new snapshot in, off the request path. While the database is unreachable the last
//! configuration stays in force (from memory, or from the cache file after a restart), and the
//! metrics say for how long. A named LB also heartbeats into the fleet table, so the
//! orchestrator and DNS know it serves, drains, or has stopped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_config::{
    Config, FollowOptions, Followed, LbServer, LbState, SqlStore, follow_or_fall_back,
};
use tokio::sync::watch;

use crate::reload::Reload;
use crate::server::{Bound, ServerError};
use crate::settings::{Pool, Serves, Settings};
use crate::state::Shared;

/// How a managed LB follows the configuration database.
#[derive(Debug, Clone)]
pub struct Managed {
    /// The database (`sqlite://PATH` or `postgres://…`).
    pub db: String,
    /// A session connection for PostgreSQL's `LISTEN` when `db` goes through a
    /// transaction-pooling PgBouncer; `db` itself otherwise.
    pub listen_db: Option<String>,
    /// Its name in the fleet table; without one it does not heartbeat.
    pub name: Option<String>,
    /// Where each applied configuration is saved, and read at start when the database cannot be
    /// reached.
    pub cache: Option<PathBuf>,
    /// Push, pull, and how often.
    pub follow: FollowOptions,
}

/// Runs a managed LB: follows the database (or starts from the cache), serves until SIGTERM or
/// SIGINT has drained it, heartbeating throughout when named.
pub(crate) fn run(
    settings: Settings,
    managed: Managed,
    reload: Option<Reload>,
    on_bound: impl FnOnce(&Bound),
) -> Result<(), ServerError> {
    // The follower gets a small runtime of its own, beside the proxy's workers.
    let feed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ballast-config-feed")
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    let fallback = managed
        .cache
        .as_deref()
        .and_then(|path| match Config::load(path) {
            Ok(config) => Some(config),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "configuration cache unreadable");
                None
            }
        });
    let listen_url = managed.listen_db.as_deref().unwrap_or(&managed.db);
    let followed = feed
        .block_on(follow_or_fall_back(
            &managed.db,
            listen_url,
            managed.follow,
            fallback,
        ))
        .map_err(|source| ServerError::Database {
            url: ballast_telemetry::redact(&managed.db).into_owned(),
            source,
        })?;
    let following = Following {
        followed: followed.clone(),
        cache: managed.cache,
    };
    let Some(name) = managed.name else {
        return crate::server::serve(settings, Some(following), reload, on_bound);
    };
    let (bound_tx, bound_rx) = watch::channel(None);
    let heartbeat = Heartbeat {
        url: managed.db,
        name,
    };
    let beating = feed.spawn(heartbeat.clone().run(bound_rx.clone(), followed.clone()));
    let served = crate::server::serve(settings, Some(following), reload, |bound| {
        on_bound(bound);
        let _ = bound_tx.send(Some(bound.clone()));
    });
    beating.abort();
    let stopped = bound_rx.borrow().clone();
    if let Some(bound) = stopped {
        let config = Arc::clone(&followed.borrow().config);
        feed.block_on(heartbeat.send(&mut None, &bound, &config, LbState::Stopped));
    }
    served
}

/// What the server follows in managed mode.
#[derive(Debug)]
pub(crate) struct Following {
    pub followed: watch::Receiver<Followed>,
    pub cache: Option<PathBuf>,
}

/// A managed LB's heartbeat into the fleet table.
#[derive(Debug, Clone)]
struct Heartbeat {
    url: String,
    name: String,
}

impl Heartbeat {
    const EVERY: Duration = Duration::from_secs(5);

    /// Beats every few seconds and on every applied revision once the listeners are bound, and
    /// at once when the drain starts (then as `draining`, until the caller reports `stopped`).
    async fn run(
        self,
        mut bound: watch::Receiver<Option<Bound>>,
        mut followed: watch::Receiver<Followed>,
    ) {
        let Ok(bound) = bound.wait_for(Option::is_some).await.map(|b| b.clone()) else {
            return;
        };
        let Some(bound) = bound else { return };
        let mut stopping = bound.stopping.clone();
        let mut live = bound.live.clone();
        let mut store = None;
        loop {
            let config = Arc::clone(&followed.borrow_and_update().config);
            let state = if *stopping.borrow_and_update() {
                LbState::Draining
            } else {
                LbState::Serving
            };
            self.send(&mut store, &bound, &config, state).await;
            tokio::select! {
                () = tokio::time::sleep(Self::EVERY) => {}
                changed = followed.changed() => if changed.is_err() { return },
                // A reload added or removed a listener: the fleet (and DNS) learn it at once.
                changed = live.changed() => if changed.is_err() { return },
                // Once the drain has begun this keeps answering at once: stop watching it.
                changed = stopping.changed(), if state == LbState::Serving => {
                    if changed.is_err() { return }
                }
            }
        }
    }

    /// Records one heartbeat at `config`'s revision, connecting `store` first if it is not
    /// connected yet. The pools it serves are its listeners' and, for a listener that routes
    /// by a table, the table's (DNS answers a pool's name with the LBs that serve it).
    async fn send(
        &self,
        store: &mut Option<SqlStore>,
        bound: &Bound,
        config: &Config,
        state: LbState,
    ) {
        let (addresses, pools) = {
            let live = bound.live.borrow();
            let addresses = live.iter().map(|(a, _, _)| a.to_string()).collect();
            let mut pools: Vec<String> = Vec::new();
            let mut serve = |pool: &str| {
                if !pools.iter().any(|p| p == pool) {
                    pools.push(pool.to_owned());
                }
            };
            for (_, _, serves) in live.iter() {
                match serves {
                    Serves::Pool(pool) => serve(pool),
                    Serves::Routes(name) => config
                        .route_tables
                        .iter()
                        .filter(|table| table.name == *name)
                        .flat_map(|table| &table.routes)
                        .filter_map(|route| route.pool.as_deref())
                        .for_each(&mut serve),
                }
            }
            (addresses, pools)
        };
        let server = LbServer {
            name: self.name.clone(),
            addresses,
            pools,
            admin: bound.admin.map(|a| a.to_string()),
            applied_revision: config.revision,
            state,
            last_heartbeat_ms: 0,
            figures: None,
            liveness: Default::default(),
            liveness_reason: None,
        };
        let sent = async {
            if store.is_none() {
                *store = Some(SqlStore::connect(&self.url).await?);
            }
            match store {
                Some(store) => store.heartbeat(&server).await,
                None => Ok(()),
            }
        }
        .await;
        if let Err(error) = sent {
            tracing::debug!(%error, "heartbeat not recorded");
        }
    }
}

/// Applies every revision the follower publishes until it stops, saving each to `cache`.
pub(crate) async fn apply_revisions(shared: Arc<Shared>, following: Following) {
    let Following {
        mut followed,
        cache,
    } = following;
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
    let pools = Pool::all_of(&config.pools);
    match shared.replace_config(&pools, &config.route_tables, config.revision) {
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
