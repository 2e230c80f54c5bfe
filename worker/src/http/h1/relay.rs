//! An instance's answer body, read by its framing — one object for every way an answer reaches
//! a client (as it came, re-chunked, raw to HTTP/1.0, compressed), as Pingora's `BodyWriter`
//! keeps one mode per body instead of a loop per framing.
//!
//! [`Source`] is pure: it takes bytes as read from the instance and tells what of them is body
//! data, whether the body has ended, and whether it ended exactly where its framing said (the
//! instance's connection may then carry another request). [`relay`] is the one loop that reads
//! from the instance and writes to the client around it; `compressed.rs` drives the same
//! `Source` through its encoder.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::http::client::h1::Reply;
use crate::http::h1::chunked::{self, Decoder, LAST_CHUNK};
use crate::http::h1::head::Framing;
use crate::http::h1::io::{timeout, write_within, Io};
use crate::http::policy;

/// How much a read from the instance may bring.
const READ: usize = 64 * 1024;

/// Where an answer's body is in its framing.
#[derive(Debug)]
pub(super) struct Source {
    framing: Framing,
    /// Bytes a `Content-Length` body still owes.
    left: u64,
    decoder: Decoder,
    done: bool,
    reusable: bool,
}

impl Source {
    /// A body framed by `framing`; `reusable`: the instance's connection may be kept (its head
    /// said so), until bytes past the body's end say otherwise.
    pub(super) fn new(framing: Framing, reusable: bool) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let done = match framing {
            Framing::Empty => true,
            Framing::Length(n) => n == 0,
            Framing::Chunked | Framing::UntilClose => false,
        };
        let reusable = reusable && framing != Framing::UntilClose;
        Source { framing, left, decoder: Decoder::default(), done, reusable }
    }

    /// Takes the body out of `raw` (bytes as read from the instance). A `Content-Length`
    /// body's data is a prefix of `raw`, returned as it is (nothing copied); a chunked one is
    /// decoded and a body until close taken whole, each run handed to `data`. Bytes past the
    /// body's end make the connection not reusable. `Err`: the chunked framing is malformed.
    pub(super) fn take<'r>(
        &mut self,
        raw: &'r [u8],
        data: impl FnMut(&[u8]),
    ) -> Result<&'r [u8], String> {
        match self.framing {
            Framing::Empty => {
                self.reusable &= raw.is_empty();
                Ok(&[])
            }
            Framing::Length(_) => {
                let n = usize::try_from(self.left).unwrap_or(usize::MAX).min(raw.len());
                self.reusable &= n == raw.len();
                self.left -= n as u64;
                self.done = self.left == 0;
                Ok(&raw[..n])
            }
            Framing::Chunked => {
                let used = self.decoder.decode(raw, data).map_err(|e| e.to_string())?;
                self.reusable &= used == raw.len();
                self.done = self.decoder.is_done();
                Ok(&[])
            }
            Framing::UntilClose => {
                let mut data = data;
                if !raw.is_empty() {
                    data(raw);
                }
                Ok(&[])
            }
        }
    }

    /// The instance closed its connection: the end of a body delimited by the close; any
    /// other body is cut (`false`).
    pub(super) fn closed(&mut self) -> bool {
        self.done |= self.framing == Framing::UntilClose;
        self.done
    }

    /// The body ended.
    pub(super) fn is_done(&self) -> bool {
        self.done
    }

    /// The body ended exactly where its framing said: the connection may be reused.
    pub(super) fn reusable(&self) -> bool {
        self.reusable
    }

    /// The end of a body re-framed as chunked: the last chunk, with the instance's trailers the
    /// policy lets through when it sent a chunked body.
    pub(super) fn last_chunk(&self, out: &mut Vec<u8>) {
        match self.framing {
            Framing::Chunked => {
                chunked::finish(&self.decoder, policy::response_trailer_allowed, out)
            }
            _ => out.extend_from_slice(LAST_CHUNK),
        }
    }
}

/// Body data as the client reads it: a chunk, or (HTTP/1.0, `raw`) the bytes themselves.
pub(super) fn frame(data: &[u8], raw: bool, out: &mut Vec<u8>) {
    match raw {
        true => out.extend_from_slice(data),
        false => chunked::encode(data, out),
    }
}

/// What became of a relayed body.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Relayed {
    /// Sent whole.
    Whole,
    /// Cut: either side failed, or the instance's framing broke midway.
    Cut,
    /// Malformed from its first bytes: nothing (not even the head) was sent.
    Malformed(String),
}

/// Relays the answer's body to the client: `out` holds the head to send first; the bytes
/// read with the head, then what the instance sends, go through `source` and on to the client
/// as it reads them — re-chunked (`rechunk`), or as they came (a length, or raw to HTTP/1.0).
pub(super) async fn relay<S: Io>(
    (ex, source): (&mut Reply, &mut Source),
    client: &mut S,
    rechunk: bool,
    out: &mut Vec<u8>,
    idle: Duration,
) -> Relayed {
    let mut at = ex.head.len;
    let mut first = true;
    loop {
        let direct = match source.take(&ex.buf[at..], |d| frame(d, !rechunk, out)) {
            Ok(direct) => direct,
            Err(why) if first => return Relayed::Malformed(why),
            Err(why) => {
                log::warn!("instance answer: {why}");
                return Relayed::Cut;
            }
        };
        if source.is_done() && rechunk {
            source.last_chunk(out);
        }
        // One write for the head and the first bytes; a length body's later reads go out
        // from the read buffer itself.
        let sent = match (out.is_empty(), direct.is_empty()) {
            (_, true) => out.is_empty() || write_within(client, out, idle).await.is_ok(),
            (true, false) => write_within(client, direct, idle).await.is_ok(),
            (false, false) => {
                out.extend_from_slice(direct);
                write_within(client, out, idle).await.is_ok()
            }
        };
        if !sent {
            return Relayed::Cut;
        }
        if source.is_done() {
            return Relayed::Whole;
        }
        (first, at) = (false, 0);
        out.clear();
        ex.buf.clear();
        ex.buf.reserve(READ);
        // Boxed: most answers came whole with their head, and a read's timer would otherwise
        // enlarge every request's state.
        match Box::pin(timeout(idle, ex.conn.read_buf(&mut ex.buf))).await {
            Ok(0) if source.closed() => {}
            Ok(0) | Err(_) => return Relayed::Cut,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `reads` one after the other (then the close, when `close`) and collects what the
    /// client would get, as [`relay`] does.
    fn through(framing: Framing, rechunk: bool, reads: &[&[u8]], close: bool) -> (Vec<u8>, Source) {
        let mut source = Source::new(framing, true);
        let mut out = Vec::new();
        for read in reads {
            let direct = source.take(read, |d| frame(d, !rechunk, &mut out)).unwrap();
            out.extend_from_slice(direct);
            if source.is_done() && rechunk {
                source.last_chunk(&mut out);
            }
        }
        if close && source.closed() && rechunk {
            source.last_chunk(&mut out);
        }
        (out, source)
    }

    #[test]
    fn a_length_body_goes_as_it_came_and_bytes_past_it_are_nobodys() {
        let (out, s) = through(Framing::Length(5), false, &[b"hel", b"lo"], false);
        assert_eq!((&out[..], s.is_done(), s.reusable()), (&b"hello"[..], true, true));
        let (out, s) = through(Framing::Length(5), false, &[b"hello!"], false);
        assert_eq!((&out[..], s.is_done(), s.reusable()), (&b"hello"[..], true, false));
        let (_, mut s) = through(Framing::Length(5), false, &[b"hel"], false);
        assert!(!s.closed(), "a length body cut by the close is cut");
        let (out, s) = through(Framing::Empty, false, &[b"junk"], false);
        assert!(out.is_empty() && s.is_done() && !s.reusable(), "after a bodiless answer");
    }

    #[test]
    fn a_chunked_body_is_rechunked_whatever_the_reads_with_only_allowed_trailers() {
        let body: &[u8] = b"3\r\nabc\r\n2\r\nde\r\n0\r\nx-checksum: 1\r\nhost: evil\r\n\r\n";
        for cut in 1..body.len() {
            let (out, s) = through(Framing::Chunked, true, &[&body[..cut], &body[cut..]], false);
            // Chunks follow the reads; what they carry does not.
            let (mut again, mut data) = (Decoder::default(), Vec::new());
            let used = again.decode(&out, |d| data.extend_from_slice(d)).unwrap();
            assert_eq!((used, &data[..], again.is_done()), (out.len(), &b"abcde"[..], true));
            assert!(out.ends_with(b"\r\n0\r\nx-checksum: 1\r\n\r\n"), "cut {cut}: {out:?}");
            assert!(s.is_done() && s.reusable(), "cut {cut}");
        }
        let (out, _) = through(Framing::Chunked, false, &[body], false);
        assert_eq!(out, b"abcde", "raw to HTTP/1.0");
        let mut s = Source::new(Framing::Chunked, true);
        assert!(s.take(b"zz\r\n", |_| {}).is_err(), "malformed size");
    }

    #[test]
    fn a_body_until_close_ends_with_the_close_and_never_keeps_the_connection() {
        let (out, s) = through(Framing::UntilClose, true, &[b"ab", b"", b"c"], true);
        assert_eq!(out, b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n");
        assert!(s.is_done() && !s.reusable());
        let (out, _) = through(Framing::UntilClose, false, &[b"ab", b"c"], true);
        assert_eq!(out, b"abc");
    }

    /// The loop itself on scripted I/O: the head and the first bytes in one write, the rest as
    /// it is read, and an instance that stops midway.
    #[tokio::test]
    async fn the_relay_sends_the_head_then_the_body_and_tells_a_cut_one() {
        use tokio::io::AsyncWriteExt;
        for (script, whole) in [(&b"lo, world"[..], true), (&b"lo"[..], false)] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let instance = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                s.write_all(script).await.unwrap();
            });
            let conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            let buf = b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\nhel".to_vec();
            let mut head = crate::http::h1::head::ResponseHead::default();
            crate::http::h1::head::parse_response(&buf, false, &mut head).unwrap();
            let mut ex = Reply {
                conn: crate::http::client::wire::Wire::Plain(conn),
                head,
                buf,
                request: Vec::new(),
            };
            let mut source = Source::new(Framing::Length(12), true);
            let (mut near, mut far) = tokio::io::duplex(1 << 16);
            let mut out = b"HEAD\r\n".to_vec();
            let idle = Duration::from_secs(5);
            let relayed = relay((&mut ex, &mut source), &mut far, false, &mut out, idle).await;
            drop(far);
            instance.await.unwrap();
            let mut got = Vec::new();
            near.read_to_end(&mut got).await.unwrap();
            match whole {
                true => {
                    assert_eq!((relayed, &got[..]), (Relayed::Whole, &b"HEAD\r\nhello, world"[..]))
                }
                false => assert_eq!((relayed, &got[..]), (Relayed::Cut, &b"HEAD\r\nhello"[..])),
            }
        }
    }
}
