//! A strict decoder of chunked bodies (RFC 9112 §7.1), fed whatever bytes arrived.
//!
//! Strict where leniency has been a smuggling vector: CRLF only (no bare LF), a size of hex
//! digits that cannot overflow, extensions without control characters, bounded size lines and
//! trailer section. The engine decodes chunked request bodies and instances' chunked answers with it and encodes the
//! data again for the client, so what the client receives is framed by the gateway, never
//! passed through.

/// Longest chunk-size line (size, extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(&'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a size (`digits` so far).
    Size,
    /// Whitespace after the size, before `;` or CR.
    SizeSpace,
    /// A chunk extension, up to CR.
    Extension,
    /// The LF ending a size line.
    SizeLf,
    /// Chunk data (`remaining` bytes left).
    Data,
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// The start of a trailer line (CR here ends the body).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// The LF ending a trailer line.
    TrailerLf,
    /// The LF ending the body.
    EndLf,
    /// The body is complete.
    Done,
}

/// Decoding state of one chunked body.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    size: u64,
    digits: usize,
    line: usize,
    trailers: usize,
    /// The trailer section as received (its lines with their CRLF, without the final CRLF).
    trailer: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
            trailer: Vec::new(),
        }
    }
}

impl Decoder {
    /// Whether the last chunk and the trailer section were read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, handing each run of data to `data`; returns how many bytes were
    /// used (fewer than `input.len()` only once the body is done: the rest is not this body's).
    pub fn decode(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Data => {
                    let take =
                        (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    data(&input[i..i + take]);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                }
                State::Size | State::SizeSpace | State::Extension | State::SizeLf => {
                    self.size_line(input[i])?;
                    i += 1;
                }
                State::DataCr => {
                    if input[i] != b'\r' {
                        return Err(ChunkError("chunk data longer than its size"));
                    }
                    self.state = State::DataLf;
                    i += 1;
                }
                State::DataLf => {
                    if input[i] != b'\n' {
                        return Err(ChunkError("CR without LF after chunk data"));
                    }
                    self.state = State::Size;
                    i += 1;
                }
                State::TrailerStart | State::Trailer | State::TrailerLf | State::EndLf => {
                    self.trailer_byte(input[i])?;
                    i += 1;
                }
            }
        }
        Ok(i)
    }

    /// One byte of a chunk-size line: hex digits, whitespace, an extension, its CRLF; the
    /// line's length bounded.
    fn size_line(&mut self, b: u8) -> Result<(), ChunkError> {
        match self.state {
            State::Size => match hex(b) {
                Some(d) => {
                    if self.digits == 16 {
                        return Err(ChunkError("chunk size too large"));
                    }
                    self.size = self.size << 4 | u64::from(d);
                    self.digits += 1;
                }
                None if self.digits == 0 => return Err(ChunkError("chunk size expected")),
                None => match b {
                    b' ' | b'\t' => self.state = State::SizeSpace,
                    b';' => self.state = State::Extension,
                    b'\r' => self.state = State::SizeLf,
                    _ => return Err(ChunkError("bad character in chunk size")),
                },
            },
            State::SizeSpace => match b {
                b' ' | b'\t' => {}
                b';' => self.state = State::Extension,
                b'\r' => self.state = State::SizeLf,
                _ => return Err(ChunkError("bad character after chunk size")),
            },
            State::Extension => match b {
                b'\r' => self.state = State::SizeLf,
                b'\t' | b' '..=b'~' | 0x80..=0xff => {}
                _ => return Err(ChunkError("control character in chunk extension")),
            },
            _ => {
                if b != b'\n' {
                    return Err(ChunkError("CR without LF after chunk size"));
                }
                self.digits = 0;
                self.line = 0;
                self.state = if self.size == 0 { State::TrailerStart } else { State::Data };
                return Ok(());
            }
        }
        if matches!(self.state, State::Size | State::SizeSpace | State::Extension) {
            self.line += 1;
            if self.line > MAX_SIZE_LINE {
                return Err(ChunkError("chunk size line too long"));
            }
        }
        Ok(())
    }

    /// One byte of the trailer section (kept, for the policy to filter) or of the final CRLF;
    /// the section's size bounded.
    fn trailer_byte(&mut self, b: u8) -> Result<(), ChunkError> {
        match self.state {
            State::TrailerStart => match b {
                b'\r' => self.state = State::EndLf,
                b'\t' | b' '..=b'~' | 0x80..=0xff => {
                    self.trailer.push(b);
                    self.state = State::Trailer
                }
                _ => return Err(ChunkError("control character in trailer")),
            },
            State::Trailer => match b {
                b'\r' => {
                    self.trailer.push(b);
                    self.state = State::TrailerLf
                }
                b'\t' | b' '..=b'~' | 0x80..=0xff => self.trailer.push(b),
                _ => return Err(ChunkError("control character in trailer")),
            },
            State::TrailerLf => {
                if b != b'\n' {
                    return Err(ChunkError("CR without LF in trailer"));
                }
                self.trailer.push(b);
                self.state = State::TrailerStart;
            }
            _ => {
                if b != b'\n' {
                    return Err(ChunkError("CR without LF at the end"));
                }
                self.state = State::Done;
                return Ok(());
            }
        }
        if matches!(self.state, State::Trailer | State::TrailerLf | State::EndLf) {
            self.trailers += 1;
            if self.trailers > MAX_TRAILERS {
                return Err(ChunkError("trailer section too large"));
            }
        }
        Ok(())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends one chunk of `data` to `out` as chunked framing (nothing for empty data: an empty
/// chunk would end the body).
pub fn encode(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    use std::io::Write as _;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Ends a re-encoded body: the last chunk, the trailer fields of the decoded body that may be
/// forwarded (well-formed `name: value` lines `allowed` lets through: the policy's
/// `request_trailer_allowed` or `response_trailer_allowed`), the end.
pub fn finish(decoder: &Decoder, allowed: fn(&[u8]) -> bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in decoder.trailer_fields(allowed) {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

impl Decoder {
    /// The trailer fields the body ended with that `allowed` lets through: well-formed
    /// `name: value` lines, the value without surrounding whitespace.
    pub fn trailer_fields(
        &self,
        allowed: fn(&[u8]) -> bool,
    ) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.trailer.split(|b| *b == b'\n').filter_map(move |line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|b| *b == b':')?;
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            let token = !name.is_empty()
                && name.iter().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b));
            (token && allowed(name)).then_some((name, value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::policy::{request_trailer_allowed, response_trailer_allowed};

    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        let mut used = 0;
        for piece in input.chunks(step) {
            let n = d.decode(piece, |b| out.extend_from_slice(b))?;
            used += n;
            if d.is_done() {
                break;
            }
        }
        Ok((out, used, d.is_done()))
    }

    #[test]
    fn bodies_decode_whatever_the_read_boundaries() {
        let body =
            b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, body.len()] {
            let (data, used, done) = decode_all(body, step).unwrap();
            assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.");
            assert!(done);
            if step == body.len() {
                assert_eq!(used, body.len() - 4, "the rest is the next message's");
            }
        }
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for bad in [
            &b"4\nWiki\r\n0\r\n\r\n"[..],
            b"4\r\nWikiX\r\n0\r\n\r\n",
            b"4\r\nWiki\n0\r\n\r\n",
            b"0x4\r\nWiki\r\n0\r\n\r\n",
            b"-4\r\n",
            b"11111111111111111\r\n",
            b"4;a\nb\r\nWiki\r\n0\r\n\r\n",
            b"0\r\nX: 1\n\r\n",
            b"\r\n",
        ] {
            assert!(decode_all(bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn allowed_trailers_go_on_and_forbidden_ones_do_not() {
        let body = b"1\r\na\r\n0\r\nX-Checksum: abc\r\nContent-Length: 99\r\nbad line\r\nHost: evil\r\nX-T:1 \r\n\r\n";
        let mut d = Decoder::default();
        d.decode(body, |_| {}).unwrap();
        assert!(d.is_done());
        let mut out = Vec::new();
        finish(&d, response_trailer_allowed, &mut out);
        assert_eq!(out, b"0\r\nX-Checksum: abc\r\nX-T: 1\r\n\r\n");
        let mut plain = Vec::new();
        finish(&Decoder::default(), response_trailer_allowed, &mut plain);
        assert_eq!(plain, LAST_CHUNK);
    }

    #[test]
    fn a_request_trailer_passes_only_when_grpc_owns_its_name() {
        let body = b"1\r\na\r\n0\r\nX-Auth-Subject: admin\r\nX-Forwarded-For: 1.2.3.4\r\nX-Client-Cert-Subject: CN=root\r\ngrpc-status: 0\r\nX-Checksum: abc\r\n\r\n";
        let mut d = Decoder::default();
        d.decode(body, |_| {}).unwrap();
        let mut out = Vec::new();
        finish(&d, request_trailer_allowed, &mut out);
        assert_eq!(out, b"0\r\ngrpc-status: 0\r\n\r\n");
    }

    #[test]
    fn encoding_round_trips() {
        let mut out = Vec::new();
        encode(b"hello", &mut out);
        encode(b"", &mut out);
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
        assert_eq!(decode_all(&out, 1).unwrap().0, b"hello");
    }
}
