//! Least request: power of two choices on in-flight requests.
//!
//! Two random eligible instances are compared and the one with fewer requests in flight wins
//! (Envoy's default for `LEAST_REQUEST`). With unequal weights the score is
//! weight / (active + 1), highest wins. The counts are this worker's own, read from the
//! [`PickContext`] (the route table keeps them by address).

use rand::Rng;

use super::{eligible, Balancer, PickContext};
use crate::instance::Instance;

/// Power-of-two-choices over in-flight counts.
pub struct LeastRequest {
    order: Vec<usize>,
    weights: Vec<u32>,
}

impl LeastRequest {
    /// A balancer over `instances`.
    pub fn new(instances: &[Instance]) -> Self {
        LeastRequest {
            order: eligible(instances),
            weights: instances.iter().map(|i| i.weight).collect(),
        }
    }

    fn score(&self, ctx: &PickContext<'_>, i: usize) -> f64 {
        f64::from(self.weights[i]) / ((ctx.load)(i) as f64 + 1.0)
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
                Some(if self.score(ctx, b) > self.score(ctx, a) { b } else { a })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::weighted_list;

    fn pick_with(b: &LeastRequest, load: &[usize]) -> usize {
        b.pick(&PickContext { key: None, skip: &|_| false, load: &|i| load[i] }).unwrap()
    }

    #[test]
    fn a_busy_instance_is_avoided() {
        let b = LeastRequest::new(&weighted_list(&[1, 1]));
        for _ in 0..50 {
            assert_eq!(pick_with(&b, &[10, 0]), 1);
        }
        let mut seen = [false; 2];
        for _ in 0..200 {
            seen[pick_with(&b, &[0, 0])] = true;
        }
        assert_eq!(seen, [true, true]);
    }

    #[test]
    fn weight_scales_the_score() {
        let b = LeastRequest::new(&weighted_list(&[10, 1]));
        // 10/(4+1) = 2 beats 1/(0+1) = 1 although instance 0 is busier.
        for _ in 0..50 {
            assert_eq!(pick_with(&b, &[4, 0]), 0);
        }
    }
}
