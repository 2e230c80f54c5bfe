//! Request and answer heads, read a line at a time in one pass over their bytes: exactly what
//! `httparse` (in its default configuration) accepts, refused for the same reasons, and
//! nothing more — the tests hold the two side by side on every prefix of many heads and every
//! byte of them changed, and the `h1_framing` fuzz target compares them on whatever it finds.
//!
//! Why not httparse: every head is read twice a proxied request (the client's, the
//! instance's), and there it spent ~2 000 instructions of a GET (a byte at a time through
//! names, a SIMD value scan set up again for every line, then our own pass to classify). Here
//! a name is one table lookup a byte, a value is checked eight bytes a step, and each line
//! comes out as offsets into the buffer, ready for the caller to classify.

/// A byte table built at compile time from a test on one byte.
macro_rules! table {
    (|$c:ident| $is:expr) => {{
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            let $c = b as u8;
            t[b] = $is;
            b += 1;
        }
        t
    }};
}

/// Bytes of a header name (RFC 9110 §5.6.2 `tchar`).
const TOKEN: [bool; 256] = table!(|c| c.is_ascii_alphanumeric()
    || matches!(c, b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*')
    || matches!(c, b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'));

/// Bytes of a header value: visible, space, tab, and obs-text (RFC 9110 §5.5).
const VALUE: [bool; 256] = table!(|c| c == b'\t' || (c >= b' ' && c != 0x7f));

/// Bytes of a request target as httparse reads one: visible ASCII and obs-text.
const TARGET: [bool; 256] = table!(|c| c > b' ' && c != 0x7f);

/// Bytes a URI path and query may hold unescaped (RFC 3986 `pchar`, `/`, `?`, and `%` of an
/// escape).
const PLAIN_TARGET: [bool; 256] = table!(|c| c.is_ascii_alphanumeric()
    || matches!(c, b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')')
    || matches!(c, b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@' | b'/' | b'?' | b'%'));

/// Whether a request target is made of [`PLAIN_TARGET`] bytes only.
pub fn plain_target(target: &[u8]) -> bool {
    target.iter().all(|b| PLAIN_TARGET[usize::from(*b)])
}

/// Why a head is refused.
pub type Refused = &'static str;

/// A header name with a byte a name may not hold, or no colon after it.
pub const BAD_NAME: Refused = "invalid header name";
/// A header value with a byte a value may not hold.
pub const BAD_VALUE: Refused = "invalid header value";
/// A CR not followed by LF where a line ends.
pub const BAD_LINE_END: Refused = "invalid line ending";
/// A version other than HTTP/1.0 and HTTP/1.1 (the caller tells 505 from 400).
pub const BAD_VERSION: Refused = "not HTTP/1.x";
/// A request line that is not `method SP target SP version`.
pub const BAD_REQUEST_LINE: Refused = "invalid request line";
/// A status line that is not `version SP code [SP reason]`.
pub const BAD_STATUS_LINE: Refused = "invalid status line";

/// A part of the buffer: where it starts, where it ends.
pub type Range = (usize, usize);

/// The status line of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusLine {
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The status code (three digits).
    pub code: u16,
    /// The reason phrase's range; empty when it holds obs-text (as httparse reads it).
    pub reason: Range,
    /// Where the first header line starts.
    pub next: usize,
}

/// One step of a head after its status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A header line.
    Line {
        /// Its name's range.
        name: Range,
        /// Its value's range, without the whitespace around it.
        value: Range,
        /// Where the next line starts.
        next: usize,
    },
    /// The empty line: the head is `end` bytes long.
    End(usize),
}

/// Where a head starts: after any empty lines (RFC 9112 §2.2, as httparse does); `None`
/// while only empty lines have come.
fn skip_empty_lines(buf: &[u8]) -> Result<Option<usize>, Refused> {
    let mut i = 0;
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(b'\n') => i += 1,
            Some(b'\r') => match buf.get(i + 1) {
                None => return Ok(None),
                Some(b'\n') => i += 2,
                Some(_) => return Err(BAD_LINE_END),
            },
            Some(_) => return Ok(Some(i)),
        }
    }
}

/// The version at the start of `rest`: 0 or 1; `None` while what came may still be one.
fn version(rest: &[u8]) -> Result<Option<u8>, Refused> {
    match rest.get(..8) {
        Some(b"HTTP/1.0") => Ok(Some(0)),
        Some(b"HTTP/1.1") => Ok(Some(1)),
        Some(_) => Err(BAD_VERSION),
        None => {
            let n = rest.len().min(7);
            match rest[..n] == b"HTTP/1."[..n] {
                true => Ok(None),
                false => Err(BAD_VERSION),
            }
        }
    }
}

/// The request line of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLine {
    /// The method's range.
    pub method: Range,
    /// The target's range.
    pub target: Range,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Where the first header line starts.
    pub next: usize,
}

/// The request line at the start of `buf` (after any empty lines); `None` while incomplete.
/// The target is what httparse takes: visible ASCII and obs-text, valid UTF-8.
pub fn request_line(buf: &[u8]) -> Result<Option<RequestLine>, Refused> {
    let Some(start) = skip_empty_lines(buf)? else { return Ok(None) };
    let Some(method_end) = run_end(&TOKEN, buf, start) else { return Ok(None) };
    if method_end == start || buf[method_end] != b' ' {
        return Err(BAD_REQUEST_LINE);
    }
    let target = method_end + 1;
    let Some(target_end) = run_end(&TARGET, buf, target) else { return Ok(None) };
    if target_end == target || buf[target_end] != b' ' || !utf8(&buf[target..target_end]) {
        return Err(BAD_REQUEST_LINE);
    }
    let Some(version) = version(&buf[target_end + 1..])? else { return Ok(None) };
    let Some(next) = line_end(buf, target_end + 9, BAD_LINE_END)? else { return Ok(None) };
    Ok(Some(RequestLine {
        method: (start, method_end),
        target: (target, target_end),
        version,
        next,
    }))
}

/// Whether `bytes` are UTF-8 (ASCII, nearly always, told without a call).
fn utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// The status line at the start of `buf` (after any empty lines); `None` while incomplete.
pub fn status_line(buf: &[u8]) -> Result<Option<StatusLine>, Refused> {
    let Some(i) = skip_empty_lines(buf)? else { return Ok(None) };
    let rest = &buf[i..];
    let Some(version) = version(rest)? else { return Ok(None) };
    let Some(code) = rest.get(8..12) else {
        return match status_prefix_ok(&rest[8..]) {
            true => Ok(None),
            false => Err(BAD_STATUS_LINE),
        };
    };
    if !status_prefix_ok(code) {
        return Err(BAD_STATUS_LINE);
    }
    let code = code[1..].iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let at = i + 12;
    let (reason, next) = match buf.get(at) {
        None => return Ok(None),
        Some(b' ') => match reason(buf, at + 1)? {
            Some(found) => found,
            None => return Ok(None),
        },
        Some(_) => match line_end(buf, at, BAD_STATUS_LINE)? {
            Some(next) => ((at, at), next),
            None => return Ok(None),
        },
    };
    Ok(Some(StatusLine { version, code, reason, next }))
}

/// `part` begins a status line's ` DDD`.
fn status_prefix_ok(part: &[u8]) -> bool {
    part.iter().enumerate().all(|(i, b)| if i == 0 { *b == b' ' } else { b.is_ascii_digit() })
}

/// The reason phrase from `start` to its line's end, and where the next line starts. A reason
/// holds what a value may (RFC 9112 §4); with obs-text in it, it reads as empty (as httparse
/// reads it: opaque).
fn reason(buf: &[u8], start: usize) -> Result<Option<(Range, usize)>, Refused> {
    let end = value_end(buf, start);
    let Some(next) = line_end(buf, end, BAD_STATUS_LINE)? else { return Ok(None) };
    match buf[start..end].is_ascii() {
        true => Ok(Some(((start, end), next))),
        false => Ok(Some(((start, start), next))),
    }
}

/// Where the line whose text stops at `end` ends: CR LF or a bare LF there, else refused
/// with `why`.
fn line_end(buf: &[u8], end: usize, why: Refused) -> Result<Option<usize>, Refused> {
    match buf.get(end) {
        None => Ok(None),
        Some(b'\n') => Ok(Some(end + 1)),
        Some(b'\r') => match buf.get(end + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some(end + 2)),
            Some(_) => Err(why),
        },
        Some(_) => Err(why),
    }
}

/// The line starting at `at` (after the status line or a header line); `None` while
/// incomplete.
pub fn field(buf: &[u8], at: usize) -> Result<Option<Field>, Refused> {
    let Some(&first) = buf.get(at) else { return Ok(None) };
    match first {
        b'\n' => return Ok(Some(Field::End(at + 1))),
        b'\r' => {
            return match buf.get(at + 1) {
                None => Ok(None),
                Some(b'\n') => Ok(Some(Field::End(at + 2))),
                Some(_) => Err(BAD_LINE_END),
            }
        }
        _ => {}
    }
    let Some(colon) = run_end(&TOKEN, buf, at) else { return Ok(None) };
    if colon == at || buf[colon] != b':' {
        return Err(BAD_NAME);
    }
    let Some(skip) = buf[colon + 1..].iter().position(|b| *b != b' ' && *b != b'\t') else {
        return Ok(None);
    };
    let start = colon + 1 + skip;
    let end = value_end(buf, start);
    let Some(next) = line_end(buf, end, BAD_VALUE)? else { return Ok(None) };
    let trimmed =
        buf[start..end].iter().rposition(|b| *b != b' ' && *b != b'\t').map_or(0, |i| i + 1);
    Ok(Some(Field::Line { name: (at, colon), value: (start, start + trimmed), next }))
}

/// Where the value starting at `i` stops: the first byte a value may not hold, or the end of
/// `buf`. Eight bytes at a time: a word with a control byte in it says which byte is first;
/// a tab there (a value's) and the scan goes on.
fn value_end(buf: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(word) = buf.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let w = u64::from_le_bytes(w);
        // The high bit of each byte below 0x20 or equal to 0x7f. Exact up to the first such
        // byte (a borrow may mark bytes after it), which is all that is read.
        let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        let del = w ^ (ONES * 0x7f);
        let marked = below_space | (del.wrapping_sub(ONES) & !del & HIGH);
        if marked != 0 {
            let at = i + (marked.trailing_zeros() / 8) as usize;
            if buf[at] != b'\t' {
                return at;
            }
            i = at + 1;
            continue;
        }
        i += 8;
    }
    run_end(&VALUE, buf, i).unwrap_or(buf.len())
}

/// Where the run of bytes `table` holds, from `at`, stops; `None` when `buf` ends first.
/// Four bytes a step while four are there (one bound check for four lookups: a name costs
/// about half the instructions a byte-at-a-time search does).
fn run_end(table: &[bool; 256], buf: &[u8], at: usize) -> Option<usize> {
    let mut i = at;
    while let Some(&[a, b, c, d]) = buf.get(i..i + 4) {
        let held = |x: u8| table[usize::from(x)];
        if !(held(a) && held(b) && held(c) && held(d)) {
            break;
        }
        i += 4;
    }
    buf[i..].iter().position(|b| !table[usize::from(*b)]).map(|n| i + n)
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
