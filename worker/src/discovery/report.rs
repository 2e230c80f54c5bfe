//! What the registry says, node by node: every znode a worker read, whether it became an
//! instance (`accepted`), was well-formed but must not take traffic (`excluded`: out of service,
//! disabled, not ALIVE …) or could not be used at all (`rejected`: malformed, an address that
//! cannot be an instance), the reason in words, its mzxid and when it last changed. `GET
//! /registry` answers from it, so an operator can ask why an instance is not routed instead of
//! reading logs. Written by the ZooKeeper watcher after each listing, read by the admin API.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// What became of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// An instance in the route table.
    Accepted,
    /// Unusable: malformed, or an address that cannot be an instance.
    Rejected,
    /// Well-formed, but not to take traffic now.
    Excluded,
}

/// One node as read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeReport {
    /// The node's name under its service.
    pub node: String,
    /// What became of it.
    pub outcome: Outcome,
    /// Why (for accepted nodes: what was changed, such as an override's weight).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The instance it became (`host:port`), when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The zxid of its last change (unknown for formats whose nodes are not read: registrator).
    pub mzxid: Option<i64>,
    /// When it last changed, ms since the epoch (ZooKeeper's clock).
    pub changed_unix_ms: Option<i64>,
}

#[derive(Debug, Default)]
struct State {
    root_exists: Option<bool>,
    services: BTreeMap<String, Vec<NodeReport>>,
}

/// The nodes of every service, as this worker last read them.
#[derive(Debug, Default)]
pub struct RegistryReport {
    state: Mutex<State>,
}

impl RegistryReport {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the registry root exists (`false`: nothing can be routed until it does);
    /// returns what was known before.
    pub fn set_root(&self, exists: bool) -> Option<bool> {
        self.lock().root_exists.replace(exists)
    }

    /// `service` was listed: these are its nodes now.
    pub fn service(&self, service: &str, nodes: Vec<NodeReport>) {
        self.lock().services.insert(service.to_string(), nodes);
    }

    /// Every service was listed (a full sync): services not named are gone.
    pub fn replace_all(&self, services: BTreeMap<String, Vec<NodeReport>>) {
        self.lock().services = services;
    }

    /// `service`'s node is gone.
    pub fn removed(&self, service: &str) {
        self.lock().services.remove(service);
    }

    /// The nodes of `service`, as last read.
    pub fn nodes(&self, service: &str) -> Vec<NodeReport> {
        self.lock().services.get(service).cloned().unwrap_or_default()
    }

    /// The report as JSON: the root's existence, then per service its nodes and a count per
    /// outcome.
    pub fn json(&self) -> serde_json::Value {
        let state = self.lock();
        let services: serde_json::Map<String, serde_json::Value> = state
            .services
            .iter()
            .map(|(name, nodes)| {
                let count = |o: Outcome| nodes.iter().filter(|n| n.outcome == o).count();
                let v = serde_json::json!({
                    "accepted": count(Outcome::Accepted),
                    "excluded": count(Outcome::Excluded),
                    "rejected": count(Outcome::Rejected),
                    "nodes": nodes,
                });
                (name.clone(), v)
            })
            .collect();
        serde_json::json!({ "root_exists": state.root_exists, "services": services })
    }
}
