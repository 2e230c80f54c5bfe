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
    /// `honour_client_sampling`.
    honour: bool,
    /// `max_exported_per_second`, and this second's count (the second in the high bits).
    cap: u32,
    forced: std::sync::atomic::AtomicU64,
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
        Some(Tracer {
            sample: s.sample.clamp(0.0, 1.0),
            spans,
            metrics,
            honour: s.honour_client_sampling,
            cap: s.max_exported_per_second,
            forced: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The gateway's own sampling decision (`sample`).
    fn own_decision(&self) -> bool {
        self.sample >= 1.0 || rand::random::<f64>() < self.sample
    }

    /// Whether a client's sampled flag may make this request exported beyond the gateway's own
    /// decision: within `max_exported_per_second` this second.
    fn client_may_force(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.cap == 0 {
            return true;
        }
        let second = unix_nanos() / 1_000_000_000;
        let now = self.forced.load(Ordering::Relaxed);
        let (at, n) = (now >> 32, now & 0xffff_ffff);
        let next = if at == second { n + 1 } else { 1 };
        if next > u64::from(self.cap) {
            return false;
        }
        // Lost races only under-count by a request or two: a cap, not a ledger.
        self.forced.store(second << 32 | next, Ordering::Relaxed);
        true
    }

    /// Begins a request's span from the context the client sent (`header` looks a request
    /// header up): `traceparent`, else B3, else a new trace.
    pub fn begin<'h>(&self, header: impl Fn(&HeaderName) -> Option<&'h [u8]>) -> Started {
        let parent = header(&TRACEPARENT).and_then(Context::from_traceparent).or_else(|| {
            let multi = (header(&B3_TRACE), header(&B3_SPAN), header(&B3_SAMPLED));
            Context::from_b3(header(&B3), multi)
        });
        let context = match parent {
            Some(p) => {
                let mut child = p.child();
                // A client's sampled flag is followed (beyond the gateway's own share only
                // within the cap), or, when not honoured, the gateway decides alone.
                child.sampled = match self.honour {
                    true => p.sampled && (self.own_decision() || self.client_may_force()),
                    false => self.own_decision(),
                };
                child
            }
            None => Context::root(self.own_decision()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(sample: f64, honour: bool, cap: u32) -> Tracer {
        let s = TracingSettings {
            sample,
            honour_client_sampling: honour,
            max_exported_per_second: cap,
            ..Default::default()
        };
        Tracer::from_config(Some(&s), Metrics::new(crate::host::Host::local(0))).unwrap()
    }

    fn sampled_parent(t: &Tracer) -> bool {
        let tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        t.begin(|n| (*n == TRACEPARENT).then_some(&tp[..])).context.sampled
    }

    #[test]
    fn a_client_cannot_make_every_request_exported() {
        let capped = tracer(0.0, true, 5);
        let forced = (0..50).filter(|_| sampled_parent(&capped)).count();
        // Five a second: 5, or 10 when the test straddles a second.
        assert!((5..=10).contains(&forced), "{forced} of 50 exported");
        let ignored = tracer(0.0, false, 0);
        assert_eq!((0..20).filter(|_| sampled_parent(&ignored)).count(), 0);
        let uncapped = tracer(0.0, true, 0);
        assert_eq!((0..20).filter(|_| sampled_parent(&uncapped)).count(), 20);
        let own = tracer(1.0, true, 1);
        assert_eq!((0..20).filter(|_| sampled_parent(&own)).count(), 20, "its own share");
    }
}
