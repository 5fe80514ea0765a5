//! Passive outlier detection: a backend that fails `consecutive_failures` times in a row
//! (connect failures or 5xx responses) is ejected for `base_ejection × times ejected`, capped at
//! `max_ejection`. Never more than half of a pool is ejected at once: past that, the failures are
//! more likely ours or the network's than the backends', and routing to all (Envoy's "panic
//! threshold") serves more requests than routing to a few.
//!
//! The counters are atomics shared by every worker; an ejection or a return rebuilds the pool's
//! snapshot off the request path, so pickers never see per-request health checks.
//!
//! A backend that sends bytes nobody asked for (after a complete response, on an idle kept-alive
//! connection) is not ejected — it may answer every request correctly — but its connections are
//! no longer reused for [`DISTRUST`]: on a reused HTTP/1.1 connection its stray bytes could be
//! read as the next client's response, and only a fresh connection per request rules that out.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::settings::OutlierPolicy;

/// One backend's failure record.
#[derive(Debug, Default)]
pub(crate) struct Outlier {
    consecutive_failures: AtomicU32,
    times_ejected: AtomicU32,
    /// Until when it is ejected, in milliseconds of the server's clock; 0 when it is not.
    ejected_until_ms: AtomicU64,
    /// Until when its connections are used once only, in the server's milliseconds.
    distrusted_until_ms: AtomicU64,
}

/// How long a backend that sent stray bytes gets a fresh connection per request.
pub(crate) const DISTRUST: Duration = Duration::from_secs(300);

impl Outlier {
    /// A response or connection that worked.
    #[inline]
    pub(crate) fn success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A failure at `now_ms`; true when it should eject the backend (the caller checks how many
    /// of the pool are ejected already, then calls [`Outlier::eject`]).
    pub(crate) fn failure(&self, policy: &OutlierPolicy) -> bool {
        if policy.consecutive_failures == 0 {
            return false;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        failures >= policy.consecutive_failures
    }

    /// Ejects the backend from `now_ms`; returns when it comes back.
    pub(crate) fn eject(&self, policy: &OutlierPolicy, now_ms: u64) -> u64 {
        let times = self.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let length = policy
            .base_ejection
            .saturating_mul(times)
            .min(policy.max_ejection);
        let until = now_ms + u64::try_from(length.as_millis()).unwrap_or(u64::MAX / 2);
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        until
    }

    /// Ends an ejection at once: the active health check found the backend healthy again after
    /// it was not (Envoy's `successful_active_health_check_uneject_host`). How often it was
    /// ejected stays, so a backend that fails again is ejected for longer.
    pub(crate) fn readmit(&self) {
        self.ejected_until_ms.store(0, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Whether the backend is ejected at `now_ms`.
    #[inline]
    pub(crate) fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// Stops reusing this backend's connections from `now_ms` for [`DISTRUST`].
    pub(crate) fn distrust(&self, now_ms: u64) {
        let until = now_ms + u64::try_from(DISTRUST.as_millis()).unwrap_or(u64::MAX / 2);
        self.distrusted_until_ms.store(until, Ordering::Relaxed);
    }

    /// Whether a connection to this backend may be kept for another request at `now_ms`.
    #[inline]
    pub(crate) fn reuses_connections(&self, now_ms: u64) -> bool {
        now_ms >= self.distrusted_until_ms.load(Ordering::Relaxed)
    }

    /// When the current ejection ends, if one is running at `now_ms`.
    pub(crate) fn ejected_until(&self, now_ms: u64) -> Option<u64> {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        (now_ms < until).then_some(until)
    }
}

/// A millisecond clock from the server's start, cheap to compare across workers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock(std::time::Instant);

impl Default for Clock {
    fn default() -> Self {
        Self(std::time::Instant::now())
    }
}

impl Clock {
    /// Milliseconds since the clock started.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The duration from `now` until `at_ms`.
    pub(crate) fn until(&self, at_ms: u64) -> Duration {
        Duration::from_millis(at_ms.saturating_sub(self.now_ms()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readmitted_backend_is_back_at_once_and_ejected_longer_next_time() {
        let policy = OutlierPolicy::default();
        let outlier = Outlier::default();
        assert_eq!(outlier.eject(&policy, 0), 30_000);
        outlier.readmit();
        assert!(!outlier.is_ejected(1));
        assert_eq!(
            outlier.eject(&policy, 10_000),
            70_000,
            "second time: 2 × 30 s"
        );
    }

    #[test]
    fn ejects_after_consecutive_failures_for_growing_periods() {
        let policy = OutlierPolicy::default();
        let outlier = Outlier::default();
        for _ in 0..4 {
            assert!(!outlier.failure(&policy));
        }
        outlier.success();
        for _ in 0..4 {
            assert!(!outlier.failure(&policy));
        }
        assert!(outlier.failure(&policy), "the fifth in a row ejects");
        assert_eq!(outlier.eject(&policy, 1_000), 31_000);
        assert!(outlier.is_ejected(30_999));
        assert!(!outlier.is_ejected(31_000));
        assert_eq!(
            outlier.eject(&policy, 40_000),
            100_000,
            "second time: 2 × 30 s"
        );
        for _ in 0..10 {
            outlier.eject(&policy, 0);
        }
        assert_eq!(
            outlier.ejected_until(0),
            Some(300_000),
            "capped at max_ejection"
        );
    }

    #[test]
    fn zero_turns_ejection_off() {
        let policy = OutlierPolicy {
            consecutive_failures: 0,
            ..OutlierPolicy::default()
        };
        let outlier = Outlier::default();
        assert!((0..100).all(|_| !outlier.failure(&policy)));
    }
}
