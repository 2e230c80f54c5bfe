//! An answer the gateway writes itself — a refusal, `OPTIONS *`, a route's redirect or fixed
//! answer, a CORS preflight — built once and rendered by each protocol side.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::http::Body;

/// An answer the gateway writes itself (a refusal, `OPTIONS *`): whole in memory, built once
/// and rendered by each protocol side — as bytes by the engine ([`OwnAnswer::write_h1`]), as a
/// `Response` by hyper ([`OwnAnswer::into_response`]) — so both send the same status, headers
/// and body.
#[derive(Debug, Clone)]
pub struct OwnAnswer {
    /// Its status.
    pub status: StatusCode,
    /// Its headers, framing aside (each side frames the body its own way).
    pub headers: HeaderMap,
    /// Its body, whole.
    pub body: Bytes,
}

impl OwnAnswer {
    /// A small JSON error body, for the proxy and the server's own refusals.
    pub fn json(status: StatusCode, error: &str, service: Option<&str>) -> Self {
        let mut body = serde_json::json!({ "error": error });
        if let Some(s) = service {
            body["service"] = serde_json::Value::from(s);
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        OwnAnswer { status, headers, body: Bytes::from(format!("{body}\n")) }
    }

    /// An empty answer with this status.
    pub fn empty(status: StatusCode) -> Self {
        OwnAnswer { status, headers: HeaderMap::new(), body: Bytes::new() }
    }

    /// The answer on hyper's side.
    pub fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(Full::new(self.body).map_err(|never| match never {}).boxed());
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }

    /// The answer as the engine writes it: an HTTP/1.1 head with `Content-Length` (and
    /// `Connection: close` when the connection ends after it), then the body.
    pub fn write_h1(&self, close: bool, out: &mut Vec<u8>) {
        use crate::http::policy::HeadSink as _;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.put(name.as_str().as_bytes(), value.as_bytes());
        }
        out.put(b"content-length", self.body.len().to_string().as_bytes());
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
    }
}
