//! Header hygiene between client and instance: hop-by-hop headers removed both ways (including
//! the ones a `Connection` header names), `X-Forwarded-*`, `Via` and `X-Request-Id` set on the
//! way in.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1). Names, not
/// strings: a `&str` key is parsed again on every lookup.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The `Via` entry of a gateway: `1.1 <pseudonym>`, unique per running gateway so that a
/// request coming back to the same gateway is recognised (508) while a chain of distinct
/// gateways is not mistaken for a loop (RFC 9110 §7.6.3).
pub fn via_entry(pseudonym: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("1.1 {pseudonym}"))
        .unwrap_or_else(|_| HeaderValue::from_static("1.1 zkgate"))
}

/// Whether the request already passed through this gateway.
pub fn has_via(headers: &HeaderMap, entry: &HeaderValue) -> bool {
    headers.get_all(header::VIA).iter().any(|v| via_lists(v.as_bytes(), entry))
}

/// Whether one `Via` value lists this gateway's entry (protocol and pseudonym, comments and
/// spacing aside).
pub fn via_lists(value: &[u8], entry: &HeaderValue) -> bool {
    let mine = entry.as_bytes();
    value.split(|b| *b == b',').any(|hop| {
        let mut words = hop.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty());
        let (Some(proto), Some(name)) = (words.next(), words.next()) else { return false };
        mine.len() == proto.len() + 1 + name.len()
            && mine.starts_with(proto)
            && mine[proto.len()] == b' '
            && mine.ends_with(name)
    })
}

/// Which header names with `_` are forwarded. nginx drops them by default
/// (`underscores_in_headers off`): CGI-style backends fold `X_Forwarded_For` and
/// `X-Forwarded-For` into one variable, so an underscored copy could override ours.
#[derive(Debug, Clone)]
pub enum Underscores {
    /// Forward them all (`proxy.underscores_in_headers = true`).
    All,
    /// Drop all but these (the header-routing headers, which the seed's clients send).
    Only(Vec<HeaderName>),
}

impl Underscores {
    /// Whether an underscored name is forwarded.
    pub fn allows(&self, name: &[u8]) -> bool {
        match self {
            Underscores::All => true,
            Underscores::Only(names) => {
                names.iter().any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
            }
        }
    }
}

/// Drops header names containing `_`, except those `keep` allows.
pub fn remove_underscored(headers: &mut HeaderMap, keep: &Underscores) {
    let Underscores::Only(allowed) = keep else { return };
    let drop: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_') && !allowed.contains(k))
        .cloned()
        .collect();
    for name in drop {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers, and every header the `Connection` header lists.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present (a handful) instead of a hashed lookup per hop-by-hop
    // name: most messages carry none or one of them.
    let mut found: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if HOP_BY_HOP.contains(name) {
            found.push(name.clone());
        }
    }
    if found.is_empty() {
        return;
    }
    if found.contains(&header::CONNECTION) {
        let named = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok());
        found.extend(named);
    }
    for name in found {
        headers.remove(name);
    }
}

/// Adds what the instance should know about the original request.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    original_host: Option<&str>,
    proto: HeaderValue,
    via: &HeaderValue,
) {
    // Every X-Forwarded-For line the client sent, joined (RFC 9110 §5.3), then this hop. The
    // common case (none sent) formats the address into a stack buffer: one allocation.
    let mut ip = [0u8; 64];
    let ip_len = {
        use std::io::Write as _;
        let mut cursor = std::io::Cursor::new(&mut ip[..]);
        let _ = write!(cursor, "{client}");
        cursor.position() as usize
    };
    let ip = &ip[..ip_len];
    let xff = if headers.contains_key(&X_FORWARDED_FOR) {
        let mut joined = Vec::with_capacity(64);
        let sent = headers.get_all(&X_FORWARDED_FOR).iter().map(|v| v.as_bytes().trim_ascii());
        for hop in sent.filter(|v| !v.is_empty()) {
            joined.extend_from_slice(hop);
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(ip);
        HeaderValue::from_bytes(&joined)
    } else {
        HeaderValue::from_bytes(ip)
    };
    if let Ok(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
    if let Some(h) = original_host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(X_FORWARDED_HOST.clone(), h);
    }
    append_via(headers, via);
    if !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID.clone(), request_id());
    }
}

/// Appends this hop to `Via` (every earlier line kept, in order).
pub fn append_via(headers: &mut HeaderMap, entry: &HeaderValue) {
    headers.append(header::VIA, entry.clone());
}

/// A random 128-bit id in hex, for requests that arrive without one.
fn request_id() -> HeaderValue {
    HeaderValue::from_bytes(&request_id_bytes()).expect("hex digits are a valid header value")
}

/// A random 128-bit id as 32 hex digits.
pub fn request_id_bytes() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = rand::random::<u128>();
    let mut buf = [0u8; 32];
    for b in buf.iter_mut().rev() {
        *b = HEX[(id & 0xf) as usize];
        id >>= 4;
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscored_names_are_dropped_but_the_routing_headers() {
        let mut h = HeaderMap::new();
        h.insert("x_forwarded_for", "6.6.6.6".parse().unwrap());
        h.insert("service_name", "web".parse().unwrap());
        h.insert("x-ok", "1".parse().unwrap());
        remove_underscored(
            &mut h,
            &Underscores::Only(vec![HeaderName::from_static("service_name")]),
        );
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["service_name", "x-ok"]);
    }

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
        h.append("x-forwarded-for", "198.51.100.7".parse().unwrap());
        let via = via_entry("zkgate-test");
        let http = || HeaderValue::from_static("http");
        add_forwarded(&mut h, "127.0.0.1".parse().unwrap(), Some("api.example.com"), http(), &via);
        assert_eq!(
            h["x-forwarded-for"], "203.0.113.9, 198.51.100.7, 127.0.0.1",
            "every line joined"
        );
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["via"], "1.1 zkgate-test");
        assert!(has_via(&h, &via) && !has_via(&h, &via_entry("zkgate-other")));
        assert_eq!(h["x-request-id"], "abc");
        let mut fresh = HeaderMap::new();
        add_forwarded(&mut fresh, "::1".parse().unwrap(), None, http(), &via);
        assert_eq!(fresh["x-forwarded-for"], "::1");
        assert_eq!(fresh["x-request-id"].len(), 32);
    }
}
