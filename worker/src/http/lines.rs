//! A message's header lines as the one policy (`policy.rs`) reads and writes them, whichever
//! side the message came by: each line's [`Kind`] decided once by its name ([`kind_of`]), the
//! [`Line`] both sides hand over, and the [`HeadSink`] the policy writes to (the engine's
//! outgoing HTTP/1.1 head, or hyper's `HeaderMap`).

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// What a header line is to the policy, decided by its name alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Forwarded as it came.
    Plain,
    /// `Host`: replaced (or kept with `preserve_host`).
    Host,
    /// `Connection`: read for `close` and the names it lists, never forwarded.
    Connection,
    /// Another hop-by-hop header (RFC 9110 §7.6.1), or `Expect` (answered by the gateway):
    /// never forwarded.
    HopByHop,
    /// `X-Forwarded-For`: this hop appended (a trusted peer's list kept before it).
    ForwardedFor,
    /// `X-Forwarded-Proto`, `-Host`, `-Port`, `Forwarded`: a trusted peer's kept, anyone
    /// else's replaced by the gateway's. The client-address headers frameworks prefer to
    /// `X-Forwarded-For` (`X-Real-IP`, `True-Client-IP`, `X-Client-IP`: chi's RealIP, Akamai,
    /// Rails) likewise: a trusted peer's kept, anyone else's dropped.
    ForwardedOther,
    /// `X-Request-Id`: kept; one is added when absent.
    RequestId,
    /// `Via`: kept; this hop is appended.
    Via,
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// A name with `_` (dropped unless allowed).
    Underscored,
    /// `X-Auth-*` and `X-Client-Cert-Subject`: what the gateway says about a verified client.
    /// A client's own lines never reach an instance; the gateway's are written from the
    /// [`Origin`](crate::http::policy::Origin)'s identity.
    Identity,
    /// `traceparent`: replaced by the gateway's own when it traces the request (the same trace,
    /// its span as the parent), kept as sent otherwise.
    TraceParent,
}

/// Whether the header name `name` is `lower` (lower-case letters, digits and `-`), without
/// regard to case: a word at a time, each byte folded by setting its 0x20 bit — words of
/// eight from the start and one ending at the end (overlapping the one before it), or two
/// of four for a shorter name. Only an upper-case letter folds onto a letter, and only a
/// control byte (below 0x20, refused here) onto a digit or `-`, so the fold is exact.
fn is_named(name: &[u8], lower: &[u8]) -> bool {
    const FOLD: u64 = 0x2020_2020_2020_2020;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    // The `N` bytes from `at` of both, as words; the rest of a word is spaces in both (equal
    // once folded, and not below 0x20).
    fn words<const N: usize>(name: &[u8], lower: &[u8], at: usize) -> (u64, u64) {
        let mut w = [[b' '; 8]; 2];
        w[0][..N].copy_from_slice(&name[at..at + N]);
        w[1][..N].copy_from_slice(&lower[at..at + N]);
        (u64::from_le_bytes(w[0]), u64::from_le_bytes(w[1]))
    }
    // Equal once folded, and no byte below 0x20 (the classic has-less-than test).
    let same = |(w, l): (u64, u64)| w | FOLD == l && w.wrapping_sub(FOLD) & !w & HIGH == 0;
    match n {
        8.. => {
            let mut at = 0;
            while at + 8 < n {
                if !same(words::<8>(name, lower, at)) {
                    return false;
                }
                at += 8;
            }
            same(words::<8>(name, lower, n - 8))
        }
        4..=7 => same(words::<4>(name, lower, 0)) && same(words::<4>(name, lower, n - 4)),
        _ => name.iter().zip(lower).all(|(x, y)| *x >= 0x20 && x | 0x20 == *y),
    }
}

/// Classifies a header name; names are compared without regard to case.
pub fn kind_of(name: &[u8]) -> Kind {
    let is = |n: &str| is_named(name, n.as_bytes());
    let kind = match name.len() {
        2 if is("te") => Kind::HopByHop,
        4 if is("host") => Kind::Host,
        3 if is("via") => Kind::Via,
        6 if is("expect") => Kind::HopByHop,
        7 if is("trailer") || is("upgrade") => Kind::HopByHop,
        9 if is("forwarded") || is("x-real-ip") => Kind::ForwardedOther,
        11 if is("x-client-ip") => Kind::ForwardedOther,

        10 if is("connection") => Kind::Connection,
        10 if is("keep-alive") => Kind::HopByHop,
        12 if is("x-request-id") => Kind::RequestId,
        14 if is("content-length") => Kind::ContentLength,
        14 if is("true-client-ip") => Kind::ForwardedOther,
        14 if is("http2-settings") => Kind::HopByHop,
        15 if is("x-forwarded-for") => Kind::ForwardedFor,
        16 if is("proxy-connection") => Kind::HopByHop,
        16 if is("x-forwarded-host") || is("x-forwarded-port") => Kind::ForwardedOther,
        17 if is("transfer-encoding") => Kind::TransferEncoding,
        17 if is("x-forwarded-proto") => Kind::ForwardedOther,
        18 if is("proxy-authenticate") => Kind::HopByHop,
        19 if is("proxy-authorization") => Kind::HopByHop,
        11 if is("traceparent") => Kind::TraceParent,
        n if n >= 7 && crate::auth::is_identity_header(name) => Kind::Identity,
        _ => Kind::Plain,
    };
    // A plain loop: names are short, and `contains` calls out to memchr for each.
    #[allow(clippy::manual_contains)]
    if kind == Kind::Plain && name.iter().any(|b| *b == b'_') {
        return Kind::Underscored;
    }
    kind
}

/// One header line of a message, as either protocol side read it.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// What it is to the policy.
    pub kind: Kind,
    /// Its name.
    pub name: &'a [u8],
    /// Its value, without surrounding whitespace.
    pub value: &'a [u8],
    /// The line as it came, from its name to its value's end, when it came in a buffer (the
    /// engine's): a line going on unchanged is copied in one piece. Empty otherwise.
    pub raw: &'a [u8],
}

impl<'a> Line<'a> {
    /// A line from a name and value, classified.
    pub fn new(name: &'a [u8], value: &'a [u8]) -> Self {
        Line { kind: kind_of(name), name, value, raw: &[] }
    }
}

/// The lines of a hyper `HeaderMap` (the h2 side), collected: the policy reads them twice
/// and hyper's iterator cannot be cloned.
pub fn map_lines(headers: &HeaderMap) -> Vec<Line<'_>> {
    headers.iter().map(|(n, v)| Line::new(n.as_str().as_bytes(), v.as_bytes())).collect()
}

/// Where the policy writes the lines a message goes on with.
pub trait HeadSink {
    /// Appends one line.
    fn put(&mut self, name: &[u8], value: &[u8]);

    /// Appends a line of the message as it came.
    fn put_line(&mut self, line: &Line<'_>) {
        self.put(line.name, line.value)
    }
}

/// The engine's outgoing HTTP/1.1 head.
impl HeadSink for Vec<u8> {
    fn put(&mut self, name: &[u8], value: &[u8]) {
        self.reserve(name.len() + value.len() + 4);
        self.extend_from_slice(name);
        self.extend_from_slice(b": ");
        self.extend_from_slice(value);
        self.extend_from_slice(b"\r\n");
    }

    /// One copy of the line as it came (name, colon, whitespace, value), when it did.
    fn put_line(&mut self, line: &Line<'_>) {
        match line.raw.is_empty() {
            true => self.put(line.name, line.value),
            false => {
                self.extend_from_slice(line.raw);
                self.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// hyper's headers (the h2 side). A line that is not a valid name or value is left out: both
/// came from a parsed message or from the configuration, so none is expected.
impl HeadSink for HeaderMap {
    fn put(&mut self, name: &[u8], value: &[u8]) {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            self.append(n, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_exactly_eight_bytes_at_a_time() {
        for (name, lower, same) in [
            (&b"Content-Length"[..], &b"content-length"[..], true),
            (b"CONTENT-LENGTH", b"content-length", true),
            (b"content_length", b"content-length", false),
            (b"content\rlength", b"content-length", false),
            (b"x-request-i\x04", b"x-request-id", false),
            (b"X-Request-\x0d\x04", b"x-request-id", false),
            (b"te", b"te", true),
            (b"tE", b"te", true),
            (b"t\x05", b"te", false),
            (b"X-FORWARDED-FOR", b"x-forwarded-for", true),
            (b"x-forwarded-fo", b"x-forwarded-for", false),
            (b"http2-settings", b"http2-settings", true),
            (b"HTTP\x12-SETTINGS", b"http2-settings", false),
        ] {
            assert_eq!(is_named(name, lower), same, "{:?}", String::from_utf8_lossy(name));
            assert_eq!(name.eq_ignore_ascii_case(lower) && !name.iter().any(|b| *b < 0x20), same);
        }
        // Every name the classifier knows, each byte of it changed to every other byte.
        let known = ["te", "via", "host", "expect", "trailer", "upgrade", "forwarded"]
            .into_iter()
            .chain(["x-real-ip", "connection", "x-client-ip", "x-request-id", "content-length"])
            .chain(["x-forwarded-for", "proxy-connection", "transfer-encoding"])
            .chain(["proxy-authorization", "x-client-cert-subject", "a-name-of-many-words-x"]);
        for lower in known.map(str::as_bytes) {
            for at in 0..lower.len() {
                for b in 0..=255u8 {
                    let mut name = lower.to_vec();
                    name[at] = b;
                    let want = name.eq_ignore_ascii_case(lower);
                    assert_eq!(is_named(&name, lower), want, "{name:?} {lower:?}");
                }
            }
            assert!(is_named(&lower.to_ascii_uppercase(), lower));
        }
        assert_eq!(kind_of(b"CONTENT-length"), Kind::ContentLength);
        assert_eq!(kind_of(b"content\rlength"), Kind::Plain);
    }
}
