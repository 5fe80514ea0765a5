//! One backend's health from its probes: the phi accrual detector over the arrivals of successful
//! probes, plus counts of outcomes in a row. A backend becomes
//!
//! - **unhealthy** after `fall` definite failures in a row (refused, error status), without
//!   waiting for φ, or as soon as φ passes its threshold (probes time out: silence). Before the
//!   backend has ever answered, φ has no rhythm to weigh silence against: then unanswered probes
//!   count toward `fall` too, as HAProxy counts a check's timeout. Otherwise a backend that went
//!   silent before this tracker started (a new leader takes over during an outage) would keep
//!   its old verdict for ever;
//! - **healthy** after `rise` successful probes in a row.
//!
//! A tracker only decides; writing the verdict somewhere is the caller's business.

use std::time::Instant;

use crate::phi::{PhiAccrual, PhiSettings};
use crate::probe::Outcome;

/// A backend's health as the tracker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not decided yet.
    Unknown,
    /// Takes traffic.
    Healthy,
    /// Does not.
    Unhealthy,
}

/// The tracker's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Successes in a row that make a backend healthy.
    pub rise: u32,
    /// Definite failures in a row that make it unhealthy.
    pub fall: u32,
    /// The detector's parameters.
    pub phi: PhiSettings,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            rise: 2,
            fall: 3,
            phi: PhiSettings::default(),
        }
    }
}

/// A change of verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The new health.
    pub health: Health,
    /// φ when it was reached.
    pub phi: f64,
    /// Why, for people.
    pub reason: String,
}

/// One backend's tracker.
#[derive(Debug, Clone)]
pub struct Tracker {
    thresholds: Thresholds,
    detector: PhiAccrual,
    health: Health,
    successes: u32,
    failures: u32,
    last_failed: bool,
}

impl Tracker {
    /// A tracker with no verdict yet.
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            detector: PhiAccrual::new(thresholds.phi),
            health: Health::Unknown,
            successes: 0,
            failures: 0,
            last_failed: false,
        }
    }

    /// Whether the backend is unhealthy or its last probe failed (refused, error, no answer):
    /// what the orchestrator counts to tell many backends failing together.
    pub fn failing(&self) -> bool {
        self.health == Health::Unhealthy || self.last_failed
    }

    /// The current verdict.
    pub fn health(&self) -> Health {
        self.health
    }

    /// φ at `now`.
    pub fn phi(&self, now: Instant) -> f64 {
        self.detector.phi(now)
    }

    /// Takes a probe's outcome, seen at `at`; returns the new verdict if it changed.
    pub fn record(&mut self, outcome: &Outcome, at: Instant) -> Option<Verdict> {
        self.last_failed = !outcome.is_up();
        match outcome {
            Outcome::Up => {
                if self.health == Health::Unhealthy {
                    // The outage says nothing about the rhythm of a healthy backend.
                    self.detector.restart_at(at);
                } else {
                    self.detector.heartbeat(at);
                }
                self.successes += 1;
                self.failures = 0;
                if self.health != Health::Healthy && self.successes >= self.thresholds.rise {
                    return self.change(
                        Health::Healthy,
                        at,
                        format!("{} successful probes in a row", self.successes),
                    );
                }
            }
            Outcome::Failed(reason) => {
                if let Some(verdict) = self.failed(at, reason) {
                    return Some(verdict);
                }
            }
            Outcome::TimedOut if self.detector.silence(at).is_none() => {
                if let Some(verdict) = self.failed(at, "no answer yet") {
                    return Some(verdict);
                }
            }
            Outcome::TimedOut => self.successes = 0,
        }
        self.check(at)
    }

    /// Counts a failure; the verdict if it makes `fall` in a row.
    fn failed(&mut self, at: Instant, reason: &str) -> Option<Verdict> {
        self.successes = 0;
        self.failures += 1;
        if self.health != Health::Unhealthy && self.failures >= self.thresholds.fall {
            return self.change(
                Health::Unhealthy,
                at,
                format!("{} failed probes in a row: {reason}", self.failures),
            );
        }
        None
    }

    /// Weighs the silence since the last success at `now`; returns the new verdict if φ crossed
    /// its threshold.
    pub fn check(&mut self, now: Instant) -> Option<Verdict> {
        if self.health == Health::Unhealthy || !self.detector.is_dead(now) {
            return None;
        }
        let silence = self.detector.silence(now).unwrap_or_default();
        let phi = self.detector.phi(now);
        self.change(
            Health::Unhealthy,
            now,
            format!(
                "phi {} > {} after {:.1} s without a successful probe",
                shown(phi),
                self.thresholds.phi.threshold,
                silence.as_secs_f64()
            ),
        )
    }

    fn change(&mut self, health: Health, at: Instant, reason: String) -> Option<Verdict> {
        self.health = health;
        Some(Verdict {
            health,
            phi: self.detector.phi(at),
            reason,
        })
    }
}

/// φ for people: one decimal, and "∞" past what a double can say.
pub fn shown(phi: f64) -> String {
    if phi >= f64::MAX {
        "inf".to_owned()
    } else {
        format!("{phi:.1}")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn rise_successes_make_it_healthy_and_fall_failures_unhealthy() {
        let start = Instant::now();
        let mut tracker = Tracker::new(Thresholds::default());
        assert_eq!(tracker.record(&Outcome::Up, at(start, 0)), None);
        let up = tracker
            .record(&Outcome::Up, at(start, 1000))
            .expect("healthy");
        assert_eq!(up.health, Health::Healthy);
        assert_eq!(up.reason, "2 successful probes in a row");
        let refused = Outcome::Failed("connect: refused".into());
        assert_eq!(tracker.record(&refused, at(start, 2000)), None);
        assert_eq!(tracker.record(&refused, at(start, 2100)), None);
        let down = tracker
            .record(&refused, at(start, 2200))
            .expect("unhealthy");
        assert_eq!(down.health, Health::Unhealthy);
        assert_eq!(down.reason, "3 failed probes in a row: connect: refused");
        // One success is not enough to come back; two are.
        assert_eq!(tracker.record(&Outcome::Up, at(start, 60_000)), None);
        let back = tracker
            .record(&Outcome::Up, at(start, 61_000))
            .expect("healthy");
        assert_eq!(back.health, Health::Healthy);
        // The outage did not enter the detector's window: a normal second later is no alarm.
        assert!(tracker.phi(at(start, 62_000)) < 1.0);
    }

    #[test]
    fn silence_makes_it_unhealthy_through_phi() {
        let start = Instant::now();
        let mut tracker = Tracker::new(Thresholds::default());
        for second in 0..10 {
            tracker.record(&Outcome::Up, at(start, second * 1000));
        }
        assert_eq!(tracker.health(), Health::Healthy);
        assert_eq!(tracker.record(&Outcome::TimedOut, at(start, 10_000)), None);
        assert_eq!(tracker.check(at(start, 10_200)), None);
        let down = tracker.check(at(start, 12_000)).expect("phi crossed 8");
        assert_eq!(down.health, Health::Unhealthy);
        assert!(down.phi > 8.0);
        assert!(down.reason.starts_with("phi "), "{}", down.reason);
        assert_eq!(tracker.check(at(start, 13_000)), None, "said once");
    }

    #[test]
    fn a_backend_that_never_answered_is_unhealthy_after_fall_timeouts() {
        let start = Instant::now();
        let mut tracker = Tracker::new(Thresholds::default());
        assert_eq!(tracker.record(&Outcome::TimedOut, at(start, 0)), None);
        assert_eq!(tracker.record(&Outcome::TimedOut, at(start, 1000)), None);
        let down = tracker
            .record(&Outcome::TimedOut, at(start, 2000))
            .expect("unhealthy");
        assert_eq!(down.health, Health::Unhealthy);
        assert_eq!(down.reason, "3 failed probes in a row: no answer yet");
        // Once it has answered, silence is φ's to judge: a timeout alone decides nothing.
        let mut tracker = Tracker::new(Thresholds::default());
        tracker.record(&Outcome::Up, at(start, 0));
        for i in 1..=5 {
            assert_eq!(tracker.record(&Outcome::TimedOut, at(start, i * 100)), None);
        }
    }

    #[test]
    fn an_interleaved_failure_resets_the_streaks() {
        let start = Instant::now();
        let mut tracker = Tracker::new(Thresholds::default());
        let refused = Outcome::Failed("refused".into());
        for i in 0..10 {
            let outcome = if i % 2 == 0 { &refused } else { &Outcome::Up };
            assert_eq!(
                tracker.record(outcome, at(start, i * 100)),
                None,
                "flapping at {i}"
            );
        }
        assert_eq!(tracker.health(), Health::Unknown);
        assert!(!tracker.failing(), "the last probe succeeded");
        tracker.record(&Outcome::TimedOut, at(start, 1000));
        assert!(tracker.failing(), "the last probe went unanswered");
    }
}
