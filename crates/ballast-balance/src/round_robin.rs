//! Round robin: strict rotation over the backends that take traffic, ignoring weights.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::picker::eligible;
use crate::{Backend, Select};

/// Strict rotation; one shared atomic counter keeps the order exact across workers.
#[derive(Debug)]
pub struct RoundRobin {
    order: Box<[usize]>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub(crate) fn new(backends: &[Backend]) -> Self {
        Self {
            order: eligible(backends).into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }
}

impl Select for RoundRobin {
    #[inline]
    fn select(&self, _key: u64) -> Option<usize> {
        if self.order.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.order[turn % self.order.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_in_order_skipping_backends_without_traffic() {
        let backends = [
            Backend::new("a", 5),
            Backend::new("b", 0),
            Backend::new("c", 1),
            Backend::new("d", 1).accepting(false),
            Backend::new("e", 1),
        ];
        let picker = RoundRobin::new(&backends);
        let picks: Vec<_> = (0..7).map(|_| picker.select(0).expect("some")).collect();
        assert_eq!(picks, [0, 2, 4, 0, 2, 4, 0]);
    }
}
