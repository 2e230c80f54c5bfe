//! Round robin: each eligible instance in turn, one shared atomic cursor.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{eligible, Balancer, PickContext};
use crate::instance::Instance;

/// Cycles through the instances that have a non-zero weight.
pub struct RoundRobin {
    order: Vec<usize>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// A cursor over `instances`.
    pub fn new(instances: &[Instance]) -> Self {
        RoundRobin { order: eligible(instances), next: AtomicUsize::new(0) }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let n = self.order.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // Skipped instances pass their turn to the next one in the ring.
        (0..n).map(|k| self.order[(start + k) % n]).find(|i| !(ctx.skip)(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{counts, weighted_list};

    #[test]
    fn round_robin_alternates_and_never_picks_weight_zero() {
        let b = RoundRobin::new(&weighted_list(&[1, 0, 5]));
        let seq: Vec<_> = (0..4).map(|_| b.pick(&PickContext::any()).unwrap()).collect();
        assert_eq!(seq, [0, 2, 0, 2]);
        assert_eq!(counts(&b, 100, 3), [50, 0, 50]);
    }

    #[test]
    fn a_skipped_instance_passes_its_turn() {
        let b = RoundRobin::new(&weighted_list(&[1, 1, 1]));
        let skip = |i: usize| i == 1;
        let ctx = PickContext { key: None, skip: &skip, load: &|_| 0 };
        let seq: Vec<_> = (0..3).map(|_| b.pick(&ctx).unwrap()).collect();
        assert_eq!(seq, [0, 2, 2]);
        let all = |_: usize| true;
        assert_eq!(b.pick(&PickContext { key: None, skip: &all, load: &|_| 0 }), None);
    }
}
