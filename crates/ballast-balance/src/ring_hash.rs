//! Ring hash: ketama-style consistent hashing.
//!
//! Every backend places `points_per_weight × weight` points on a 64-bit ring; a key belongs to
//! the first point at or after its hash. A backend's points depend on nothing but its own id and
//! weight, so a removed backend's keys move to the backends that follow its points and every
//! other key stays put (scaling points to a fixed ring size, as ketama does, would move some).
//!
//! Lookup is a bucket index plus a short scan: the ring's top bits index a table of where each
//! bucket's points start, so a pick reads two or three cache lines where a plain binary search
//! over ~160k points would read seventeen.

use crate::hash::hash_id;
use crate::picker::eligible;
use crate::{Backend, BuildError, Select};

/// More points than this cost more memory than any balance gain is worth.
const MAX_POINTS: u64 = 1 << 24;

/// A sorted ring of backend points with a bucket index, shared with [`crate::bounded_load`].
#[derive(Debug)]
pub(crate) struct Ring {
    hashes: Box<[u64]>,
    owners: Box<[u32]>,
    /// `starts[b]`: the first point whose hash is in bucket `b` or later; one extra entry at the
    /// end holds the number of points.
    starts: Box<[u32]>,
    shift: u32,
}

impl Ring {
    pub(crate) fn new(
        backends: &[Backend],
        points_per_weight: u32,
        field: &'static str,
    ) -> Result<Self, BuildError> {
        if points_per_weight == 0 {
            return Err(BuildError::invalid(field, "must be at least 1"));
        }
        let members = eligible(backends);
        let total_weight: u64 = members
            .iter()
            .map(|&i| u64::from(backends[i].weight()))
            .sum();
        let wanted = u64::from(points_per_weight) * total_weight;
        if wanted > MAX_POINTS {
            return Err(BuildError::invalid(
                field,
                format!(
                    "{points_per_weight} points × total weight {total_weight} exceeds {MAX_POINTS} ring points"
                ),
            ));
        }
        let mut points: Vec<(u64, u32)> = Vec::with_capacity(wanted as usize);
        for &index in &members {
            let backend = &backends[index];
            for replica in 0..u64::from(points_per_weight) * u64::from(backend.weight()) {
                points.push((hash_id(backend.id().as_bytes(), replica), index as u32));
            }
        }
        points.sort_unstable();

        let bits = (usize::BITS - points.len().leading_zeros()).clamp(1, 24);
        let shift = 64 - bits;
        let mut starts = Vec::with_capacity((1 << bits) + 1);
        let mut point = 0;
        for bucket in 0..(1u64 << bits) {
            while point < points.len() && points[point].0 >> shift < bucket {
                point += 1;
            }
            starts.push(point as u32);
        }
        starts.push(points.len() as u32);

        Ok(Self {
            hashes: points.iter().map(|p| p.0).collect(),
            owners: points.iter().map(|p| p.1).collect(),
            starts: starts.into_boxed_slice(),
            shift,
        })
    }

    /// The number of points.
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// The first point at or after `key`, wrapping around; the ring must not be empty.
    #[inline]
    pub(crate) fn position(&self, key: u64) -> usize {
        let bucket = (key >> self.shift) as usize;
        let (start, end) = (
            self.starts[bucket] as usize,
            self.starts[bucket + 1] as usize,
        );
        let position = start + self.hashes[start..end].partition_point(|&h| h < key);
        if position == self.hashes.len() {
            0
        } else {
            position
        }
    }

    /// The backend index owning point `position`.
    #[inline]
    pub(crate) fn owner(&self, position: usize) -> usize {
        self.owners[position] as usize
    }
}

/// Consistent hashing on a ring.
#[derive(Debug)]
pub struct RingHash {
    ring: Ring,
}

impl RingHash {
    pub(crate) fn new(backends: &[Backend], points_per_weight: u32) -> Result<Self, BuildError> {
        Ok(Self {
            ring: Ring::new(backends, points_per_weight, "ring_hash.points_per_weight")?,
        })
    }
}

impl Select for RingHash {
    #[inline]
    fn select(&self, key: u64) -> Option<usize> {
        if self.ring.len() == 0 {
            return None;
        }
        Some(self.ring.owner(self.ring.position(key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash_key;
    use crate::quality::{keys_moved, max_over_mean};

    fn backends(n: usize, weight: impl Fn(usize) -> u32) -> Vec<Backend> {
        (0..n)
            .map(|i| Backend::new(format!("10.1.0.{i}:80"), weight(i)))
            .collect()
    }

    #[test]
    fn position_matches_a_plain_binary_search() {
        let ring = Ring::new(&backends(37, |_| 1), 50, "f").expect("valid");
        for key in (0..20_000u64)
            .map(|k| hash_key(&k.to_le_bytes()))
            .chain([0, u64::MAX])
        {
            let plain = ring.hashes.partition_point(|&h| h < key);
            let expected = if plain == ring.len() { 0 } else { plain };
            assert_eq!(ring.position(key), expected, "key {key:#x}");
        }
    }

    #[test]
    fn shares_follow_weights_and_removal_moves_only_the_removed_keys() {
        let set = backends(20, |i| 1 + (i % 2) as u32);
        let picker = RingHash::new(&set, 160).expect("valid");
        let keys: Vec<u64> = (0..100_000u64)
            .map(|k| hash_key(&k.to_le_bytes()))
            .collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|&k| picker.select(k).expect("some"))
            .collect();
        let mut counts = vec![0u64; set.len()];
        for &b in &before {
            counts[b] += 1;
        }
        let weights: Vec<u32> = set.iter().map(Backend::weight).collect();
        let imbalance = max_over_mean(&counts, &weights);
        assert!(imbalance < 1.3, "max/mean {imbalance}");

        let removed = set[3].id().to_owned();
        let smaller: Vec<Backend> = set.iter().filter(|b| b.id() != removed).cloned().collect();
        let picker = RingHash::new(&smaller, 160).expect("valid");
        let before_ids: Vec<&str> = before.iter().map(|&b| set[b].id()).collect();
        let after_ids: Vec<&str> = keys
            .iter()
            .map(|&k| smaller[picker.select(k).expect("some")].id())
            .collect();
        let moved = keys_moved(&before_ids, &after_ids, |id| *id == removed);
        assert_eq!(moved.of_removed, 1.0);
        assert_eq!(
            moved.of_others, 0.0,
            "a ring never moves a key between survivors"
        );
    }

    #[test]
    fn bad_point_counts_are_rejected_by_name() {
        let set = backends(3, |_| 1);
        let zero = RingHash::new(&set, 0).expect_err("zero points").to_string();
        assert_eq!(zero, "ring_hash.points_per_weight: must be at least 1");
        let huge = RingHash::new(&set, 10_000_000)
            .expect_err("too many")
            .to_string();
        assert!(
            huge.contains("total weight 3 exceeds 16777216 ring points"),
            "{huge}"
        );
    }
}
