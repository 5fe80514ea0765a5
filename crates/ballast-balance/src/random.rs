//! Random: each pick independent, in proportion to weight (uniform when weights are equal).

use crate::alias::Alias;
use crate::picker::eligible;
use crate::{Backend, Select};

/// Weighted random selection.
#[derive(Debug)]
pub struct Random {
    members: Box<[usize]>,
    /// `None` when every weight is equal and a uniform draw suffices.
    weighted: Option<Alias>,
}

impl Random {
    pub(crate) fn new(backends: &[Backend]) -> Self {
        let members = eligible(backends);
        let weights: Vec<u64> = members
            .iter()
            .map(|&i| u64::from(backends[i].weight()))
            .collect();
        Self {
            weighted: weighted_sampler(&weights),
            members: members.into_boxed_slice(),
        }
    }
}

/// An alias table when the weights differ; `None` when uniform sampling is exact.
pub(crate) fn weighted_sampler(weights: &[u64]) -> Option<Alias> {
    let uniform = weights.windows(2).all(|pair| pair[0] == pair[1]);
    (!uniform).then(|| Alias::new(weights))
}

/// Draws one position in `0..n` with the sampler, or uniformly without one.
#[inline]
pub(crate) fn sample(weighted: Option<&Alias>, n: usize) -> usize {
    match weighted {
        Some(alias) => alias.sample(),
        None => fastrand::usize(..n),
    }
}

impl Select for Random {
    #[inline]
    fn select(&self, _key: u64) -> Option<usize> {
        if self.members.is_empty() {
            return None;
        }
        Some(self.members[sample(self.weighted.as_ref(), self.members.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_weights() {
        fastrand::seed(11);
        let backends = [
            Backend::new("a", 3),
            Backend::new("b", 1),
            Backend::new("off", 0),
        ];
        let picker = Random::new(&backends);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[picker.select(0).expect("some")] += 1;
        }
        assert_eq!(counts[2], 0);
        let share_a = f64::from(counts[0]) / 40_000.0;
        assert!((share_a - 0.75).abs() < 0.015, "{counts:?}");
    }
}
