//! `[services.NAME]`: static instances and per-service options, health checks included.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults::*;
use super::values::{self, duration, HashOn};
use crate::balance::Strategy;
use crate::instance::Instance;

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
    /// Client addresses (after `trusted_proxies`) that may reach the service, by any route or
    /// header; empty: any.
    pub allow: values::AddressBlocks,
    /// Client addresses refused (403), whatever `allow` says.
    pub deny: values::AddressBlocks,
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
