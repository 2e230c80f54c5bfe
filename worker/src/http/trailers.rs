//! Which trailer fields go on: a request's by an allow-list (what an instance merging
//! trailers into the head could take for checked identity must never come after the checks),
//! an answer's by RFC 9110's deny-list. One list for both protocol sides.

use http::header::{HeaderMap, HeaderName};

/// Fields a trailer may not carry (RFC 9110 §6.5.1): framing, routing, connection control,
/// authentication, and what decides how the content is processed — a sender could otherwise
/// say in a trailer what the head was checked for.
const FORBIDDEN_IN_TRAILERS: [&str; 22] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "authorization",
    "proxy-authorization",
    "proxy-authenticate",
    "www-authenticate",
    "cookie",
    "set-cookie",
    "content-type",
    "content-encoding",
    "content-range",
    "cache-control",
    "location",
    "max-forwards",
];

/// Whether a request trailer field reaches the instance: only gRPC's own (`grpc-*`). Instances
/// that merge trailers into the head (older Puma, CGI bridges) would otherwise take, after
/// the gateway's checks, what the head was checked for — an `X-Auth-Subject`, an
/// `X-Forwarded-For` — so request trailers pass by an allow-list, never a deny-list.
pub fn request_trailer_allowed(name: &[u8]) -> bool {
    name.len() > 5 && name[..5].eq_ignore_ascii_case(b"grpc-") && !name.contains(&b'_')
}

/// Whether an answer's trailer field reaches the client: any but what RFC 9110 forbids there.
pub fn response_trailer_allowed(name: &[u8]) -> bool {
    !FORBIDDEN_IN_TRAILERS.iter().any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
}

/// Keeps the request trailer fields [`request_trailer_allowed`] lets through (the h2 side's
/// trailers frame).
pub fn filter_request_trailers(trailers: &mut HeaderMap) {
    let dropped: Vec<HeaderName> = trailers
        .keys()
        .filter(|n| !request_trailer_allowed(n.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in dropped {
        trailers.remove(name);
    }
}
