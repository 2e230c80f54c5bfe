//! One attempt of the engine at an instance: a pooled or new connection (plain TCP, or TLS for
//! a service with `upstream_tls`), the request head in one write, the response head read into
//! the attempt's buffer.
//!
//! The task serving the client does all of it itself — no connection task, no channel between
//! the two — which is most of what the engine saves over hyper's client.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::http::client::dial::Dialer;
use crate::http::client::forward::Answer;
use crate::http::client::pool::{IdleSet, Stale};
use crate::http::client::transport::TlsClient;
use crate::http::client::upstream::UpstreamError;
use crate::http::client::wire::{pool_key, Wire};
use crate::http::h1::body::Upload;
use crate::http::h1::head::{parse_response, ResponseHead};

/// Largest response head accepted from an instance.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// An instance's answer: its head, the bytes read so far (head and the start of the body) and
/// the connection the rest comes on.
pub struct Reply {
    /// The connection to the instance.
    pub conn: Wire,
    /// The parsed head (offsets into `buf`).
    pub head: ResponseHead,
    /// What was read: the head, then perhaps body bytes.
    pub buf: Vec<u8>,
    /// The request head as sent (its buffer serves the connection's next request).
    pub request: Vec<u8>,
}

impl Answer for Reply {
    fn status(&self) -> http::StatusCode {
        http::StatusCode::from_u16(self.head.status).unwrap_or(http::StatusCode::BAD_GATEWAY)
    }
}

/// How one attempt is made.
pub struct Attempt<'a, C> {
    /// Idle connections to instances.
    pub pool: &'a IdleSet<Wire>,
    /// Opens connections (`connect_timeout`, host names).
    pub dialer: &'a Dialer,
    /// TLS toward the service's instances (`upstream_tls`), or none.
    pub tls: Option<&'a TlsClient>,
    /// `idle_timeout`: each read and write of a streamed body.
    pub idle_timeout: Duration,
    /// The whole request head, and the body (or its start) framed for the instance.
    pub request: Vec<u8>,
    /// Where the answer is read to (cleared first; a buffer of the client connection's).
    pub buf: Vec<u8>,
    /// Where its head is parsed to (likewise reused).
    pub head: ResponseHead,
    /// A HEAD request (its answer has no body whatever it declares).
    pub head_request: bool,
    /// The request may run twice: idempotent, and its whole body (if any) is in `request`.
    pub replayable: bool,
    /// The rest of a streamed body, and the client it comes from.
    pub upload: Option<(&'a mut Upload, &'a mut C)>,
    /// The request asks for an upgrade: a 101 answer is the tunnel's start, not an error.
    pub upgrade: bool,
}

/// Why the exchange failed, and whether the instance can have seen the request.
enum Failure {
    /// The write failed, or the connection closed with no byte of answer.
    Lost { written: bool, why: String },
    /// Anything else.
    Other(UpstreamError),
}

impl<C: AsyncRead + Unpin> Attempt<'_, C> {
    /// Sends the request to `address` and reads the response head (skipping interim 1xx).
    /// A pooled connection that turns out closed is handled by the one rule for both sides
    /// ([`Stale::decide`]): at most one fresh connection more.
    pub async fn run(mut self, address: &str) -> Result<Reply, UpstreamError> {
        let mut pooled = self.pool.take(&pool_key(address, self.tls.is_some()));
        let mut resent = false;
        loop {
            let (mut conn, reused) = match pooled.take() {
                Some(c) => (c, true),
                None => {
                    // Boxed, as every path a kept-alive request does not take: a dial's state
                    // (resolution, connect timer) would otherwise enlarge every request's.
                    (Box::pin(self.dial(address)).await?, false)
                }
            };
            match self.exchange(&mut conn).await {
                Ok(()) => {
                    let Attempt { request, buf, head, .. } = self;
                    return Ok(Reply { conn, head, buf, request });
                }
                Err(Failure::Lost { written, why }) => {
                    let replayable = self.replayable && self.upload_untouched();
                    if reused && Stale::decide(written, replayable, resent) == Stale::ResendFresh {
                        log::debug!("instance {address}: pooled connection closed ({why}); again");
                        resent = true;
                        continue;
                    }
                    return Err(UpstreamError::Reset(why));
                }
                Err(Failure::Other(e)) => return Err(e),
            }
        }
    }

    /// A new connection to `address`, with its TLS session when the service asks for one (a
    /// failed handshake is a connect failure: nothing was sent).
    async fn dial(&self, address: &str) -> Result<Wire, UpstreamError> {
        let stream = self.dialer.connect(address).await;
        let stream = stream.map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let Some(tls) = self.tls else { return Ok(Wire::Plain(stream)) };
        let session = tls.handshake(stream, address, self.dialer.timeout()).await;
        Ok(Wire::Tls(Box::new(session.map_err(UpstreamError::Connect)?)))
    }

    /// No byte of a streamed body was read yet (it could go on another connection).
    fn upload_untouched(&self) -> bool {
        self.upload.as_ref().is_none_or(|(u, _)| !u.started())
    }

    async fn exchange(&mut self, conn: &mut Wire) -> Result<(), Failure> {
        // Flushed: a TLS session may keep the end of a write until then (a no-op on TCP).
        let write = async {
            conn.write_all(&self.request).await?;
            conn.flush().await
        };
        write.await.map_err(|e| Failure::Lost { written: false, why: e.to_string() })?;
        if let Some((upload, client)) = self.upload.as_mut() {
            let pump = Box::pin(upload.pump(*client, conn, self.idle_timeout));
            pump.await.map_err(Failure::Other)?;
        }
        let (buf, head) = (&mut self.buf, &mut self.head);
        buf.clear();
        loop {
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let n = match conn.read_buf(buf).await {
                Ok(n) => n,
                Err(e) if buf.is_empty() => {
                    return Err(Failure::Lost { written: true, why: e.to_string() })
                }
                Err(e) => return Err(Failure::Other(UpstreamError::Reset(e.to_string()))),
            };
            if n == 0 {
                let why = "connection closed before the response head".to_string();
                return Err(match buf.is_empty() {
                    true => Failure::Lost { written: true, why },
                    false => Failure::Other(UpstreamError::Reset(why)),
                });
            }
            loop {
                match parse_response(buf, self.head_request, head) {
                    Ok(None) if buf.len() > MAX_RESPONSE_HEAD => {
                        return Err(Failure::Other(UpstreamError::Failed(
                            "response head too large".into(),
                        )))
                    }
                    Ok(None) => break,
                    Err(e) => return Err(Failure::Other(UpstreamError::Failed(e.to_string()))),
                    Ok(Some(())) if head.status == 101 && self.upgrade => return Ok(()),
                    Ok(Some(())) if head.status == 101 => {
                        return Err(Failure::Other(UpstreamError::Failed(
                            "101 Switching Protocols to a request that asked no upgrade".into(),
                        )))
                    }
                    // Interim answers (100, 103 …) are not forwarded: the final one follows.
                    Ok(Some(())) if head.status < 200 => {
                        buf.drain(..head.len);
                    }
                    Ok(Some(())) => return Ok(()),
                }
            }
        }
    }
}
