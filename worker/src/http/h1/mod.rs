//! The engine: every HTTP/1.1 request a client sends, on plain TCP and TLS alike, proxied by the
//! connection's own task with no `HeaderMap`, no hyper dispatcher and no connection task on
//! either side (as Pingora and Sozu built their own).
//!
//! ```text
//! serve (mod.rs) ─▶ next_head (h1/scan into the connection's buffer; idle / head / drain)
//!                ─▶ answer (request.rs) ─┬─ pipeline::route, ::admit       (pipeline.rs)
//!                                        ├─ Policy::request                (policy.rs)
//!                                        ├─ body::start / Upload::pump     (body.rs)
//!                                        ├─ Forwarder::forward ▶ Attempt   (client/h1.rs)
//!                                        ├─ respond (respond.rs)           (Policy::response, framing)
//!                                        └─ bridge (bridge.rs)             (HTTP/2 instances, hyper's client)
//! ```
//!
//! Bodies stream both ways with backpressure ([`body`], [`respond`]); framing toward the
//! instance and toward the client is always the gateway's own; an upgrade the instance accepts
//! (101) turns the connection into a tunnel (`tunnel::pipe`). Every form of an HTTP/1.1
//! request is the engine's: absolute-form targets (the authority is the host), `OPTIONS *`
//! (answered), CONNECT (405), upgrades carrying a body (the body first, then the tunnel), and
//! the heads RFC 9112 refuses (several `Host` lines, a malformed line: 400; too large: 431).
//! Targets holding characters a URI may not hold unescaped are read as hyper would read them
//! (`{`, `|` in a query, `"` in a path: served; the rest: 400), and an HTTP version other than
//! 1.x is 505. Requests to services whose instances speak HTTP/2 go out on hyper's HTTP/2 client
//! and come back through the engine (`bridge.rs`); instances behind TLS speaking HTTP/1.1 are
//! the engine's own client's, over [`Wire`](crate::http::client::wire::Wire). The one thing it
//! hands to hyper, from the connection's first byte and before anything was read as HTTP/1.1,
//! is HTTP/2 prior knowledge (h2c): hyper serves that connection whole ([`End::Handover`]); a
//! connection the engine began serving stays the engine's to its end.

pub mod body;
pub mod chunked;
mod compressed;
pub mod head;
pub mod io;
mod relay;
mod request;
mod respond;
pub mod scan;
mod view;
#[cfg(test)]
pub(crate) use view::View;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use crate::http::buffers::Buffers;
use crate::http::connections::{Client, DRAIN_IDLE_GRACE};
use crate::http::h1::head::{parse_request, Parse, RequestHead, ResponseHead};
use crate::http::h1::io::{poll_once, Io};
use crate::http::proxy::Proxy;
use crate::shutdown::Shutdown;

/// Why a head over `max_header_bytes` is refused.
const TOO_LARGE: &str = "request head larger than max_header_bytes";

/// How a connection left the engine.
pub enum End<S> {
    /// Closed (by either side, a timeout, or the drain).
    Closed,
    /// To be served by hyper, starting with these bytes already read from it.
    Handover(S, Vec<u8>),
}

/// The buffers of an exchange with an instance, reused by the connection's next one.
#[derive(Default)]
struct Spare {
    request: Vec<u8>,
    response: Vec<u8>,
    head: ResponseHead,
}

/// What became of one request.
enum Step {
    /// Answered; the connection carries the next request.
    KeepAlive,
    /// Answered (or failed midway); the connection ends.
    Close,
}

enum Next {
    Head,
    Handover,
    /// A head whose framing is in doubt: answered with this status, then closed.
    Refuse(u16, &'static str),
    Closed,
}

/// One client connection on the engine.
struct Conn<'p, S> {
    proxy: &'p Proxy,
    stream: S,
    client: Client,
    /// The client's address as it goes into `X-Forwarded-For`, formatted once.
    ip: String,
    /// Bytes read from the client and not consumed yet.
    buf: Vec<u8>,
    head: RequestHead,
    /// Bytes of `buf` the last request used (head and body), dropped before the next one.
    used: usize,
    /// Bytes read past a streamed body's end: the next request's start.
    carry: Vec<u8>,
    /// The outgoing request head, then the response head.
    out: Vec<u8>,
    /// Buffers of the last exchange with an instance, for the next one.
    spare: Option<Spare>,
    /// When the last answer was sent (the keep-alive idle deadline counts from there).
    idle_since: Instant,
    requests: u64,
    draining: bool,
}

/// Serves a client connection (and the bytes it sent already) until it closes, or until a
/// request the engine does not take.
pub async fn serve<S: Io>(
    (stream, first): (S, Vec<u8>),
    client: Client,
    proxy: &Proxy,
    shutdown: &mut Shutdown,
) -> End<S> {
    let ip = ip_text(client.peer.ip());
    let (idle_since, peer) = (client.accepted, client.peer);
    let mut conn = Conn {
        proxy,
        stream,
        client,
        ip,
        buf: first,
        head: RequestHead::default(),
        used: 0,
        carry: Vec::new(),
        out: Vec::new(),
        spare: None,
        idle_since,
        requests: 0,
        draining: shutdown.is_shutdown(),
    };
    // One timer and one drain watch for the connection's life, not one per request: the timer
    // is moved earlier when a deadline comes sooner, and when it fires late it is checked
    // against the real deadline (a keep-alive connection costs no timer work per request).
    let timer = tokio::time::sleep_until(idle_since + proxy.settings.header_read_timeout);
    tokio::pin!(timer);
    let mut drain = shutdown.clone();
    let stop = drain.recv();
    tokio::pin!(stop);
    loop {
        match conn.next_head(timer.as_mut(), stop.as_mut()).await {
            Next::Head => {}
            Next::Handover => {
                log::debug!("connection from {peer}: request handed over to hyper");
                return End::Handover(conn.stream, conn.buf);
            }
            Next::Refuse(status, why) => {
                conn.refuse_head(status, why).await;
                conn.release();
                return End::Closed;
            }
            Next::Closed => {
                conn.release();
                return End::Closed;
            }
        }
        conn.requests += 1;
        let draining = conn.draining || shutdown.is_shutdown();
        // Boxed: a request's state (forward, retries, the body pump, the answer relay) is many
        // times a waiting connection's, and an unboxed future would make every connection's
        // task that large while it waits (memory per connection); one allocation per request
        // from the worker's thread-local heap is the price. Written into the box where it is
        // made (`Box::new(f)` builds the whole future on the stack and copies all of it, ~4 KB,
        // though a future that has not started holds only its arguments).
        let step = Pin::from(Box::write(Box::new_uninit(), conn.answer(draining))).await;
        if matches!(step, Step::Close) {
            let _ = conn.stream.shutdown().await;
            conn.release();
            return End::Closed;
        }
        conn.buf.drain(..conn.used.min(conn.buf.len()));
        conn.buf.append(&mut conn.carry);
        conn.release_when_idle();
    }
}

impl<S: Io> Conn<'_, S> {
    /// Waits for a complete request head in `buf`. Deadlines: the first head within
    /// `header_read_timeout` of the accept (a TLS handshake included); a later one within
    /// `idle_timeout` of the previous answer and `header_read_timeout` of its first byte; once
    /// draining, an idle connection gets [`DRAIN_IDLE_GRACE`] to send its next request
    /// (answered with `Connection: close`).
    async fn next_head(
        &mut self,
        mut timer: Pin<&mut Sleep>,
        mut stop: Pin<&mut impl Future<Output = ()>>,
    ) -> Next {
        let settings = &self.proxy.settings;
        let max_head = settings.max_header_bytes.max(8192);
        let mut head_started: Option<Instant> = None;
        loop {
            if !self.buf.is_empty() {
                match parse_request(&self.buf, &mut self.head) {
                    Parse::Complete if self.head.len > max_head => {
                        return Next::Refuse(431, TOO_LARGE)
                    }
                    Parse::Complete if request::servable_target(&self.buf, &self.head) => {
                        return Next::Head
                    }
                    Parse::Complete => return Next::Refuse(400, "invalid request target"),
                    Parse::Refuse(status, why) => return Next::Refuse(status, why),
                    // HTTP/2 with prior knowledge, from the connection's first byte: hyper's.
                    Parse::Handover if self.requests == 0 => return Next::Handover,
                    Parse::Handover => {
                        return Next::Refuse(400, "HTTP/2 preface on an HTTP/1.1 connection")
                    }
                    Parse::Partial if self.buf.len() > max_head => {
                        return Next::Refuse(431, TOO_LARGE)
                    }
                    // A head begun: its deadline counts from now (read once, not per read,
                    // and not at all for the head that comes whole).
                    Parse::Partial => {
                        head_started.get_or_insert_with(Instant::now);
                    }
                }
            }
            let deadline = if self.requests == 0 {
                self.client.accepted + settings.header_read_timeout
            } else if let Some(started) = head_started {
                started + settings.header_read_timeout
            } else if self.draining {
                self.idle_since.max(Instant::now()) + DRAIN_IDLE_GRACE
            } else {
                self.idle_since + settings.idle_timeout
            };
            if deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
            let draining = self.draining;
            let buffers = &self.proxy.send.buffers;
            tokio::select! {
                biased;
                r = read_more(&mut self.stream, &mut self.buf, buffers) => match r {
                    Ok(0) | Err(_) => return Next::Closed,
                    Ok(_) => {}
                },
                _ = timer.as_mut() => {
                    if Instant::now() < deadline {
                        // Fired for an earlier deadline that has since moved on.
                        timer.as_mut().reset(deadline);
                        continue;
                    }
                    if self.requests == 0 || head_started.is_some() {
                        let limit = settings.header_read_timeout;
                        log::info!("connection from {} closed: no request head within {limit:?}", self.client.peer);
                    }
                    return Next::Closed;
                }
                _ = stop.as_mut(), if !draining => self.draining = true,
            }
        }
    }

    /// Gives every buffer back as the connection ends (dropped with it, they would be
    /// allocated again, and grown, by the next connection: a connection per request paid
    /// ~3 000 instructions for it).
    fn release(&mut self) {
        self.buf.clear();
        self.release_when_idle();
    }

    /// Gives buffers back while the connection waits for its next request (nginx frees its
    /// header buffer on keep-alive too): an idle connection holds none, unless the next
    /// request is already in `buf` (pipelined).
    fn release_when_idle(&mut self) {
        let take = std::mem::take;
        let buf = match self.buf.is_empty() {
            true => take(&mut self.buf),
            false => Vec::new(),
        };
        let (request, response) = match self.spare.as_mut() {
            Some(spare) => (take(&mut spare.request), take(&mut spare.response)),
            None => (Vec::new(), Vec::new()),
        };
        let out = take(&mut self.out);
        self.proxy.send.buffers.give_all([buf, out, request, response]);
    }
}

/// The client's address as `X-Forwarded-For` gets it: an IPv4 address written here (through
/// `Display` it costs ~1 200 instructions, once a connection), any other as `Display` writes it.
fn ip_text(ip: std::net::IpAddr) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                if octet >= 100 {
                    text.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    text.push(char::from(b'0' + octet / 10 % 10));
                }
                text.push(char::from(b'0' + octet % 10));
            }
            text
        }
        other => other.to_string(),
    }
}

/// Reads more of the client's bytes into `buf`, taking a buffer only once bytes are there.
/// A readiness with nothing behind it (tokio's, after a read that did not drain the socket)
/// makes a read that finds nothing: with no head begun, the buffer goes back and the wait
/// goes on without one, so an idle keep-alive connection holds none (nginx's shape).
async fn read_more<S: Io>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    buffers: &Buffers,
) -> std::io::Result<usize> {
    loop {
        if buf.capacity() == 0 {
            stream.ready().await;
            *buf = buffers.take();
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        if !S::WAITS_BARE || !buf.is_empty() {
            return stream.read_buf(buf).await;
        }
        let read = {
            let read = std::pin::pin!(stream.read_buf(buf));
            poll_once(read).await
        };
        match read {
            Some(r) => return r,
            None => buffers.give(std::mem::take(buf)),
        }
    }
}
