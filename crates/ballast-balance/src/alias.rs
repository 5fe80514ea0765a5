//! Weighted random sampling in O(1): Vose's alias method, in integers so that every backend's
//! probability is exactly `weight / Σ weights`.
//!
//! Each of the n columns holds a threshold and an alias: draw a column uniformly, then a number
//! below the total weight; under the threshold the column's own backend wins, otherwise its alias.

/// A weighted sampler over positions `0..n`.
#[derive(Debug)]
pub(crate) struct Alias {
    total: u64,
    threshold: Box<[u64]>,
    alias: Box<[u32]>,
}

impl Alias {
    /// Builds the table; every weight must be > 0 and there must be at least one.
    pub(crate) fn new(weights: &[u64]) -> Self {
        let n = weights.len() as u64;
        let total: u64 = weights.iter().sum();
        // Scaled so that a full column is exactly `total`.
        let mut scaled: Vec<u64> = weights.iter().map(|w| w * n).collect();
        let mut threshold = vec![total; weights.len()];
        let mut alias: Vec<u32> = (0..weights.len() as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..weights.len()).partition(|&i| scaled[i] < total);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            threshold[s] = scaled[s];
            alias[s] = l as u32;
            scaled[l] -= total - scaled[s];
            if scaled[l] < total {
                large.pop();
                small.push(l);
            }
        }
        // What remains is full up to rounding-free integer arithmetic: keep `total`.
        Self {
            total,
            threshold: threshold.into_boxed_slice(),
            alias: alias.into_boxed_slice(),
        }
    }

    #[inline]
    pub(crate) fn sample(&self) -> usize {
        let column = fastrand::usize(..self.threshold.len());
        if fastrand::u64(..self.total) < self.threshold[column] {
            column
        } else {
            self.alias[column] as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The exact probability of each position, from the table itself, in units of 1/(n·total).
    fn exact_mass(table: &Alias) -> Vec<u64> {
        let mut mass = vec![0u64; table.threshold.len()];
        for column in 0..table.threshold.len() {
            mass[column] += table.threshold[column];
            mass[table.alias[column] as usize] += table.total - table.threshold[column];
        }
        mass
    }

    proptest! {
        #[test]
        fn probabilities_are_exactly_proportional(weights in prop::collection::vec(1u64..1000, 1..40)) {
            let table = Alias::new(&weights);
            let n = weights.len() as u64;
            let expected: Vec<u64> = weights.iter().map(|w| w * n).collect();
            prop_assert_eq!(exact_mass(&table), expected);
        }
    }

    #[test]
    fn samples_follow_the_weights() {
        fastrand::seed(7);
        let table = Alias::new(&[6, 3, 1]);
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            counts[table.sample()] += 1;
        }
        for (count, weight) in counts.iter().zip([6.0, 3.0, 1.0]) {
            let share = f64::from(*count) / 100_000.0;
            assert!((share - weight / 10.0).abs() < 0.01, "{counts:?}");
        }
    }
}
