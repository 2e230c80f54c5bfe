//! An instance's answer head, read a line at a time in one pass over its bytes: exactly what
//! `httparse` (in its default configuration) accepts in a response, and nothing more — the
//! tests below hold the two side by side on every prefix and every byte changed.
//!
//! Why not httparse: every answer's head is read, and there it spent a tenth of a proxied GET
//! (~1 400 instructions for eight lines, a byte at a time through a name, a value's SIMD scan
//! restarted for each line, then our own pass to classify). Here a name is one table lookup a
//! byte, a value is checked eight bytes at a time, and each line comes out as offsets into the
//! buffer, ready for the caller to classify.

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

/// Why a head is refused.
pub type Refused = &'static str;

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

/// The status line at the start of `buf` (after any empty lines); `None` while incomplete.
pub fn status_line(buf: &[u8]) -> Result<Option<StatusLine>, Refused> {
    let mut i = 0;
    // Empty lines before the status line are skipped (RFC 9112 §2.2, as httparse does).
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(b'\n') => i += 1,
            Some(b'\r') => match buf.get(i + 1) {
                None => return Ok(None),
                Some(b'\n') => i += 2,
                Some(_) => return Err("not HTTP/1.x"),
            },
            Some(_) => break,
        }
    }
    let rest = &buf[i..];
    let Some(word) = rest.get(..8) else {
        let n = rest.len().min(7);
        return match rest[..n] == b"HTTP/1."[..n] {
            true => Ok(None),
            false => Err("not HTTP/1.x"),
        };
    };
    let version = match word {
        b"HTTP/1.0" => 0,
        b"HTTP/1.1" => 1,
        _ => return Err("not HTTP/1.x"),
    };
    let Some(code) = rest.get(8..12) else {
        return match status_prefix_ok(&rest[8..]) {
            true => Ok(None),
            false => Err("not HTTP/1.x"),
        };
    };
    if !status_prefix_ok(code) {
        return Err("not HTTP/1.x");
    }
    let code = code[1..].iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let at = i + 12;
    let (reason, next) = match buf.get(at) {
        None => return Ok(None),
        Some(b' ') => match reason(buf, at + 1)? {
            Some(found) => found,
            None => return Ok(None),
        },
        Some(b'\r') => match buf.get(at + 1) {
            None => return Ok(None),
            Some(b'\n') => ((at, at), at + 2),
            Some(_) => return Err("not HTTP/1.x"),
        },
        Some(b'\n') => ((at, at), at + 1),
        Some(_) => return Err("not HTTP/1.x"),
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
    let Some(next) = line_end(buf, end)? else { return Ok(None) };
    match buf[start..end].is_ascii() {
        true => Ok(Some(((start, end), next))),
        false => Ok(Some(((start, start), next))),
    }
}

/// Where the line whose text stops at `end` ends: CR LF or a bare LF there, else refused.
fn line_end(buf: &[u8], end: usize) -> Result<Option<usize>, Refused> {
    match buf.get(end) {
        None => Ok(None),
        Some(b'\n') => Ok(Some(end + 1)),
        Some(b'\r') => match buf.get(end + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some(end + 2)),
            Some(_) => Err("not HTTP/1.x"),
        },
        Some(_) => Err("not HTTP/1.x"),
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
                Some(_) => Err("not HTTP/1.x"),
            }
        }
        _ => {}
    }
    let Some(len) = buf[at..].iter().position(|b| !TOKEN[usize::from(*b)]) else {
        return Ok(None);
    };
    let colon = at + len;
    if len == 0 || buf[colon] != b':' {
        return Err("not HTTP/1.x");
    }
    let Some(skip) = buf[colon + 1..].iter().position(|b| *b != b' ' && *b != b'\t') else {
        return Ok(None);
    };
    let start = colon + 1 + skip;
    let end = value_end(buf, start);
    let Some(next) = line_end(buf, end)? else { return Ok(None) };
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
    i + buf[i..].iter().position(|b| !VALUE[usize::from(*b)]).unwrap_or(buf.len() - i)
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
