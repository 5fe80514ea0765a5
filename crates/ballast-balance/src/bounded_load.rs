//! Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, SODA 2018).
//!
//! A key goes to the first backend after it on the ring whose in-flight load is below its
//! capacity, `ceil(c × (L + 1) × w / W)` for total in-flight load L, load factor c > 1 and weight
//! w of W. No backend ever carries more than c times its fair share, yet keys move little: a
//! key leaves its ring owner only while that owner is full, and then goes to the next one on the
//! ring, the same one every LB would choose.
//!
//! Computing L reads every backend's counter (O(N)); the walk is O(1) expected. Between two
//! workers' simultaneous picks the bound can be exceeded by at most the number of workers.

use std::sync::Arc;

use crate::picker::eligible;
use crate::ring_hash::Ring;
use crate::{Backend, BuildError, Load, Select};

/// Ring hash that skips backends at capacity.
#[derive(Debug)]
pub struct BoundedLoad {
    ring: Ring,
    /// Weight and load per backend index (the ring's owners), members or not.
    weights: Box<[u64]>,
    loads: Box<[Arc<Load>]>,
    /// The backends that take traffic, whose loads make up L.
    members: Box<[usize]>,
    total_weight: f64,
    load_factor: f64,
}

impl BoundedLoad {
    pub(crate) fn new(
        backends: &[Backend],
        load_factor: f64,
        points_per_weight: u32,
    ) -> Result<Self, BuildError> {
        if !(load_factor > 1.0 && load_factor.is_finite()) {
            return Err(BuildError::invalid(
                "bounded_load.load_factor",
                format!("must be a number above 1 (1.25 is typical), not {load_factor}"),
            ));
        }
        let ring = Ring::new(
            backends,
            points_per_weight,
            "bounded_load.points_per_weight",
        )?;
        let members = eligible(backends);
        let total_weight = members
            .iter()
            .map(|&i| f64::from(backends[i].weight()))
            .sum();
        Ok(Self {
            ring,
            weights: backends.iter().map(|b| u64::from(b.weight())).collect(),
            loads: backends.iter().map(|b| Arc::clone(b.load())).collect(),
            members: members.into_boxed_slice(),
            total_weight,
            load_factor,
        })
    }
}

impl Select for BoundedLoad {
    fn select(&self, key: u64) -> Option<usize> {
        if self.ring.len() == 0 {
            return None;
        }
        let total_load: u64 = self
            .members
            .iter()
            .map(|&i| self.loads[i].in_flight())
            .sum();
        let per_weight = self.load_factor * (total_load + 1) as f64 / self.total_weight;
        let start = self.ring.position(key);
        let len = self.ring.len();
        for step in 0..len {
            let position = if start + step >= len {
                start + step - len
            } else {
                start + step
            };
            let owner = self.ring.owner(position);
            let capacity = (per_weight * self.weights[owner] as f64).ceil() as u64;
            if self.loads[owner].in_flight() < capacity {
                return Some(owner);
            }
        }
        // Unreachable while counters are consistent (the capacities sum to more than L), but a
        // counter racing upwards must not turn into "no backend": fall back to the ring owner.
        Some(self.ring.owner(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InFlight, hash_key};
    use proptest::prelude::*;

    #[test]
    fn load_factor_must_exceed_one() {
        for bad in [1.0, 0.5, f64::NAN, f64::INFINITY] {
            let error = BoundedLoad::new(&[], bad, 100)
                .expect_err("invalid")
                .to_string();
            assert!(
                error.starts_with("bounded_load.load_factor: must be a number above 1"),
                "{error}"
            );
        }
    }

    #[test]
    fn same_key_same_backend_while_loads_are_low() {
        let backends: Vec<_> = (0..5).map(|i| Backend::new(format!("b{i}"), 1)).collect();
        let picker = BoundedLoad::new(&backends, 1.25, 160).expect("valid");
        for k in 0..100u64 {
            let key = hash_key(&k.to_le_bytes());
            assert_eq!(picker.select(key), picker.select(key));
        }
    }

    proptest! {
        #[test]
        fn no_backend_exceeds_its_bound(
            weights in prop::collection::vec(1u32..=3, 1..8),
            operations in prop::collection::vec((0u8..3, any::<u64>(), any::<prop::sample::Index>()), 1..400),
        ) {
            let backends: Vec<_> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| Backend::new(format!("b{i}"), w))
                .collect();
            let total_weight: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            let picker = BoundedLoad::new(&backends, 1.25, 40).expect("valid");
            let mut held: Vec<InFlight> = Vec::new();
            for (op, key, which) in operations {
                // Two arrivals for every departure, so loads build up.
                if op == 0 && !held.is_empty() {
                    drop(held.swap_remove(which.index(held.len())));
                    continue;
                }
                let chosen = picker.select(key).expect("some");
                held.push(backends[chosen].load().start());
                // With c = 5/4, the chosen backend's load ≤ ceil(5 · L · w / (4 · W)), L counted
                // after the arrival. (Departures can lower L below what earlier arrivals were
                // bounded by; the guarantee is about where each arrival goes.)
                let total = held.len() as u64;
                let bound = (5 * total * u64::from(weights[chosen])).div_ceil(4 * total_weight);
                let load = backends[chosen].load().in_flight();
                prop_assert!(load <= bound, "backend {} carries {} > {} of {}", chosen, load, bound, total);
            }
        }
    }
}
