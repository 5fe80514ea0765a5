//! Leader election among `ballast control` instances, so that the orchestrator is no single
//! point of failure: a `ballast-lock` lease (one Redis node or Redlock) when `--redis` is given,
//! otherwise a lease row in the configuration database. The leader runs the loops; every write
//! it makes carries the lease's fencing token, which the store checks in the write's own
//! transaction, so a leader that was paused past its lease cannot land a late write.
//!
//! ```no_run
//! # async fn demo(store: ballast_config::SqlStore) {
//! use std::time::Duration;
//! use ballast_control::leader::Election;
//!
//! let election = Election::Database { store };
//! let mut term = election.campaign("control-1", Duration::from_secs(5)).await;
//! println!("leading with token {}", term.token());
//! let reason = term.lost().await; // stop the loops now
//! # }
//! ```

use std::time::Duration;

use ballast_config::SqlStore;
use ballast_lock::{LockManager, Renewal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The lease's name, in Redis and in the database.
pub const LEASE: &str = "ballast-orchestrator";

/// How instances elect their leader.
#[derive(Debug, Clone)]
pub enum Election {
    /// A `ballast-lock` lease on one Redis node or a Redlock majority.
    Redis(LockManager),
    /// A lease row in the configuration database.
    Database {
        /// The store.
        store: SqlStore,
    },
}

/// One term as leader: the fencing token, and a signal when it ends.
#[derive(Debug)]
pub struct Term {
    token: u64,
    lost: watch::Receiver<Option<String>>,
    resign: watch::Sender<bool>,
    keeper: JoinHandle<()>,
}

impl Term {
    /// The fencing token every write of this term carries.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Resolves, with the reason, when the term ends (the lease could not be renewed, or its
    /// validity ran out).
    pub async fn lost(&mut self) -> String {
        match self.lost.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the lease keeper stopped".to_owned(),
        }
    }

    /// Gives the lease up at once, so that another instance leads now rather than when the
    /// lease lapses (a clean stop would otherwise leave the fleet unled for up to its TTL).
    /// Waits at most `within` for the store or the Redis nodes; the lease lapses anyway.
    pub async fn resign(mut self, within: Duration) {
        self.resign.send_replace(true);
        let _ = tokio::time::timeout(within, &mut self.keeper).await;
    }
}

/// Resolves once the term's holder resigns.
async fn resigned(resign: &mut watch::Receiver<bool>) {
    if resign.wait_for(|resign| *resign).await.is_err() {
        // The term is gone, and its drop aborts the keeper.
        std::future::pending::<()>().await;
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        // Stops renewing: the lease lapses and another instance takes over.
        self.keeper.abort();
    }
}

impl Election {
    /// Waits until this instance (`identity`) holds the lease, and keeps it renewed (every
    /// third of `ttl`) until it is lost or the term is dropped.
    pub async fn campaign(&self, identity: &str, ttl: Duration) -> Term {
        loop {
            let attempt = match self {
                Self::Redis(locks) => redis_term(locks, ttl).await,
                Self::Database { store } => database_term(store, identity, ttl).await,
            };
            if let Some(term) = attempt {
                return term;
            }
            // A takeover waits for the lapsed lease plus at most one pause: a tenth of the TTL
            // keeps it within 1.15 TTL (a third let it reach 1.5), for about ten cheap asks per
            // TTL from each follower. Drawn at random so followers do not ask in step.
            let pause = ttl / 10;
            tokio::time::sleep(pause.mul_f64(0.5 + fastrand::f64())).await;
        }
    }
}

async fn redis_term(locks: &LockManager, ttl: Duration) -> Option<Term> {
    let lease = locks.try_acquire(LEASE, ttl).await.ok()?;
    let token = lease.fencing_token();
    let held = lease.keep_alive(Renewal::default());
    let (tell, lost) = watch::channel(None);
    let (resign, mut resigning) = watch::channel(false);
    let keeper = tokio::spawn(async move {
        // `held` goes with this task: aborting it stops the renewals.
        tokio::select! {
            reason = held.lost() => {
                let _ = tell.send(Some(reason));
            }
            () = resigned(&mut resigning) => {
                held.release().await;
            }
        }
    });
    Some(Term {
        token,
        lost,
        resign,
        keeper,
    })
}

async fn database_term(store: &SqlStore, identity: &str, ttl: Duration) -> Option<Term> {
    let started = Instant::now();
    let lease = match store.acquire_lease(LEASE, identity, ttl).await {
        Ok(Some(lease)) => lease,
        Ok(None) => return None,
        Err(error) => {
            tracing::warn!(%error, "cannot campaign for leadership");
            return None;
        }
    };
    let (tell, lost) = watch::channel(None);
    let (resign, mut resigning) = watch::channel(false);
    let (store, identity, token) = (store.clone(), identity.to_owned(), lease.token);
    let keeper = tokio::spawn(async move {
        // The lease is ours until `valid_until` by our own clock, counted from before we asked.
        let mut valid_until = started + ttl;
        let reason = loop {
            let next = (Instant::now() + ttl / 3).min(valid_until);
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = resigned(&mut resigning) => {
                    if let Err(error) = store.release_lease(LEASE, &identity, token).await {
                        tracing::warn!(%error, "lease not released; it lapses instead");
                    }
                    return;
                }
            }
            if Instant::now() >= valid_until {
                break "the lease ran out before it could be renewed".to_owned();
            }
            let asked = Instant::now();
            match store.renew_lease(LEASE, &identity, token, ttl).await {
                Ok(true) => valid_until = asked + ttl,
                Ok(false) => break "the lease passed to another instance".to_owned(),
                Err(error) => tracing::warn!(%error, "lease not renewed; trying again"),
            }
        };
        let _ = tell.send(Some(reason));
    });
    Some(Term {
        token,
        lost,
        resign,
        keeper,
    })
}
