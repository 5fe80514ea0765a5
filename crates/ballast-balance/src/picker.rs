//! The one selection trait, and [`Picker`], which dispatches to every algorithm without a
//! virtual call and is what the data plane holds in its `ArcSwap` snapshot.

use std::collections::HashMap;

use crate::bounded_load::BoundedLoad;
use crate::least_connections::LeastConnections;
use crate::least_request::LeastRequest;
use crate::maglev::Maglev;
use crate::random::Random;
use crate::ring_hash::RingHash;
use crate::round_robin::RoundRobin;
use crate::weighted_round_robin::WeightedRoundRobin;
use crate::{Algorithm, Backend, BuildError};

/// Chooses a backend for one request. Implemented once per algorithm.
pub trait Select: Send + Sync {
    /// The index (into the backend slice the selector was built from) of the backend that should
    /// take a request with hash `key`, or `None` when no backend takes traffic. Algorithms that
    /// are not hash-based ignore `key`.
    fn select(&self, key: u64) -> Option<usize>;
}

/// A ready-to-use selector for one backend set and one algorithm.
#[derive(Debug)]
pub enum Picker {
    /// See [`Algorithm::RoundRobin`].
    RoundRobin(RoundRobin),
    /// See [`Algorithm::WeightedRoundRobin`].
    WeightedRoundRobin(WeightedRoundRobin),
    /// See [`Algorithm::LeastConnections`].
    LeastConnections(LeastConnections),
    /// See [`Algorithm::LeastRequest`].
    LeastRequest(LeastRequest),
    /// See [`Algorithm::Random`].
    Random(Random),
    /// See [`Algorithm::Maglev`].
    Maglev(Maglev),
    /// See [`Algorithm::RingHash`].
    RingHash(RingHash),
    /// See [`Algorithm::BoundedLoad`].
    BoundedLoad(BoundedLoad),
}

impl Picker {
    /// Builds the picker for `algorithm` over `backends`. An empty set, or one where no backend
    /// takes traffic, is valid: its picks are `None`. Duplicate or empty ids and parameters out
    /// of range are errors that name the field.
    pub fn build(algorithm: &Algorithm, backends: &[Backend]) -> Result<Self, BuildError> {
        check_ids(backends)?;
        Ok(match *algorithm {
            Algorithm::RoundRobin => Self::RoundRobin(RoundRobin::new(backends)),
            Algorithm::WeightedRoundRobin => {
                Self::WeightedRoundRobin(WeightedRoundRobin::new(backends))
            }
            Algorithm::LeastConnections => Self::LeastConnections(LeastConnections::new(backends)),
            Algorithm::LeastRequest { peak_ewma } => {
                Self::LeastRequest(LeastRequest::new(backends, peak_ewma)?)
            }
            Algorithm::Random => Self::Random(Random::new(backends)),
            Algorithm::Maglev { table_size } => Self::Maglev(Maglev::new(backends, table_size)?),
            Algorithm::RingHash { points_per_weight } => {
                Self::RingHash(RingHash::new(backends, points_per_weight)?)
            }
            Algorithm::BoundedLoad {
                load_factor,
                points_per_weight,
            } => Self::BoundedLoad(BoundedLoad::new(backends, load_factor, points_per_weight)?),
        })
    }

    /// The backend for a request with hash `key` (see [`crate::hash_key`]), as an index into the
    /// slice the picker was built from.
    #[inline]
    pub fn pick(&self, key: u64) -> Option<usize> {
        match self {
            Self::RoundRobin(p) => p.select(key),
            Self::WeightedRoundRobin(p) => p.select(key),
            Self::LeastConnections(p) => p.select(key),
            Self::LeastRequest(p) => p.select(key),
            Self::Random(p) => p.select(key),
            Self::Maglev(p) => p.select(key),
            Self::RingHash(p) => p.select(key),
            Self::BoundedLoad(p) => p.select(key),
        }
    }
}

impl Select for Picker {
    fn select(&self, key: u64) -> Option<usize> {
        self.pick(key)
    }
}

fn check_ids(backends: &[Backend]) -> Result<(), BuildError> {
    let mut seen = HashMap::with_capacity(backends.len());
    for (index, backend) in backends.iter().enumerate() {
        if backend.id().is_empty() {
            return Err(BuildError::EmptyId { index });
        }
        if let Some(&first) = seen.get(backend.id()) {
            return Err(BuildError::DuplicateId {
                index,
                first,
                id: backend.id().to_owned(),
            });
        }
        seen.insert(backend.id(), index);
    }
    Ok(())
}

/// The indices of the backends that take traffic, in order: what most algorithms choose among.
pub(crate) fn eligible(backends: &[Backend]) -> Vec<usize> {
    (0..backends.len())
        .filter(|&i| backends[i].takes_traffic())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ALGORITHM_NAMES;

    #[test]
    fn duplicate_ids_are_rejected_with_both_positions() {
        let backends = [
            Backend::new("a", 1),
            Backend::new("b", 1),
            Backend::new("a", 2),
        ];
        let error = Picker::build(&Algorithm::RoundRobin, &backends).expect_err("duplicate");
        assert_eq!(
            error.to_string(),
            "backends[2].id: duplicate id `a` (first at backends[0])"
        );
    }

    #[test]
    fn empty_id_is_rejected() {
        let backends = [Backend::new("a", 1), Backend::new("", 1)];
        let error = Picker::build(&Algorithm::maglev(), &backends).expect_err("empty id");
        assert_eq!(error.to_string(), "backends[1].id: must not be empty");
    }

    #[test]
    fn every_algorithm_picks_none_from_an_empty_or_idle_set() {
        let idle = [Backend::new("a", 0), Backend::new("b", 3).accepting(false)];
        for name in ALGORITHM_NAMES {
            let algorithm: Algorithm = name.parse().expect("known");
            for set in [&[][..], &idle[..]] {
                let picker = Picker::build(&algorithm, set).expect("valid");
                for key in 0..50u64 {
                    assert_eq!(
                        picker.pick(crate::hash_key(&key.to_le_bytes())),
                        None,
                        "{name}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_algorithm_avoids_backends_that_take_no_traffic() {
        let backends = [
            Backend::new("zero", 0),
            Backend::new("live", 2),
            Backend::new("drained", 5).accepting(false),
            Backend::new("other", 1),
        ];
        for name in ALGORITHM_NAMES {
            let algorithm: Algorithm = name.parse().expect("known");
            let picker = Picker::build(&algorithm, &backends).expect("valid");
            for key in 0..2_000u64 {
                let index = picker
                    .pick(crate::hash_key(&key.to_le_bytes()))
                    .expect("some");
                assert!(backends[index].takes_traffic(), "{name} picked {index}");
            }
        }
    }
}
