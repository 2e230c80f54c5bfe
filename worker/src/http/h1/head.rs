//! Request and response heads of the fast path, parsed with `httparse` into offsets of the
//! connection's own buffer: no `HeaderMap`, no copy of a name or value. Each line is classified
//! once (host, hop-by-hop, `X-Forwarded-*` …) so writing the outgoing head is one pass.
//!
//! The fast path takes only what it can forward exactly as the hyper path would. Anything else —
//! a parse error, HTTP/1.0 or HTTP/2, a body, an upgrade, `Expect`, `CONNECT`, a target that is
//! not a path, two `Host` lines — is [`Parse::Handover`]: hyper serves the connection from that
//! request on, so every refusal and limit keeps the one implementation it has always had.

use std::mem::MaybeUninit;

/// Most header lines in a head (hyper's default for the path it hands over to).
pub const MAX_HEADERS: usize = 100;

/// A byte range of the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of(base: *const u8, part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - base as usize;
        Span { start: start as u32, end: (start + part.len()) as u32 }
    }

    /// The bytes of `buf` this span covers (`buf` is the buffer it was parsed from).
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }
}

/// What a header line is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Forwarded as it came.
    Plain,
    /// `Host`: replaced (or kept with `preserve_host`).
    Host,
    /// `Connection`: read for `close` and the names it lists, never forwarded.
    Connection,
    /// Another hop-by-hop header (RFC 9110 §7.6.1): never forwarded.
    HopByHop,
    /// `X-Forwarded-For`: joined with this hop's address.
    ForwardedFor,
    /// `X-Forwarded-Proto` / `X-Forwarded-Host`: replaced by the gateway's.
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
}

/// One header line.
#[derive(Debug, Clone, Copy)]
pub struct Line {
    /// Its name.
    pub name: Span,
    /// Its value (without surrounding whitespace).
    pub value: Span,
    /// What it is to the proxy.
    pub kind: Kind,
}

/// Classifies a header name; names are compared without regard to case.
pub fn kind_of(name: &[u8]) -> Kind {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    let kind = match name.len() {
        2 if is("te") => Kind::HopByHop,
        4 if is("host") => Kind::Host,
        3 if is("via") => Kind::Via,
        6 if is("expect") => Kind::HopByHop,
        7 if is("trailer") || is("upgrade") => Kind::HopByHop,
        10 if is("connection") => Kind::Connection,
        10 if is("keep-alive") => Kind::HopByHop,
        12 if is("x-request-id") => Kind::RequestId,
        14 if is("content-length") => Kind::ContentLength,
        15 if is("x-forwarded-for") => Kind::ForwardedFor,
        16 if is("proxy-connection") => Kind::HopByHop,
        16 if is("x-forwarded-host") => Kind::ForwardedOther,
        17 if is("transfer-encoding") => Kind::TransferEncoding,
        17 if is("x-forwarded-proto") => Kind::ForwardedOther,
        18 if is("proxy-authenticate") => Kind::HopByHop,
        19 if is("proxy-authorization") => Kind::HopByHop,
        _ => Kind::Plain,
    };
    if kind == Kind::Plain && name.contains(&b'_') {
        return Kind::Underscored;
    }
    kind
}

/// Whether a comma-separated header value lists `token` (without regard to case).
pub fn lists(value: &[u8], token: &str) -> bool {
    value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether a `Connection` value names any header beyond `close` and `keep-alive` (`Keep-Alive`
/// is hop-by-hop anyway): only then is every line checked against it.
pub fn names_headers(value: &[u8]) -> bool {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii).any(|t| {
        !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
    })
}

/// Whether `name` is among the tokens of the `Connection` lines of `lines`.
pub fn named_by_connection(buf: &[u8], lines: &[Line], name: &[u8]) -> bool {
    lines.iter().filter(|l| l.kind == Kind::Connection).any(|l| {
        l.value.get(buf).split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
    })
}

/// A request head the fast path will forward.
#[derive(Debug, Default)]
pub struct RequestHead {
    /// Bytes of the head, final empty line included.
    pub len: usize,
    /// The method.
    pub method: Span,
    /// The origin-form target (path and query).
    pub target: Span,
    /// Header lines, in order.
    pub lines: Vec<Line>,
    /// The `Host` line, if any.
    pub host: Option<usize>,
    /// The client asked to close after this exchange.
    pub close: bool,
    /// A `Connection` line names other headers (each line is checked against it only then).
    pub connection_lists: bool,
}

/// What a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// Not a whole head yet.
    Partial,
    /// A whole head the fast path forwards.
    Complete,
    /// Something the hyper path serves (see the module's doc).
    Handover,
}

/// Parses the request head at the start of `buf` into `head` (its line vector reused).
pub fn parse_request(buf: &[u8], head: &mut RequestHead) -> Parse {
    let mut storage = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut storage) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::Handover,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parse::Handover;
    };
    if method == "CONNECT" || !target.starts_with('/') {
        return Parse::Handover;
    }
    let base = buf.as_ptr();
    head.len = len;
    head.method = Span::of(base, method.as_bytes());
    head.target = Span::of(base, target.as_bytes());
    head.lines.clear();
    head.host = None;
    head.close = false;
    head.connection_lists = false;
    for h in req.headers.iter() {
        let kind = kind_of(h.name.as_bytes());
        let value = h.value.trim_ascii();
        match kind {
            Kind::Host if head.host.is_some() => return Parse::Handover,
            Kind::Host => head.host = Some(head.lines.len()),
            // A body (or its framing in doubt), an upgrade, an expectation: hyper's.
            Kind::TransferEncoding => return Parse::Handover,
            Kind::ContentLength if value != b"0" => return Parse::Handover,
            Kind::HopByHop
                if h.name.eq_ignore_ascii_case("upgrade")
                    || h.name.eq_ignore_ascii_case("expect") =>
            {
                return Parse::Handover
            }
            Kind::Connection => {
                head.close |= lists(value, "close");
                head.connection_lists |= names_headers(value);
            }
            _ => {}
        }
        head.lines.push(Line {
            name: Span::of(base, h.name.as_bytes()),
            value: Span::of(base, value),
            kind,
        });
    }
    let content_lengths = head.lines.iter().filter(|l| l.kind == Kind::ContentLength).count();
    if content_lengths > 1 {
        return Parse::Handover;
    }
    Parse::Complete
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a HEAD answer, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the instance closes the connection.
    UntilClose,
}

/// A response head from an instance.
#[derive(Debug, Default)]
pub struct ResponseHead {
    /// Bytes of the head.
    pub len: usize,
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: Span,
    /// Header lines, in order.
    pub lines: Vec<Line>,
    /// How the body is delimited.
    pub framing: Option<Framing>,
    /// The connection may carry another request once the body is read.
    pub reusable: bool,
}

/// Why an instance's answer cannot be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x, or malformed.
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
}

/// Parses the response head at the start of `buf`; `Ok(None)` when incomplete. `head_request`:
/// the answer to a HEAD has no body whatever it declares.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    head: &mut ResponseHead,
) -> Result<Option<()>, HeadError> {
    let mut storage = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut storage,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Malformed("too many headers"))
        }
        Err(_) => return Err(HeadError::Malformed("not HTTP/1.x")),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(HeadError::Malformed("no status"));
    };
    let base = buf.as_ptr();
    head.len = len;
    head.status = status;
    head.reason = Span::of(base, resp.reason.unwrap_or("").as_bytes());
    head.lines.clear();
    let mut close = version == 0;
    let mut chunked = false;
    let mut length: Option<u64> = None;
    for h in resp.headers.iter() {
        let kind = kind_of(h.name.as_bytes());
        let value = h.value.trim_ascii();
        match kind {
            Kind::Connection => {
                close |= lists(value, "close");
                if version == 0 && lists(value, "keep-alive") {
                    close = false;
                }
            }
            Kind::TransferEncoding => {
                // Only chunked is de-framed; another coding would be forwarded without the
                // client being told how to read it.
                if !value.eq_ignore_ascii_case(b"chunked") || chunked {
                    return Err(HeadError::Malformed("transfer coding other than chunked"));
                }
                chunked = true;
            }
            Kind::ContentLength => {
                let n = parse_length(value).ok_or(HeadError::Malformed("bad content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::Malformed("conflicting content-length"));
                }
                length = Some(n);
            }
            _ => {}
        }
        head.lines.push(Line {
            name: Span::of(base, h.name.as_bytes()),
            value: Span::of(base, value),
            kind,
        });
    }
    head.framing = Some(match status {
        100..=199 => Framing::Empty,
        _ if head_request || status == 204 || status == 304 => Framing::Empty,
        // Chunked wins over a Content-Length, which is then not forwarded (RFC 9112 §6.3).
        _ if chunked => Framing::Chunked,
        _ => length.map_or(Framing::UntilClose, Framing::Length),
    });
    head.reusable = !close && head.framing != Some(Framing::UntilClose);
    Ok(Some(()))
}

/// A `Content-Length` value: decimal digits only, no sign, no overflow.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> (Parse, RequestHead) {
        let mut head = RequestHead::default();
        (parse_request(raw.as_bytes(), &mut head), head)
    }

    #[test]
    fn a_plain_get_is_taken_and_its_lines_classified() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: x:80\r\nConnection: close\r\nX_Y: 1\r\nVia: 1.0 p\r\n\r\nNEXT";
        let (p, head) = parse(raw);
        assert_eq!(p, Parse::Complete);
        assert_eq!(head.len, raw.len() - 4);
        assert_eq!(head.target.get(raw.as_bytes()), b"/a?b=1");
        assert!(head.close && head.host == Some(0));
        let kinds: Vec<Kind> = head.lines.iter().map(|l| l.kind).collect();
        assert_eq!(kinds, [Kind::Host, Kind::Connection, Kind::Underscored, Kind::Via]);
    }

    #[test]
    fn anything_unusual_is_handed_over() {
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert_eq!(parse(raw).0, Parse::Handover, "{raw:?}");
        }
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: a").0, Parse::Partial);
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let frame = |raw: &str, head_req: bool| {
            let mut h = ResponseHead::default();
            parse_response(raw.as_bytes(), head_req, &mut h).map(|_| (h.framing, h.reusable))
        };
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(frame(ok, false), Ok((Some(Framing::Length(5)), true)));
        assert_eq!(frame(ok, true), Ok((Some(Framing::Empty), true)));
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(frame(chunked, false), Ok((Some(Framing::Chunked), true)));
        let eof = "HTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(frame(eof, false), Ok((Some(Framing::UntilClose), false)));
        let old = "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(frame(old, false), Ok((Some(Framing::Length(1)), false)));
        let closing = "HTTP/1.1 204 No\r\nConnection: close\r\n\r\n";
        assert_eq!(frame(closing, false), Ok((Some(Framing::Empty), false)));
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/2 200\r\n\r\n",
        ] {
            assert!(frame(bad, false).is_err(), "{bad:?}");
        }
        assert_eq!(frame("HTTP/1.1 200 OK\r\n", false), Ok((None, false)));
    }
}
