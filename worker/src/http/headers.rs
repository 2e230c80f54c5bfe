//! Header hygiene between client and instance: hop-by-hop headers removed both ways (including
//! the ones a `Connection` header names), `X-Forwarded-*`, `Via` and `X-Request-Id` set on the
//! way in.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The `Via` token this gateway adds (RFC 9110 §7.6.3).
const VIA: &str = "1.1 zkgate";

/// Removes hop-by-hop headers, and every header the `Connection` header lists.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::PROXY_AUTHENTICATE);
}

/// Adds what the instance should know about the original request.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, original_host: Option<&str>) {
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {client}"),
        _ => client.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(h) = original_host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(X_FORWARDED_HOST.clone(), h);
    }
    append_via(headers);
    if !headers.contains_key(&X_REQUEST_ID) {
        if let Ok(v) = HeaderValue::from_str(&request_id()) {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
    }
}

/// Appends this hop to `Via`.
pub fn append_via(headers: &mut HeaderMap) {
    let via = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {VIA}"),
        None => VIA.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&via) {
        headers.insert(header::VIA, v);
    }
}

/// A random 128-bit id in hex, for requests that arrive without one.
fn request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn forwarded_headers_append_and_request_id_is_kept() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        h.insert("x-request-id", "abc".parse().unwrap());
        add_forwarded(&mut h, "127.0.0.1".parse().unwrap(), Some("api.example.com"));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["via"], "1.1 zkgate");
        assert_eq!(h["x-request-id"], "abc");
        let mut fresh = HeaderMap::new();
        add_forwarded(&mut fresh, "::1".parse().unwrap(), None);
        assert_eq!(fresh["x-forwarded-for"], "::1");
        assert_eq!(fresh["x-request-id"].len(), 32);
    }
}
