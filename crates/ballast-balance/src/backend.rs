//! What a picker chooses among: a [`Backend`] (id, weight, whether it takes new traffic) and its
//! shared [`Load`] (requests in flight, peak-EWMA latency).
//!
//! A backend's `Load` sits behind an `Arc` so that the pickers built for successive revisions of a
//! backend set can share it: a request started under the old picker is still counted by the new
//! one, which is what makes least connections "one truth" across rebuilds and workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One backend as the pickers see it.
#[derive(Debug, Clone)]
pub struct Backend {
    id: String,
    weight: u32,
    accepting: bool,
    load: Arc<Load>,
}

impl Backend {
    /// A backend that takes new traffic in proportion to `weight`; weight 0 takes none.
    pub fn new(id: impl Into<String>, weight: u32) -> Self {
        Self {
            id: id.into(),
            weight,
            accepting: true,
            load: Arc::default(),
        }
    }

    /// Marks whether the backend may take new traffic (false while unhealthy or draining).
    #[must_use]
    pub fn accepting(mut self, accepting: bool) -> Self {
        self.accepting = accepting;
        self
    }

    /// The same backend with another weight (a ramp's, during slow start).
    #[must_use]
    pub fn weighted(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Shares `load` with this backend, typically the load of the same backend in the previous
    /// revision of the set.
    #[must_use]
    pub fn with_load(mut self, load: Arc<Load>) -> Self {
        self.load = load;
        self
    }

    /// The stable identity the hash-based algorithms place on their tables.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The relative share of new traffic this backend should get.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Whether the backend may take new traffic: accepting and of non-zero weight.
    pub fn takes_traffic(&self) -> bool {
        self.accepting && self.weight > 0
    }

    /// The backend's shared load counters.
    pub fn load(&self) -> &Arc<Load> {
        &self.load
    }
}

/// A backend's live load, updated with atomics by every worker.
///
/// Aligned to a cache line so that workers updating neighbouring backends do not contend.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Load {
    in_flight: AtomicU64,
    /// Peak-EWMA latency in nanoseconds, as `f64` bits.
    ewma_nanos: AtomicU64,
    /// When `ewma_nanos` was last updated, in nanoseconds of the caller's clock.
    observed_at_nanos: AtomicU64,
}

impl Load {
    /// Requests (or connections) currently in flight.
    #[inline]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one request in flight until the returned guard is dropped.
    #[inline]
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load: Arc::clone(self),
        }
    }

    /// Counts one request in flight, as [`Load::start`], unless `limit` are in flight already:
    /// a limit that holds across every worker at once, never overshot by a race.
    #[inline]
    pub fn try_start(self: &Arc<Self>, limit: u64) -> Option<InFlight> {
        self.in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(InFlight {
            load: Arc::clone(self),
        })
    }

    /// The peak-EWMA latency estimate in nanoseconds; 0 before the first observation.
    #[inline]
    pub fn latency_ewma_nanos(&self) -> f64 {
        f64::from_bits(self.ewma_nanos.load(Ordering::Relaxed))
    }

    /// Feeds one observed latency into the peak-EWMA estimate.
    ///
    /// `now` is the time of the observation on any monotonic clock the caller keeps (the proxy's
    /// uptime, a simulation's virtual time); `decay` is the EWMA's time constant. A latency above
    /// the estimate replaces it at once (the "peak"), so a backend that turns slow is avoided
    /// immediately; lower latencies pull it down smoothly. Concurrent observers may overwrite
    /// each other's sample, which costs one sample of precision and never corrupts the estimate.
    pub fn observe_latency(&self, latency: Duration, now: Duration, decay: Duration) {
        let sample = latency.as_nanos() as f64;
        let now_nanos = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let previous_at = self.observed_at_nanos.swap(now_nanos, Ordering::Relaxed);
        let previous = self.latency_ewma_nanos();
        let next = if previous == 0.0 || sample > previous {
            sample
        } else {
            let elapsed = now_nanos.saturating_sub(previous_at) as f64;
            let tau = decay.as_nanos().max(1) as f64;
            let keep = (-elapsed / tau).exp();
            previous * keep + sample * (1.0 - keep)
        };
        self.ewma_nanos.store(next.to_bits(), Ordering::Relaxed);
    }
}

/// One request in flight on a backend; dropping it ends the request.
#[derive(Debug)]
#[must_use = "the request stops being counted as soon as the guard is dropped"]
pub struct InFlight {
    load: Arc<Load>,
}

impl InFlight {
    /// The load this request is counted on.
    pub fn load(&self) -> &Arc<Load> {
        &self.load
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_start_holds_its_limit_across_threads() {
        let load = Arc::new(Load::default());
        let admitted = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        if let Some(guard) = load.try_start(10) {
                            admitted.lock().expect("lock").push(guard);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.lock().expect("lock").len(), 10);
        assert_eq!(load.in_flight(), 10);
        admitted.lock().expect("lock").pop();
        assert!(load.try_start(10).is_some(), "a freed slot is taken again");
    }

    #[test]
    fn in_flight_counts_guards() {
        let load = Arc::new(Load::default());
        let a = load.start();
        let b = load.start();
        assert_eq!(load.in_flight(), 2);
        drop(a);
        assert_eq!(load.in_flight(), 1);
        drop(b);
        assert_eq!(load.in_flight(), 0);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let load = Load::default();
        let decay = Duration::from_secs(10);
        load.observe_latency(Duration::from_millis(10), Duration::from_secs(1), decay);
        assert_eq!(load.latency_ewma_nanos(), 10e6);
        load.observe_latency(Duration::from_millis(100), Duration::from_secs(2), decay);
        assert_eq!(
            load.latency_ewma_nanos(),
            100e6,
            "a peak replaces the estimate"
        );
        load.observe_latency(Duration::from_millis(10), Duration::from_secs(12), decay);
        let after_one_tau = load.latency_ewma_nanos();
        let expected = 100e6 * (-1.0f64).exp() + 10e6 * (1.0 - (-1.0f64).exp());
        assert!(
            (after_one_tau - expected).abs() < 1.0,
            "{after_one_tau} vs {expected}"
        );
    }

    #[test]
    fn takes_traffic_needs_weight_and_accepting() {
        assert!(Backend::new("a", 1).takes_traffic());
        assert!(!Backend::new("a", 0).takes_traffic());
        assert!(!Backend::new("a", 3).accepting(false).takes_traffic());
    }
}
