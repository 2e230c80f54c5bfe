//! `[fleet]`: this host's place in a fleet whose dynamic configuration lives in ZooKeeper as
//! releases (see the `fleet` module). Absent: the file is the whole configuration, as before.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[fleet]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    /// The fleet's name: its releases live under `<root>/<cluster>`.
    pub cluster: String,
    /// This host's name in the fleet (default: the machine's host name).
    #[serde(default)]
    pub host: Option<String>,
    /// Labels operators pick hosts by (`dc`, `zone`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Which `[[zookeeper]]` source (by `name`, `zk0`… by position) holds the releases;
    /// default: the first.
    #[serde(default)]
    pub zookeeper: Option<String>,
    /// Where clusters live in that ensemble.
    #[serde(default = "default_root")]
    pub root: String,
}

fn default_root() -> String {
    "/zkgate".into()
}

/// The sections a release may hold: what changes with the fleet's traffic, never what binds
/// this host's sockets, keys or registries (Envoy's bootstrap split).
pub const DYNAMIC_SECTIONS: [&str; 6] =
    ["services", "route", "rate_limit", "auth", "header_routing", "tracing"];

impl FleetSettings {
    /// This host's name in the fleet.
    pub fn host_name(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into())
        })
    }

    /// The cluster's node: `<root>/<cluster>`.
    pub fn base(&self) -> String {
        format!("{}/{}", self.root.trim_end_matches('/'), self.cluster)
    }
}
