//! Measures of how well an algorithm spreads keys and how many it moves when the backend set
//! changes; shared by the tests, `ballast balance simulate` and `ballast bench balance`.

/// How many keys changed backend between two assignments of the same keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moved {
    /// Of all keys.
    pub all: f64,
    /// Of the keys that were on a removed backend (these must move: ideally 1.0).
    pub of_removed: f64,
    /// Of the keys that were on a backend still present (ideally 0.0).
    pub of_others: f64,
}

/// Compares `before[k]` and `after[k]`, the backend of key `k` before and after a change in
/// which the backends for which `removed` holds were taken away.
pub fn keys_moved<T: PartialEq>(before: &[T], after: &[T], removed: impl Fn(&T) -> bool) -> Moved {
    let (mut moved, mut removed_keys, mut removed_moved, mut other_moved) =
        (0u64, 0u64, 0u64, 0u64);
    for (old, new) in before.iter().zip(after) {
        let changed = old != new;
        moved += u64::from(changed);
        if removed(old) {
            removed_keys += 1;
            removed_moved += u64::from(changed);
        } else {
            other_moved += u64::from(changed);
        }
    }
    let total = before.len().min(after.len()) as u64;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Moved {
        all: ratio(moved, total),
        of_removed: ratio(removed_moved, removed_keys),
        of_others: ratio(other_moved, total - removed_keys),
    }
}

/// The busiest backend's load over the mean, each backend's count divided by its weight
/// (1.0 is perfect balance). Backends of weight 0 are left out.
pub fn max_over_mean(counts: &[u64], weights: &[u32]) -> f64 {
    let total_weight: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let total_count: u64 = counts
        .iter()
        .zip(weights)
        .filter(|(_, w)| **w > 0)
        .map(|(c, _)| c)
        .sum();
    if total_weight == 0 || total_count == 0 {
        return 0.0;
    }
    let per_unit_mean = total_count as f64 / total_weight as f64;
    counts
        .iter()
        .zip(weights)
        .filter(|(_, w)| **w > 0)
        .map(|(&c, &w)| c as f64 / f64::from(w) / per_unit_mean)
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_moves_by_origin() {
        let before = ["a", "b", "c", "a", "b", "c"];
        let after = ["a", "b", "a", "a", "a", "b"];
        let moved = keys_moved(&before, &after, |id| *id == "c");
        assert_eq!(moved.all, 3.0 / 6.0);
        assert_eq!(moved.of_removed, 1.0);
        assert_eq!(moved.of_others, 1.0 / 4.0);
    }

    #[test]
    fn balance_is_weighted() {
        assert_eq!(max_over_mean(&[50, 10, 10], &[5, 1, 1]), 1.0);
        assert_eq!(max_over_mean(&[20, 10], &[1, 1]), 20.0 / 15.0);
        assert_eq!(max_over_mean(&[0, 0], &[1, 1]), 0.0);
    }
}
