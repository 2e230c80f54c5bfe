//! The route table: which instances each service has, as one immutable value.
//!
//! A new table is built for every change and swapped in whole (see [`crate::SharedTable`]), so a
//! request reads a consistent snapshot without a lock. The table knows nothing of HTTP; each
//! service carries the balancer built for its instance list.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::balance::{self, Balancer, Strategy};

/// One upstream instance: where to send requests and how much traffic it takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Instance {
    /// `host:port` (an IP address or a name resolved when connecting).
    pub address: String,
    /// Relative share of traffic for the weighted strategies; 0 means no traffic.
    pub weight: u32,
}

impl Instance {
    /// An instance with weight 1.
    pub fn new(address: impl Into<String>) -> Self {
        Instance { address: address.into(), weight: 1 }
    }

    /// Checks that `address` is a `host:port` authority usable in an upstream URI.
    pub fn validate(address: &str) -> Result<(), String> {
        let auth: http::uri::Authority = address.parse().map_err(|e| format!("invalid address {address:?}: {e}"))?;
        if auth.port_u16().is_none() {
            return Err(format!("invalid address {address:?}: a port is required (host:port)"));
        }
        if auth.as_str().contains('@') {
            return Err(format!("invalid address {address:?}: user info is not allowed"));
        }
        Ok(())
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

/// Config form: `"10.0.0.5:80"` or `{ address = "10.0.0.5:80", weight = 3 }`.
impl<'de> Deserialize<'de> for Instance {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Plain(String),
            Full {
                address: String,
                #[serde(default = "one")]
                weight: u32,
            },
        }
        fn one() -> u32 {
            1
        }
        let (address, weight) = match Form::deserialize(d).map_err(|_| {
            serde::de::Error::custom("an instance is \"host:port\" or { address = \"host:port\", weight = N }")
        })? {
            Form::Plain(a) => (a, 1),
            Form::Full { address, weight } => (address, weight),
        };
        Instance::validate(&address).map_err(serde::de::Error::custom)?;
        Ok(Instance { address, weight })
    }
}

/// Where a service's instance list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `[services.X] instances` in gateway.toml.
    Static,
    /// A live ZooKeeper listing.
    Zookeeper,
    /// The disk snapshot, while ZooKeeper is unreachable.
    Snapshot,
}

/// A service as routed: its instances and the balancer over them.
pub struct Service {
    /// The service name, as the router names it.
    pub name: String,
    /// Instances, sorted by address so that every worker sees the same order.
    pub instances: Vec<Instance>,
    /// Where the list came from.
    pub source: Source,
    /// The strategy this service balances with.
    pub strategy: Strategy,
    /// Selection state for `instances`.
    pub balancer: Box<dyn Balancer>,
    /// Ejection and health-check state of `instances`, index-aligned.
    pub health: crate::health::ServiceHealth,
    /// This service's row in the shared metrics (looked up once, on first use).
    pub stats: std::sync::OnceLock<usize>,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("instances", &self.instances)
            .field("source", &self.source)
            .field("strategy", &self.strategy)
            .finish()
    }
}

impl Service {
    /// Builds a service with a fresh balancer for `instances` (sorted and deduplicated here).
    pub fn new(name: impl Into<String>, mut instances: Vec<Instance>, source: Source, strategy: Strategy) -> Self {
        instances.sort();
        instances.dedup_by(|a, b| a.address == b.address);
        let balancer = balance::build(strategy, &instances);
        let health = crate::health::ServiceHealth::new(instances.len());
        Service { name: name.into(), instances, source, strategy, balancer, health, stats: Default::default() }
    }
}

/// An immutable snapshot of every routable service.
#[derive(Debug, Default)]
pub struct RouteTable {
    services: HashMap<String, Arc<Service>>,
}

impl RouteTable {
    /// Builds a table from services.
    pub fn new(services: impl IntoIterator<Item = Service>) -> Self {
        RouteTable { services: services.into_iter().map(|s| (s.name.clone(), Arc::new(s))).collect() }
    }

    /// Builds a table from already built services (unchanged ones keep their balancer state).
    pub fn from_map(services: HashMap<String, Arc<Service>>) -> Self {
        RouteTable { services }
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
        (self.services.len(), self.services.values().map(|s| s.instances.len()).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_addresses_must_carry_a_port_and_no_userinfo() {
        assert!(Instance::validate("10.0.0.1:80").is_ok());
        assert!(Instance::validate("backend.local:8080").is_ok());
        assert!(Instance::validate("[::1]:8080").is_ok());
        assert!(Instance::validate("10.0.0.1").is_err());
        assert!(Instance::validate("user@evil:80").is_err());
        assert!(Instance::validate("a b:80").is_err());
    }

    #[test]
    fn services_sort_and_deduplicate_their_instances() {
        let s = Service::new(
            "svc",
            vec![Instance::new("10.0.0.2:80"), Instance::new("10.0.0.1:80"), Instance::new("10.0.0.2:80")],
            Source::Static,
            Strategy::RoundRobin,
        );
        let addrs: Vec<_> = s.instances.iter().map(|i| i.address.as_str()).collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.2:80"]);
    }
}
