//! The scanner beside httparse: the same answer (complete with the same lines, incomplete, or
//! refused) for every head below, every prefix of it, and every byte of it changed to each
//! byte that matters to a parser.

use std::mem::MaybeUninit;

use super::*;

/// What a reader made of a head: its length, version, code, reason and lines; `Ok(None)`:
/// incomplete; `Err`: refused (too many lines counted apart).
type Reading = Result<Option<(usize, u8, u16, Vec<u8>, Vec<Line>)>, bool>;

const MAX: usize = 100;

fn by_httparse(buf: &[u8]) -> Reading {
    let mut storage = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX];
    let mut resp = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut storage,
    ) {
        Ok(httparse::Status::Complete(len)) => {
            let lines = resp.headers.iter().map(|h| (h.name.into(), h.value.into())).collect();
            let (version, code) = (resp.version.unwrap(), resp.code.unwrap());
            Ok(Some((len, version, code, resp.reason.unwrap().into(), lines)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(e == httparse::Error::TooManyHeaders),
    }
}

fn by_scan(buf: &[u8]) -> Reading {
    let status = match status_line(buf) {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(None),
        Err(_) => return Err(false),
    };
    let Some((len, lines)) = lines_from(buf, status.next).map_err(|why| why == "too many")? else {
        return Ok(None);
    };
    let reason = buf[status.reason.0..status.reason.1].to_vec();
    Ok(Some((len, status.version, status.code, reason, lines)))
}

/// The header lines from `at` to the head's end, and its length, as the scanner reads them.
fn lines_from(buf: &[u8], mut at: usize) -> Result<Option<(usize, Vec<Line>)>, Refused> {
    let mut lines = Vec::new();
    loop {
        match field(buf, at)? {
            Some(Field::End(len)) => return Ok(Some((len, lines))),
            Some(Field::Line { .. }) if lines.len() == MAX => return Err("too many"),
            Some(Field::Line { name, value, next }) => {
                lines.push((buf[name.0..name.1].to_vec(), buf[value.0..value.1].to_vec()));
                at = next;
            }
            None => return Ok(None),
        }
    }
}

fn heads() -> Vec<Vec<u8>> {
    let heads: [&[u8]; _] = [
        &b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 20:00:00 GMT\r\nContent-Type: text/html\r\nContent-Length: 615\r\nLast-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\nConnection: keep-alive\r\nETag: \"6390-267\"\r\nAccept-Ranges: bytes\r\n\r\nbody"[..],
        b"HTTP/1.0 404 Not Found\nContent-Length: 0\n\n",
        b"\r\n\nHTTP/1.1 204\r\n\r\n",
        b"HTTP/1.1 200 \r\nX:\r\nY:   \t \r\nZ: a\tb \t\r\n\r\n",
        b"HTTP/1.1 599 r\xe9sum\xe9\r\nX-Obs: caf\xe9 \xff\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA-Very-Long-Header-Name-Indeed: 0123456789abcdef0123456789abcdef0123\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n!#$%&'*+-.^_`|~09azAZ: v\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: 1\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX : 1\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"HTTP/1.1 200OK\r\n\r\n",
        b"http/1.1 200 OK\r\n\r\n",
    ];
    with_too_many_lines(&heads, b"HTTP/1.1 200 OK\r\n")
}

/// `heads`, and one more: `first` with one header line more than a head may hold.
fn with_too_many_lines(heads: &[&[u8]], first: &[u8]) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = heads.iter().map(|h| h.to_vec()).collect();
    all.push(too_many_lines(first));
    all
}

/// `first` and one header line more than a head may hold.
fn too_many_lines(first: &[u8]) -> Vec<u8> {
    let mut many = first.to_vec();
    for i in 0..=MAX {
        many.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    many
}

/// Bytes that matter to a head parser, each put in place of every byte of every head.
const BYTES: [u8; 17] = [
    0, b'\t', b'\n', 0x0b, b'\r', 0x1f, b' ', b'"', b'(', b'/', b':', b'0', b'a', b'Z', 0x7f, 0x80,
    0xff,
];

/// Asserts `ours` reads every prefix of every head, and every head with one byte changed, as
/// `theirs` does; returns how many inputs were compared.
fn compare_everywhere<T: PartialEq + std::fmt::Debug>(
    heads: Vec<Vec<u8>>,
    ours: fn(&[u8]) -> T,
    theirs: fn(&[u8]) -> T,
) -> usize {
    let mut compared = 0;
    for head in heads {
        for end in 0..=head.len() {
            let prefix = &head[..end];
            assert_eq!(ours(prefix), theirs(prefix), "{:?}", String::from_utf8_lossy(prefix));
            compared += 1;
        }
        for i in 0..head.len() {
            for b in BYTES {
                let mut changed = head.clone();
                changed[i] = b;
                let text = String::from_utf8_lossy(&changed);
                assert_eq!(ours(&changed), theirs(&changed), "byte {i} as {b:#x}: {text:?}");
                compared += 1;
            }
        }
    }
    compared
}

#[test]
fn the_scanner_reads_every_head_as_httparse_does() {
    assert!(compare_everywhere(heads(), by_scan, by_httparse) > 10_000);
}

#[test]
fn values_are_checked_eight_bytes_at_a_time_without_missing_a_byte() {
    for len in 0..40 {
        for bad in 0..len {
            for b in [0u8, 0x08, 0x0a, 0x0d, 0x1f, 0x7f] {
                let mut v = vec![b'v'; len];
                v[bad] = b;
                assert_eq!(value_end(&v, 0), bad, "len {len}, {b:#x} at {bad}");
            }
            let mut v = vec![0x80u8; len];
            v[bad] = b'\t';
            assert_eq!(value_end(&v, 0), len, "tab and obs-text are a value's");
        }
    }
}

/// What a reader made of a request head: length, method, target, version and lines;
/// `Ok(None)`: incomplete; `Err`: why refused, in the scanner's words.
type RequestReading = Result<Option<(usize, Vec<u8>, Vec<u8>, u8, Vec<Line>)>, Refused>;

type Line = (Vec<u8>, Vec<u8>);

fn request_by_httparse(buf: &[u8]) -> RequestReading {
    let mut storage = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut storage) {
        Ok(httparse::Status::Complete(len)) => {
            let lines = req.headers.iter().map(|h| (h.name.into(), h.value.into())).collect();
            let (method, target) = (req.method.unwrap().into(), req.path.unwrap().into());
            Ok(Some((len, method, target, req.version.unwrap(), lines)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(match e {
            httparse::Error::Version => BAD_VERSION,
            httparse::Error::HeaderName => BAD_NAME,
            httparse::Error::HeaderValue => BAD_VALUE,
            httparse::Error::NewLine => BAD_LINE_END,
            httparse::Error::TooManyHeaders => "too many",
            _ => BAD_REQUEST_LINE,
        }),
    }
}

fn request_by_scan(buf: &[u8]) -> RequestReading {
    let Some(line) = request_line(buf)? else { return Ok(None) };
    let Some((len, lines)) = lines_from(buf, line.next)? else { return Ok(None) };
    let part = |(start, end): Range| buf[start..end].to_vec();
    Ok(Some((len, part(line.method), part(line.target), line.version, lines)))
}

fn requests() -> Vec<Vec<u8>> {
    let heads: [&[u8]; _] = [
        &b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n"[..],
        b"POST /post?a=1&b=%20 HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1024\r\n\r\n{}",
        b"\r\nGET /caf\xc3\xa9 HTTP/1.0\nX:\n\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://example.com:8080/a/b HTTP/1.1\r\nhost: example.com\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1 \r\n\r\n",
        b"GET /\xff HTTP/1.1\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nA-Long-Name-Of-Many-Bytes: value\tand tab \r\nB:c\r\n\r\n",
    ];
    with_too_many_lines(&heads, b"GET / HTTP/1.1\r\n")
}

#[test]
fn the_scanner_reads_every_request_head_as_httparse_does_and_refuses_for_the_same_reason() {
    assert!(compare_everywhere(requests(), request_by_scan, request_by_httparse) > 10_000);
}

#[test]
fn a_plain_target_is_one_of_unreserved_sub_delims_colon_at_slash_question_percent() {
    for b in 0..=255u8 {
        let rfc = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b);
        assert_eq!(plain_target(&[b'/', b]), rfc, "byte {b:#04x}");
    }
    assert!(plain_target(b"/a/b?c=d%20e") && !plain_target(b"/a b") && !plain_target(b"/{x}"));
}
