//! The one interface every store implements, and its errors.

use std::future::Future;

use crate::model::{Change, Config, LbServer, Write};
use crate::validate::Invalid;

/// Why a store refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write is invalid in itself (400).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The write names something that does not exist (404).
    #[error("{0} does not exist")]
    NotFound(String),
    /// The write clashes with what exists (409), e.g. a backend already in the pool.
    #[error("{0}")]
    Conflict(Invalid),
    /// The write carried a fencing token older than one the store has seen: its writer's lease
    /// has passed to someone else (409).
    #[error("fenced out: token {token} for `{name}` is older than {newest}")]
    Fenced {
        /// What the token fences (e.g. `orchestrator`).
        name: String,
        /// The writer's token.
        token: u64,
        /// The newest the store has seen.
        newest: u64,
    },
    /// The database failed; nothing was written.
    #[error("configuration database: {context}: {source}")]
    Database {
        /// What the store was doing.
        context: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
}

impl StoreError {
    pub(crate) fn database(context: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database { context, source }
    }
}

/// A writer's fencing token, from a lease on `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// What the lease is for, e.g. `orchestrator`.
    pub name: String,
    /// The lease's token.
    pub token: u64,
}

/// A configuration store: SQLite or PostgreSQL, the same behaviour.
pub trait ConfigStore: Send + Sync {
    /// Applies one write in one transaction; returns the revision it produced. An invalid or
    /// clashing write changes nothing and leaves the revision where it was.
    fn apply(&self, write: Write) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The whole configuration, consistent at one revision.
    fn config(&self) -> impl Future<Output = Result<Config, StoreError>> + Send;

    /// The current revision.
    fn revision(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Records an LB server's heartbeat (its row, replaced whole). Not a configuration change:
    /// the revision stays where it is.
    fn heartbeat(&self, server: &LbServer) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every LB server that has reported, by name.
    fn lb_servers(&self) -> impl Future<Output = Result<Vec<LbServer>, StoreError>> + Send;

    /// Applies one write like [`apply`](Self::apply), but only if `fence`'s token is at least the
    /// newest the store has seen for its name — checked and recorded in the write's own
    /// transaction, so a writer whose lease passed to another cannot land a late write.
    fn apply_fenced(
        &self,
        write: Write,
        fence: &Fence,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Up to `limit` changes after `revision`, oldest first. When the log has been pruned past
    /// `revision`, the first change returned is later than `revision + 1`: a follower must then
    /// read the whole configuration instead.
    fn changes_since(
        &self,
        revision: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Change>, StoreError>> + Send;

    /// Deletes the change log's entries except the latest `keep` revisions; returns how many
    /// went. Followers further behind than that reload the whole configuration, so `keep` trades
    /// the log's size against how long a follower may be away and still catch up change by
    /// change.
    fn prune_changes(&self, keep: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
