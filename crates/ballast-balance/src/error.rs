//! Why a picker could not be built. Every message starts with the field at fault.

use thiserror::Error;

/// A backend set or algorithm parameter that no picker can be built from.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum BuildError {
    /// Two backends share an id, so hash-based placement could not tell them apart.
    #[error("backends[{index}].id: duplicate id `{id}` (first at backends[{first}])")]
    DuplicateId {
        /// The position of the second backend with this id.
        index: usize,
        /// The position of the first.
        first: usize,
        /// The repeated id.
        id: String,
    },
    /// A backend without an id.
    #[error("backends[{index}].id: must not be empty")]
    EmptyId {
        /// The position of the backend.
        index: usize,
    },
    /// An algorithm name that Ballast does not know.
    #[error("algorithm: unknown `{name}`; expected one of {expected}", expected = crate::ALGORITHM_NAMES.join(", "))]
    UnknownAlgorithm {
        /// The name as given.
        name: String,
    },
    /// An algorithm parameter out of its range.
    #[error("{field}: {reason}")]
    InvalidParameter {
        /// The parameter, e.g. `maglev.table_size`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl BuildError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidParameter {
            field,
            reason: reason.into(),
        }
    }
}
