//! Slow start: a backend that joins a pool, or comes back to it (healthy again, ejection over,
//! undrained), is sent a small share at first and its full share only after the pool's window,
//! as HAProxy's `slowstart` and Envoy's slow start mode do. A cold backend (empty caches, a JIT
//! still warming, connection pools to its own dependencies still opening) that gets its full
//! share at once is the one that falls over again.
//!
//! The ramp works through weights, so every algorithm whose shares follow weights pick by pick
//! (weighted round robin, least request, least connections, random) ramps the same way and the
//! request path pays nothing: while a backend ramps, its pool's picker is rebuilt every step with
//! every weight scaled by [`SCALE`] and the ramping backend's by its progress (linear, from
//! [`MIN_SHARE`]), then once more with the weights as configured. Plain round robin ignores
//! weights, and the hash-based algorithms must keep each key on its backend: they do not ramp.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Weights are multiplied by this during a ramp, so that a ramping backend's share can be a
/// fraction of one weight unit (a twentieth).
const SCALE: u32 = 20;
/// The share of its weight a backend starts its ramp from (Envoy's default `min_weight_percent`).
const MIN_SHARE: f64 = 0.1;

/// When a backend's ramp began, in the server's clock (ms); 0: it is not ramping.
#[derive(Debug, Default)]
pub(crate) struct Ramp {
    started_ms: AtomicU64,
}

impl Ramp {
    /// The backend starts taking traffic now.
    pub(crate) fn start(&self, now_ms: u64) {
        self.started_ms.store(now_ms.max(1), Ordering::Relaxed);
    }

    /// The share of its weight the backend takes at `now_ms`, while it ramps over `window`;
    /// `None` once it is past (or was never) ramping.
    fn share(&self, now_ms: u64, window: Duration) -> Option<f64> {
        let started = self.started_ms.load(Ordering::Relaxed);
        if started == 0 {
            return None;
        }
        let elapsed = now_ms.saturating_sub(started) as f64;
        let window_ms = window.as_millis() as f64;
        if elapsed >= window_ms {
            self.started_ms.store(0, Ordering::Relaxed);
            return None;
        }
        Some((elapsed / window_ms).max(MIN_SHARE))
    }
}

/// The weights a pool's picker is built with at `now_ms`: `configured`, or while any backend
/// ramps over `window`, every one scaled with the ramping ones by their progress. Also when the
/// weights next change (a ramp's next step or its end), if they will.
pub(crate) fn weights(
    configured: &[u32],
    ramps: &[&Ramp],
    window: Option<Duration>,
    now_ms: u64,
) -> (Vec<u32>, Option<u64>) {
    let Some(window) = window.filter(|w| !w.is_zero()) else {
        return (configured.to_vec(), None);
    };
    let shares: Vec<Option<f64>> = ramps.iter().map(|r| r.share(now_ms, window)).collect();
    if shares.iter().all(Option::is_none) {
        return (configured.to_vec(), None);
    }
    let weights = configured
        .iter()
        .zip(&shares)
        .map(|(&weight, share)| {
            let full = weight.saturating_mul(SCALE);
            match share {
                Some(share) if weight > 0 => ((f64::from(full) * share).round() as u32).max(1),
                _ => full,
            }
        })
        .collect();
    let step = u64::try_from((window / 20).as_millis())
        .unwrap_or(u64::MAX)
        .clamp(100, 1_000);
    (weights, Some(now_ms + step))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    #[test]
    fn nothing_ramps_without_a_window_or_a_start() {
        let ramp = Ramp::default();
        assert_eq!(
            weights(&[3, 1], &[&ramp, &ramp], Some(WINDOW), 5_000),
            (vec![3, 1], None)
        );
        ramp.start(1_000);
        assert_eq!(
            weights(&[3, 1], &[&ramp, &ramp], None, 5_000),
            (vec![3, 1], None)
        );
    }

    #[test]
    fn a_ramping_backend_grows_from_a_tenth_to_its_full_share() {
        let (steady, joining) = (Ramp::default(), Ramp::default());
        joining.start(1_000);
        let at = |now| weights(&[1, 1], &[&steady, &joining], Some(WINDOW), now);
        // At the start: a tenth of a full weight (20 units × 0.1).
        assert_eq!(at(1_000), (vec![20, 2], Some(1_500)));
        // Halfway: half.
        assert_eq!(at(6_000).0, vec![20, 10]);
        // Past the window: the configured weights, and no more steps.
        assert_eq!(at(11_000), (vec![1, 1], None));
        assert_eq!(at(12_000), (vec![1, 1], None));
    }

    #[test]
    fn weight_zero_stays_zero_and_large_weights_do_not_overflow() {
        let ramp = Ramp::default();
        ramp.start(1);
        let (weights, _) = weights(&[0, u32::MAX], &[&ramp, &ramp], Some(WINDOW), 1);
        assert_eq!(weights[0], 0);
        assert!(weights[1] > 0);
    }
}
