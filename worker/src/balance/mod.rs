//! Load balancing: one strategy per file behind the [`Balancer`] trait.
//!
//! Strategies see only a list of [`Instance`]s (address and weight), never ZooKeeper or HTTP.
//! A balancer is built for one instance list and lives inside the immutable route table, so it
//! is replaced with the list; its state is atomics, so picking never takes a lock. What must survive a
//! list change (in-flight counts, health) lives in the route table, keyed by address.
//! Weight 0 means "no traffic" for every strategy.

mod consistent_hash;
mod least_request;
mod random;
mod round_robin;
mod weighted;

use serde::{Deserialize, Serialize};

use crate::instance::Instance;

pub use consistent_hash::{hash_key, ConsistentHash};
pub use least_request::LeastRequest;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted::Weighted;

/// The strategies `load_balance` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// A uniformly random instance.
    Random,
    /// Smooth weighted round-robin (nginx's): interleaves, never bursts one instance.
    Weighted,
    /// Power of two choices on in-flight requests (scaled by weight).
    LeastRequest,
    /// A hash ring on a request key (header, cookie or client IP).
    ConsistentHash,
}

/// What a strategy may use to choose.
pub struct PickContext<'a> {
    /// The request's hash key, for [`Strategy::ConsistentHash`]; `None` picks at random.
    pub key: Option<u64>,
    /// Instances that must not be chosen (ejected, or already tried by this request).
    pub skip: &'a dyn Fn(usize) -> bool,
    /// Requests in flight to an instance (for [`Strategy::LeastRequest`]). The count is the
    /// route table's, kept by address across list changes, so a balancer holds no such state.
    pub load: &'a dyn Fn(usize) -> usize,
}

impl PickContext<'_> {
    /// A context that skips nothing and sees no load.
    pub fn any() -> PickContext<'static> {
        PickContext { key: None, skip: &|_| false, load: &|_| 0 }
    }
}

/// A selection strategy over one fixed list of instances.
pub trait Balancer: Send + Sync {
    /// Index of the chosen instance, or `None` when no instance may take traffic.
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize>;
}

/// Builds the balancer for `strategy` over `instances`.
pub fn build(strategy: Strategy, instances: &[Instance]) -> Box<dyn Balancer> {
    match strategy {
        Strategy::RoundRobin => Box::new(RoundRobin::new(instances)),
        Strategy::Random => Box::new(Random::new(instances)),
        Strategy::Weighted => Box::new(Weighted::new(instances)),
        Strategy::LeastRequest => Box::new(LeastRequest::new(instances)),
        Strategy::ConsistentHash => Box::new(ConsistentHash::new(instances)),
    }
}

/// Indices of instances with a non-zero weight.
fn eligible(instances: &[Instance]) -> Vec<usize> {
    instances.iter().enumerate().filter(|(_, i)| i.weight > 0).map(|(n, _)| n).collect()
}

#[cfg(test)]
pub(crate) fn counts(b: &dyn Balancer, n: usize, len: usize) -> Vec<usize> {
    let mut c = vec![0; len];
    for _ in 0..n {
        c[b.pick(&PickContext::any()).unwrap()] += 1;
    }
    c
}

#[cfg(test)]
pub(crate) fn weighted_list(weights: &[u32]) -> Vec<Instance> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| Instance::weighted(format!("10.0.0.{}:80", i + 1), *w))
        .collect()
}
