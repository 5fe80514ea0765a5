//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, §3.4).
//!
//! Each backend owns a permutation of the M table slots, `(offset + j·skip) mod M`, derived from
//! two hashes of its id. Backends take turns claiming their next free preferred slot until the
//! table is full, so each owns M/N slots (±1) and a change of backends moves few slots. A pick is
//! one hash-to-slot reduction and one table read.
//!
//! Weights follow Envoy's extension of the paper: a backend of weight w takes a turn in w out of
//! every w_max rounds, so it ends up with a share of slots proportional to its weight.

use crate::hash::{hash_id, reduce};
use crate::picker::eligible;
use crate::{Backend, BuildError, Select};

const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"
/// The largest table we build: 2^24 slots of 4 bytes, 64 MiB.
const MAX_TABLE_SIZE: u32 = 1 << 24;

/// A backend's place in the populate loop: where its permutation starts and how it steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Permutation {
    pub(crate) offset: u32,
    pub(crate) skip: u32,
}

impl Permutation {
    fn of(id: &str, table_size: u32) -> Self {
        let m = u64::from(table_size);
        Self {
            offset: (hash_id(id.as_bytes(), OFFSET_SEED) % m) as u32,
            skip: (hash_id(id.as_bytes(), SKIP_SEED) % (m - 1) + 1) as u32,
        }
    }
}

/// A Maglev lookup table.
#[derive(Debug)]
pub struct Maglev {
    /// Slot → backend index; empty when no backend takes traffic.
    table: Box<[u32]>,
}

impl Maglev {
    pub(crate) fn new(backends: &[Backend], table_size: u32) -> Result<Self, BuildError> {
        const FIELD: &str = "maglev.table_size";
        if !is_prime(table_size) {
            return Err(BuildError::invalid(
                FIELD,
                format!("{table_size} is not a prime (try 65537 or 655373)"),
            ));
        }
        if table_size > MAX_TABLE_SIZE {
            return Err(BuildError::invalid(
                FIELD,
                format!("{table_size} is larger than {MAX_TABLE_SIZE}"),
            ));
        }
        if (table_size as usize) < backends.len() {
            return Err(BuildError::invalid(
                FIELD,
                format!(
                    "{table_size} is smaller than the {} backends; choose a prime above 100 × backends",
                    backends.len()
                ),
            ));
        }
        let members = eligible(backends);
        let permutations: Vec<Permutation> = members
            .iter()
            .map(|&i| Permutation::of(backends[i].id(), table_size))
            .collect();
        let weights: Vec<u64> = members
            .iter()
            .map(|&i| u64::from(backends[i].weight()))
            .collect();
        let table = populate(&permutations, &weights, table_size)
            .into_iter()
            .map(|position| members[position as usize] as u32)
            .collect();
        Ok(Self { table })
    }

    /// The lookup table, slot → backend index.
    pub fn table(&self) -> &[u32] {
        &self.table
    }
}

impl Select for Maglev {
    #[inline]
    fn select(&self, key: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[reduce(key, self.table.len())] as usize)
    }
}

/// The paper's populate loop (Pseudocode 1), weighted: fills a table of `table_size` slots with
/// positions into `permutations`. Empty when there are no permutations.
pub(crate) fn populate(permutations: &[Permutation], weights: &[u64], table_size: u32) -> Vec<u32> {
    const EMPTY: u32 = u32::MAX;
    if permutations.is_empty() {
        return Vec::new();
    }
    let m = table_size;
    let max_weight = weights.iter().copied().max().unwrap_or(1);
    // `next[i]` is the slot backend i tries next: its permutation walked incrementally, which
    // avoids a division per probe.
    let mut next: Vec<u32> = permutations.iter().map(|p| p.offset).collect();
    let mut credit_needed = vec![0u64; permutations.len()];
    let mut table = vec![EMPTY; m as usize];
    let mut filled = 0u32;
    let mut round = 0u64;
    loop {
        round += 1;
        for (i, permutation) in permutations.iter().enumerate() {
            if round * weights[i] < credit_needed[i] {
                continue;
            }
            credit_needed[i] += max_weight;
            let mut slot = next[i];
            while table[slot as usize] != EMPTY {
                slot = step(slot, permutation.skip, m);
            }
            table[slot as usize] = i as u32;
            next[i] = step(slot, permutation.skip, m);
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

#[inline]
fn step(slot: u32, skip: u32, m: u32) -> u32 {
    let next = u64::from(slot) + u64::from(skip);
    if next >= u64::from(m) {
        (next - u64::from(m)) as u32
    } else {
        next as u32
    }
}

/// Deterministic trial division; table sizes are at most 2^24, so at most ~2,000 divisions.
pub(crate) fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = u64::from(n);
    (3..)
        .step_by(2)
        .take_while(|d| d * d <= n)
        .all(|d| n % d != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::keys_moved;
    use proptest::prelude::*;

    /// The permutation a backend walks, written out.
    fn permutation_list(p: Permutation, m: u32) -> Vec<u32> {
        (0..m).map(|j| (p.offset + j * p.skip) % m).collect()
    }

    #[test]
    fn reproduces_the_papers_example() {
        let b0 = Permutation { offset: 3, skip: 4 };
        let b1 = Permutation { offset: 0, skip: 2 };
        let b2 = Permutation { offset: 3, skip: 1 };
        assert_eq!(permutation_list(b0, 7), [3, 0, 4, 1, 5, 2, 6]);
        assert_eq!(permutation_list(b1, 7), [0, 2, 4, 6, 1, 3, 5]);
        assert_eq!(permutation_list(b2, 7), [3, 4, 5, 6, 0, 1, 2]);

        let before = populate(&[b0, b1, b2], &[1, 1, 1], 7);
        assert_eq!(before, [1, 0, 1, 0, 2, 2, 0]);

        // B1 removed: positions now mean B0 → 0, B2 → 1.
        let after: Vec<u32> = populate(&[b0, b2], &[1, 1], 7)
            .into_iter()
            .map(|p| [0, 2][p as usize])
            .collect();
        assert_eq!(after, [0, 0, 0, 0, 2, 2, 2]);
    }

    #[test]
    fn bad_table_sizes_are_rejected_by_name() {
        let backends: Vec<_> = (0..10).map(|i| Backend::new(format!("b{i}"), 1)).collect();
        let message = |m| Maglev::new(&backends, m).expect_err("invalid").to_string();
        assert!(message(65536).starts_with("maglev.table_size: 65536 is not a prime"));
        assert!(message(7).starts_with("maglev.table_size: 7 is smaller than the 10 backends"));
        assert!(message(16_777_259).contains("larger than"));
        assert!(Maglev::new(&backends, 11).is_ok());
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(is_prime(655_373));
        assert!(!is_prime(65_535));
    }

    fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Backend::new(format!("10.0.0.{i}:80"), w))
            .collect()
    }

    fn smallest_prime_at_least(n: u32) -> u32 {
        (n..).find(|&m| is_prime(m)).expect("a prime")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn fills_every_slot_in_weighted_proportion(weights in prop::collection::vec(1u32..=4, 1..30)) {
            let total: u32 = weights.iter().sum();
            let min_weight = *weights.iter().min().expect("non-empty");
            // At least 100 slots per unit of the lightest backend's share.
            let m = smallest_prime_at_least(100 * weights.len() as u32 * total / min_weight);
            let maglev = Maglev::new(&backends(&weights), m).expect("valid");
            let mut counts = vec![0u32; weights.len()];
            for &slot in maglev.table() {
                counts[slot as usize] += 1;
            }
            prop_assert_eq!(counts.iter().sum::<u32>(), m, "every slot filled");
            for (i, &count) in counts.iter().enumerate() {
                let expected = f64::from(weights[i]) / f64::from(total);
                let actual = f64::from(count) / f64::from(m);
                prop_assert!((actual - expected).abs() <= 0.01 * expected,
                    "backend {}: share {} vs {}", i, actual, expected);
            }
        }

        #[test]
        fn removing_a_backend_moves_few_other_keys(n in 5usize..60, removed in any::<prop::sample::Index>()) {
            let before = backends(&vec![1; n]);
            let removed = removed.index(n);
            let after: Vec<_> = before.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, b)| b.clone()).collect();
            let m = smallest_prime_at_least(100 * n as u32);
            let old = Maglev::new(&before, m).expect("valid");
            let new = Maglev::new(&after, m).expect("valid");
            let old_ids: Vec<&str> = old.table().iter().map(|&i| before[i as usize].id()).collect();
            let new_ids: Vec<&str> = new.table().iter().map(|&i| after[i as usize].id()).collect();
            let removed_id = before[removed].id();
            let moved = keys_moved(&old_ids, &new_ids, |id| *id == removed_id);
            // All keys of the removed backend move; the paper's Figure 7 bounds the rest.
            prop_assert!((moved.of_removed - 1.0).abs() < 1e-9);
            prop_assert!(moved.of_others < 0.05, "{} of other keys moved", moved.of_others);
        }
    }
}
