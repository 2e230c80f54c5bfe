//! `gateway.toml` as typed sections: the one home of every configuration type.
//!
//! The binary reads the file into [`Config`], runs the checks that span sections and hands the
//! supervisor its part; the worker receives the whole [`Config`] unchanged. Defaults live in
//! [`defaults`] and nowhere else; [`values`] holds how single values are written.

pub mod auth;
pub mod defaults;
pub mod route;
pub mod tracing;
pub mod values;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::balance::Strategy;
use crate::table::instance::Instance;
pub use auth::{AuthSettings, BasicSettings, JwtSettings};
pub use defaults::*;
pub use route::{Canary, HeaderRules, Mirror, RouteRule};
pub use tracing::TracingSettings;
use values::absolute_path;
pub use values::{duration, listen_addr, HashOn, TrustedProxies, Workers};

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
}

impl std::str::FromStr for RateKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "client_ip" => Ok(RateKey::ClientIp),
            "global" => Ok(RateKey::Global),
            _ => match s.strip_prefix("header:") {
                Some(h) => http::HeaderName::from_bytes(h.as_bytes())
                    .map(RateKey::Header)
                    .map_err(|_| format!("{h:?} is not a header name")),
                None => {
                    Err(format!("{s:?}: expected \"client_ip\", \"global\" or \"header:NAME\""))
                }
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

    /// The gateway's own sockets (listeners and admin), which no instance may be.
    pub fn own_addresses(&self) -> crate::table::instance::OwnAddresses {
        let admin = self.admin.as_ref().map(|a| a.listen);
        let listen = self.server.listen.iter().chain(&self.server.listen_tls);
        crate::table::instance::OwnAddresses::new(listen.chain(admin.as_ref()).copied())
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
    /// Pin worker i to CPU i.
    pub cpu_affinity: bool,
    /// Run workers as this user.
    pub user: Option<String>,
    /// Run workers with this group.
    pub group: Option<String>,
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
            cpu_affinity: false,
            user: None,
            group: None,
        }
    }
}

/// `[proxy]`: how requests are forwarded.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySettings {
    /// Default balancing strategy for every service.
    pub load_balance: Strategy,
    /// What `consistent_hash` hashes on.
    pub hash_on: HashOn,
    /// Slow start for every service: a new instance's weight ramps linearly from its
    /// registration over this long (0: off). Not for `consistent_hash`.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 0, 3600000>"
    )]
    pub slow_start: Duration,
    /// How many times a request is retried on another instance: after a refused connection
    /// (nothing was sent), or for an idempotent request without a body after a reset or EOF
    /// before any response.
    #[serde(deserialize_with = "values::number_within::<_, _, 0, 10>")]
    pub retries: usize,
    /// Share of a worker's active requests that may be retries at once (Envoy's retry budget).
    pub retry_budget: f64,
    /// Time allowed to open a TCP connection to an instance.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 1, 300000>"
    )]
    pub connect_timeout: Duration,
    /// Time allowed from the end of the request body to the response headers.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 1, 3600000>"
    )]
    pub request_timeout: Duration,
    /// A client must send its request headers within this time (slowloris protection).
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 1, 3600000>"
    )]
    pub header_read_timeout: Duration,
    /// Keep-alive connections, to instances and from clients, idle this long are closed (a
    /// client waiting for its next request is also bound by `header_read_timeout`).
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 1, 86400000>"
    )]
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers) accepted from a client.
    #[serde(deserialize_with = "values::number_within::<_, _, 1024, 1048576>")]
    pub max_header_bytes: usize,
    /// Connections a worker serves at once (upgraded tunnels included); beyond it the worker
    /// stops accepting.
    #[serde(deserialize_with = "values::number_within::<_, _, 1, 1000000>")]
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams a client may open on one connection.
    #[serde(deserialize_with = "values::number_within::<_, _, 1, 10000>")]
    pub max_streams_per_connection: u32,
    /// Requests a worker has in flight to all instances at once (each holds an upstream
    /// connection); beyond it, 503 at once (Envoy's circuit breakers).
    #[serde(deserialize_with = "values::number_within::<_, _, 1, 1000000>")]
    pub max_upstream_connections: usize,
    /// Requests a worker has in flight to one instance at once; a full instance is skipped, and
    /// when every instance is full the answer is 503.
    #[serde(deserialize_with = "values::number_within::<_, _, 1, 1000000>")]
    pub max_connections_per_instance: usize,
    /// Forward the client's `Host` header (true) or set it to the instance's address (false).
    pub preserve_host: bool,
    /// Add `x-zkgate-instance` and `x-zkgate-worker` to responses.
    pub debug_headers: bool,
    /// Largest request body accepted (413 beyond it); 0 means unlimited.
    pub max_body_bytes: u64,
    /// Forward request headers whose names contain `_` (nginx's `underscores_in_headers`).
    /// Off: they are dropped, except the header-routing headers.
    pub underscores_in_headers: bool,
    /// Peers whose `X-Forwarded-*` and `Forwarded` lines are believed (addresses or CIDR
    /// blocks); anyone else's are replaced by the gateway's own.
    pub trusted_proxies: TrustedProxies,
    /// `[proxy.outlier]`: passive outlier detection.
    pub outlier: OutlierSettings,
    /// The largest request body a mirror copy carries; a request with a larger (or unknown
    /// length) body is not mirrored.
    pub mirror_body_bytes: usize,
    /// Mirror copies one worker has in flight at most; beyond it a copy is skipped (counted),
    /// so a slow shadow service cannot pile up memory or connections.
    pub mirror_max_in_flight: usize,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            load_balance: Strategy::RoundRobin,
            hash_on: HashOn::ClientIp,
            slow_start: Duration::ZERO,
            retries: DEFAULT_RETRIES,
            retry_budget: DEFAULT_RETRY_BUDGET,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_upstream_connections: DEFAULT_MAX_UPSTREAM_CONNECTIONS,
            max_connections_per_instance: DEFAULT_MAX_CONNECTIONS_PER_INSTANCE,
            preserve_host: DEFAULT_PRESERVE_HOST,
            debug_headers: DEFAULT_DEBUG_HEADERS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            underscores_in_headers: DEFAULT_UNDERSCORES_IN_HEADERS,
            trusted_proxies: TrustedProxies::default(),
            outlier: OutlierSettings::default(),
            mirror_body_bytes: DEFAULT_MIRROR_BODY_BYTES,
            mirror_max_in_flight: DEFAULT_MIRROR_IN_FLIGHT,
        }
    }
}

/// `[proxy.outlier]`: passive outlier detection (Envoy's consecutive-failure ejection).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSettings {
    /// Consecutive failures (connect error, timeout or 5xx) that eject an instance; 0 disables.
    #[serde(deserialize_with = "values::number_within::<_, _, 0, 1000>")]
    pub consecutive_failures: u32,
    /// First ejection time; the n-th ejection lasts n times this.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 1, 86400000>"
    )]
    pub base_ejection: Duration,
    /// Longest ejection.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 1, 86400000>"
    )]
    pub max_ejection: Duration,
    /// Most of a service (in percent) that may be ejected at once.
    #[serde(deserialize_with = "values::number_within::<_, _, 0, 100>")]
    pub max_ejection_percent: u32,
    /// A request still without response headers after this long counts as one failure of its
    /// instance (it keeps waiting for its answer up to `request_timeout`): a hung instance is
    /// ejected after `consecutive_failures` such requests, within seconds. 0 disables.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 0, 3600000>"
    )]
    pub slow_after: Duration,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            base_ejection: DEFAULT_BASE_EJECTION,
            max_ejection: DEFAULT_MAX_EJECTION,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
            slow_after: DEFAULT_SLOW_AFTER,
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
    /// Services a client may not name (404 as if unknown). Services that are only a route's
    /// canary target are never reachable by name, listed here or not: a canary at 0 % must
    /// receive nothing.
    pub deny_services: Vec<String>,
}

impl HeaderRouting {
    /// Both header names must be valid HTTP header names (the router parses them once).
    pub fn check_names(&self) -> Result<(), String> {
        for (key, name) in
            [("service_header", &self.service_header), ("path_header", &self.path_header)]
        {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("header_routing.{key} = {name:?}: not a valid header name"));
            }
        }
        Ok(())
    }
}

impl Default for HeaderRouting {
    fn default() -> Self {
        HeaderRouting {
            enabled: DEFAULT_HEADER_ROUTING,
            mount: DEFAULT_MOUNT.into(),
            service_header: DEFAULT_SERVICE_HEADER.into(),
            path_header: DEFAULT_PATH_HEADER.into(),
            deny_services: Vec::new(),
        }
    }
}

/// `[services.NAME]`: static instances and per-service options.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSettings {
    /// Static instances. When present the service is never looked up in ZooKeeper.
    pub instances: Option<Vec<Instance>>,
    /// Balancing strategy for this service (overrides `[proxy] load_balance`).
    pub load_balance: Option<Strategy>,
    /// What `consistent_hash` hashes on for this service (overrides `[proxy] hash_on`).
    pub hash_on: Option<HashOn>,
    /// Optional active HTTP health check of every instance.
    pub health_check: Option<HealthCheck>,
    /// Weights by instance address for a discovered service (Registrator and Curator carry
    /// none); they override weights from the registry.
    pub weights: BTreeMap<String, u32>,
    /// How requests reach the instances: `http1`, `h2c` (HTTP/2 without TLS, prior knowledge)
    /// or `h2` (HTTP/2 over TLS, ALPN `h2`).
    pub protocol: Protocol,
    /// TLS to the instances (implied by `protocol = "h2"`); a Curator instance with only an
    /// `sslPort` is then routable.
    pub upstream_tls: bool,
    /// CA certificates (PEM) instances' certificates are verified against; default: the
    /// system's (`/etc/ssl/certs`). Relative to the configuration file's directory.
    pub upstream_ca: Option<std::path::PathBuf>,
    /// The name sent as SNI and verified in the instance's certificate; default: the host of
    /// the instance's address.
    pub upstream_sni: Option<String>,
    /// Requests in flight to this service at once, across every worker of the host; beyond
    /// it a fast 503 (Envoy's `max_requests`). Default: no limit.
    pub max_requests: Option<u32>,
    /// Slow start: a new instance's weight ramps linearly from its registration over this
    /// long (a Dubbo provider's own `warmup` first). Default: `[proxy] slow_start`.
    #[serde(
        default,
        serialize_with = "duration::serialize_opt",
        deserialize_with = "duration::within_opt::<_, 0, 3600000>"
    )]
    pub slow_start: Option<Duration>,
}

/// The protocol a service's instances speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge, no TLS.
    H2c,
    /// HTTP/2 over TLS.
    H2,
}

impl ServiceSettings {
    /// Whether requests to this service's instances go over TLS.
    pub fn tls(&self) -> bool {
        self.upstream_tls || self.protocol == Protocol::H2
    }
}

/// All services by name.
pub type Services = BTreeMap<String, ServiceSettings>;

/// `health_check = { path, interval, timeout, healthy, unhealthy }` of a service.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// Path probed with GET; a 2xx or 3xx answer is healthy. Required (the binary checks it).
    pub path: String,
    /// Time between probes of one instance (each worker adds ±10% jitter).
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 10, 3600000>"
    )]
    pub interval: Duration,
    /// Time a probe may take.
    #[serde(
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 1, 3600000>"
    )]
    pub timeout: Duration,
    /// Consecutive successes that bring an unhealthy instance back.
    #[serde(deserialize_with = "values::number_within::<_, _, 1, 100>")]
    pub healthy: u32,
    /// Consecutive failures that take an instance out.
    #[serde(deserialize_with = "values::number_within::<_, _, 1, 100>")]
    pub unhealthy: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: String::new(),
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
            healthy: DEFAULT_CHECK_HEALTHY,
            unhealthy: DEFAULT_CHECK_UNHEALTHY,
        }
    }
}

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
    /// A service whose last instance vanishes keeps its last list (true) or answers 503 (false).
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
    /// The removal guard: when one listing removes more than this share (percent) of a
    /// service's instances, the removed ones stay in rotation, held, until each proves gone
    /// (a connect failure, a failed health check) or `removal_hold` passes. 100: off.
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
