//! `[zookeeper]` / `[[zookeeper]]`: the registry sources and how to read them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults::*;
use super::values::{self, absolute_path, duration};

/// The registry formats `zookeeper.format` can name (parsed in `discovery::formats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// gliderlabs/registrator: node name `ip:port`, optional JSON data.
    #[default]
    Registrator,
    /// Apache Curator x-discovery `ServiceInstance` JSON.
    Curator,
    /// Finagle / Aurora ServerSet `member_*` JSON.
    Serverset,
    /// Airbnb Nerve JSON (or base64 path encoding).
    Nerve,
    /// Apache Dubbo's `ZookeeperRegistry`: `<root>/<interface>/providers/<URL-encoded URL>`
    /// (set `root = "/dubbo"`); HTTP-based protocols (`rest`, `http`, `tri`) only.
    Dubbo,
}

/// `[zookeeper]`: where the registry is and how to read it. Absent: static services only.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZkSettings {
    /// Connect string: `host:port[,host:port…][/chroot]`. Required (the binary checks it).
    pub hosts: String,
    /// Registry root: services are its children, instances their children.
    #[serde(deserialize_with = "absolute_path")]
    pub root: String,
    /// How instance nodes are written.
    pub format: Format,
    /// ZooKeeper session timeout (the server clamps it to 2–20 ticks).
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 1000, 600000>"
    )]
    pub session_timeout: Duration,
    /// How long a starting worker waits for ZooKeeper before serving from the snapshot.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 1, 300000>"
    )]
    pub connect_timeout: Duration,
    /// A service whose last instance vanishes keeps its last list (true; never a registration
    /// its status withdrew) or answers 503 (false; then the removal guard holds nothing for it).
    pub keep_last_on_empty: bool,
    /// ServerSet only: route to this `additionalEndpoints` entry instead of `serviceEndpoint`.
    pub serverset_endpoint: Option<String>,
    /// This source's name in metrics, logs and `/registry` (default `zk0`, `zk1`… by position).
    pub name: Option<String>,
    /// Prepended to every service name this source lists, so that two registries may hold
    /// services of the same name (`check` refuses two sources that could collide).
    pub prefix: String,
    /// ZooKeeper ACL credentials, `"digest:user:password"` (added to the session at connect).
    pub auth: Option<String>,
    /// TLS to the ensemble (its `secureClientPort`): the CA that signed the servers'
    /// certificates, and a client certificate and key when the servers ask for one.
    pub tls: Option<ZkTls>,
    /// The removal guard: when a burst of listings removes more than this share (percent) of
    /// a service's instances, what the listing crossing the share removed is held — routed
    /// while the service's health check passes, else only as a fallback — until each proves
    /// gone (a connect failure, a failed health check) or `removal_hold` passes. Registrations
    /// withdrawn by their status are never held. 100: off.
    #[serde(deserialize_with = "values::percent")]
    pub removal_guard: u32,
    /// How long the removal guard holds an instance at most.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 0, 86400000>"
    )]
    pub removal_hold: Duration,
}

impl Default for ZkSettings {
    fn default() -> Self {
        ZkSettings {
            hosts: String::new(),
            root: DEFAULT_ZK_ROOT.into(),
            format: Format::default(),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            connect_timeout: DEFAULT_ZK_CONNECT_TIMEOUT,
            keep_last_on_empty: DEFAULT_KEEP_LAST_ON_EMPTY,
            serverset_endpoint: None,
            removal_guard: DEFAULT_REMOVAL_GUARD,
            removal_hold: DEFAULT_REMOVAL_HOLD,
            name: None,
            prefix: String::new(),
            auth: None,
            tls: None,
        }
    }
}

impl ZkSettings {
    /// The source's name: its `name`, else `zk<position>`.
    pub fn source_name(&self, position: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("zk{position}"))
    }

    /// `auth` split into its scheme and credentials (`("digest", "user:password")`).
    pub fn auth_parts(&self) -> Option<(&str, &str)> {
        self.auth.as_deref().and_then(|a| a.split_once(':'))
    }
}

/// `tls = { ca = …, cert = …, key = … }` of a `[zookeeper]` source: PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZkTls {
    /// The CA certificates the servers' certificates must chain to.
    pub ca: std::path::PathBuf,
    /// A client certificate (with `key`), for servers with `ssl.clientAuth=need`.
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's private key.
    pub key: Option<std::path::PathBuf>,
}

impl ZkTls {
    /// The PEM texts: the CA, and the client certificate and key when given.
    pub fn read(&self) -> Result<(String, Option<(String, String)>), String> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
        };
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => return Err("tls: cert and key go together".into()),
        };
        Ok((read(&self.ca)?, identity))
    }
}
