//! The last phases of a request: why the gateway answered it itself (logged at the level the
//! failure deserves), its metrics and its access-log line — the same for both protocol sides.

use http::StatusCode;

use crate::http::client::upstream::UpstreamError;
use crate::http::error::ProxyError;
use crate::http::proxy::{Proxy, RequestLine, Trace};
use crate::trace::Finished;

impl Proxy {
    /// Logs why a request was answered by the gateway, at the level the failure deserves.
    pub(crate) fn log_error(&self, e: &ProxyError, line: &RequestLine<'_>) {
        let RequestLine { method, path, client, .. } = line;
        match e {
            ProxyError::Upstream(svc, err @ UpstreamError::ClientBody(_)) => {
                log::info!("service {svc}: {method} {path} from {client}: {err}")
            }
            ProxyError::Upstream(svc, err) => log::warn!("service {svc}: {method} {path}: {err}"),
            ProxyError::NoInstance(svc) => {
                log::warn!("service {svc}: {method} {path}: no instance may take traffic")
            }
            _ => log::debug!("{method} {path} from {client}: {e}"),
        }
    }

    /// Counts the request in the metrics and writes the access log line (`bytes`: the
    /// answer's `Content-Length`, when it has one).
    pub(crate) fn log_request(
        &self,
        line: &RequestLine<'_>,
        trace: &Trace,
        status: StatusCode,
        bytes: Option<&str>,
    ) {
        let idx = match &trace.service {
            Some(s) => *s.stats.get_or_init(|| self.observe.metrics.service_index(&s.name)),
            None => self.routes.unrouted,
        };
        self.observe.metrics.request(idx, status.as_u16(), trace.attempts.latency);
        let bytes_out = bytes.and_then(|b| b.parse().ok()).unwrap_or(trace.bytes_out);
        let finished = trace.finished.unwrap_or_else(std::time::Instant::now);
        let took = finished.saturating_duration_since(line.started);
        self.observe.metrics.answered(idx, took, (trace.bytes_in, bytes_out));
        let instance = trace
            .attempts
            .instance
            .zip(trace.service.as_ref())
            .and_then(|(i, s)| s.instances.get(i))
            .map(|i| i.address.as_str());
        let sampled = trace.span.filter(|s| s.context.sampled);
        if let (Some(tracer), Some(span)) = (&self.observe.tracer, sampled) {
            let finished = Finished {
                method: line.method,
                path: line.path,
                status: status.as_u16(),
                route: trace.rule.map(|r| self.routes.router.label(r)),
                service: trace.service.as_ref().map(|s| s.name.as_str()),
                instance,
                retries: trace.attempts.made.saturating_sub(1),
                client: line.client,
            };
            tracer.end(span, finished);
        }
        if self.observe.access_log {
            log::info!(
                target: "access",
                "{} \"{} {}\" {} {} service={} instance={} {:.1}ms",
                line.client,
                line.method,
                line.path,
                status.as_u16(),
                bytes.unwrap_or("-"),
                trace.service.as_ref().map_or("-", |s| s.name.as_str()),
                instance.unwrap_or("-"),
                took.as_secs_f64() * 1e3
            );
        }
    }
}
