//! The autoscaler's arithmetic, as Kubernetes' Horizontal Pod Autoscaler does it:
//!
//! desired = ceil(current × observed / target),
//!
//! where `observed` is the fleet's average of the chosen metric (CPU utilisation, connections or
//! requests per second per LB). Within the tolerance (10%) of the target nothing changes; the
//! result is kept between the minimum and maximum replicas. Scaling up happens at once; scaling
//! down only to the highest recommendation of the stabilisation window, so that a brief lull
//! does not shed LBs that the next burst needs.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use ballast_control::autoscale::{Policy, Recommender};
//!
//! let policy = Policy { target: 100.0, min: 1, max: 10, ..Policy::default() };
//! let mut recommender = Recommender::new(policy);
//! let now = Instant::now();
//! // Three LBs each serving 250 requests/s against a target of 100: ceil(3 × 2.5) = 8.
//! assert_eq!(recommender.decide(3, 250.0, now).replicas, 8);
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the autoscaler aims at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// The target per LB, in the metric's unit.
    pub target: f64,
    /// No change while observed / target is within 1 ± this.
    pub tolerance: f64,
    /// The fewest LBs.
    pub min: u32,
    /// The most LBs.
    pub max: u32,
    /// Scale down only to the highest recommendation of this long.
    pub stabilisation: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            target: 0.6,
            tolerance: 0.1,
            min: 1,
            max: 10,
            stabilisation: Duration::from_secs(300),
        }
    }
}

/// One decision, with its inputs, for the log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// LBs now.
    pub current: u32,
    /// The fleet's average of the metric.
    pub observed: f64,
    /// What the formula asks for, before the stabilisation window.
    pub recommended: u32,
    /// What to run.
    pub replicas: u32,
}

/// The HPA rule with its stabilisation window.
#[derive(Debug, Clone)]
pub struct Recommender {
    policy: Policy,
    /// Recent recommendations, oldest first.
    history: VecDeque<(Instant, u32)>,
}

impl Recommender {
    /// A recommender with no history.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            history: VecDeque::new(),
        }
    }

    /// The formula alone: within tolerance, `current`; else ceil(current × observed / target),
    /// between min and max. With no LB yet, the minimum.
    pub fn recommend(&self, current: u32, observed: f64) -> u32 {
        let Policy {
            target,
            tolerance,
            min,
            max,
            ..
        } = self.policy;
        if current == 0 || !observed.is_finite() || target <= 0.0 {
            return min.max(current.min(max));
        }
        let ratio = observed / target;
        let wanted = if (ratio - 1.0).abs() <= tolerance {
            current
        } else {
            (f64::from(current) * ratio).ceil().min(f64::from(u32::MAX)) as u32
        };
        wanted.clamp(min, max)
    }

    /// Decides how many LBs to run at `now`: up at once, down no lower than any recommendation
    /// of the stabilisation window.
    pub fn decide(&mut self, current: u32, observed: f64, now: Instant) -> Decision {
        let recommended = self.recommend(current, observed);
        self.history.push_back((now, recommended));
        while let Some(&(at, _)) = self.history.front() {
            if now.saturating_duration_since(at) > self.policy.stabilisation {
                self.history.pop_front();
            } else {
                break;
            }
        }
        let replicas = if recommended >= current {
            recommended
        } else {
            let highest = self
                .history
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(recommended);
            highest.min(current).max(recommended)
        };
        Decision {
            current,
            observed,
            recommended,
            replicas,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            target: 60.0,
            tolerance: 0.1,
            min: 1,
            max: 5,
            stabilisation: Duration::from_secs(300),
        }
    }

    #[test]
    fn the_formula_rounds_up_and_respects_tolerance_and_bounds() {
        let r = Recommender::new(policy());
        assert_eq!(r.recommend(2, 90.0), 3, "ceil(2 × 1.5)");
        assert_eq!(r.recommend(3, 61.0), 3, "within 10%: no change");
        assert_eq!(r.recommend(3, 65.0), 3, "8% over: no change");
        assert_eq!(r.recommend(3, 67.0), 4, "ceil(3 × 1.117)");
        assert_eq!(r.recommend(4, 20.0), 2, "ceil(4 × 0.333)");
        assert_eq!(r.recommend(4, 600.0), 5, "at most max");
        assert_eq!(r.recommend(2, 0.0), 1, "at least min");
        assert_eq!(r.recommend(0, 0.0), 1, "an empty fleet starts at min");
        assert_eq!(r.recommend(3, f64::NAN), 3, "no reading: no change");
    }

    #[test]
    fn up_at_once_down_only_after_the_window() {
        let mut r = Recommender::new(policy());
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(r.decide(1, 150.0, at(0)).replicas, 3, "up at once");
        assert_eq!(
            r.decide(3, 150.0, at(10)).replicas,
            5,
            "ceil(3 × 2.5) = 8, max 5"
        );
        // The load drops: the formula says 1, but 5 was recommended within the window.
        let quiet = r.decide(5, 5.0, at(100));
        assert_eq!((quiet.recommended, quiet.replicas), (1, 5));
        assert_eq!(
            r.decide(5, 5.0, at(305)).replicas,
            5,
            "10 s's 5 is still in the window"
        );
        assert_eq!(
            r.decide(5, 5.0, at(311)).replicas,
            1,
            "the window has only 1s now"
        );
    }
}
