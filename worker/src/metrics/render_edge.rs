//! `/metrics`' edge series: what a Grafana board for a gateway is built from beside the
//! request counts — the client-side duration histogram, bytes, per-instance requests and
//! errors, connections per listener, TLS handshakes and certificate expiry, auth refusals per
//! route, mirror copies and exported spans. Labels the region cannot hold (route, listener,
//! certificate and instance names) come from the scraping worker's configuration and table.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::scrape::{escape, Count, Family, Scrape};
use super::Metrics;
use crate::host::{MAX_LISTENERS, MAX_ROUTES};

/// The names behind the edge series, from the scraping worker.
#[derive(Debug, Default)]
pub struct EdgeLabels {
    /// Each `[[route]]`'s label, in file order.
    pub routes: Vec<String>,
    /// Each listening socket's address (`listen`, then `listen_tls`).
    pub listeners: Vec<String>,
    /// Each configured certificate's names and its `notAfter` (Unix seconds).
    pub certificates: Vec<(String, i64)>,
    /// (service, instance, requests, errors) of every instance of the current table.
    pub instances: Vec<(String, String, u64, u64)>,
}

impl Metrics {
    /// Every series: the request path's and the edge's.
    pub fn prometheus_with(&self, labels: &EdgeLabels) -> String {
        let mut out = self.prometheus();
        self.render_edge(&mut out, labels);
        out
    }

    fn render_edge(&self, out: &mut String, labels: &EdgeLabels) {
        let scrape = Scrape::new(self);
        scrape.service_histogram(out, REQUEST_DURATION, |s| {
            (&s.duration_buckets, &s.duration_count, &s.duration_sum_micros)
        });
        for (family, outcome, read) in PER_SERVICE {
            scrape.service_counter(out, family, outcome, read);
        }
        instances(labels, out);
        auth_refusals(&scrape, labels, out);
        listeners(&scrape, labels, out);
        tls(&scrape, labels, out);
        let _ = writeln!(
            out,
            "# HELP zkgate_trace_spans_total Spans handed to the OTLP collector, or dropped (queue full, collector down).\n# TYPE zkgate_trace_spans_total counter\nzkgate_trace_spans_total{{outcome=\"exported\"}} {}\nzkgate_trace_spans_total{{outcome=\"dropped\"}} {}",
            scrape.sum(|w| w.edge.spans_exported.load(Ordering::Relaxed)),
            scrape.sum(|w| w.edge.spans_dropped.load(Ordering::Relaxed))
        );
    }
}

const REQUEST_DURATION: Family = (
    "zkgate_request_duration_seconds",
    "Requests from the first byte read to the answer's head sent, as the client sees them, per service.",
);

/// Per-service counters: the family (an empty help: a further outcome of the one before), the
/// `outcome` label (empty: none), what is counted.
const PER_SERVICE: [(Family, &str, Count); 9] = [
    (
        (
            "zkgate_request_bytes_total",
            "Request body bytes received from clients (declared lengths: chunked uploads are not counted), per service.",
        ),
        "",
        |s| s.bytes_in.load(Ordering::Relaxed),
    ),
    (
        (
            "zkgate_response_bytes_total",
            "Answer body bytes sent to clients (declared lengths: chunked answers are not counted), per service.",
        ),
        "",
        |s| s.bytes_out.load(Ordering::Relaxed),
    ),
    (
        ("zkgate_mirror_requests_total", "Mirror copies to a shadow service, by outcome."),
        "sent",
        |s| s.mirrored.load(Ordering::Relaxed),
    ),
    (("zkgate_mirror_requests_total", ""), "skipped", |s| s.mirror_skipped.load(Ordering::Relaxed)),
    (("zkgate_mirror_requests_total", ""), "failed", |s| s.mirror_failed.load(Ordering::Relaxed)),
    (
        (
            "zkgate_ip_refusals_total",
            "Requests refused (403) by a route's or service's allow/deny, on the client's address after trusted_proxies.",
        ),
        "",
        |s| s.address_refused.load(Ordering::Relaxed),
    ),
    (
        (
            "zkgate_edge_answers_total",
            "Requests a route answered itself, never forwarded: its redirect, its fixed answer, CORS preflights.",
        ),
        "redirect",
        |s| s.redirected.load(Ordering::Relaxed),
    ),
    (("zkgate_edge_answers_total", ""), "answer", |s| s.answered.load(Ordering::Relaxed)),
    (("zkgate_edge_answers_total", ""), "preflight", |s| s.preflights.load(Ordering::Relaxed)),
];

fn instances(labels: &EdgeLabels, out: &mut String) {
    *out += "# HELP zkgate_instance_requests_total Requests sent to an instance by the host's workers.\n# TYPE zkgate_instance_requests_total counter\n";
    *out += "# HELP zkgate_instance_errors_total Requests to an instance that failed (connect error, timeout, reset, 5xx).\n# TYPE zkgate_instance_errors_total counter\n";
    for (service, instance, requests, errors) in &labels.instances {
        let (s, i) = (escape(service), escape(instance));
        let _ = writeln!(
            out,
            "zkgate_instance_requests_total{{service=\"{s}\",instance=\"{i}\"}} {requests}\nzkgate_instance_errors_total{{service=\"{s}\",instance=\"{i}\"}} {errors}"
        );
    }
}

fn auth_refusals(scrape: &Scrape, labels: &EdgeLabels, out: &mut String) {
    *out += "# HELP zkgate_auth_refusals_total Requests a route's auth refused, by status (400: credentials presented twice, 401, 403, 503).\n# TYPE zkgate_auth_refusals_total counter\n";
    for (r, label) in labels.routes.iter().enumerate().take(MAX_ROUTES) {
        for (code, n) in [
            (401, scrape.sum(|w| w.routes[r].unauthorized.load(Ordering::Relaxed))),
            (403, scrape.sum(|w| w.routes[r].forbidden.load(Ordering::Relaxed))),
            (503, scrape.sum(|w| w.routes[r].auth_unavailable.load(Ordering::Relaxed))),
            (400, scrape.sum(|w| w.routes[r].ambiguous.load(Ordering::Relaxed))),
        ] {
            if n > 0 {
                let _ = writeln!(
                    out,
                    "zkgate_auth_refusals_total{{route=\"{}\",code=\"{code}\"}} {n}",
                    escape(label)
                );
            }
        }
    }
}

fn listeners(scrape: &Scrape, labels: &EdgeLabels, out: &mut String) {
    *out += "# HELP zkgate_listener_connections Client connections open, per listening socket.\n# TYPE zkgate_listener_connections gauge\n";
    for (l, label) in labels.listeners.iter().enumerate().take(MAX_LISTENERS) {
        let n: i64 = scrape
            .live()
            .map(|(_, w)| w.edge.listener_connections[l].load(Ordering::Relaxed))
            .sum();
        let _ = writeln!(
            out,
            "zkgate_listener_connections{{listener=\"{}\"}} {}",
            escape(label),
            n.max(0)
        );
    }
}

fn tls(scrape: &Scrape, labels: &EdgeLabels, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP zkgate_tls_handshakes_total TLS handshakes with clients, by result.\n# TYPE zkgate_tls_handshakes_total counter\nzkgate_tls_handshakes_total{{result=\"ok\"}} {}\nzkgate_tls_handshakes_total{{result=\"failed\"}} {}",
        scrape.sum(|w| w.edge.tls_handshakes.load(Ordering::Relaxed)),
        scrape.sum(|w| w.edge.tls_failures.load(Ordering::Relaxed))
    );
    *out += "# HELP zkgate_tls_certificate_not_after_seconds When a served certificate expires (Unix seconds); alert on it minus time().\n# TYPE zkgate_tls_certificate_not_after_seconds gauge\n";
    for (names, not_after) in &labels.certificates {
        let _ = writeln!(
            out,
            "zkgate_tls_certificate_not_after_seconds{{certificate=\"{}\"}} {not_after}",
            escape(names)
        );
    }
}
