//! One attempt of the engine at an instance: a pooled or new connection (plain TCP, or TLS for
//! a service with `upstream_tls`), the request head in one write, the response head read into
//! the attempt's buffer.
//!
//! The task serving the client does all of it itself — no connection task, no channel between
//! the two — which is most of what the engine saves over hyper's client.

use std::time::{Duration, Instant};

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
    /// ([`Stale::decide`]): at most one fresh connection more. `now`: the attempt's start (the
    /// pool judges expiry by it: no clock read more).
    pub async fn run(mut self, address: &str, now: Instant) -> Result<Reply, UpstreamError> {
        let mut pooled = self.pool.take(&pool_key(address, self.tls.is_some()), now);
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

    /// Writes the request (and pumps a streamed body), then reads the answer's head; generic so
    /// its tests script the instance's side in memory.
    async fn exchange<W>(&mut self, conn: &mut W) -> Result<(), Failure>
    where
        W: AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::client::dial::OwnAddresses;
    use tokio::io::duplex;

    /// An attempt with `request` for `pool` and `dialer`.
    fn attempt<'a>(
        (pool, dialer): (&'a IdleSet<Wire>, &'a Dialer),
        request: &[u8],
        replayable: bool,
    ) -> Attempt<'a, tokio::io::DuplexStream> {
        Attempt {
            pool,
            dialer,
            tls: None,
            idle_timeout: Duration::from_secs(5),
            request: request.to_vec(),
            buf: Vec::new(),
            head: ResponseHead::default(),
            head_request: false,
            replayable,
            upload: None,
            upgrade: false,
        }
    }

    fn parts() -> (std::sync::Arc<IdleSet<Wire>>, Dialer) {
        let dialer = Dialer::new(Duration::from_secs(2), OwnAddresses::default());
        (IdleSet::new(Duration::from_secs(30), 4), dialer)
    }

    /// Runs the exchange against an instance that answers `script` once it read the request;
    /// what the instance received, and the outcome.
    async fn scripted(request: &[u8], script: &'static [u8]) -> (Vec<u8>, Result<u16, String>) {
        let (pool, dialer) = parts();
        let mut a = attempt((&pool, &dialer), request, true);
        let (mut near, mut far) = duplex(1 << 17);
        let want = request.len();
        let instance = async move {
            let mut got = vec![0u8; want];
            far.read_exact(&mut got).await.unwrap();
            far.write_all(script).await.unwrap();
            drop(far);
            got
        };
        let (got, result) = tokio::join!(instance, a.exchange(&mut near));
        let outcome = result.map(|()| a.head.status).map_err(|f| match f {
            Failure::Lost { written, why } => format!("lost written={written}: {why}"),
            Failure::Other(e) => format!("other: {e}"),
        });
        (got, outcome)
    }

    #[tokio::test]
    async fn the_request_goes_as_built_and_interim_answers_are_skipped() {
        let req = b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n";
        let script = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let (got, outcome) = scripted(req, script).await;
        assert_eq!(got, req);
        assert_eq!(outcome, Ok(204));
    }

    #[tokio::test]
    async fn what_the_instance_did_wrong_is_told_apart_from_a_lost_connection() {
        let req = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let (_, eof) = scripted(req, b"").await;
        assert!(eof.unwrap_err().starts_with("lost written=true"), "nothing came back: may resend");
        let (_, cut) = scripted(req, b"HTTP/1.1 200 OK\r\ncontent-le").await;
        assert!(cut.unwrap_err().contains("closed before the response head"));
        let (_, unasked) = scripted(req, b"HTTP/1.1 101 Switching Protocols\r\n\r\n").await;
        assert!(unasked.unwrap_err().contains("asked no upgrade"));
        let (_, bad) = scripted(req, b"HTTP/1.1 2x0 OK\r\n\r\n").await;
        assert!(bad.unwrap_err().starts_with("other: "));
    }

    #[tokio::test]
    async fn a_response_head_past_the_limit_is_refused() {
        let (pool, dialer) = parts();
        let mut a = attempt((&pool, &dialer), b"GET / HTTP/1.1\r\n\r\n", true);
        let (mut near, mut far) = duplex(1 << 20);
        let endless = async move {
            let mut req = [0u8; 18];
            far.read_exact(&mut req).await.unwrap();
            far.write_all(b"HTTP/1.1 200 OK\r\nx-filler: ").await.unwrap();
            // One header line that never ends.
            let line = [b'a'; 1024];
            while far.write_all(&line).await.is_ok() {}
        };
        tokio::select! {
            r = a.exchange(&mut near) => match r {
                Err(Failure::Other(e)) => assert!(e.to_string().contains("too large"), "{e}"),
                _ => panic!("a head without end was taken"),
            },
            _ = endless => panic!("the instance's writes stopped first"),
        }
    }

    /// An instance on loopback that answers the first request on each connection and closes
    /// the connection on reading a second one, unanswered (an idle close racing a reuse);
    /// counts (connections, requests read, requests answered).
    async fn instance() -> (String, std::sync::Arc<std::sync::Mutex<(usize, usize, usize)>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let seen = std::sync::Arc::new(std::sync::Mutex::new((0, 0, 0)));
        let counts = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counts.lock().unwrap().0 += 1;
                let counts = counts.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for answer in [true, false] {
                        match s.read(&mut buf).await {
                            Ok(n) if n > 0 => counts.lock().unwrap().1 += 1,
                            _ => return,
                        }
                        if !answer {
                            return;
                        }
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        s.write_all(ok).await.unwrap();
                        counts.lock().unwrap().2 += 1;
                    }
                });
            }
        });
        (address, seen)
    }

    /// One request answered on a new connection, which then waits in the pool.
    async fn pooled_after_one(pool: &IdleSet<Wire>, dialer: &Dialer, address: &str) {
        let get = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let reply = attempt((pool, dialer), get, true).run(address, Instant::now()).await.unwrap();
        assert_eq!(reply.head.status, 200);
        pool.put(address, reply.conn, Instant::now());
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_under_a_replayable_request_is_replaced_once() {
        let (address, seen) = instance().await;
        let (pool, dialer) = parts();
        pooled_after_one(&pool, &dialer, &address).await;
        let get = b"GET /again HTTP/1.1\r\nhost: a\r\n\r\n";
        let again = attempt((&pool, &dialer), get, true).run(&address, Instant::now()).await;
        assert_eq!(again.map(|r| r.head.status).ok(), Some(200));
        assert_eq!(
            *seen.lock().unwrap(),
            (2, 3, 2),
            "read on the pooled one, answered on a new one"
        );
    }

    #[tokio::test]
    async fn a_request_that_may_have_run_is_not_sent_twice() {
        let (address, seen) = instance().await;
        let (pool, dialer) = parts();
        pooled_after_one(&pool, &dialer, &address).await;
        let post = b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n";
        let failed = attempt((&pool, &dialer), post, false).run(&address, Instant::now()).await;
        assert!(matches!(failed, Err(UpstreamError::Reset(_))), "the instance may have run it");
        assert_eq!(*seen.lock().unwrap(), (1, 2, 1), "never sent again");
    }
}
