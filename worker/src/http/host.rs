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

/// The bytes of a plain host name or IPv4 address: letters, digits, `.` and `-`.
const HOST_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'.' || c == b'-';
        b += 1;
    }
    table
};

/// The host of a `Host` value, without port; `None` when it is not a valid authority.
pub fn host_of(raw: &[u8]) -> Option<&str> {
    // The common shape (a name or IPv4 address, maybe a port), in one pass, without building an
    // Authority: every request asks. One table lookup a byte.
    let stop = raw.iter().position(|b| !HOST_BYTE[usize::from(*b)]);
    let colon = stop.filter(|i| raw[*i] == b':');
    let plain = !raw.is_empty() && stop == colon;
    let port_ok = colon.is_none_or(|i| {
        let port = &raw[i + 1..];
        (1..=5).contains(&port.len())
            && port
                .iter()
                .try_fold(0u32, |n, d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
                .is_some_and(|n| n <= 65535)
    });
    let host = &raw[..colon.unwrap_or(raw.len())];
    if plain && port_ok && !host.is_empty() {
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

#[cfg(test)]
mod tests {
    use super::host_of;

    /// The first version, iterator by iterator: the model the one-pass `host_of` keeps to.
    fn host_of_model(raw: &[u8]) -> Option<&str> {
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
            return std::str::from_utf8(host).ok();
        }
        let raw = std::str::from_utf8(raw).ok()?;
        let auth: http::uri::Authority = raw.parse().ok()?;
        let host = auth.host();
        let start = raw.find(host)?;
        Some(&raw[start..start + host.len()])
    }

    #[test]
    fn the_host_of_a_host_value_in_every_shape() {
        let cases: [&[u8]; 16] = [
            b"api.example",
            b"api.example:8080",
            b"10.0.0.1:65535",
            b"10.0.0.1:65536",
            b"10.0.0.1:",
            b"10.0.0.1:80a",
            b"[::1]:8080",
            b"[::1]",
            b"",
            b":80",
            b"a b",
            b"user@host:80",
            b"API.Example",
            b"host:123456",
            b"h\xffst:80",
            b"a:b:c",
        ];
        for raw in cases {
            assert_eq!(host_of(raw), host_of_model(raw), "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(host_of(b"api.example:8080"), Some("api.example"));
        assert_eq!(host_of(b"[::1]:8080"), Some("[::1]"));
        assert_eq!(host_of(b"a b"), None);
    }
}
