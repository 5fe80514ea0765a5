//! What the store answers besides results: its errors, and the fencing token a leased writer
//! presents.

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
