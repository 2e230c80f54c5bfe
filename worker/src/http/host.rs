//! The host a request was for, as routes match it: from an absolute-form target, else the
//! `Host` line, without its port.

use http::{HeaderMap, Uri};

/// The request's host without port: from an absolute-form URI, else the `Host` header.
pub fn request_host(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    if let Some(h) = uri.host() {
        return Some(h.to_string());
    }
    host_of(headers.get(http::header::HOST)?.as_bytes()).map(str::to_string)
}

/// The host of a `Host` value, without port; `None` when it is not a valid authority.
pub fn host_of(raw: &[u8]) -> Option<&str> {
    // The common shape (a name or IPv4 address, maybe a port) without building an Authority.
    let colon = raw.iter().position(|b| *b == b':');
    let (host, port) = match colon {
        Some(i) => (&raw[..i], Some(&raw[i + 1..])),
        None => (raw, None),
    };
    let plain = |b: &u8| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-';
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && p.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535
    });
    if port_ok && !host.is_empty() && host.iter().all(plain) {
        // ASCII by the check above.
        return std::str::from_utf8(host).ok();
    }
    let raw = std::str::from_utf8(raw).ok()?;
    let auth: http::uri::Authority = raw.parse().ok()?;
    let host = auth.host();
    // The authority's host is a slice of `raw` (userinfo and port cut off).
    let start = raw.find(host)?;
    Some(&raw[start..start + host.len()])
}
