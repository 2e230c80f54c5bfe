//! Smooth weighted round-robin, as nginx does it.
//!
//! nginx's algorithm keeps a mutable "current weight" per instance. Its output is periodic with
//! period Σweights, so we run it once when the balancer is built and keep the sequence; a pick is
//! then one atomic increment, with no lock. With weights a=5, b=1, c=1 the sequence is
//! a a b a c a a — interleaved, never a a a a a b c.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, PickContext};
use crate::instance::Instance;

/// Longest precomputed sequence; larger weight sums are scaled down proportionally.
const MAX_PERIOD: u64 = 4096;

/// Smooth weighted round-robin over a precomputed period.
pub struct Weighted {
    sequence: Vec<usize>,
    next: AtomicUsize,
}

impl Weighted {
    /// Precomputes one period of the nginx sequence for `instances`' weights. nginx's step
    /// looks at every instance, so a period costs instances × Σweights; beyond
    /// [`NGINX_WORK`] (a 30 000-instance service would take 2 s, stalling the worker) the same
    /// interleaving comes from a heap in Σweights × log(instances): each instance due at
    /// (picks + ½) / weight, the earliest first.
    pub fn new(instances: &[Instance]) -> Self {
        let weights = scaled(instances);
        let total: i64 = weights.iter().sum();
        if (weights.len() as i64).saturating_mul(total) > NGINX_WORK {
            return Weighted { sequence: by_heap(&weights, total), next: AtomicUsize::new(0) };
        }
        let mut current = vec![0i64; weights.len()];
        let mut sequence = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best: Option<usize> = None;
            for (i, w) in weights.iter().enumerate() {
                if *w == 0 {
                    continue;
                }
                current[i] += w;
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            let Some(b) = best else { break };
            current[b] -= total;
            sequence.push(b);
        }
        Weighted { sequence, next: AtomicUsize::new(0) }
    }
}

/// Most steps × instances spent on nginx's own algorithm (a few milliseconds).
const NGINX_WORK: i64 = 2_000_000;

/// One period by a heap: `total` picks, each of the instance due earliest.
fn by_heap(weights: &[i64], total: i64) -> Vec<usize> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    // Due times as exact fractions (2·picks + 1) / (2·weight), compared by cross-multiplying.
    #[derive(PartialEq, Eq)]
    struct Due {
        num: i64,
        den: i64,
        idx: usize,
    }
    impl Ord for Due {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (i128::from(self.num) * i128::from(o.den))
                .cmp(&(i128::from(o.num) * i128::from(self.den)))
                .then(self.idx.cmp(&o.idx))
        }
    }
    impl PartialOrd for Due {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    let mut heap: BinaryHeap<Reverse<Due>> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .map(|(idx, w)| Reverse(Due { num: 1, den: 2 * w, idx }))
        .collect();
    let mut sequence = Vec::with_capacity(total as usize);
    while sequence.len() < total as usize {
        let Some(Reverse(due)) = heap.pop() else { break };
        sequence.push(due.idx);
        heap.push(Reverse(Due { num: due.num + 2, ..due }));
    }
    sequence
}

/// Weights reduced so their sum stays under [`MAX_PERIOD`]; a non-zero weight stays at least 1.
fn scaled(instances: &[Instance]) -> Vec<i64> {
    let total: u64 = instances.iter().map(|i| u64::from(i.weight)).sum();
    instances
        .iter()
        .map(|i| {
            let w = u64::from(i.weight);
            if total <= MAX_PERIOD || w == 0 {
                w as i64
            } else {
                (w * MAX_PERIOD / total).max(1) as i64
            }
        })
        .collect()
}

impl Balancer for Weighted {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let n = self.sequence.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|k| self.sequence[(start + k) % n]).find(|i| !(ctx.skip)(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{counts, weighted_list};

    #[test]
    fn weights_five_one_one_interleave_like_nginx() {
        let b = Weighted::new(&weighted_list(&[5, 1, 1]));
        let seq: Vec<_> = (0..7).map(|_| b.pick(&PickContext::any()).unwrap()).collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&b, 700, 3), [500, 100, 100]);
    }

    #[test]
    fn weight_zero_gets_nothing_and_huge_weights_keep_their_ratio() {
        let b = Weighted::new(&weighted_list(&[0, 1_000_000, 3_000_000]));
        let c = counts(&b, 4096, 3);
        assert_eq!(c[0], 0);
        assert_eq!(c[1] * 3, c[2]);
    }

    #[test]
    fn a_large_service_is_built_by_heap_with_the_same_shares() {
        // 3 000 instances: 9 million nginx steps, so the heap builds it.
        let mut weights = vec![1u32; 3_000];
        weights[0] = 3;
        let list = weighted_list(&weights);
        let b = Weighted::new(&list);
        assert_eq!(b.sequence.len(), 3_002);
        assert_eq!(b.sequence.iter().filter(|i| **i == 0).count(), 3, "weight 3: three turns");
        assert_eq!(b.sequence.iter().filter(|i| **i == 7).count(), 1);
    }
}
