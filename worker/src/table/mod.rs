//! The route table: which instances each service has, as one immutable value.
//!
//! A new table is built for every change and swapped in whole (see [`SharedTable`]), so a
//! request reads a consistent snapshot without a lock. The table knows nothing of HTTP or
//! ZooKeeper; each service carries the balancer built for its instance list and the health
//! state of its instances, which a rebuilt service takes over by address.
//!
//! - [`health`]: per-instance state (ejection, health check, in-flight count, the removal
//!   guard's hold), kept host-wide through its [`Tracker`], and its [`Clock`].

pub mod health;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::balance::{self, Balancer, Strategy};
use crate::config::{Config, HashOn};
pub use crate::instance::Instance;
pub use health::{Clock, Hold, ServiceHealth, Tracker};

/// The route table as every request sees it: swapped whole, read without a lock.
pub type SharedTable = std::sync::Arc<arc_swap::ArcSwap<RouteTable>>;

/// Where a service's instance list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `[services.X] instances` in gateway.toml.
    Static,
    /// A live ZooKeeper listing.
    Zookeeper,
    /// The disk snapshot, while ZooKeeper has not answered yet.
    Snapshot,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Static => "static routes",
            Source::Zookeeper => "routes from ZooKeeper",
            Source::Snapshot => "routes from the snapshot",
        })
    }
}

/// `n` and the noun, singular or plural ("1 instance", "2 instances").
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// How a service balances: resolved from `[proxy]` and `[services.NAME]` once, when the table
/// is built, so the request path never looks the configuration up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The strategy.
    pub strategy: Strategy,
    /// What `consistent_hash` hashes on (`None` for other strategies: nothing to compute).
    pub hash_on: Option<HashOn>,
    /// Slow start, in ms (0: off).
    pub slow_start_ms: u64,
}

impl Policy {
    /// The policy `config` gives service `name`.
    pub fn for_service(config: &Config, name: &str) -> Self {
        let own = config.services.get(name);
        let strategy = own.and_then(|s| s.load_balance).unwrap_or(config.proxy.load_balance);
        let hash_on = (strategy == Strategy::ConsistentHash).then(|| {
            own.and_then(|s| s.hash_on.clone()).unwrap_or_else(|| config.proxy.hash_on.clone())
        });
        let slow_start = own.and_then(|s| s.slow_start).unwrap_or(config.proxy.slow_start);
        Policy { strategy, hash_on, slow_start_ms: slow_start.as_millis() as u64 }
    }

    /// A policy with `strategy`, the default hash key and no slow start.
    pub fn new(strategy: Strategy) -> Self {
        let hash_on = (strategy == Strategy::ConsistentHash).then_some(HashOn::ClientIp);
        Policy { strategy, hash_on, slow_start_ms: 0 }
    }
}

/// A service as routed: its instances and the balancer over them.
pub struct Service {
    /// The service name, as the router names it.
    pub name: String,
    /// Instances, sorted by address so that every worker sees the same order.
    pub instances: Vec<Instance>,
    /// Where the list came from.
    pub source: Source,
    /// How it balances.
    pub policy: Policy,
    /// Selection state for `instances`.
    pub balancer: Box<dyn Balancer>,
    /// Ejection, health-check and in-flight state of `instances`, index-aligned.
    pub health: ServiceHealth,
    /// This service's row in the shared metrics (looked up once, on first use).
    pub stats: std::sync::OnceLock<usize>,
    /// Instances ramping up (slow start) when the service was built: the weights its balancer
    /// uses, until when.
    pub ramp: Option<Ramp>,
}

/// Slow start in progress: the weights the balancer was built with (each instance's weight
/// × [`RAMP_SCALE`], a ramping one's less), and when the last ramp ends (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ramp {
    /// Weight per instance, index-aligned.
    pub weights: Vec<u32>,
    /// When every ramp is over.
    pub until_ms: u64,
}

/// Weights are scaled by this much while a service ramps, so that a ramp shows in steps of
/// 1 % even for instances of weight 1.
pub const RAMP_SCALE: u32 = 100;

/// Wall-clock milliseconds (registrations are dated by ZooKeeper's clock and the registries').
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The balancer for `instances` under `policy` at `now_ms`, and the ramp when an instance is
/// still in its slow start: then the weights are ramped, and a strategy that ignores weights
/// (round robin, random) balances by weight until the ramp is over. `consistent_hash` never
/// ramps (moving keys would defeat it).
fn balancer_at(
    policy: &Policy,
    instances: &[Instance],
    now_ms: u64,
) -> (Box<dyn Balancer>, Option<Ramp>) {
    let ramps: Vec<Option<u32>> = match policy.strategy {
        Strategy::ConsistentHash => Vec::new(),
        _ => instances
            .iter()
            .map(|i| i.ramp_weight(now_ms, policy.slow_start_ms, RAMP_SCALE))
            .collect(),
    };
    if !ramps.iter().any(Option::is_some) {
        return (balance::build(policy.strategy, instances), None);
    }
    let weights: Vec<u32> = instances
        .iter()
        .zip(&ramps)
        .map(|(i, r)| r.unwrap_or(i.weight.saturating_mul(RAMP_SCALE)))
        .collect();
    let until_ms = instances
        .iter()
        .zip(&ramps)
        .filter(|(_, r)| r.is_some())
        .map(|(i, _)| {
            let ramp = if i.warmup_ms > 0 { i.warmup_ms } else { policy.slow_start_ms };
            i.since_ms + ramp
        })
        .max()
        .unwrap_or(now_ms);
    let weighted: Vec<Instance> = instances
        .iter()
        .zip(&weights)
        .map(|(i, w)| Instance::weighted(i.address.clone(), *w))
        .collect();
    let strategy = match policy.strategy {
        Strategy::RoundRobin | Strategy::Random => Strategy::Weighted,
        s => s,
    };
    (balance::build(strategy, &weighted), Some(Ramp { weights, until_ms }))
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("instances", &self.instances)
            .field("source", &self.source)
            .field("policy", &self.policy)
            .finish()
    }
}

impl Service {
    /// Builds a service over `instances` (sorted and deduplicated here). Instances `previous`
    /// knew keep their health and in-flight state; others take the host's.
    pub fn new(
        name: impl Into<String>,
        instances: Vec<Instance>,
        source: Source,
        policy: Policy,
        tracker: &Tracker,
        previous: Option<&Service>,
    ) -> Self {
        Service::with_held(name, instances, (source, policy), tracker, previous, &HashMap::new())
    }

    /// [`Service::new`], where `held` names the instances the removal guard keeps although the
    /// registry removed them, and on what terms.
    pub fn with_held(
        name: impl Into<String>,
        mut instances: Vec<Instance>,
        (source, policy): (Source, Policy),
        tracker: &Tracker,
        previous: Option<&Service>,
        held: &HashMap<String, Hold>,
    ) -> Self {
        let name = name.into();
        instances.sort();
        instances.dedup_by(|a, b| a.address == b.address);
        let (balancer, ramp) = balancer_at(&policy, &instances, wall_ms());
        let health = ServiceHealth::carry(
            &name,
            &instances,
            previous.map(|p| (p.instances.as_slice(), &p.health)),
            (tracker, held),
        );
        Service {
            name,
            instances,
            source,
            policy,
            balancer,
            health,
            stats: Default::default(),
            ramp,
        }
    }
}

/// Shards of a [`ServiceMap`].
const SHARDS: usize = 64;

type Shard = FxHashMap<Arc<str>, Arc<Service>>;

/// The services of a table by name, in shards shared between successive tables: the next
/// table is the previous one with the changed service's shard copied (copy on write), so a
/// change costs 1/64 of the table — never a visit of every service, which at 10 000 services
/// meant 20 000 cache misses per change (each service's reference count, copied then
/// dropped).
#[derive(Clone)]
pub struct ServiceMap {
    shards: Arc<[Arc<Shard>; SHARDS]>,
    len: usize,
}

impl Default for ServiceMap {
    fn default() -> Self {
        ServiceMap { shards: Arc::new(std::array::from_fn(|_| Arc::default())), len: 0 }
    }
}

impl std::fmt::Debug for ServiceMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceMap({} services)", self.len)
    }
}

/// A service's shard: FNV-1a of its name, a hash unrelated to the one inside the shards (keys
/// sharing bits of that one would crowd its buckets).
fn shard_of(name: &str) -> usize {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    ((h ^ (h >> 32)) as usize) % SHARDS
}

impl ServiceMap {
    /// The service named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Service>> {
        self.shards[shard_of(name)].get(name)
    }

    /// Adds or replaces a service; returns the one it replaced.
    pub fn insert(&mut self, name: Arc<str>, service: Arc<Service>) -> Option<Arc<Service>> {
        let i = shard_of(&name);
        let shards = Arc::make_mut(&mut self.shards);
        let old = Arc::make_mut(&mut shards[i]).insert(name, service);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes a service; returns it.
    pub fn remove(&mut self, name: &str) -> Option<Arc<Service>> {
        let i = shard_of(name);
        if !self.shards[i].contains_key(name) {
            return None;
        }
        let shards = Arc::make_mut(&mut self.shards);
        let old = Arc::make_mut(&mut shards[i]).remove(name);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Every service, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.shards.iter().flat_map(|s| s.values())
    }

    /// How many services.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl FromIterator<(Arc<str>, Arc<Service>)> for ServiceMap {
    fn from_iter<I: IntoIterator<Item = (Arc<str>, Arc<Service>)>>(iter: I) -> Self {
        let mut map = ServiceMap::default();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

/// An immutable snapshot of every routable service.
#[derive(Debug, Default)]
pub struct RouteTable {
    services: ServiceMap,
    /// Instances over all services (kept by the builder: counting them would visit every
    /// service on every change).
    instances: usize,
    /// The services holding instances under the removal guard (the heartbeat reports them).
    held: Vec<Arc<Service>>,
}

impl RouteTable {
    /// Builds a table from services.
    pub fn new(services: impl IntoIterator<Item = Service>) -> Self {
        let services: ServiceMap =
            services.into_iter().map(|s| (Arc::from(s.name.as_str()), Arc::new(s))).collect();
        let instances = services.values().map(|s| s.instances.len()).sum();
        RouteTable { services, instances, held: Vec::new() }
    }

    /// The services with static instances in `config`.
    pub fn statics(config: &Config, tracker: &Tracker) -> Self {
        RouteTable::new(config.services.iter().filter_map(|(name, s)| {
            let instances = s.instances.clone()?;
            Some(Service::new(
                name.clone(),
                instances,
                Source::Static,
                Policy::for_service(config, name),
                tracker,
                None,
            ))
        }))
    }

    /// Builds a table from already built services (unchanged ones keep their balancer state),
    /// with their instance count and the services holding instances, as the builder keeps them.
    pub fn from_map(services: ServiceMap, instances: usize, held: Vec<Arc<Service>>) -> Self {
        RouteTable { services, instances, held }
    }

    /// The services holding instances under the removal guard.
    pub fn held(&self) -> &[Arc<Service>] {
        &self.held
    }

    /// Every service, in no particular order (no sort, no allocation).
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// Looks a service up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    /// Services sorted by name (for `/routes`, logs and snapshots).
    pub fn services(&self) -> Vec<&Arc<Service>> {
        let mut v: Vec<_> = self.services.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Number of services and of instances over all services.
    pub fn counts(&self) -> (usize, usize) {
        (self.services.len(), self.instances)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_sort_and_deduplicate_their_instances() {
        let s = Service::new(
            "svc",
            vec![
                Instance::new("10.0.0.2:80"),
                Instance::new("10.0.0.1:80"),
                Instance::new("10.0.0.2:80"),
            ],
            Source::Static,
            Policy::new(Strategy::RoundRobin),
            &Tracker::local(Clock::system()),
            None,
        );
        let addrs: Vec<_> = s.instances.iter().map(|i| i.address.as_str()).collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.2:80"]);
    }

    #[test]
    fn hash_on_is_resolved_per_service_at_build() {
        let mut config = Config::default();
        config.proxy.hash_on = HashOn::Cookie("sid".into());
        config.services.insert(
            "h".into(),
            crate::config::ServiceSettings {
                load_balance: Some(Strategy::ConsistentHash),
                hash_on: Some(HashOn::ClientIp),
                ..Default::default()
            },
        );
        config.services.insert(
            "c".into(),
            crate::config::ServiceSettings {
                load_balance: Some(Strategy::ConsistentHash),
                ..Default::default()
            },
        );
        assert_eq!(Policy::for_service(&config, "h").hash_on, Some(HashOn::ClientIp));
        assert_eq!(Policy::for_service(&config, "c").hash_on, Some(HashOn::Cookie("sid".into())));
        assert_eq!(
            Policy::for_service(&config, "other").hash_on,
            None,
            "round_robin hashes nothing"
        );
    }

    #[test]
    fn a_service_map_shares_its_shards_with_the_tables_built_from_it() {
        let tracker = Tracker::local(Clock::system());
        let service = |n: &str| {
            let list = vec![Instance::new("10.0.0.1:80")];
            let policy = Policy::new(Strategy::RoundRobin);
            Arc::new(Service::new(n, list, Source::Static, policy, &tracker, None))
        };
        let mut map: ServiceMap =
            (0..200).map(|i| (Arc::from(format!("s{i}")), service(&format!("s{i}")))).collect();
        assert_eq!(map.len(), 200);
        let published = map.clone();
        map.insert(Arc::from("s7"), service("s7"));
        map.remove("s8");
        map.insert(Arc::from("new"), service("new"));
        assert_eq!((map.len(), published.len()), (200, 200));
        assert!(published.get("s8").is_some() && map.get("s8").is_none());
        assert!(!Arc::ptr_eq(published.get("s7").unwrap(), map.get("s7").unwrap()));
        assert!(Arc::ptr_eq(published.get("s1").unwrap(), map.get("s1").unwrap()));
        let shared =
            (0..SHARDS).filter(|i| Arc::ptr_eq(&published.shards[*i], &map.shards[*i])).count();
        assert!(shared >= SHARDS - 3, "only the changed shards were copied: {shared} shared");
        assert_eq!(map.values().count(), 200);
    }
}
