//! The worker's settings: the `[proxy]`, `[header_routing]`, `[[route]]` and `[services]` parts
//! of `gateway.toml`, as typed structs.
//!
//! The worker owns these types (and their serde form) because it is the one that knows what
//! each key means; the binary parses the whole file, checks it, and hands them down unchanged.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::balance::Strategy;
use crate::routes::Instance;

/// `[proxy]`: how requests are forwarded.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySettings {
    /// Default balancing strategy for every service.
    pub load_balance: Strategy,
    /// What `consistent_hash` hashes on.
    pub hash_on: HashOn,
    /// How many times a request whose connection was refused is retried on another instance.
    pub retries: usize,
    /// Share of a worker's active requests that may be retries at once (Envoy's retry budget).
    pub retry_budget: f64,
    /// Time allowed to open a TCP connection to an instance.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Time allowed from sending the request to receiving the response headers.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// A client must send its request headers within this time (slowloris protection).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Keep-alive connections, to instances and from clients, idle this long are closed (a
    /// client waiting for its next request is also bound by `header_read_timeout`).
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers) accepted from a client.
    pub max_header_bytes: usize,
    /// Connections a worker serves at once; beyond it the worker stops accepting.
    pub max_connections: usize,
    /// Forward the client's `Host` header (true) or set it to the instance's address (false).
    pub preserve_host: bool,
    /// Add `x-zkgate-instance` and `x-zkgate-worker` to responses.
    pub debug_headers: bool,
    /// Largest request body accepted (413 beyond it); 0 means unlimited.
    pub max_body_bytes: u64,
    /// `[proxy.outlier]`: passive outlier detection.
    pub outlier: crate::health::OutlierSettings,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            load_balance: Strategy::RoundRobin,
            hash_on: HashOn::ClientIp,
            retries: 1,
            retry_budget: 0.2,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 65536,
            max_connections: 10000,
            preserve_host: true,
            debug_headers: false,
            max_body_bytes: 0,
            outlier: crate::health::OutlierSettings::default(),
        }
    }
}

/// `[header_routing]`: the seed's routing, where two headers name the service and the path.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderRouting {
    /// Whether requests under `mount` are routed by headers.
    pub enabled: bool,
    /// Path prefix under which header routing applies.
    #[serde(deserialize_with = "absolute_path")]
    pub mount: String,
    /// Header naming the service.
    pub service_header: String,
    /// Header giving the upstream path (and query); must start with `/`.
    pub path_header: String,
}

impl Default for HeaderRouting {
    fn default() -> Self {
        HeaderRouting {
            enabled: true,
            mount: "/services".into(),
            service_header: "service_name".into(),
            path_header: "api_name".into(),
        }
    }
}

/// One `[[route]]` rule. Rules are tried in order; the first match wins.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Match only this host (the `Host` header without port, case-insensitive).
    #[serde(default)]
    pub host: Option<String>,
    /// Match paths equal to this prefix or continuing it with `/` or `?` (a prefix ending in
    /// `/` matches anything below it): `/users` matches `/users/7` but not `/usersx`.
    #[serde(default = "root_path", deserialize_with = "absolute_path")]
    pub path_prefix: String,
    /// The service requests go to.
    pub service: String,
    /// Remove `path_prefix` from the path before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
}

fn root_path() -> String {
    "/".into()
}

/// A path setting must be absolute: a prefix like `users` would never match a request.
fn absolute_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !s.starts_with('/') {
        return Err(serde::de::Error::custom(format!("{s:?} must start with '/'")));
    }
    if s.contains(['?', '#']) || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(serde::de::Error::custom(format!("{s:?} must be a plain path (no query, fragment or spaces)")));
    }
    Ok(s)
}

/// `[services.NAME]`: static instances and per-service options.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// Static instances. When present the service is never looked up in ZooKeeper.
    #[serde(default)]
    pub instances: Option<Vec<Instance>>,
    /// Balancing strategy for this service (overrides `[proxy] load_balance`).
    #[serde(default)]
    pub load_balance: Option<Strategy>,
    /// What `consistent_hash` hashes on for this service (overrides `[proxy] hash_on`).
    #[serde(default)]
    pub hash_on: Option<HashOn>,
    /// Optional active HTTP health check of every instance.
    #[serde(default)]
    pub health_check: Option<crate::health::HealthCheck>,
    /// Weights by instance address for a discovered service (Registrator and Curator carry
    /// none); they override weights from the registry.
    #[serde(default)]
    pub weights: BTreeMap<String, u32>,
}

/// The request key `consistent_hash` uses: `"header:NAME"`, `"cookie:NAME"` or `"client_ip"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The value of a request header.
    Header(http::HeaderName),
    /// The value of a cookie.
    Cookie(String),
    /// The client's IP address.
    ClientIp,
}

impl std::str::FromStr for HashOn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "client_ip" {
            return Ok(HashOn::ClientIp);
        }
        if let Some(name) = s.strip_prefix("header:") {
            return http::HeaderName::from_bytes(name.as_bytes())
                .map(HashOn::Header)
                .map_err(|_| format!("invalid header name in hash_on {s:?}"));
        }
        if let Some(name) = s.strip_prefix("cookie:").filter(|n| !n.is_empty()) {
            return Ok(HashOn::Cookie(name.to_string()));
        }
        Err(format!("invalid hash_on {s:?}: expected \"header:NAME\", \"cookie:NAME\" or \"client_ip\""))
    }
}

impl<'de> Deserialize<'de> for HashOn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HashOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HashOn::Header(h) => s.serialize_str(&format!("header:{h}")),
            HashOn::Cookie(c) => s.serialize_str(&format!("cookie:{c}")),
            HashOn::ClientIp => s.serialize_str("client_ip"),
        }
    }
}

/// All services by name.
pub type Services = BTreeMap<String, ServiceSettings>;

/// Serde helpers for durations written the way operators write them: `"500ms"`, `"30s"`, `"2m"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses `"500ms"`-style strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {s:?} ({e}); write e.g. \"500ms\", \"30s\", \"2m\""))
        })
    }

    /// Writes durations back in the same syntax.
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}

/// `[zookeeper]`: where the registry is and how to read it. Absent: static services only.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZkSettings {
    /// Connect string: `host:port[,host:port…][/chroot]`.
    pub hosts: String,
    /// Registry root: services are its children, instances their children.
    #[serde(default = "default_root", deserialize_with = "absolute_path")]
    pub root: String,
    /// How instance nodes are written.
    #[serde(default)]
    pub format: crate::formats::Format,
    /// ZooKeeper session timeout (the server clamps it to 2–20 ticks).
    #[serde(default = "ten_seconds", with = "duration")]
    pub session_timeout: Duration,
    /// How long a starting worker waits for ZooKeeper before serving from the snapshot.
    #[serde(default = "five_seconds", with = "duration")]
    pub connect_timeout: Duration,
    /// A service whose last instance vanishes keeps its last list (true) or answers 503 (false).
    #[serde(default = "yes")]
    pub keep_last_on_empty: bool,
    /// ServerSet only: route to this `additionalEndpoints` entry instead of `serviceEndpoint`.
    #[serde(default)]
    pub serverset_endpoint: Option<String>,
}

fn default_root() -> String {
    "/services".into()
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

fn yes() -> bool {
    true
}

/// `[cache]`: the disk snapshot of discovered routes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Where the route snapshot is written after each change and read when ZooKeeper is down at start.
    #[serde(default)]
    pub snapshot: Option<std::path::PathBuf>,
}

/// Serde helpers for listen addresses: an IP and a port, with an error that shows the value.
pub mod listen_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer};

    fn parse<E: serde::de::Error>(s: &str) -> Result<SocketAddr, E> {
        s.parse().map_err(|_| {
            E::custom(format!(
                "{s:?} is not an IP:port address (names are not resolved here; write e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")"
            ))
        })
    }

    /// One address.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        parse(&String::deserialize(d)?)
    }

    /// A list of addresses.
    pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
        Vec::<String>::deserialize(d)?.iter().map(|s| parse(s)).collect()
    }
}
