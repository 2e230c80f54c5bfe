//! The gateway's own answers: why a request was not proxied ([`ProxyError`]) and the short
//! JSON body with the status an operator expects from a gateway (404, 503, 502, 504 …).

use http::header::{self, HeaderValue};
use http::StatusCode;

use crate::auth::Refusal;
use crate::http::client::upstream::UpstreamError;
pub use crate::http::own::OwnAnswer;
use crate::http::router::RouteError;

/// Why a request was answered by the gateway itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A request the gateway refuses before routing (status and why): a target that is not
    /// origin-form (400), CONNECT (405), a transfer coding it cannot forward (501), a loop (508).
    #[error("{1}")]
    Refused(StatusCode, &'static str),
    /// No route, or a route to a service nobody registered: 404.
    #[error("{0}")]
    Route(#[from] RouteError),
    /// The service is not in the route table: 404.
    #[error("unknown service")]
    UnknownService(String),
    /// The service is not in the table and this worker has not loaded its routes yet: 503
    /// with `Retry-After` (a client must not take "not ready" for "no such service").
    #[error("routes not loaded yet")]
    NotReady(String),
    /// The service has no instance that may take traffic: 503.
    #[error("no healthy instance")]
    NoInstance(String),
    /// The instance failed: 502; timed out: 504; the body was too large: 413.
    #[error("{1}")]
    Upstream(String, UpstreamError),
    /// `Content-Length` over `max_body_bytes`: 413.
    #[error("request body too large")]
    BodyTooLarge(String),
    /// A `[[rate_limit]]` refused the request: 429, `Retry-After` the wait.
    #[error("rate limit exceeded")]
    RateLimited(String, std::time::Duration),
    /// `max_requests` in flight already: 503 at once.
    #[error("too many requests in flight (max_requests)")]
    Overloaded(String),
    /// The route's `auth` refused the request: 401 (with `WWW-Authenticate`), 403, or 503
    /// (verification saturated, keys not loaded).
    #[error("{1}")]
    Auth(String, Refusal),
    /// A route's or service's `allow`/`deny` refused the client's address: 403.
    #[error("client address not allowed")]
    AddressRefused(String),
    /// Not a failure: the route answers the request itself (its redirect, its fixed answer, a
    /// CORS preflight), through the same door as every answer the gateway writes.
    #[error("answered by the route")]
    Answered(Box<OwnAnswer>),
}

impl ProxyError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Refused(status, _) => *status,
            ProxyError::Route(RouteError::BadRequest(_)) => StatusCode::BAD_REQUEST,
            ProxyError::Route(RouteError::NoRoute) | ProxyError::UnknownService(_) => {
                StatusCode::NOT_FOUND
            }
            ProxyError::NoInstance(_) | ProxyError::NotReady(_) | ProxyError::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::RateLimited(..) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Auth(_, r) => {
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::UNAUTHORIZED)
            }
            ProxyError::Upstream(_, UpstreamError::Timeout(_) | UpstreamError::Slow(_)) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Upstream(_, UpstreamError::BodyTooLarge) | ProxyError::BodyTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ProxyError::Upstream(_, UpstreamError::ClientBody(_)) => StatusCode::BAD_REQUEST,
            ProxyError::Upstream(..) => StatusCode::BAD_GATEWAY,
            ProxyError::AddressRefused(_) => StatusCode::FORBIDDEN,
            ProxyError::Answered(answer) => answer.status,
        }
    }

    /// The service the request was for, when it got that far.
    pub fn service(&self) -> Option<&str> {
        match self {
            ProxyError::UnknownService(s)
            | ProxyError::NoInstance(s)
            | ProxyError::NotReady(s)
            | ProxyError::Upstream(s, _)
            | ProxyError::BodyTooLarge(s)
            | ProxyError::RateLimited(s, _)
            | ProxyError::Overloaded(s)
            | ProxyError::Auth(s, _)
            | ProxyError::AddressRefused(s) => Some(s),
            ProxyError::Route(_) | ProxyError::Refused(..) | ProxyError::Answered(_) => None,
        }
    }

    /// The JSON answer: `{"error": "...", "service": "..."}`.
    pub fn into_answer(self) -> OwnAnswer {
        if let ProxyError::Answered(answer) = self {
            return *answer;
        }
        let message = match &self {
            ProxyError::Upstream(_, UpstreamError::Timeout(_) | UpstreamError::Slow(_)) => {
                "upstream timeout".to_string()
            }
            ProxyError::Upstream(_, UpstreamError::BodyTooLarge) => {
                "request body too large".to_string()
            }
            ProxyError::Upstream(_, UpstreamError::ClientBody(_)) => {
                "malformed request body".to_string()
            }
            ProxyError::Upstream(..) => "upstream failure".to_string(),
            other => other.to_string(),
        };
        let mut answer = OwnAnswer::json(self.status(), &message, self.service());
        match self {
            ProxyError::NotReady(_) => {
                answer.headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::RateLimited(_, wait) => {
                let secs = retry_after(wait);
                answer.headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            ProxyError::Refused(StatusCode::METHOD_NOT_ALLOWED, _) => {
                answer.headers.insert(header::ALLOW, HeaderValue::from_static(ALLOW));
            }
            ProxyError::Auth(_, Refusal { challenge: Some(c), .. }) => {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    answer.headers.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            _ => {}
        }
        answer
    }
}

impl ProxyError {
    /// The gRPC status of this error (for a gRPC client, which reads `grpc-status`, not the
    /// HTTP status): UNAVAILABLE for no instance, DEADLINE_EXCEEDED for a timeout, …
    pub fn grpc_status(&self) -> (u8, &'static str) {
        match self {
            ProxyError::NoInstance(_) | ProxyError::NotReady(_) | ProxyError::Overloaded(_) => {
                (14, "UNAVAILABLE")
            }
            ProxyError::RateLimited(..) => (8, "RESOURCE_EXHAUSTED"),
            ProxyError::Auth(_, r) if r.status == 401 => (16, "UNAUTHENTICATED"),
            ProxyError::Auth(_, r) if r.status == 403 => (7, "PERMISSION_DENIED"),
            ProxyError::Auth(..) => (14, "UNAVAILABLE"),
            ProxyError::Upstream(_, UpstreamError::Timeout(_) | UpstreamError::Slow(_)) => {
                (4, "DEADLINE_EXCEEDED")
            }
            ProxyError::Upstream(_, UpstreamError::Connect(_) | UpstreamError::Reset(_)) => {
                (14, "UNAVAILABLE")
            }
            ProxyError::Upstream(_, UpstreamError::BodyTooLarge) | ProxyError::BodyTooLarge(_) => {
                (8, "RESOURCE_EXHAUSTED")
            }
            ProxyError::Upstream(_, UpstreamError::ClientBody(_)) => (3, "INVALID_ARGUMENT"),
            ProxyError::Route(RouteError::NoRoute) | ProxyError::UnknownService(_) => {
                (12, "UNIMPLEMENTED")
            }
            ProxyError::Route(RouteError::BadRequest(_)) => (3, "INVALID_ARGUMENT"),
            ProxyError::Refused(StatusCode::SERVICE_UNAVAILABLE, _) => (14, "UNAVAILABLE"),
            ProxyError::AddressRefused(_) => (7, "PERMISSION_DENIED"),
            ProxyError::Answered(_) => (0, "OK"),
            ProxyError::Refused(..) => (13, "INTERNAL"),
            ProxyError::Upstream(..) => (14, "UNAVAILABLE"),
        }
    }

    /// The answer to a gRPC client: HTTP 200 with `grpc-status` and `grpc-message` and no body
    /// (a "trailers-only" response), as gRPC servers and Envoy answer.
    pub fn into_grpc_answer(self) -> OwnAnswer {
        if let ProxyError::Answered(answer) = self {
            return *answer;
        }
        let (code, _) = self.grpc_status();
        let message = match self.service() {
            Some(s) => format!("zkgate: service {s}: {self}"),
            None => format!("zkgate: {self}"),
        };
        let mut answer = OwnAnswer::empty(StatusCode::OK);
        let h = &mut answer.headers;
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(u16::from(code)));
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
            h.insert("grpc-message", v);
        }
        answer
    }
}

/// gRPC's `grpc-message` encoding: percent-encode everything outside printable ASCII and `%`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `Retry-After` for a wait: whole seconds, at least 1.
pub fn retry_after(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.as_secs() == 0))
}

/// Methods the gateway forwards (for `Allow`).
pub const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(std::time::Duration::from_millis(1)), 1);
        assert_eq!(retry_after(std::time::Duration::from_millis(1000)), 1);
        assert_eq!(retry_after(std::time::Duration::from_millis(1001)), 2);
        assert_eq!(retry_after(std::time::Duration::ZERO), 1);
    }

    #[test]
    fn errors_map_to_the_statuses_operators_expect() {
        let cases = [
            (ProxyError::Route(RouteError::NoRoute), 404),
            (ProxyError::Route(RouteError::BadRequest("x".into())), 400),
            (ProxyError::UnknownService("s".into()), 404),
            (ProxyError::NoInstance("s".into()), 503),
            (ProxyError::NotReady("s".into()), 503),
            (ProxyError::Upstream("s".into(), UpstreamError::Connect("refused".into())), 502),
            (
                ProxyError::Upstream(
                    "s".into(),
                    UpstreamError::Timeout(std::time::Duration::from_secs(1)),
                ),
                504,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.status().as_u16(), code);
        }
    }
}
