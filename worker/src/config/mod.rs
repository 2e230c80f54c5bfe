//! `gateway.toml` as typed sections: the one home of every configuration type.
//!
//! The binary reads the file into [`Config`], runs the checks that span sections and hands the
//! supervisor its part; the worker receives the whole [`Config`] unchanged. Defaults live in
//! [`defaults`] and nowhere else; [`values`] holds how single values are written.

pub mod auth;
pub mod defaults;
pub mod edge;
pub mod fleet;
pub mod proxy;
pub mod route;
pub mod service;
pub mod tracing;
pub mod values;
pub mod zookeeper;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use auth::{AuthSettings, BasicSettings, JwtSettings, KeySettings};
pub use defaults::*;
pub use edge::{Compress, Cors, Redirect, StaticAnswer};
pub use fleet::FleetSettings;
pub use proxy::{
    EscapedSlashes, HeaderRouting, OutlierSettings, PathParameters, PathRules, ProxySettings,
};
pub use route::{Canary, HeaderRules, Mirror, RouteRule};
pub use service::{HealthCheck, Protocol, ServiceSettings, Services};
pub use tracing::TracingSettings;
pub use values::{duration, listen_addr, AddressBlocks, HashOn, TrustedProxies, Workers};
pub use zookeeper::{Format, ZkSettings, ZkTls};

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: processes and sockets (the supervisor's part).
    pub server: ServerSettings,
    /// `[proxy]`.
    pub proxy: ProxySettings,
    /// `[header_routing]`.
    pub header_routing: HeaderRouting,
    /// `[[route]]` rules, in file order.
    #[serde(rename = "route")]
    pub routes: Vec<RouteRule>,
    /// `[services.NAME]`.
    pub services: Services,
    /// The registries: `[zookeeper]` (one source) or `[[zookeeper]]` entries (several, each
    /// with its own session per worker); none: static services only.
    #[serde(deserialize_with = "values::one_or_many", serialize_with = "values::many")]
    pub zookeeper: Vec<ZkSettings>,
    /// `[cache]`.
    pub cache: CacheSettings,
    /// `[admin]`; absent: no admin listener.
    pub admin: Option<AdminSettings>,
    /// `[log]`.
    pub log: LogSettings,
    /// `[[tls]]`: certificates for `server.listen_tls`, chosen by SNI; the first is the default.
    pub tls: Vec<TlsFiles>,
    /// `[[rate_limit]]` rules, in file order.
    #[serde(rename = "rate_limit")]
    pub rate_limits: Vec<RateLimit>,
    /// `[auth.NAME]` sections, named by routes' `auth`.
    pub auth: BTreeMap<String, AuthSettings>,
    /// `[tracing]`: trace context and span export.
    pub tracing: Option<TracingSettings>,
    /// `[fleet]`: the dynamic sections come from releases in ZooKeeper.
    pub fleet: Option<FleetSettings>,
    /// The release whose dynamic sections this configuration holds (set by the binary when it
    /// overlaid a cached release on the file; never written in a file).
    #[serde(skip)]
    pub release: Option<String>,
}

/// One `[[rate_limit]]`: a token bucket per key on a service, exact across the host's workers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// The service it guards.
    pub service: String,
    /// What gets its own bucket.
    #[serde(default)]
    pub per: RateKey,
    /// Sustained rate.
    pub rate: Rate,
    /// Requests allowed at once above the rate (the bucket's size).
    #[serde(deserialize_with = "values::number_within::<_, _, 1, 1000000>")]
    pub burst: u32,
    /// With `per = "identity"`: another rate for these consumers / subjects / users (same
    /// burst), `{ partner-a = "1000/s" }`.
    #[serde(default)]
    pub overrides: BTreeMap<String, Rate>,
}

/// What a rate limit counts separately.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum RateKey {
    /// Each client address.
    #[default]
    ClientIp,
    /// Each value of a request header (requests without it share one bucket).
    Header(http::HeaderName),
    /// All requests to the service together.
    Global,
    /// Each identity a route's `auth` verified (`X-Auth-Subject`), checked after auth; requests
    /// without one share one bucket of their own, never an identity's.
    Identity,
}

impl std::str::FromStr for RateKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "client_ip" => Ok(RateKey::ClientIp),
            "global" => Ok(RateKey::Global),
            "identity" => Ok(RateKey::Identity),
            _ => match s.strip_prefix("header:") {
                Some(h) => http::HeaderName::from_bytes(h.as_bytes())
                    .map(RateKey::Header)
                    .map_err(|_| format!("{h:?} is not a header name")),
                None => Err(format!(
                    "{s:?}: expected \"client_ip\", \"global\", \"identity\" or \"header:NAME\""
                )),
            },
        }
    }
}

impl<'de> Deserialize<'de> for RateKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for RateKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RateKey::ClientIp => s.serialize_str("client_ip"),
            RateKey::Global => s.serialize_str("global"),
            RateKey::Identity => s.serialize_str("identity"),
            RateKey::Header(h) => s.serialize_str(&format!("header:{h}")),
        }
    }
}

/// A rate: `"100/s"`, `"6000/m"`, `"1000/h"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Requests per second.
    pub per_second: f64,
}

impl Rate {
    /// Nanoseconds between two requests at this rate.
    pub fn interval_ns(&self) -> u64 {
        (1e9 / self.per_second).max(1.0) as u64
    }
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected N/s, N/m or N/h (N a whole number, at least 1)");
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let n: u64 = n.trim().parse().map_err(|_| bad())?;
        let secs = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        if n == 0 || n > 10_000_000 {
            return Err(bad());
        }
        Ok(Rate { per_second: n as f64 / secs })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}/s", self.per_second))
    }
}

/// One `[[tls]]` entry: a certificate chain and its key, both PEM. A relative path is relative
/// to the configuration file's directory.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The chain, leaf first.
    pub cert: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; set, clients on
    /// `listen_tls` are asked for one. Only the first `[[tls]]` entry's client settings apply
    /// (one TLS configuration serves every name).
    #[serde(default)]
    pub client_ca: Option<std::path::PathBuf>,
    /// `"required"` (the default with `client_ca`): a handshake without a valid certificate
    /// fails; `"optional"`: a client may present none (a presented one must still verify).
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
    /// Certificate revocation lists (PEM) checked against client certificates.
    #[serde(default)]
    pub client_crl: Option<std::path::PathBuf>,
}

/// `client_auth` of a `[[tls]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No certificate, no connection.
    Required,
    /// A certificate is asked for; a client without one still connects.
    Optional,
}

impl Config {
    /// Whether `address` (an instance) is one this gateway listens on: sending requests there
    /// would loop. A wildcard listen address covers the loopback addresses on its port.
    pub fn is_own_address(&self, address: &str) -> bool {
        let Ok(addr) = address.parse::<SocketAddr>() else { return false };
        self.own_addresses().contains(addr)
    }

    /// Every service this file names (`[services]`, routes and their canaries and mirrors,
    /// rate limits): their rows in the host's name table are never released while it is in
    /// force, so their limits and leases stay where the workers cached them.
    pub fn named_services(&self) -> std::collections::BTreeSet<String> {
        let routes = self.routes.iter().flat_map(|r| {
            let canary = r.canary.as_ref().map(|c| &c.service);
            let mirror = r.mirror.as_ref().map(|m| &m.service);
            std::iter::once(&r.service).chain(canary).chain(mirror)
        });
        let limits = self.rate_limits.iter().map(|l| &l.service);
        self.services.keys().chain(routes).chain(limits).cloned().collect()
    }

    /// The gateway's own sockets (listeners and admin), which no instance may be.
    pub fn own_addresses(&self) -> crate::instance::OwnAddresses {
        let admin = self.admin.as_ref().map(|a| a.listen);
        let listen = self.server.listen.iter().chain(&self.server.listen_tls);
        crate::instance::OwnAddresses::new(listen.chain(admin.as_ref()).copied())
    }
}

/// `[server]`: the worker processes and their listening sockets.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Addresses to listen on.
    #[serde(deserialize_with = "listen_addr::list")]
    pub listen: Vec<SocketAddr>,
    /// Addresses to listen on with TLS (certificates in `[[tls]]`).
    #[serde(deserialize_with = "listen_addr::list")]
    pub listen_tls: Vec<SocketAddr>,
    /// `"auto"` (one per CPU) or a number.
    pub workers: Workers,
    /// `listen(2)` backlog per slot socket.
    #[serde(deserialize_with = "values::number_within::<_, _, 1, 65535>")]
    pub backlog: i32,
    /// Longest graceful stop, and longest drain of a replaced worker.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 0, 3600000>"
    )]
    pub shutdown_timeout: Duration,
    /// A worker silent for this long is killed and respawned.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 2000, 3600000>"
    )]
    pub worker_timeout: Duration,
    /// A service gone from every worker's route table (and not named in this file) for this
    /// long gives its row of the host's service table back: its counters and series go, and
    /// the row serves a new service. Services come and go in a registry; the table is fixed.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 5000, 86400000>"
    )]
    pub service_row_ttl: Duration,
    /// Pin worker i to CPU i.
    pub cpu_affinity: bool,
    /// Run workers as this user.
    pub user: Option<String>,
    /// Run workers with this group.
    pub group: Option<String>,
    /// Answer every request on a plain `listen` address with a 301 to the same host and path
    /// over HTTPS (on the first `listen_tls` port, named when it is not 443).
    pub https_redirect: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: vec![DEFAULT_LISTEN],
            listen_tls: Vec::new(),
            workers: Workers::Auto,
            backlog: DEFAULT_BACKLOG,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            worker_timeout: DEFAULT_WORKER_TIMEOUT,
            service_row_ttl: DEFAULT_SERVICE_ROW_TTL,
            cpu_affinity: false,
            user: None,
            group: None,
            https_redirect: false,
        }
    }
}

/// `[cache]`: the disk snapshot of discovered routes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Where the route snapshot is written after each change and read at start.
    pub snapshot: Option<PathBuf>,
}

/// `[admin]`: the admin API listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Where the admin API listens (keep it on loopback unless a token is set).
    #[serde(deserialize_with = "listen_addr::deserialize")]
    pub listen: SocketAddr,
    /// When set, requests need `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Host names (without port) the admin API answers to beside the loopback names
    /// (`localhost`, `127.0.0.1`, `::1`) and its listen address. Any other `Host` is refused,
    /// so a web page that rebinds its own name to 127.0.0.1 cannot read the API.
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings { listen: DEFAULT_ADMIN_LISTEN, token: None, allowed_hosts: Vec::new() }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// One line per request (target `access`): client, method, path, status, bytes, service,
    /// instance, duration.
    pub access: bool,
    /// `text` (one readable line per event) or `json` (one JSON object per line, for log
    /// pipelines). Read at start; a reload keeps the running format.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-01-01T00:00:00.000000Z INFO  [pid] message`.
    #[default]
    Text,
    /// `{"ts":…,"level":…,"pid":…,"target":…,"msg":…}`.
    Json,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { access: DEFAULT_ACCESS_LOG, format: LogFormat::Text }
    }
}
