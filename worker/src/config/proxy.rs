//! `[proxy]`, `[proxy.outlier]` and `[header_routing]`: how requests are forwarded.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults::*;
use super::values::{self, absolute_path, duration, HashOn, TrustedProxies};
use crate::balance::Strategy;

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
    /// How a request's path is put in the one canonical form routes, auth and the instance
    /// read (see `http::target`).
    pub path_normalization: PathRules,
    /// Protocols a client may switch to through the gateway (`Upgrade`); any other upgrade
    /// goes on as a plain request. `h2c` never passes, listed or not.
    pub upgrade_protocols: Vec<String>,
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
            path_normalization: PathRules::default(),
            upgrade_protocols: vec!["websocket".to_string()],
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

/// What `%2F`, `%5C` and a raw `\` in a path do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// 400 (servers disagree whether they separate segments).
    #[default]
    Reject,
    /// Forwarded as they came (`%2F` upper-cased), never a separator to the gateway.
    Keep,
    /// Decoded into `/` before merging and dot-segment removal.
    Unescape,
}

/// What `;parameters` in a path segment do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathParameters {
    /// Routed on both readings (with and without parameters); 400 when they disagree.
    #[default]
    RejectAmbiguous,
    /// 400 for any `;` in the path.
    Reject,
    /// Removed from every segment before routing and forwarding (Tomcat's reading).
    Strip,
    /// A plain character (Go's and Python's reading).
    Keep,
}

/// `[proxy] path_normalization`: how a request's path is put in one canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathRules {
    /// Merge repeated slashes (`//a` reads `/a`).
    pub merge_slashes: bool,
    /// What encoded slashes and backslashes do.
    pub escaped_slashes: EscapedSlashes,
    /// What path parameters do.
    pub path_parameters: PathParameters,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            path_parameters: PathParameters::RejectAmbiguous,
        }
    }
}
