//! Request and response heads of the engine, read by [`scan`] (exactly what httparse reads, in
//! fewer steps) into offsets of the connection's own buffer: no `HeaderMap`, no copy of a name
//! or value. Each line is classified once (host, hop-by-hop, `X-Forwarded-*` …) so writing the
//! outgoing head is one pass.
//!
//! What hyper serves is [`Parse::Handover`]: HTTP/2's preface (h2c with prior knowledge). Any
//! other head the scanner refuses is [`Parse::Refuse`]d with the reason (an HTTP version other
//! than 1.0 and 1.1: 505), as is framing in doubt, before anything is forwarded.

use crate::http::h1::scan::{self, Field};
use crate::http::policy::{self, kind_of, lists, Kind};

/// Most header lines in a head (hyper's default for the path it hands over to).
pub const MAX_HEADERS: usize = 100;

/// A byte range of the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn range((start, end): scan::Range) -> Span {
        Span { start: start as u32, end: end as u32 }
    }

    /// The bytes of `buf` this span covers (`buf` is the buffer it was parsed from).
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }
}

/// One header line: offsets into the buffer it was parsed from, and what it is to the policy.
#[derive(Debug, Clone, Copy)]
pub struct Line {
    /// Its name.
    pub name: Span,
    /// Its value (without surrounding whitespace).
    pub value: Span,
    /// What it is to the proxy.
    pub kind: Kind,
}

impl Line {
    /// The line as the policy reads it.
    pub fn view<'a>(&self, buf: &'a [u8]) -> policy::Line<'a> {
        // Name, colon, whitespace, value, as they came: one span of the buffer, the name and
        // the value within it.
        let start = self.name.start;
        let raw = Span { start, end: self.value.end }.get(buf);
        let name = &raw[..(self.name.end - start) as usize];
        let value = &raw[(self.value.start - start) as usize..];
        policy::Line { kind: self.kind, name, value, raw }
    }
}

/// The lines of a head parsed from `buf`, as the policy reads them.
pub fn lines<'a>(
    buf: &'a [u8],
    lines: &'a [Line],
) -> impl Iterator<Item = policy::Line<'a>> + Clone {
    lines.iter().map(move |l| l.view(buf))
}

/// How a request's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    #[default]
    None,
    /// `Content-Length` bytes (more than zero).
    Length(u64),
    /// Chunked.
    Chunked,
}

/// A request head the engine forwards.
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
    /// How its body is delimited.
    pub body: BodyFraming,
    /// `Expect: 100-continue`: the gateway says `100 Continue` before it reads the body.
    pub expect_continue: bool,
    /// The `Upgrade` line, when `Connection` lists `upgrade` too (WebSocket): the instance may
    /// answer 101 and the connection becomes a tunnel.
    pub upgrade: Option<usize>,
    /// An HTTP/1.0 client: no chunked framing toward it (a body of unknown length ends with the
    /// connection), keep-alive only when it asks, no upgrade, no expectation.
    pub http10: bool,
}

/// What a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// Not a whole head yet.
    Partial,
    /// A whole head the engine forwards.
    Complete,
    /// Something hyper serves (see the module's doc).
    Handover,
    /// A head whose framing cannot be trusted, refused with this status (the connection
    /// closes after the answer: where its body ends is unknown).
    Refuse(u16, &'static str),
}

/// Parses the request head at the start of `buf` into `head` (its line vector reused).
///
/// Framing is airtight before anything reaches an instance: one `Transfer-Encoding` line that
/// is exactly `chunked` (any other coding 501, anything obfuscated 400), or one
/// `Content-Length` of digits, never both (the CL.TE / TE.CL smuggling pair).
pub fn parse_request(buf: &[u8], head: &mut RequestHead) -> Parse {
    let line = match scan::request_line(buf) {
        Ok(Some(line)) => line,
        Ok(None) => return Parse::Partial,
        Err(why) => return refuse_malformed(why, buf),
    };
    head.method = Span::range(line.method);
    head.target = Span::range(line.target);
    head.lines.clear();
    head.host = None;
    head.close = false;
    head.body = BodyFraming::None;
    head.expect_continue = false;
    head.upgrade = None;
    head.http10 = line.version == 0;
    let (len, Framed { chunked, length, keep_alive, mut upgrade_asked }) =
        match read_lines(head, buf, line.next) {
            Ok(Some(read)) => read,
            Ok(None) => return Parse::Partial,
            Err(refused) => return refused,
        };
    head.len = len;
    if head.http10 {
        // RFC 9112 §6.1: a transfer coding in an HTTP/1.0 message is a framing in doubt. An
        // expectation is ignored (RFC 9110 §10.1.1) and there is no upgrade from HTTP/1.0.
        if chunked {
            return Parse::Refuse(400, "Transfer-Encoding in an HTTP/1.0 request");
        }
        head.close |= !keep_alive;
        head.expect_continue = false;
        upgrade_asked = false;
    }
    head.body = match (chunked, length) {
        (true, Some(_)) => return Parse::Refuse(400, "both Transfer-Encoding and Content-Length"),
        (true, None) => BodyFraming::Chunked,
        (false, Some(0) | None) => BodyFraming::None,
        (false, Some(n)) => BodyFraming::Length(n),
    };
    // An Upgrade that Connection does not name is an ordinary hop-by-hop line (dropped). One
    // with a body goes with its body; the tunnel starts after it.
    if !upgrade_asked {
        head.upgrade = None;
    }
    Parse::Complete
}

/// A head the scanner refuses: 400 with what is wrong (hyper answers the same heads 400), 431
/// for more lines than the engine keeps, 505 for a version not 1.x (HTTP/2's preface: hyper's).
fn refuse_malformed(why: scan::Refused, buf: &[u8]) -> Parse {
    match why {
        scan::BAD_VERSION if buf.starts_with(b"PRI * HTTP/2.0\r\n") => Parse::Handover,
        scan::BAD_VERSION if names_a_version(buf) => {
            Parse::Refuse(505, "HTTP version not supported")
        }
        scan::BAD_VERSION => Parse::Refuse(400, scan::BAD_REQUEST_LINE),
        why => Parse::Refuse(400, why),
    }
}

/// Whether the request line ends with a well-formed version (`HTTP/d.d`): one this server
/// does not speak is 505 (RFC 9110 §15.6.6); anything else there is a malformed line (400).
fn names_a_version(buf: &[u8]) -> bool {
    let line = buf.split(|b| *b == b'\n').next().unwrap_or(buf).trim_ascii_end();
    let version = line.rsplit(|b| *b == b' ').next().unwrap_or(line);
    matches!(version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit())
}

/// What the header lines say of the message's framing and its connection.
struct Framed {
    chunked: bool,
    length: Option<u64>,
    keep_alive: bool,
    upgrade_asked: bool,
}

/// Reads the header lines from `at` into `head` (spans into `buf`), then what they say of
/// its framing, noting where `Host`, `Upgrade` and `Expect` are: the head's length and that,
/// `Ok(None)` while incomplete, `Err` with the verdict for a head refused. Framing is judged
/// on a whole head only, so a line the scanner refuses is told first, whatever came before.
fn read_lines(
    head: &mut RequestHead,
    buf: &[u8],
    mut at: usize,
) -> Result<Option<(usize, Framed)>, Parse> {
    let len = loop {
        match scan::field(buf, at) {
            Err(why) => return Err(Parse::Refuse(400, why)),
            Ok(None) => return Ok(None),
            Ok(Some(Field::End(len))) => break len,
            Ok(Some(Field::Line { name, value, next })) => {
                if head.lines.len() == MAX_HEADERS {
                    return Err(Parse::Refuse(431, "too many header lines"));
                }
                let (name, value) = (Span::range(name), Span::range(value));
                head.lines.push(Line { name, value, kind: kind_of(name.get(buf)) });
                at = next;
            }
        }
    };
    let mut framed =
        Framed { chunked: false, length: None, keep_alive: false, upgrade_asked: false };
    for (i, line) in head.lines.iter().enumerate() {
        let (name, value) = (line.name.get(buf), line.value.get(buf));
        match line.kind {
            // RFC 9112 §3.2: a server must answer 400 to more than one Host line.
            Kind::Host if head.host.is_some() => {
                return Err(Parse::Refuse(400, "several Host lines"))
            }
            Kind::Host => head.host = Some(i),
            Kind::TransferEncoding if framed.chunked => {
                return Err(Parse::Refuse(400, "several Transfer-Encoding lines"))
            }
            Kind::TransferEncoding if value.eq_ignore_ascii_case(b"chunked") => {
                framed.chunked = true
            }
            Kind::TransferEncoding => return Err(refuse_coding(value)),
            Kind::ContentLength if framed.length.is_some() => {
                return Err(Parse::Refuse(400, "several Content-Length lines"))
            }
            Kind::ContentLength => match parse_length(value) {
                Some(n) => framed.length = Some(n),
                None => return Err(Parse::Refuse(400, "Content-Length is not a number")),
            },
            Kind::HopByHop if name.eq_ignore_ascii_case(b"upgrade") => head.upgrade = Some(i),
            Kind::HopByHop if name.eq_ignore_ascii_case(b"expect") => {
                if !value.eq_ignore_ascii_case(b"100-continue") {
                    return Err(Parse::Refuse(417, "only Expect: 100-continue is supported"));
                }
                head.expect_continue = true;
            }
            Kind::Connection => {
                head.close |= lists(value, b"close");
                framed.keep_alive |= lists(value, b"keep-alive");
                framed.upgrade_asked |= lists(value, b"upgrade");
            }
            _ => {}
        }
    }
    Ok(Some((len, framed)))
}

/// A `Transfer-Encoding` other than `chunked`: a real coding before chunked is unsupported
/// (501); anything else — `chunked, identity`, `xchunked`, an empty value — is not a framing
/// any two parsers agree on (400).
fn refuse_coding(value: &[u8]) -> Parse {
    let mut codings = value.split(|b| *b == b',').map(<[u8]>::trim_ascii);
    let last_is_chunked = codings.next_back().is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
    let tokens = value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .all(|c| !c.is_empty() && c.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-'));
    if last_is_chunked && tokens {
        return Parse::Refuse(501, "transfer codings other than chunked are not supported");
    }
    Parse::Refuse(400, "malformed Transfer-Encoding")
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
    let Some(status) = scan::status_line(buf).map_err(HeadError::Malformed)? else {
        return Ok(None);
    };
    head.lines.clear();
    // An answer has a handful of lines (nginx's: five): room for eight at once, not grown
    // from four on a connection's first answer.
    head.lines.reserve(8);
    let mut close = status.version == 0;
    let mut chunked = false;
    let mut length: Option<u64> = None;
    let mut at = status.next;
    let len = loop {
        let (name, value) = match scan::field(buf, at).map_err(HeadError::Malformed)? {
            None => return Ok(None),
            Some(Field::End(len)) => break len,
            Some(Field::Line { name, value, next }) => {
                at = next;
                (Span::range(name), Span::range(value))
            }
        };
        if head.lines.len() == MAX_HEADERS {
            return Err(HeadError::Malformed("too many headers"));
        }
        let kind = kind_of(name.get(buf));
        let value_bytes = value.get(buf);
        match kind {
            Kind::Connection => {
                close |= lists(value_bytes, b"close");
                if status.version == 0 && lists(value_bytes, b"keep-alive") {
                    close = false;
                }
            }
            Kind::TransferEncoding => {
                // Only chunked is de-framed; another coding would be forwarded without the
                // client being told how to read it.
                if !value_bytes.eq_ignore_ascii_case(b"chunked") || chunked {
                    return Err(HeadError::Malformed("transfer coding other than chunked"));
                }
                chunked = true;
            }
            Kind::ContentLength => {
                let n =
                    parse_length(value_bytes).ok_or(HeadError::Malformed("bad content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::Malformed("conflicting content-length"));
                }
                length = Some(n);
            }
            _ => {}
        }
        head.lines.push(Line { name, value, kind });
    };
    let status_code = status.code;
    head.len = len;
    head.status = status_code;
    head.reason = Span::range(status.reason);
    head.framing = Some(match status_code {
        100..=199 => Framing::Empty,
        _ if head_request || status_code == 204 || status_code == 304 => Framing::Empty,
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
#[path = "head_tests.rs"]
mod tests;
