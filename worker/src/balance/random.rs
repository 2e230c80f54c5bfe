//! Random: a uniformly random eligible instance, from the thread's own generator.

use rand::Rng;

use super::{eligible, Balancer, PickContext};
use crate::instance::Instance;

/// Picks uniformly among instances with a non-zero weight.
pub struct Random {
    order: Vec<usize>,
}

impl Random {
    /// A picker over `instances`.
    pub fn new(instances: &[Instance]) -> Self {
        Random { order: eligible(instances) }
    }
}

impl Balancer for Random {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        pick_random(&self.order, ctx)
    }
}

/// A random element of `order` not skipped by `ctx`: a random start, then the first allowed one.
pub(super) fn pick_random(order: &[usize], ctx: &PickContext<'_>) -> Option<usize> {
    let n = order.len();
    if n == 0 {
        return None;
    }
    let start = rand::rng().random_range(0..n);
    (0..n).map(|k| order[(start + k) % n]).find(|i| !(ctx.skip)(*i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{counts, weighted_list};

    #[test]
    fn random_spreads_over_every_eligible_instance() {
        let b = Random::new(&weighted_list(&[1, 1, 0, 1]));
        let c = counts(&b, 3000, 4);
        assert_eq!(c[2], 0);
        for i in [0, 1, 3] {
            // 1000 expected each; 700 is more than 10 standard deviations away.
            assert!(c[i] > 700, "instance {i} got {} of 3000: {c:?}", c[i]);
        }
    }
}
