//! Smooth weighted round robin: nginx's sequence, with an O(1) lock-free pick.
//!
//! nginx's algorithm keeps a "current weight" per backend; each pick adds every backend's weight
//! to its current weight, takes the backend with the largest (the first one on a tie) and
//! subtracts the total weight from it. Weights 5, 1, 1 give `a a b a c a a`, interleaving the
//! light backends instead of sending five requests in a row to the heavy one. Done per pick, that
//! is O(N) work under a lock. The sequence repeats every `W = Σ weights` picks, so we compute one
//! cycle when the picker is built and a pick is one atomic increment and one table read.
//!
//! Computing the cycle fast: after `t` steps a backend's current weight is `t·w − W·p` (`p` its
//! picks so far). Backends of equal weight therefore keep their relative order, and take turns in
//! index order; so each group of equal weight needs only a cursor, and a step costs O(groups)
//! instead of O(backends). The cycle is `W / gcd(weights)` long; past [`MAX_CYCLE_WORK`] steps ×
//! groups (weights such as 9973, 9967, … on hundreds of backends) the weights are scaled down
//! in proportion, which keeps every backend's share to within rounding of a weight unit.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::picker::eligible;
use crate::{Backend, Select};

/// The build-time budget in cycle steps × distinct weights (~0.1 s on one core at worst).
pub(crate) const MAX_CYCLE_WORK: u64 = 1 << 27;

/// Smooth weighted round robin over a precomputed cycle.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    cycle: Box<[u32]>,
    next: AtomicUsize,
}

impl WeightedRoundRobin {
    pub(crate) fn new(backends: &[Backend]) -> Self {
        let members = eligible(backends);
        let weights: Vec<u64> = members
            .iter()
            .map(|&i| u64::from(backends[i].weight()))
            .collect();
        let cycle = smooth_cycle(&weights)
            .into_iter()
            .map(|position| members[position as usize] as u32)
            .collect();
        Self {
            cycle,
            next: AtomicUsize::new(0),
        }
    }

    /// How many picks one full cycle takes.
    pub fn cycle_len(&self) -> usize {
        self.cycle.len()
    }
}

impl Select for WeightedRoundRobin {
    #[inline]
    fn select(&self, _key: u64) -> Option<usize> {
        if self.cycle.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.cycle[turn % self.cycle.len()] as usize)
    }
}

/// One full cycle of nginx's smooth weighted round robin over `weights` (all > 0), as positions
/// into `weights`.
pub(crate) fn smooth_cycle(weights: &[u64]) -> Vec<u32> {
    let weights = reduce_weights(weights);
    let total: u64 = weights.iter().sum();

    // Groups of equal weight; members in index order, so a group's next turn is a rotation.
    let mut groups: Vec<Group> = Vec::new();
    for (position, &weight) in weights.iter().enumerate() {
        match groups.iter_mut().find(|g| g.weight == weight) {
            Some(group) => group.members.push(position as u32),
            None => groups.push(Group {
                weight,
                members: vec![position as u32],
                picks: 0,
            }),
        }
    }

    let mut cycle = Vec::with_capacity(total as usize);
    for step in 1..=total {
        let mut best: Option<(i128, u32, usize)> = None;
        for (g, group) in groups.iter().enumerate() {
            let len = group.members.len() as u64;
            let head = group.members[(group.picks % len) as usize];
            let rounds = group.picks / len;
            let current = i128::from(step * group.weight) - i128::from(total * rounds);
            let better = match best {
                None => true,
                Some((value, member, _)) => current > value || (current == value && head < member),
            };
            if better {
                best = Some((current, head, g));
            }
        }
        if let Some((_, member, g)) = best {
            groups[g].picks += 1;
            cycle.push(member);
        }
    }
    cycle
}

struct Group {
    weight: u64,
    members: Vec<u32>,
    picks: u64,
}

/// Divides out the weights' common factor (the cycle is the same sequence, shorter) and scales
/// them down when the cycle would cost more than [`MAX_CYCLE_WORK`] to compute.
fn reduce_weights(weights: &[u64]) -> Vec<u64> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let mut reduced: Vec<u64> = weights.iter().map(|w| w / divisor).collect();
    let distinct = {
        let mut sorted = reduced.clone();
        sorted.sort_unstable();
        sorted.dedup();
        sorted.len().max(1) as u64
    };
    let total: u64 = reduced.iter().sum();
    let max_total = (MAX_CYCLE_WORK / distinct).max(reduced.len() as u64);
    if total > max_total {
        for weight in &mut reduced {
            *weight =
                ((u128::from(*weight) * u128::from(max_total) / u128::from(total)) as u64).max(1);
        }
    }
    reduced
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// nginx's own loop, as the reference the fast cycle must reproduce.
    fn nginx_sequence(weights: &[u64], picks: usize) -> Vec<u32> {
        let total: i128 = weights.iter().map(|&w| i128::from(w)).sum();
        let mut current = vec![0i128; weights.len()];
        (0..picks)
            .map(|_| {
                let mut best = 0;
                for (i, &w) in weights.iter().enumerate() {
                    current[i] += i128::from(w);
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= total;
                best as u32
            })
            .collect()
    }

    #[test]
    fn nginx_example_five_one_one() {
        let names = ["a", "b", "c"];
        let backends: Vec<_> = names
            .iter()
            .zip([5, 1, 1])
            .map(|(n, w)| Backend::new(*n, w))
            .collect();
        let picker = WeightedRoundRobin::new(&backends);
        let picks: String = (0..14)
            .map(|_| names[picker.select(0).expect("some")])
            .collect();
        assert_eq!(picks, "aabacaaaabacaa");
        assert_eq!(picker.cycle_len(), 7);
    }

    #[test]
    fn common_factor_shortens_the_cycle_not_the_order() {
        assert_eq!(smooth_cycle(&[10, 2, 2]), smooth_cycle(&[5, 1, 1]));
        assert_eq!(smooth_cycle(&[10, 2, 2]).len(), 7);
    }

    #[test]
    fn huge_distinct_weights_are_scaled_in_proportion() {
        let weights: Vec<u64> = (0..500).map(|i| 1_000_000 - i * 997).collect();
        let cycle = smooth_cycle(&weights);
        assert!(cycle.len() as u64 <= MAX_CYCLE_WORK);
        let mut counts = vec![0u64; weights.len()];
        for &p in &cycle {
            counts[p as usize] += 1;
        }
        let total: u64 = weights.iter().sum();
        for (i, &count) in counts.iter().enumerate() {
            let expected = weights[i] as f64 / total as f64 * cycle.len() as f64;
            assert!(
                (count as f64 - expected).abs() <= 1.0,
                "{i}: {count} vs {expected}"
            );
        }
    }

    proptest! {
        #[test]
        fn matches_nginx_and_picks_each_backend_its_weight_per_cycle(
            weights in prop::collection::vec(1u64..=20, 1..12)
        ) {
            let cycle = smooth_cycle(&weights);
            let divisor = weights.iter().copied().fold(0, gcd);
            let total: u64 = weights.iter().sum();
            prop_assert_eq!(cycle.len() as u64, total / divisor);
            prop_assert_eq!(&cycle, &nginx_sequence(&weights, cycle.len()));

            // Two full cycles from the picker: each cycle honours every weight exactly.
            let backends: Vec<_> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| Backend::new(format!("b{i}"), w as u32))
                .collect();
            let picker = WeightedRoundRobin::new(&backends);
            for _ in 0..2 {
                let mut counts = vec![0u64; weights.len()];
                for _ in 0..cycle.len() {
                    counts[picker.select(0).expect("some")] += 1;
                }
                let expected: Vec<u64> = weights.iter().map(|w| w / divisor).collect();
                prop_assert_eq!(counts, expected);
            }
        }
    }
}
