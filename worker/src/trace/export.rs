//! Spans posted to an OTLP/HTTP collector (`POST …/v1/traces`, protobuf), with the
//! opentelemetry-proto types: batched per worker (`batch` spans, or what `flush_every`
//! gathered), one export at a time within `timeout`. The queue holds `queue` spans; when the
//! collector is slow or down, what does not fit is dropped and counted
//! (`zkgate_trace_spans_total{outcome="dropped"}`), never held without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Status};
use prost::Message as _;
use tokio::sync::mpsc;

use super::{Finished, Started};
use crate::config::TracingSettings;
use crate::metrics::Metrics;

/// A finished span, as exported.
pub struct Span(opentelemetry_proto::tonic::trace::v1::Span);

fn text(key: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

fn int(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::IntValue(v)) }),
        ..Default::default()
    }
}

impl Span {
    /// The span of one request, from its start to `end` (Unix nanoseconds).
    pub fn new(started: Started, end: u64, f: Finished<'_>) -> Self {
        let mut attributes = vec![
            text("http.request.method", f.method),
            text("url.path", f.path),
            int("http.response.status_code", i64::from(f.status)),
            text("client.address", f.client.ip().to_string()),
        ];
        if let Some(route) = &f.route {
            attributes.push(text("http.route", route.clone()));
        }
        if let Some(s) = f.service {
            attributes.push(text("zkgate.service", s));
        }
        if let Some(i) = f.instance {
            attributes.push(text("server.address", i));
        }
        attributes.push(int("zkgate.retries", i64::from(f.retries)));
        let name = match &f.route {
            Some(r) => format!("{} {r}", f.method),
            None => f.method.to_string(),
        };
        let code =
            if f.status >= 500 { status::StatusCode::Error } else { status::StatusCode::Unset };
        Span(opentelemetry_proto::tonic::trace::v1::Span {
            trace_id: started.context.trace_id.to_vec(),
            span_id: started.context.span_id.to_vec(),
            parent_span_id: started.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name,
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: started.start,
            end_time_unix_nano: end.max(started.start),
            attributes,
            status: Some(Status { code: code as i32, message: String::new() }),
            flags: 0x100 | u32::from(started.context.sampled),
            ..Default::default()
        })
    }
}

/// Spans queued or being posted, so a draining worker can wait for its last ones to be
/// exported (or counted dropped) instead of losing them silently when it exits.
#[derive(Debug, Default)]
pub struct Pending {
    spans: AtomicUsize,
    done: tokio::sync::Notify,
}

impl Pending {
    /// A span is queued.
    pub(super) fn add(&self) {
        self.spans.fetch_add(1, Ordering::AcqRel);
    }

    /// `n` spans were exported, dropped, or never queued.
    pub(super) fn settle(&self, n: usize) {
        if self.spans.fetch_sub(n, Ordering::AcqRel) == n {
            self.done.notify_waiters();
        }
    }

    /// Resolves once nothing is queued or being posted.
    pub async fn settled(&self) {
        loop {
            let notified = self.done.notified();
            if self.spans.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Starts the worker's exporter to `url`; returns its queue and what is pending in it.
pub fn start(
    url: &str,
    s: &TracingSettings,
    metrics: Metrics,
) -> (mpsc::Sender<Span>, Arc<Pending>) {
    let (tx, rx) = mpsc::channel(s.queue.max(1));
    let pending = Arc::new(Pending::default());
    let exporter = Exporter {
        url: url.to_string(),
        service: s.service_name.clone(),
        batch: s.batch.max(1),
        every: s.flush_every,
        timeout: s.timeout,
        metrics,
        pending: pending.clone(),
    };
    tokio::spawn(exporter.run(rx));
    (tx, pending)
}

struct Exporter {
    url: String,
    service: String,
    batch: usize,
    every: Duration,
    timeout: Duration,
    metrics: Metrics,
    pending: Arc<Pending>,
}

impl Exporter {
    async fn run(self, mut rx: mpsc::Receiver<Span>) {
        let mut failing = false;
        loop {
            let mut spans = Vec::with_capacity(self.batch);
            let Some(first) = rx.recv().await else { return };
            spans.push(first.0);
            let deadline = tokio::time::Instant::now() + self.every;
            while spans.len() < self.batch {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(s)) => spans.push(s.0),
                    Ok(None) | Err(_) => break,
                }
            }
            let n = spans.len() as u64;
            let posted = self.post(spans).await;
            match posted {
                Ok(()) => {
                    if failing {
                        log::info!("tracing: exporting to {} again", self.url);
                    }
                    failing = false;
                    self.metrics.spans(n, 0);
                }
                Err(e) => {
                    if !failing {
                        log::warn!("tracing: cannot export spans to {} ({e}); dropping them until it answers", self.url);
                    }
                    failing = true;
                    self.metrics.spans(0, n);
                }
            }
            self.pending.settle(n as usize);
        }
    }

    async fn post(
        &self,
        spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
    ) -> Result<(), String> {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![text("service.name", self.service.clone())],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "zkgate".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let body = bytes::Bytes::from(request.encode_to_vec());
        let kind =
            (http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-protobuf"));
        let (status, _, _) = crate::outbound::request(
            http::Method::POST,
            &self.url,
            &[kind],
            body,
            (self.timeout, 64 * 1024),
        )
        .await?;
        match status.is_success() {
            true => Ok(()),
            false => Err(format!("the collector answered {status}")),
        }
    }
}
