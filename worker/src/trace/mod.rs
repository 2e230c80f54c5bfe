//! Tracing: W3C trace context through the gateway, and the gateway's spans exported over
//! OTLP/HTTP.
//!
//! - [`context`]: `traceparent` (and B3 on input) parsed and written.
//! - [`export`]: spans batched per worker and posted to `otlp_endpoint` as protobuf; a queue of
//!   bounded size, so a collector that is down costs dropped spans (counted), never memory.
//!
//! Each request gets a span of its own: the client's trace continues (its sampled flag
//! followed), or a new trace starts, sampled at `sample`. The instance receives the same trace
//! id with the gateway's span as its parent.

pub mod context;
pub mod export;

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderName;
use tokio::sync::mpsc;

use crate::config::TracingSettings;
use crate::metrics::Metrics;
pub use context::Context;
pub use export::Span;

/// One worker's tracer.
pub struct Tracer {
    sample: f64,
    spans: Option<(mpsc::Sender<Span>, std::sync::Arc<export::Pending>)>,
    metrics: Metrics,
}

/// A request's span, begun.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    /// The gateway's span (its id is the instance's parent).
    pub context: Context,
    /// The client's span, when it sent a context.
    pub parent: Option<[u8; 8]>,
    /// Unix nanoseconds.
    pub start: u64,
}

/// What a finished request's span tells.
pub struct Finished<'a> {
    /// `GET`, …
    pub method: &'a str,
    /// The request path.
    pub path: &'a str,
    /// The answer's status.
    pub status: u16,
    /// The route's label, when one matched.
    pub route: Option<String>,
    /// The service, when the request got that far.
    pub service: Option<&'a str>,
    /// The instance that answered, when one did.
    pub instance: Option<&'a str>,
    /// Attempts beyond the first.
    pub retries: u32,
    /// The client's address.
    pub client: std::net::SocketAddr,
}

/// Unix time in nanoseconds.
pub fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static B3: HeaderName = HeaderName::from_static("b3");
static B3_TRACE: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");

impl Tracer {
    /// The worker's tracer, when `[tracing]` is configured; starts the exporter (on the
    /// current runtime) when it names an `otlp_endpoint`.
    pub fn from_config(settings: Option<&TracingSettings>, metrics: Metrics) -> Option<Self> {
        let s = settings?;
        let spans = s.otlp_endpoint.as_ref().map(|url| export::start(url, s, metrics));
        Some(Tracer { sample: s.sample.clamp(0.0, 1.0), spans, metrics })
    }

    /// Begins a request's span from the context the client sent (`header` looks a request
    /// header up): `traceparent`, else B3, else a new trace.
    pub fn begin<'h>(&self, header: impl Fn(&HeaderName) -> Option<&'h [u8]>) -> Started {
        let parent = header(&TRACEPARENT).and_then(Context::from_traceparent).or_else(|| {
            let multi = (header(&B3_TRACE), header(&B3_SPAN), header(&B3_SAMPLED));
            Context::from_b3(header(&B3), multi)
        });
        let context = match parent {
            Some(p) => p.child(),
            None => Context::root(self.sample >= 1.0 || rand::random::<f64>() < self.sample),
        };
        Started { context, parent: parent.map(|p| p.span_id), start: unix_nanos() }
    }

    /// Ends a span: a sampled one is queued for export; when the queue is full it is dropped
    /// and counted.
    pub fn end(&self, started: Started, finished: Finished<'_>) {
        let Some((tx, pending)) = self.spans.as_ref().filter(|_| started.context.sampled) else {
            return;
        };
        let span = Span::new(started, unix_nanos(), finished);
        pending.add();
        if tx.try_send(span).is_err() {
            pending.settle(1);
            self.metrics.spans(0, 1);
        }
    }

    /// Resolves once every span ended so far is exported or counted dropped: a draining
    /// worker waits for this before it exits.
    pub async fn flushed(&self) {
        if let Some((_, pending)) = &self.spans {
            pending.settled().await;
        }
    }
}
