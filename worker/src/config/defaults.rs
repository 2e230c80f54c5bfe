//! Every default of `gateway.toml`, in one place.
//!
//! `Default` impls and serde both take their values from here, and a test in the binary checks
//! that the shipped `gateway.toml` documents exactly these values.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// `server.listen`.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// `server.backlog`.
pub const DEFAULT_BACKLOG: i32 = 1024;
/// `server.shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// `server.worker_timeout`.
pub const DEFAULT_WORKER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a service is gone from every worker before its shared row is released.
pub const DEFAULT_SERVICE_ROW_TTL: Duration = Duration::from_secs(120);

/// `proxy.retries`.
pub const DEFAULT_RETRIES: usize = 1;
/// `proxy.retry_budget`.
pub const DEFAULT_RETRY_BUDGET: f64 = 0.2;
/// `proxy.connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// `proxy.request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `proxy.header_read_timeout`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// `proxy.idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `proxy.max_header_bytes`.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 65536;
/// `proxy.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10000;
/// `proxy.max_streams_per_connection` (nginx's `http2_max_concurrent_streams`).
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// `proxy.max_upstream_connections`.
pub const DEFAULT_MAX_UPSTREAM_CONNECTIONS: usize = 10000;
/// `proxy.max_connections_per_instance`.
pub const DEFAULT_MAX_CONNECTIONS_PER_INSTANCE: usize = 1024;
/// `proxy.preserve_host`.
pub const DEFAULT_PRESERVE_HOST: bool = true;
/// `proxy.debug_headers`.
pub const DEFAULT_DEBUG_HEADERS: bool = false;
/// `proxy.max_body_bytes` (0: unlimited).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 0;

/// `proxy.underscores_in_headers`.
pub const DEFAULT_UNDERSCORES_IN_HEADERS: bool = false;

/// `proxy.outlier.consecutive_failures`.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// `proxy.outlier.base_ejection`.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// `proxy.outlier.max_ejection`.
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
/// `proxy.outlier.max_ejection_percent`.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;

/// `proxy.outlier.slow_after`.
pub const DEFAULT_SLOW_AFTER: Duration = Duration::from_secs(5);

/// `header_routing.enabled`.
pub const DEFAULT_HEADER_ROUTING: bool = true;
/// `header_routing.mount`.
pub const DEFAULT_MOUNT: &str = "/services";
/// `header_routing.service_header`.
pub const DEFAULT_SERVICE_HEADER: &str = "service_name";
/// `header_routing.path_header`.
pub const DEFAULT_PATH_HEADER: &str = "api_name";

/// `route.path_prefix`.
pub const DEFAULT_PATH_PREFIX: &str = "/";

/// `zookeeper.root`.
pub const DEFAULT_ZK_ROOT: &str = "/services";
/// `zookeeper.session_timeout`.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// `zookeeper.connect_timeout`.
pub const DEFAULT_ZK_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `zookeeper.keep_last_on_empty`.
pub const DEFAULT_KEEP_LAST_ON_EMPTY: bool = true;
/// `zookeeper.removal_guard` (percent of a service removed by one listing).
pub const DEFAULT_REMOVAL_GUARD: u32 = 50;
/// `zookeeper.removal_hold`.
pub const DEFAULT_REMOVAL_HOLD: Duration = Duration::from_secs(60);

/// `services.NAME.health_check.interval`.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// `services.NAME.health_check.timeout`.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// `services.NAME.health_check.healthy`.
pub const DEFAULT_CHECK_HEALTHY: u32 = 2;
/// `services.NAME.health_check.unhealthy`.
pub const DEFAULT_CHECK_UNHEALTHY: u32 = 3;

/// `admin.listen`.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9901));

/// `log.access`.
pub const DEFAULT_ACCESS_LOG: bool = false;

/// `auth.NAME.leeway` (JWT `exp`/`nbf` clock skew).
pub const DEFAULT_AUTH_LEEWAY: Duration = Duration::from_secs(60);

/// `proxy.mirror_body_bytes`: the largest request body a mirror copy carries (a larger one is
/// not mirrored).
pub const DEFAULT_MIRROR_BODY_BYTES: usize = 64 * 1024;
/// `proxy.mirror_max_in_flight`: mirror copies one worker sends at once; more are skipped.
pub const DEFAULT_MIRROR_IN_FLIGHT: usize = 64;

/// `tracing.sample`.
pub const DEFAULT_TRACE_SAMPLE: f64 = 1.0;
/// `tracing.max_exported_per_second` (per worker).
pub const DEFAULT_TRACE_CLIENT_SAMPLED: u32 = 100;
/// `tracing.queue`: spans a worker holds for export.
pub const DEFAULT_TRACE_QUEUE: usize = 2048;
/// `tracing.batch`: spans per export request.
pub const DEFAULT_TRACE_BATCH: usize = 512;
/// `tracing.flush_every`.
pub const DEFAULT_TRACE_FLUSH: Duration = Duration::from_secs(1);
/// `tracing.timeout`.
pub const DEFAULT_TRACE_TIMEOUT: Duration = Duration::from_secs(5);
