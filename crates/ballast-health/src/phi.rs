//! The phi accrual failure detector (Hayashibara, Défago, Yared and Katayama, "The φ accrual
//! failure detector", SRDS 2004). Instead of a yes/no verdict after a fixed timeout, it says how
//! unlikely the silence since the last heartbeat is, given the heartbeats seen so far:
//!
//! φ(t) = −log10(1 − F(t − t_last)),
//!
//! where F is the cumulative distribution of the intervals between heartbeats, taken as normal
//! with the sample mean and standard deviation of a sliding window. φ = 1 means a 10% chance that
//! the process is still alive and merely late, φ = 8 one in 10^8. Like Akka and Cassandra we use
//! the logistic approximation of the normal CDF (error below 0.02%), add an acceptable pause to
//! the mean, and keep the standard deviation from falling below a floor, so that perfectly
//! regular heartbeats do not make the detector jumpy.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use ballast_health::{PhiAccrual, PhiSettings};
//!
//! let start = Instant::now();
//! let mut detector = PhiAccrual::new(PhiSettings::default());
//! for second in 0..10 {
//!     detector.heartbeat(start + Duration::from_secs(second));
//! }
//! assert!(detector.phi(start + Duration::from_millis(9_500)) < 1.0);
//! assert!(detector.phi(start + Duration::from_secs(15)) > 8.0);
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The detector's parameters; the defaults suit heartbeats (successful probes) every second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhiSettings {
    /// Intervals remembered (a sliding window).
    pub window: usize,
    /// The floor under the standard deviation.
    pub min_std_dev: Duration,
    /// Added to the mean interval: a pause this long costs nothing.
    pub acceptable_pause: Duration,
    /// φ above this means dead (8, as Akka and Cassandra use).
    pub threshold: f64,
    /// The interval expected before any has been seen: the first heartbeat seeds the window with
    /// this ± a quarter of it, so φ is meaningful from the start.
    pub first_interval: Duration,
}

impl Default for PhiSettings {
    fn default() -> Self {
        Self {
            window: 1000,
            min_std_dev: Duration::from_millis(100),
            acceptable_pause: Duration::ZERO,
            threshold: 8.0,
            first_interval: Duration::from_secs(1),
        }
    }
}

/// One monitored process's detector.
#[derive(Debug, Clone)]
pub struct PhiAccrual {
    settings: PhiSettings,
    /// Intervals in milliseconds, oldest first, with their running sums.
    intervals: VecDeque<f64>,
    sum: f64,
    sum_of_squares: f64,
    last: Option<Instant>,
}

impl PhiAccrual {
    /// A detector that has seen no heartbeat yet.
    pub fn new(settings: PhiSettings) -> Self {
        Self {
            settings,
            intervals: VecDeque::with_capacity(settings.window.min(1024)),
            sum: 0.0,
            sum_of_squares: 0.0,
            last: None,
        }
    }

    /// Its parameters.
    pub fn settings(&self) -> &PhiSettings {
        &self.settings
    }

    /// Records a heartbeat arriving at `at`.
    pub fn heartbeat(&mut self, at: Instant) {
        match self.last {
            None => {
                let mean = millis(self.settings.first_interval);
                self.push(mean * 0.75);
                self.push(mean * 1.25);
            }
            Some(last) => self.push(millis(at.saturating_duration_since(last))),
        }
        self.last = Some(at);
    }

    /// Starts counting from `at` without recording the interval that ends there: for a process
    /// coming back after an outage, whose downtime says nothing about its heartbeat rhythm.
    pub fn restart_at(&mut self, at: Instant) {
        if self.last.is_none() {
            self.heartbeat(at);
        }
        self.last = Some(at);
    }

    fn push(&mut self, interval: f64) {
        if self.intervals.len() == self.settings.window.max(1)
            && let Some(oldest) = self.intervals.pop_front()
        {
            self.sum -= oldest;
            self.sum_of_squares -= oldest * oldest;
        }
        self.intervals.push_back(interval);
        self.sum += interval;
        self.sum_of_squares += interval * interval;
    }

    /// The mean interval, in milliseconds (0 before any heartbeat).
    pub fn mean_ms(&self) -> f64 {
        if self.intervals.is_empty() {
            return 0.0;
        }
        self.sum / self.intervals.len() as f64
    }

    /// The standard deviation of the intervals, in milliseconds, before the floor.
    pub fn std_dev_ms(&self) -> f64 {
        if self.intervals.is_empty() {
            return 0.0;
        }
        let mean = self.mean_ms();
        (self.sum_of_squares / self.intervals.len() as f64 - mean * mean)
            .max(0.0)
            .sqrt()
    }

    /// φ at `now`: 0 before the first heartbeat (nothing is expected yet).
    pub fn phi(&self, now: Instant) -> f64 {
        let Some(last) = self.last else { return 0.0 };
        let elapsed = millis(now.saturating_duration_since(last));
        let mean = self.mean_ms() + millis(self.settings.acceptable_pause);
        let std_dev = self.std_dev_ms().max(millis(self.settings.min_std_dev));
        phi(elapsed, mean, std_dev)
    }

    /// Whether φ at `now` is above the threshold.
    pub fn is_dead(&self, now: Instant) -> bool {
        self.phi(now) > self.settings.threshold
    }

    /// Since the last heartbeat, at `now`.
    pub fn silence(&self, now: Instant) -> Option<Duration> {
        self.last.map(|last| now.saturating_duration_since(last))
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// φ for `elapsed` ms of silence, given a normal distribution of intervals, through the logistic
/// approximation of its CDF: 1 − F(x) ≈ e / (1 + e), e = exp(−y (1.5976 + 0.070566 y²)).
fn phi(elapsed: f64, mean: f64, std_dev: f64) -> f64 {
    let y = (elapsed - mean) / std_dev;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let phi = if elapsed > mean {
        -(e / (1.0 + e)).log10()
    } else {
        -(1.0 - 1.0 / (1.0 + e)).log10()
    };
    // Far past the mean, e underflows to 0: the silence is as unlikely as a double can say.
    if phi.is_finite() { phi } else { f64::MAX }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worked by hand. The first heartbeat seeds the window with 750 and 1250 ms (1 s ± ¼); two
    /// more a second apart add 1000 and 1000. Mean = 1000 ms; variance = (250² + 250² + 0 + 0) / 4
    /// = 31250, so σ = 176.78 ms (above the 100 ms floor).
    ///
    /// 1500 ms after the last one: y = 500 / 176.78 = 2.8284;
    /// e = exp(−2.8284 × (1.5976 + 0.070566 × 8)) = exp(−6.1153) = 0.0022085;
    /// φ = −log10(0.0022085 / 1.0022085) = 2.6569.
    ///
    /// 2000 ms after: y = 5.6569; e = exp(−5.6569 × (1.5976 + 0.070566 × 32)) = 3.3691e−10;
    /// φ = −log10(3.3691e−10) = 9.4725, past the threshold of 8.
    ///
    /// At exactly the mean, y = 0, e = 1 and φ = −log10(½) = 0.30103.
    #[test]
    fn phi_matches_the_worked_example() {
        let start = Instant::now();
        let mut detector = PhiAccrual::new(PhiSettings::default());
        for second in 0..3 {
            detector.heartbeat(start + Duration::from_secs(second));
        }
        assert!((detector.mean_ms() - 1000.0).abs() < 1e-9);
        assert!((detector.std_dev_ms() - 176.7767).abs() < 1e-3);
        let last = start + Duration::from_secs(2);
        let at = |ms| detector.phi(last + Duration::from_millis(ms));
        assert!(
            (at(1000) - std::f64::consts::LOG10_2).abs() < 1e-4,
            "{}",
            at(1000)
        );
        assert!((at(1500) - 2.6569).abs() < 1e-3, "{}", at(1500));
        assert!((at(2000) - 9.4725).abs() < 1e-3, "{}", at(2000));
        assert!(!detector.is_dead(last + Duration::from_millis(1500)));
        assert!(detector.is_dead(last + Duration::from_millis(2000)));
    }

    #[test]
    fn phi_grows_with_silence_and_never_overflows() {
        let start = Instant::now();
        let mut detector = PhiAccrual::new(PhiSettings::default());
        assert_eq!(detector.phi(start), 0.0);
        for second in 0..20 {
            detector.heartbeat(start + Duration::from_secs(second));
        }
        let last = start + Duration::from_secs(19);
        let mut previous = 0.0;
        for ms in (0..10_000).step_by(50) {
            let phi = detector.phi(last + Duration::from_millis(ms));
            assert!(phi >= previous, "φ fell at {ms} ms");
            previous = phi;
        }
        assert_eq!(detector.phi(last + Duration::from_secs(3600)), f64::MAX);
    }

    #[test]
    fn the_window_slides_and_an_acceptable_pause_shifts_the_mean() {
        let settings = PhiSettings {
            window: 4,
            acceptable_pause: Duration::from_secs(1),
            ..PhiSettings::default()
        };
        let start = Instant::now();
        let mut detector = PhiAccrual::new(settings);
        for i in 0..10 {
            detector.heartbeat(start + Duration::from_millis(i * 200));
        }
        assert!(
            (detector.mean_ms() - 200.0).abs() < 1e-9,
            "the seeds slid out"
        );
        assert!((detector.std_dev_ms()).abs() < 1e-6);
        // Mean 200 ms + 1 s pause = 1.2 s: at 1.2 s of silence φ is at its midpoint.
        let last = start + Duration::from_millis(1800);
        assert!(
            (detector.phi(last + Duration::from_millis(1200)) - std::f64::consts::LOG10_2).abs()
                < 1e-4
        );
    }
}
