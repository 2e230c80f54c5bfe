//! The counters of what happens at the edge, beside proxying itself: request durations as the
//! client sees them, bytes, auth refusals per route, mirror copies, TLS handshakes, exported
//! spans, connections per listener.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Metrics, BUCKETS, MAX_SERVICES};
use crate::host::{MAX_LISTENERS, MAX_ROUTES};

/// What the edge answered without an instance.
#[derive(Debug, Clone, Copy)]
pub enum EdgeAnswer {
    /// `allow`/`deny` refused the client's address (403).
    AddressRefused,
    /// The route's `redirect`.
    Redirect,
    /// The route's fixed `answer`.
    Answer,
    /// A CORS preflight, answered by the gateway.
    Preflight,
}

/// What became of a mirror copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mirrored {
    /// Sent and answered (whatever the status).
    Sent,
    /// Not sent: the in-flight bound was reached or the body was too large.
    Skipped,
    /// Sent, but no answer came (connect error, timeout, no instance).
    Failed,
}

impl Metrics {
    /// A request's whole duration as its client saw it, and its body bytes both ways.
    pub fn answered(&self, service_idx: usize, took: Duration, bytes: (u64, u64)) {
        let s = &self.me().services[service_idx.min(MAX_SERVICES - 1)];
        let secs = took.as_secs_f64();
        if let Some(b) = BUCKETS.iter().position(|le| secs <= *le) {
            s.duration_buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        s.duration_count.fetch_add(1, Ordering::Relaxed);
        s.duration_sum_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        s.bytes_in.fetch_add(bytes.0, Ordering::Relaxed);
        s.bytes_out.fetch_add(bytes.1, Ordering::Relaxed);
    }

    /// A route's `auth` answered `status` (400, 401, 403 or 503).
    pub fn auth_refused(&self, rule: usize, status: u16) {
        let r = &self.me().routes[rule.min(MAX_ROUTES - 1)];
        let counter = match status {
            401 => &r.unauthorized,
            403 => &r.forbidden,
            400 => &r.ambiguous,
            _ => &r.auth_unavailable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A mirror copy to the shadow service `service_idx`.
    pub fn mirror(&self, service_idx: usize, what: Mirrored) {
        let s = &self.me().services[service_idx.min(MAX_SERVICES - 1)];
        let counter = match what {
            Mirrored::Sent => &s.mirrored,
            Mirrored::Skipped => &s.mirror_skipped,
            Mirrored::Failed => &s.mirror_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A request the edge answered for service `service_idx` without asking an instance.
    pub fn edge_answer(&self, service_idx: usize, what: EdgeAnswer) {
        let s = &self.me().services[service_idx.min(MAX_SERVICES - 1)];
        let counter = match what {
            EdgeAnswer::AddressRefused => &s.address_refused,
            EdgeAnswer::Redirect => &s.redirected,
            EdgeAnswer::Answer => &s.answered,
            EdgeAnswer::Preflight => &s.preflights,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A TLS handshake ended (`ok`: completed).
    pub fn tls_handshake(&self, ok: bool) {
        let e = &self.me().edge;
        match ok {
            true => e.tls_handshakes.fetch_add(1, Ordering::Relaxed),
            false => e.tls_failures.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Spans handed to the collector, or dropped.
    pub fn spans(&self, exported: u64, dropped: u64) {
        let e = &self.me().edge;
        e.spans_exported.fetch_add(exported, Ordering::Relaxed);
        e.spans_dropped.fetch_add(dropped, Ordering::Relaxed);
    }

    /// A connection opened (+1) or closed (-1) on listening socket `listener`.
    pub fn listener_connection(&self, listener: usize, delta: i64) {
        let c = &self.me().edge.listener_connections[listener.min(MAX_LISTENERS - 1)];
        c.fetch_add(delta, Ordering::Relaxed);
    }
}
