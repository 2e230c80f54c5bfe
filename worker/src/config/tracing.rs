//! `[tracing]`: W3C trace context and the OTLP/HTTP export of the gateway's spans.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::duration;

/// `[tracing]`. Without the section, trace headers pass through untouched and no span is kept.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSettings {
    /// Where spans are posted (OTLP/HTTP, protobuf), e.g. `http://127.0.0.1:4318/v1/traces`;
    /// none: trace context is propagated, nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces (requests without a sampled parent) that are sampled, 0..1. A
    /// parent's sampled flag is followed (see `honour_client_sampling`).
    pub sample: f64,
    /// Follow a client's sampled flag (W3C's rule; true) or decide by `sample` alone.
    pub honour_client_sampling: bool,
    /// Traces a client's sampled flag makes a worker export beyond its own `sample` share, per
    /// second at most; past it they go on unsampled. A client cannot make every request
    /// exported. 0: no cap.
    pub max_exported_per_second: u32,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Spans a worker keeps waiting for export; beyond it they are dropped and counted.
    pub queue: usize,
    /// Spans per export request.
    pub batch: usize,
    /// How often a batch is sent when it is not full.
    #[serde(with = "duration")]
    pub flush_every: Duration,
    /// How long an export request may take.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for TracingSettings {
    fn default() -> Self {
        TracingSettings {
            otlp_endpoint: None,
            sample: super::DEFAULT_TRACE_SAMPLE,
            honour_client_sampling: true,
            max_exported_per_second: super::DEFAULT_TRACE_CLIENT_SAMPLED,
            service_name: "zkgate".into(),
            queue: super::DEFAULT_TRACE_QUEUE,
            batch: super::DEFAULT_TRACE_BATCH,
            flush_every: super::DEFAULT_TRACE_FLUSH,
            timeout: super::DEFAULT_TRACE_TIMEOUT,
        }
    }
}
