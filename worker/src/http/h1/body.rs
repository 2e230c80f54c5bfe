//! Request bodies on the engine, as one explicit state machine (Pingora's `BodyReader`): a
//! `Content-Length` body is copied to the byte, a chunked one decoded strictly ([`Decoder`]) and
//! encoded again, so the instance always receives a body framed by the gateway.
//!
//! A body that arrived whole with its head (most API bodies: the 1 KiB JSON of a POST comes in
//! the same read) is kept with the request head and goes out in one write; it can be sent
//! again, so retries stay possible. A longer one is streamed: what came with the head goes out
//! with it, the rest is copied from the client to the instance as it arrives — one buffer,
//! backpressure both ways, never held whole. Bytes read past the body's end are the next
//! pipelined request's and go back to the connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::http::client::upstream::{BodySent, UpstreamError};
use crate::http::h1::chunked::{self, Decoder};
use crate::http::h1::head::BodyFraming;
use crate::http::h1::io::timeout;
use crate::http::policy;

/// Largest read of a streamed body at once.
const READ: usize = 64 * 1024;

/// Why a body cannot be forwarded; both are the client's fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Over `max_body_bytes` (413).
    TooLarge,
    /// Malformed chunked framing (400).
    Malformed(String),
}

impl From<BodyError> for UpstreamError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge => UpstreamError::BodyTooLarge,
            BodyError::Malformed(why) => UpstreamError::ClientBody(why),
        }
    }
}

/// What the bytes read with the head make of the body.
#[derive(Debug)]
pub enum Start {
    /// The whole body was in them; `used` bytes of them were the body's.
    Whole {
        /// Bytes of the client's buffer that were the body's.
        used: usize,
    },
    /// Only its start was (all of them); the rest streams.
    Streamed(Upload),
}

/// What the body bytes that came with the head make of the body, and those bytes as they go
/// on: a `Content-Length` body's where they came (`avail`: not copied, which an upload of a
/// few KiB would pay in an allocation and a copy), a chunked one's re-framed into `out`.
/// `max`: `max_body_bytes` (0: no limit); a declared length over it was refused before.
pub fn start<'a>(
    framing: BodyFraming,
    avail: &'a [u8],
    max: u64,
    out: &'a mut Vec<u8>,
) -> Result<(Start, &'a [u8]), BodyError> {
    match framing {
        BodyFraming::None => Ok((Start::Whole { used: 0 }, &[])),
        BodyFraming::Length(n) => {
            let have = avail.len() as u64;
            if have >= n {
                let used = usize::try_from(n).unwrap_or(usize::MAX);
                return Ok((Start::Whole { used }, &avail[..used]));
            }
            Ok((Start::Streamed(Upload::new(State::Length(n - have), max, have)), avail))
        }
        BodyFraming::Chunked => {
            let mut decoder = Decoder::default();
            let mut seen = 0u64;
            let used = decoder
                .decode(avail, |data| {
                    seen += data.len() as u64;
                    chunked::encode(data, out);
                })
                .map_err(|e| BodyError::Malformed(e.to_string()))?;
            if max != 0 && seen > max {
                return Err(BodyError::TooLarge);
            }
            if decoder.is_done() {
                chunked::finish(&decoder, policy::request_trailer_allowed, out);
                return Ok((Start::Whole { used }, out));
            }
            Ok((Start::Streamed(Upload::new(State::Chunked(decoder), max, seen)), out))
        }
    }
}

#[derive(Debug)]
enum State {
    /// Bytes still to come.
    Length(u64),
    Chunked(Decoder),
    Done,
}

/// The rest of a body still to be read from the client.
#[derive(Debug)]
pub struct Upload {
    state: State,
    max: u64,
    seen: u64,
    /// Bytes read past the body's end: the next request's.
    pub leftover: Vec<u8>,
    /// Marked when the whole body is in the instance's hands (its timers start then).
    pub sent: Arc<BodySent>,
    started: bool,
    /// A chunked body's decoder once the body ended: its trailer section.
    ended: Option<Decoder>,
}

impl Upload {
    fn new(state: State, max: u64, seen: u64) -> Self {
        Upload {
            state,
            max,
            seen,
            leftover: Vec::new(),
            sent: Arc::new(BodySent::default()),
            started: false,
            ended: None,
        }
    }

    /// The body `framing` announces, read from its first byte through [`Upload::decode`] (the
    /// engine's bridge to HTTP/2 instances, which sends data, not HTTP/1.1 framing); `None`
    /// when there is no body.
    pub fn of(framing: BodyFraming, max: u64) -> Option<Upload> {
        match framing {
            BodyFraming::None | BodyFraming::Length(0) => None,
            BodyFraming::Length(n) => Some(Upload::new(State::Length(n), max, 0)),
            BodyFraming::Chunked => Some(Upload::new(State::Chunked(Decoder::default()), max, 0)),
        }
    }

    /// Whether the whole body was read from the client.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Whether any of the rest was read (the request can no longer be sent again).
    pub fn started(&self) -> bool {
        self.started
    }

    /// Copies the rest of the body from `client` to `instance`, each read and write within
    /// `idle`. A client that stops sending or sends a malformed body is the client's fault
    /// ([`UpstreamError::ClientBody`]); an instance that stops taking it is the instance's.
    pub async fn pump<C, U>(
        &mut self,
        client: &mut C,
        instance: &mut U,
        idle: Duration,
    ) -> Result<(), UpstreamError>
    where
        C: AsyncRead + Unpin,
        U: AsyncWrite + Unpin,
    {
        let mut buf = Vec::with_capacity(READ);
        let mut out = Vec::new();
        while !self.is_done() {
            buf.clear();
            self.started = true;
            match timeout(idle, client.read_buf(&mut buf)).await {
                Ok(0) => return Err(cut("the client closed before its body ended")),
                Err(()) => return Err(cut("the client stopped sending its body")),
                Ok(_) => {}
            }
            let body = self.feed(&buf, &mut out)?;
            let write = instance.write_all(body);
            if timeout(idle, write).await.is_err() {
                return Err(UpstreamError::Failed("the instance stopped taking the body".into()));
            }
        }
        if timeout(idle, instance.flush()).await.is_err() {
            return Err(UpstreamError::Failed("the instance stopped taking the body".into()));
        }
        self.sent.mark();
        Ok(())
    }

    /// The bytes of `read` to send on, framed (in `out` when they are re-encoded); the rest of
    /// `read`, past the body's end, is kept in [`Upload::leftover`].
    pub fn feed<'a>(
        &mut self,
        read: &'a [u8],
        out: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], BodyError> {
        match self.state {
            State::Done => Ok(&[]),
            // As it came: a slice of `read`, not a copy.
            State::Length(left) => {
                let take = usize::try_from((read.len() as u64).min(left)).unwrap_or(usize::MAX);
                self.decode(&read[..take], |_| {})?;
                self.leftover.extend_from_slice(&read[take..]);
                Ok(&read[..take])
            }
            State::Chunked(_) => {
                out.clear();
                self.decode(read, |data| chunked::encode(data, out))?;
                if let (State::Done, Some(decoder)) = (&self.state, &self.ended) {
                    chunked::finish(decoder, policy::request_trailer_allowed, out);
                }
                Ok(out)
            }
        }
    }

    /// Hands each run of the body's data in `read` to `data` (a chunked body's decoded); the
    /// rest of `read`, past the body's end (all of it once the body ended), is kept in
    /// [`Upload::leftover`].
    pub fn decode(&mut self, read: &[u8], mut data: impl FnMut(&[u8])) -> Result<(), BodyError> {
        match &mut self.state {
            State::Length(left) => {
                let take = usize::try_from((read.len() as u64).min(*left)).unwrap_or(usize::MAX);
                *left -= take as u64;
                data(&read[..take]);
                self.leftover.extend_from_slice(&read[take..]);
                if *left == 0 {
                    self.state = State::Done;
                }
            }
            State::Chunked(decoder) => {
                let mut seen = self.seen;
                let used = decoder
                    .decode(read, |d| {
                        seen += d.len() as u64;
                        data(d);
                    })
                    .map_err(|e| BodyError::Malformed(e.to_string()))?;
                self.seen = seen;
                if self.max != 0 && seen > self.max {
                    return Err(BodyError::TooLarge);
                }
                if decoder.is_done() {
                    self.leftover.extend_from_slice(&read[used..]);
                    self.ended = Some(std::mem::take(decoder));
                    self.state = State::Done;
                }
            }
            State::Done => self.leftover.extend_from_slice(read),
        }
        Ok(())
    }

    /// The trailer fields a chunked body ended with that may reach the instance
    /// ([`policy::request_trailer_allowed`]); `None` when there are none.
    pub fn trailers(&self) -> Option<http::HeaderMap> {
        let decoder = self.ended.as_ref()?;
        let mut map = http::HeaderMap::new();
        for (name, value) in decoder.trailer_fields(policy::request_trailer_allowed) {
            let name = http::HeaderName::from_bytes(name);
            if let (Ok(n), Ok(v)) = (name, http::HeaderValue::from_bytes(value)) {
                map.append(n, v);
            }
        }
        (!map.is_empty()).then_some(map)
    }
}

fn cut(why: &str) -> UpstreamError {
    UpstreamError::ClientBody(why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_came_with_its_head_is_whole() {
        let mut out = Vec::new();
        let (got, bytes) = start(BodyFraming::Length(3), b"abcGET", 0, &mut out).unwrap();
        assert!(matches!(got, Start::Whole { used: 3 }));
        assert_eq!(bytes, b"abc", "where it came, not copied");
        let (got, bytes) = start(BodyFraming::None, b"GET", 0, &mut out).unwrap();
        assert!(matches!(got, Start::Whole { used: 0 }) && bytes.is_empty());
        assert!(out.is_empty());
        let got =
            start(BodyFraming::Chunked, b"3;x=1\r\nabc\r\n0\r\nT: 1\r\n\r\nNEXT", 0, &mut out);
        let (got, bytes) = got.unwrap();
        assert!(matches!(got, Start::Whole { used: 23 }), "{got:?}");
        assert_eq!(
            bytes, b"3\r\nabc\r\n0\r\n\r\n",
            "re-framed; extensions dropped, a request trailer not gRPC's dropped"
        );
    }

    #[test]
    fn limits_and_malformed_chunks_are_the_clients_fault() {
        let mut out = Vec::new();
        let over = start(BodyFraming::Chunked, b"5\r\nabcde\r\n", 4, &mut out);
        assert_eq!(over.unwrap_err(), BodyError::TooLarge);
        for bad in [&b"3\nabc\r\n"[..], b"fffffffffffffffff\r\n", b"3\r\nabcd\r\n", b"g\r\n"] {
            let got = start(BodyFraming::Chunked, bad, 0, &mut out).map(|(s, _)| s);
            assert!(matches!(got, Err(BodyError::Malformed(_))), "{bad:?}: {got:?}");
        }
    }

    #[test]
    fn a_body_read_as_data_is_decoded_in_any_pieces_with_its_allowed_trailers() {
        let raw = b"3\r\nabc\r\n2\r\nde\r\n0\r\ngrpc-status: 0\r\nx-auth-user: m\r\n\r\nNEXT";
        for step in 1..raw.len() {
            let mut up = Upload::of(BodyFraming::Chunked, 0).unwrap();
            let mut data = Vec::new();
            for piece in raw.chunks(step) {
                up.decode(piece, |d| data.extend_from_slice(d)).unwrap();
            }
            assert!(up.is_done() && data == b"abcde" && up.leftover == b"NEXT", "step {step}");
            let trailers = up.trailers().unwrap();
            assert_eq!(trailers.len(), 1, "by the allow-list: {trailers:?}");
            assert_eq!(trailers["grpc-status"], "0");
        }
        assert!(
            Upload::of(BodyFraming::Length(0), 0).is_none()
                && Upload::of(BodyFraming::None, 0).is_none()
        );
        let mut up = Upload::of(BodyFraming::Length(4), 0).unwrap();
        let mut data = Vec::new();
        up.decode(b"abcdGET", |d| data.extend_from_slice(d)).unwrap();
        assert!(
            up.is_done() && data == b"abcd" && up.leftover == b"GET" && up.trailers().is_none()
        );
    }

    #[tokio::test]
    async fn the_rest_streams_and_the_next_request_is_kept() {
        let mut out = Vec::new();
        let Ok((Start::Streamed(mut up), b"ab")) =
            start(BodyFraming::Length(6), b"ab", 0, &mut out)
        else {
            panic!("streamed, its start as it came")
        };
        let (mut client, mut client_end) = tokio::io::duplex(64);
        let (mut instance, mut instance_end) = tokio::io::duplex(64);
        client_end.write_all(b"cdefGET / HTTP/1.1\r\n").await.unwrap();
        up.pump(&mut client, &mut instance, Duration::from_secs(5)).await.unwrap();
        drop(instance);
        let mut got = Vec::new();
        instance_end.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"cdef");
        assert_eq!(up.leftover, b"GET / HTTP/1.1\r\n");
        assert!(up.is_done() && up.started());
    }

    #[tokio::test]
    async fn a_chunked_body_streams_re_framed() {
        let mut out = Vec::new();
        let Ok((Start::Streamed(mut up), started)) =
            start(BodyFraming::Chunked, b"2\r\nab", 0, &mut out)
        else {
            panic!("streamed")
        };
        assert_eq!(started, b"2\r\nab\r\n");
        let (mut client, mut client_end) = tokio::io::duplex(64);
        let (mut instance, mut instance_end) = tokio::io::duplex(64);
        client_end.write_all(b"\r\n1\r\nc\r\n0\r\n\r\nX").await.unwrap();
        up.pump(&mut client, &mut instance, Duration::from_secs(5)).await.unwrap();
        drop(instance);
        let mut got = Vec::new();
        instance_end.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"1\r\nc\r\n0\r\n\r\n");
        assert_eq!(up.leftover, b"X");
    }

    #[tokio::test]
    async fn a_client_that_leaves_mid_body_is_its_own_fault() {
        let Ok((Start::Streamed(mut up), _)) =
            start(BodyFraming::Length(10), b"", 0, &mut Vec::new())
        else {
            panic!("streamed")
        };
        let (mut client, client_end) = tokio::io::duplex(64);
        drop(client_end);
        let (mut instance, _keep) = tokio::io::duplex(64);
        let got = up.pump(&mut client, &mut instance, Duration::from_secs(5)).await;
        assert!(matches!(got, Err(UpstreamError::ClientBody(_))), "{got:?}");
    }
}
