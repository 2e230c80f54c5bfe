//! Least request: power of two choices on in-flight requests.
//!
//! Two random eligible instances are compared and the one with fewer requests in flight wins
//! (Envoy's default for `LEAST_REQUEST`). With unequal weights the score is
//! weight / (active + 1), highest wins. The counts are this worker's own.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use super::{eligible, Balancer, PickContext};
use crate::routes::Instance;

/// Power-of-two-choices over in-flight counts.
pub struct LeastRequest {
    order: Vec<usize>,
    weights: Vec<u32>,
    active: Vec<AtomicUsize>,
}

impl LeastRequest {
    /// Counters at zero for `instances`.
    pub fn new(instances: &[Instance]) -> Self {
        LeastRequest {
            order: eligible(instances),
            weights: instances.iter().map(|i| i.weight).collect(),
            active: instances.iter().map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    fn score(&self, i: usize) -> f64 {
        f64::from(self.weights[i]) / (self.active[i].load(Ordering::Relaxed) as f64 + 1.0)
    }
}

impl Balancer for LeastRequest {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let allowed: Vec<usize> = self.order.iter().copied().filter(|i| !(ctx.skip)(*i)).collect();
        match allowed.len() {
            0 => None,
            1 => Some(allowed[0]),
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let (a, b) = (allowed[a], allowed[b]);
                Some(if self.score(b) > self.score(a) { b } else { a })
            }
        }
    }

    fn started(&self, idx: usize) {
        if let Some(c) = self.active.get(idx) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn finished(&self, idx: usize) {
        if let Some(c) = self.active.get(idx) {
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::weighted_list;

    #[test]
    fn a_busy_instance_is_avoided() {
        let b = LeastRequest::new(&weighted_list(&[1, 1]));
        for _ in 0..10 {
            b.started(0);
        }
        for _ in 0..50 {
            assert_eq!(b.pick(&PickContext::any()), Some(1));
        }
        for _ in 0..10 {
            b.finished(0);
        }
        let mut seen = [false; 2];
        for _ in 0..200 {
            seen[b.pick(&PickContext::any()).unwrap()] = true;
        }
        assert_eq!(seen, [true, true]);
    }

    #[test]
    fn weight_scales_the_score() {
        let b = LeastRequest::new(&weighted_list(&[10, 1]));
        // 10/(4+1) = 2 beats 1/(0+1) = 1 although instance 0 is busier.
        for _ in 0..4 {
            b.started(0);
        }
        for _ in 0..50 {
            assert_eq!(b.pick(&PickContext::any()), Some(0));
        }
    }
}
