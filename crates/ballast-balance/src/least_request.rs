//! Least request: the power of two random choices (Mitzenmacher), Envoy's default.
//!
//! Draw two backends at random (in proportion to weight) and send the request to the one with
//! fewer requests in flight. Scanning every backend (least connections) herds: every worker sees
//! the same least-loaded backend and piles onto it between updates. Two random samples almost
//! never collide, yet the maximum load falls from O(log n / log log n) to O(log log n).
//!
//! With peak-EWMA (Finagle's and Linkerd's balancer), the cost is the backend's peak-EWMA latency
//! × (in-flight + 1), so a backend that turns slow is avoided before its queue grows.

use std::time::Duration;

use crate::alias::Alias;
use crate::least_connections::Candidate;
use crate::random::weighted_sampler;
use crate::{Backend, BuildError, Select};

/// Power of two choices by in-flight requests, optionally weighted by peak-EWMA latency.
#[derive(Debug)]
pub struct LeastRequest {
    candidates: Box<[Candidate]>,
    weighted: Option<Alias>,
    peak_ewma: bool,
}

impl LeastRequest {
    pub(crate) fn new(
        backends: &[Backend],
        peak_ewma: Option<Duration>,
    ) -> Result<Self, BuildError> {
        if peak_ewma.is_some_and(|decay| decay.is_zero()) {
            return Err(BuildError::invalid(
                "least_request.peak_ewma",
                "decay must be longer than zero",
            ));
        }
        let candidates = Candidate::all(backends);
        let weights: Vec<u64> = candidates.iter().map(|c| c.weight).collect();
        Ok(Self {
            weighted: weighted_sampler(&weights),
            candidates,
            peak_ewma: peak_ewma.is_some(),
        })
    }

    /// The two candidates of one pick: distinct when sampling is uniform, independent draws by
    /// weight otherwise (a backend drawn twice simply wins).
    #[inline]
    fn sample_pair(&self) -> (usize, usize) {
        let n = self.candidates.len();
        match &self.weighted {
            Some(alias) => (alias.sample(), alias.sample()),
            None => {
                let first = fastrand::usize(..n);
                let second = fastrand::usize(..n - 1);
                (first, if second >= first { second + 1 } else { second })
            }
        }
    }

    /// Of two candidates, the cheaper; the first on a tie.
    #[inline]
    fn better(&self, first: usize, second: usize) -> usize {
        let (a, b) = (&self.candidates[first], &self.candidates[second]);
        let (load_a, load_b) = (a.load.in_flight(), b.load.in_flight());
        let second_wins = if self.peak_ewma {
            let cost = |latency: f64, load: u64| latency.max(1.0) * (load + 1) as f64;
            cost(b.load.latency_ewma_nanos(), load_b) < cost(a.load.latency_ewma_nanos(), load_a)
        } else {
            load_b < load_a
        };
        if second_wins { second } else { first }
    }
}

impl Select for LeastRequest {
    #[inline]
    fn select(&self, _key: u64) -> Option<usize> {
        match self.candidates.len() {
            0 => None,
            1 => Some(self.candidates[0].index),
            n => {
                let (first, second) = self.sample_pair();
                debug_assert!(first < n && second < n);
                Some(self.candidates[self.better(first, second)].index)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InFlight;
    use proptest::prelude::*;

    #[test]
    fn zero_decay_is_rejected() {
        let error = LeastRequest::new(&[], Some(Duration::ZERO)).expect_err("zero decay");
        assert_eq!(
            error.to_string(),
            "least_request.peak_ewma: decay must be longer than zero"
        );
    }

    #[test]
    fn with_two_backends_always_picks_the_less_loaded() {
        let backends = [Backend::new("a", 1), Backend::new("b", 1)];
        let picker = LeastRequest::new(&backends, None).expect("valid");
        let _held: Vec<InFlight> = (0..3).map(|_| backends[0].load().start()).collect();
        for _ in 0..100 {
            assert_eq!(picker.select(0), Some(1));
        }
    }

    #[test]
    fn peak_ewma_avoids_the_slow_backend() {
        let backends = [Backend::new("fast", 1), Backend::new("slow", 1)];
        let decay = Duration::from_secs(10);
        let now = Duration::from_secs(1);
        backends[0]
            .load()
            .observe_latency(Duration::from_millis(2), now, decay);
        backends[1]
            .load()
            .observe_latency(Duration::from_millis(80), now, decay);
        let picker = LeastRequest::new(&backends, Some(decay)).expect("valid");
        // The fast backend stays cheaper until it has ~40 requests in flight.
        let _held: Vec<InFlight> = (0..10).map(|_| backends[0].load().start()).collect();
        for _ in 0..100 {
            assert_eq!(picker.select(0), Some(0));
        }
    }

    proptest! {
        #[test]
        fn never_picks_the_more_loaded_of_its_two_samples(
            loads in prop::collection::vec(0usize..20, 2..12),
            weighted in any::<bool>(),
            seed in any::<u64>(),
        ) {
            fastrand::seed(seed);
            let backends: Vec<_> = (0..loads.len())
                .map(|i| Backend::new(format!("b{i}"), if weighted { 1 + i as u32 % 4 } else { 1 }))
                .collect();
            let _held: Vec<InFlight> = loads
                .iter()
                .enumerate()
                .flat_map(|(i, &n)| (0..n).map(move |_| i))
                .map(|i| backends[i].load().start())
                .collect();
            let picker = LeastRequest::new(&backends, None).expect("valid");
            for _ in 0..50 {
                let (first, second) = picker.sample_pair();
                prop_assert!(weighted || first != second);
                let chosen = picker.better(first, second);
                prop_assert!(chosen == first || chosen == second);
                let other = if chosen == first { second } else { first };
                prop_assert!(loads[chosen] <= loads[other]);
            }
        }
    }
}
