//! Least connections: the backend with the fewest requests in flight relative to its weight.
//!
//! The cost of a backend is `(in_flight + 1) / weight`: the `+ 1` counts the request being
//! placed, so that at rest a backend of weight 5 takes five requests before one of weight 1
//! takes its first, as a weighted algorithm should. The scan starts at a random backend and keeps
//! the first strictly cheapest, so ties (common: every idle backend ties) spread over the tied
//! backends instead of herding every worker onto the first one.

use std::sync::Arc;

use crate::picker::eligible;
use crate::{Backend, Load, Select};

/// Weighted least connections over every backend that takes traffic.
#[derive(Debug)]
pub struct LeastConnections {
    candidates: Box<[Candidate]>,
}

#[derive(Debug)]
pub(crate) struct Candidate {
    pub(crate) index: usize,
    pub(crate) weight: u64,
    pub(crate) load: Arc<Load>,
}

impl Candidate {
    pub(crate) fn all(backends: &[Backend]) -> Box<[Candidate]> {
        eligible(backends)
            .into_iter()
            .map(|index| Candidate {
                index,
                weight: u64::from(backends[index].weight()),
                load: Arc::clone(backends[index].load()),
            })
            .collect()
    }

    /// Whether `self` costs strictly less than `other` at in-flight counts `mine` and `theirs`:
    /// `(mine + 1) / w_self < (theirs + 1) / w_other`, cross-multiplied to stay in integers.
    #[inline]
    pub(crate) fn cheaper(&self, mine: u64, other: &Candidate, theirs: u64) -> bool {
        u128::from(mine + 1) * u128::from(other.weight)
            < u128::from(theirs + 1) * u128::from(self.weight)
    }
}

impl LeastConnections {
    pub(crate) fn new(backends: &[Backend]) -> Self {
        Self {
            candidates: Candidate::all(backends),
        }
    }
}

impl Select for LeastConnections {
    #[inline]
    fn select(&self, _key: u64) -> Option<usize> {
        let n = self.candidates.len();
        if n == 0 {
            return None;
        }
        let start = fastrand::usize(..n);
        let (later, earlier) = self.candidates.split_at(start);
        let mut best = &earlier[0];
        let mut best_load = best.load.in_flight();
        for candidate in earlier[1..].iter().chain(later) {
            let load = candidate.load.in_flight();
            if candidate.cheaper(load, best, best_load) {
                best = candidate;
                best_load = load;
            }
        }
        Some(best.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InFlight;
    use proptest::prelude::*;

    fn cost(load: u64, weight: u32) -> f64 {
        (load + 1) as f64 / f64::from(weight)
    }

    #[test]
    fn at_rest_weights_decide_and_ties_spread() {
        let backends = [
            Backend::new("a", 1),
            Backend::new("b", 1),
            Backend::new("c", 1),
        ];
        let picker = LeastConnections::new(&backends);
        let mut seen = [0u32; 3];
        for _ in 0..300 {
            seen[picker.select(0).expect("some")] += 1;
        }
        assert!(
            seen.iter().all(|&n| n > 50),
            "idle ties must spread: {seen:?}"
        );
    }

    #[test]
    fn weight_five_takes_five_before_weight_one_takes_one() {
        let backends = [Backend::new("heavy", 5), Backend::new("light", 1)];
        let picker = LeastConnections::new(&backends);
        let mut held: Vec<InFlight> = Vec::new();
        let mut order = Vec::new();
        for _ in 0..4 {
            let index = picker.select(0).expect("some");
            order.push(index);
            held.push(backends[index].load().start());
        }
        assert_eq!(order, [0, 0, 0, 0]);
    }

    proptest! {
        #[test]
        fn never_picks_a_costlier_backend_than_another_it_could_have(
            weights in prop::collection::vec(1u32..=10, 1..10),
            operations in prop::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 1..300),
        ) {
            let backends: Vec<_> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| Backend::new(format!("b{i}"), w))
                .collect();
            let picker = LeastConnections::new(&backends);
            let mut held: Vec<InFlight> = Vec::new();
            for (finish, which) in operations {
                if finish && !held.is_empty() {
                    drop(held.swap_remove(which.index(held.len())));
                    continue;
                }
                let chosen = picker.select(0).expect("some");
                let chosen_cost = cost(backends[chosen].load().in_flight(), weights[chosen]);
                for (i, backend) in backends.iter().enumerate() {
                    let other = cost(backend.load().in_flight(), weights[i]);
                    prop_assert!(chosen_cost <= other, "picked {chosen} at {chosen_cost}, {i} at {other}");
                }
                held.push(backends[chosen].load().start());
            }
        }
    }
}
