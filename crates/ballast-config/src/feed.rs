//! Following the configuration: what a managed LB server (or the DNS server) runs to keep an
//! in-memory copy in step with the database without asking it per request.
//!
//! PUSH makes a change arrive in milliseconds: PostgreSQL `LISTEN` on [`NOTIFY_CHANNEL`]; SQLite
//! has no pub-sub, so its revision is polled at a short interval (one indexed read). PULL makes
//! the copy true whatever push missed: every `pull_interval` the revision is compared and the gap
//! filled. Either way the follower reads the change log after the revision it applied and applies
//! each change in order ([`Config::apply`]), a whole revision at a time; when the log does not
//! fit (a change out of step), it reloads the whole configuration. When the database cannot be
//! reached, the last configuration stays in force and the status says since when it is stale.
//!
//! A database cut off by a partition does not refuse: its packets vanish, and a query waits for
//! TCP to give up, minutes later. So each look at the revision is bounded ([`look_wait`]), and
//! after one that got no answer the follower looks again on fresh connections: the ones that
//! went silent with a request in flight would otherwise resume only at their next retransmission,
//! seconds after the network heals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::model::{Config, Write};
use crate::sql::{Dialect, NOTIFY_CHANNEL, SqlStore};
use crate::store::StoreError;

/// How a follower keeps up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowOptions {
    /// Listen for pushed changes (PostgreSQL `LISTEN`, SQLite revision polling).
    pub push: bool,
    /// How often SQLite's revision is polled when pushing.
    pub poll_interval: Duration,
    /// How often the revision is compared whatever push said.
    pub pull_interval: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            push: true,
            poll_interval: Duration::from_millis(10),
            pull_interval: Duration::from_secs(30),
        }
    }
}

/// What a follower publishes: the configuration in force, and how fresh it is.
#[derive(Debug, Clone)]
pub struct Followed {
    /// The configuration at its revision.
    pub config: Arc<Config>,
    /// Since when the database could not be reached, if it cannot now.
    pub unreachable_since: Option<Instant>,
}

/// Loads the configuration and follows it in a task of its own; the task ends when every
/// receiver has been dropped. `listen_url` is where PostgreSQL's `LISTEN` goes: a session
/// connection, which is the store's own URL unless that goes through a transaction-pooling
/// PgBouncer (which hands a listening session's server connection to other clients).
pub async fn follow(
    store: SqlStore,
    listen_url: &str,
    options: FollowOptions,
) -> Result<watch::Receiver<Followed>, StoreError> {
    let url = listen_url;
    let config = store.config().await?;
    let (publish, receiver) = watch::channel(Followed {
        config: Arc::new(config),
        unreachable_since: None,
    });
    tokio::spawn(run(store, url.to_owned(), options, publish));
    Ok(receiver)
}

/// Like [`follow`] on the store at `url`, but when the database cannot be reached now, starts
/// from `fallback` (the last configuration this server applied, from its cache file) and
/// connects when it can. With no fallback, an unreachable database is an error.
pub async fn follow_or_fall_back(
    url: &str,
    listen_url: &str,
    options: FollowOptions,
    fallback: Option<Config>,
) -> Result<watch::Receiver<Followed>, StoreError> {
    let error = match SqlStore::connect(url).await {
        Ok(store) => match follow(store, listen_url, options).await {
            Ok(receiver) => return Ok(receiver),
            Err(error) => error,
        },
        Err(error) => error,
    };
    let Some(fallback) = fallback else {
        return Err(error);
    };
    tracing::warn!(%error, revision = fallback.revision,
        "configuration database unreachable; serving the cached configuration");
    let (publish, receiver) = watch::channel(Followed {
        config: Arc::new(fallback),
        unreachable_since: Some(Instant::now()),
    });
    let (url, listen_url) = (url.to_owned(), listen_url.to_owned());
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let store = loop {
            if publish.is_closed() {
                return;
            }
            match SqlStore::connect(&url).await {
                Ok(store) => break store,
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        run(store, listen_url, options, publish).await;
    });
    Ok(receiver)
}

async fn run(
    mut store: SqlStore,
    url: String,
    options: FollowOptions,
    publish: watch::Sender<Followed>,
) {
    let mut listener: Option<PgListener> = None;
    // The last look got no answer: look again on fresh connections.
    let mut stale = false;
    // When push was last found not to work: LISTEN is tried again a pull interval later.
    let mut silent_since: Option<Instant> = None;
    // Listeners that broke soon after they began, in a row, with the database reachable: a
    // transaction pool hands a listening session's server connection to other clients, and a
    // listener there may hear its probe and then break, again and again.
    let mut listening_since = Instant::now();
    let mut short_lived = 0u32;
    let mut pull = tokio::time::interval(options.pull_interval);
    pull.tick().await;
    let mut backoff = Duration::from_millis(100);
    loop {
        if publish.is_closed() {
            return;
        }
        let postgres_push = options.push && store.dialect() == Dialect::Postgres;
        let mut just_listening = false;
        let retry_listen =
            silent_since.is_none_or(|since| since.elapsed() >= options.pull_interval);
        // While the database gives no answer, LISTEN would wait on it too: the looks reconnect
        // first, and push follows once they are answered.
        if postgres_push && listener.is_none() && retry_listen && !stale {
            let outcome = match listen(&store, &url).await {
                Listening::Heard(_) if short_lived >= SHORT_LIVED_LIMIT => Listening::Silent,
                outcome => outcome,
            };
            match outcome {
                Listening::Heard(heard) => {
                    if silent_since.take().is_some() {
                        tracing::info!("pushed changes arrive again");
                    }
                    listener = Some(heard);
                    listening_since = Instant::now();
                    just_listening = true;
                }
                Listening::Silent => {
                    short_lived = 0;
                    if silent_since.is_none() {
                        tracing::warn!(
                            listen_url = %ballast_telemetry::redact(&url),
                            pull_interval = ?options.pull_interval,
                            "pushed changes do not arrive: LISTEN did not hear its own NOTIFY, \
                             or broke again and again. LISTEN needs a session connection, which a \
                             transaction-pooling PgBouncer does not keep; give --listen-db a \
                             direct connection to PostgreSQL (or a session-mode pool). Until \
                             then changes arrive by pull alone"
                        );
                    }
                    silent_since = Some(Instant::now());
                }
                Listening::Failed => {}
            }
        }
        let unreachable = publish.borrow().unreachable_since.is_some();
        // Wait for a reason to look: a notification, SQLite's poll, the pull tick, or a retry.
        // Right after LISTEN starts there is no waiting: a change committed before it was
        // registered sent its NOTIFY to nobody, so look now.
        tokio::select! {
            () = std::future::ready(()), if just_listening => {}
            notified = async {
                match listener.as_mut() {
                    Some(listener) => listener.recv().await.map(|_| ()),
                    None => std::future::pending().await,
                }
            } => {
                if notified.is_err() {
                    listener = None;
                    if listening_since.elapsed() < SHORT_LIVED {
                        short_lived += 1;
                    } else {
                        short_lived = 0;
                    }
                }
            }
            () = tokio::time::sleep(options.poll_interval), if options.push && store.dialect() == Dialect::Sqlite => {}
            () = tokio::time::sleep(backoff), if unreachable => {}
            _ = pull.tick() => {}
            // Nobody follows any more (the LB is exiting): stop.
            () = publish.closed() => return,
        }
        if stale {
            match tokio::time::timeout(look_wait(&options), store.reconnect()).await {
                Ok(Ok(fresh)) => {
                    store = fresh;
                    stale = false;
                }
                Ok(Err(error)) => tracing::debug!(%error, "connecting the follower afresh"),
                Err(_) => tracing::debug!("connecting the follower afresh: no answer"),
            }
        }
        let current = Arc::clone(&publish.borrow().config);
        let looked = if stale {
            Err(silent("connecting"))
        } else {
            look(&store, &current, look_wait(&options)).await
        };
        stale = looked.is_err();
        match looked {
            Ok(Some(config)) => {
                backoff = Duration::from_millis(100);
                publish.send_replace(Followed {
                    config: Arc::new(config),
                    unreachable_since: None,
                });
            }
            Ok(None) => {
                backoff = Duration::from_millis(100);
                publish.send_if_modified(|followed| {
                    let recovered = followed.unreachable_since.take().is_some();
                    if recovered {
                        tracing::info!("configuration database reachable again");
                    }
                    recovered
                });
            }
            Err(error) => {
                backoff = (backoff * 2).min(Duration::from_secs(5));
                listener = None;
                publish.send_if_modified(|followed| {
                    if followed.unreachable_since.is_some() {
                        return false;
                    }
                    tracing::warn!(%error, revision = followed.config.revision,
                        "configuration database unreachable; serving the last configuration");
                    followed.unreachable_since = Some(Instant::now());
                    true
                });
            }
        }
    }
}

/// How long a look at the revision may take before the database counts as cut off: the pull
/// interval (a follower looks that often anyway), within 100 ms to 5 s.
fn look_wait(options: &FollowOptions) -> Duration {
    options
        .pull_interval
        .clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// How long reading the changes after the revision may take: they may be many, but a database
/// that answered the revision and then nothing for this long is cut off.
const CHANGES_WAIT: Duration = Duration::from_secs(30);

/// No answer while `context`, as a store error.
fn silent(context: &'static str) -> StoreError {
    StoreError::Database {
        context,
        source: sqlx::Error::Io(std::io::ErrorKind::TimedOut.into()),
    }
}

/// [`catch_up`], bounded: the revision within `wait`, the rest within [`CHANGES_WAIT`].
async fn look(
    store: &SqlStore,
    current: &Config,
    wait: Duration,
) -> Result<Option<Config>, StoreError> {
    let revision = tokio::time::timeout(wait, store.revision())
        .await
        .map_err(|_| silent("reading the revision"))??;
    tokio::time::timeout(CHANGES_WAIT, catch_up_to(store, current, revision))
        .await
        .map_err(|_| silent("reading the changes"))?
}

/// What `LISTEN` came to.
enum Listening {
    /// Listening, and a notification sent through the store reached it.
    Heard(PgListener),
    /// Listening, but its own notification never came back: push cannot work on this
    /// connection.
    Silent,
    /// Not connected (the database is down, or the URL is wrong): tried again on the next turn.
    Failed,
}

/// How long connecting and registering a listener may take: a database cut off by a partition
/// never answers, and the follower must go on pulling.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// How long a probe notification may take to come back before push is called silent.
const PROBE_WAIT: Duration = Duration::from_secs(3);

/// A listener that breaks sooner than this after it began counts towards [`SHORT_LIVED_LIMIT`].
const SHORT_LIVED: Duration = Duration::from_secs(15);

/// Short-lived listeners in a row after which push is called silent.
const SHORT_LIVED_LIMIT: u32 = 3;

/// `LISTEN` at `url`, checked end to end: a notification sent through `store` (the path every
/// write's NOTIFY takes) must come back on it. Other followers wake for it and find nothing new.
async fn listen(store: &SqlStore, url: &str) -> Listening {
    let started = async {
        let mut listener = PgListener::connect(url).await.ok()?;
        listener.listen(NOTIFY_CHANNEL).await.ok()?;
        store.notify("probe").await.ok()?;
        Some(listener)
    };
    let Ok(Some(mut listener)) = tokio::time::timeout(LISTEN_WAIT, started).await else {
        return Listening::Failed;
    };
    // Anything but the probe (silence, or a connection that breaks once listening, as it does
    // through a transaction pool handing its server connection to others) is no push.
    match tokio::time::timeout(PROBE_WAIT, listener.recv()).await {
        Ok(Ok(_)) => Listening::Heard(listener),
        Ok(Err(_)) | Err(_) => Listening::Silent,
    }
}

/// The configuration at the database's revision, if it moved past `current`: `current` with the
/// change log applied, or the whole configuration read afresh when the log does not follow from
/// it (pruned past `current`, or a database restored from a backup).
pub async fn catch_up(store: &SqlStore, current: &Config) -> Result<Option<Config>, StoreError> {
    let revision = store.revision().await?;
    catch_up_to(store, current, revision).await
}

/// [`catch_up`] to `revision`, the database's as just read.
async fn catch_up_to(
    store: &SqlStore,
    current: &Config,
    revision: u64,
) -> Result<Option<Config>, StoreError> {
    if revision < current.revision {
        // The database is behind what we hold (restored from a backup, or a new one): it is
        // the truth all the same.
        return store.config().await.map(Some);
    }
    if revision == current.revision {
        return Ok(None);
    }
    let mut next = current.clone();
    while next.revision < revision {
        let changes = store.changes_since(next.revision, 1000).await?;
        if changes.is_empty() {
            break;
        }
        for change in changes {
            let applied = serde_json::from_value::<Write>(change.value)
                .map_err(|e| e.to_string())
                .and_then(|write| {
                    next.apply(change.revision, &write)
                        .map_err(|e| e.to_string())
                });
            if applied.is_err() {
                // The log does not follow from what we hold: take the whole configuration.
                return store.config().await.map(Some);
            }
        }
    }
    Ok(Some(next))
}
