//! The worker's own pool of HTTP/1.1 connections to instances, on hyper's connection API.
//!
//! Each worker is one thread, so the pool is a plain map of idle senders per instance address
//! behind an uncontended lock — no hashing of URI keys byte by byte, no per-request re-insertion
//! (hyper-util's legacy pool cost ~11 000 instructions per request). A connection goes back to
//! the pool only once its response body was read to the end; a connection the instance closed
//! is dropped at checkout; idle ones expire after `idle_timeout`, swept in the background.
//! A request that found its pooled connection closed before a byte was written is sent again on
//! a fresh connection (whatever its method: the instance never saw it). The idle set itself is
//! generic: the HTTP/1.1 engine (`h1`) keeps its plain TCP connections in one too.

use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use std::time::Instant;
use tokio::net::TcpStream;

use crate::http::client::dial::Dialer;
use crate::http::client::transport::{TlsClient, Transport};
use crate::http::Body;

/// A connection that can wait in an [`IdleSet`].
pub trait Pooled: Send + 'static {
    /// Whether it can still carry a request (the instance has not closed it).
    fn is_usable(&self) -> bool;

    /// The check made as it is lent out again, when a request is about to go on it (by
    /// default the same).
    fn is_clean(&self) -> bool {
        self.is_usable()
    }
}

impl Pooled for TcpStream {
    /// Usable unless the instance closed it or sent something unasked. Readiness is what the
    /// event loop already knows (no system call while nothing arrived).
    fn is_usable(&self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.poll_read_ready(&mut cx) {
            std::task::Poll::Pending => true,
            std::task::Poll::Ready(Err(_)) => false,
            std::task::Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                matches!(self.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }

    /// A look at the socket itself, not only at what the event loop last reported: bytes an
    /// instance wrote after its answer (a HEAD, 204 or 304 followed by a body, or anything
    /// else) must never be read as the next request's answer — that would hand one client's
    /// answer to another and keep the queue shifted. One `recv(MSG_PEEK)` per reuse.
    fn is_clean(&self) -> bool {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(self).peek(&mut byte) {
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            // EOF, or bytes nobody asked for.
            Ok(_) => false,
        }
    }
}

impl Pooled for SendRequest<Body> {
    fn is_usable(&self) -> bool {
        !self.is_closed() && self.is_ready()
    }
}

/// What becomes of a request whose reused (pooled) connection failed before a byte of answer
/// came back — the one rule for both protocol sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// Send it again, once, on a fresh connection to the same instance: an idle connection the
    /// instance closed as we reused it says nothing about the instance (nginx gives a cached
    /// connection's failure an extra try too). Not another pooled one: an instance that drops
    /// every request would otherwise get it once per pooled connection.
    ResendFresh,
    /// A failure of this attempt: counted against the instance; `forward::Replay` decides whether
    /// another instance gets the request.
    Fail,
}

impl Stale {
    /// `written`: some of the request may have reached the instance; `replayable`: the request
    /// may be executed twice (idempotent, its whole body held); `resent`: this attempt already
    /// had its fresh connection.
    pub fn decide(written: bool, replayable: bool, resent: bool) -> Stale {
        match (resent, written, replayable) {
            (true, _, _) => Stale::Fail,
            (false, false, _) | (false, true, true) => Stale::ResendFresh,
            (false, true, false) => Stale::Fail,
        }
    }
}

/// Idle connections by instance address, shared by the hyper pool and the engine's: a plain
/// map behind an uncontended lock (each worker is one thread), at most `max_per_instance` per
/// address, expired after `idle_timeout` — checked at checkout and swept in the background.
pub struct IdleSet<C> {
    idle: Mutex<FxHashMap<String, Vec<Idle<C>>>>,
    idle_timeout: Duration,
    max_per_instance: usize,
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

impl<C: Pooled> IdleSet<C> {
    /// An empty set; its sweeper runs on the current runtime for as long as the set lives.
    pub fn new(idle_timeout: Duration, max_per_instance: usize) -> Arc<Self> {
        let set = Arc::new(IdleSet {
            idle: Mutex::new(FxHashMap::default()),
            idle_timeout,
            max_per_instance: max_per_instance.max(1),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&set)));
        }
        set
    }

    /// The most recently used usable connection to `address`, if any; `now`: a clock reading
    /// the caller has at hand (the attempt's start), expiry judged by it.
    pub fn take(&self, address: &str, now: Instant) -> Option<C> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(address)?;
        while let Some(entry) = list.pop() {
            let idle_for = now.saturating_duration_since(entry.since);
            if idle_for < self.idle_timeout && entry.conn.is_clean() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Keeps `conn`, idle since `now`, for the next request to `address` (closed instead when
    /// the set is full).
    pub fn put(&self, address: &str, conn: C, now: Instant) {
        if !conn.is_usable() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else { return };
        let entry = Idle { conn, since: now };
        match idle.get_mut(address) {
            Some(list) if list.len() < self.max_per_instance => list.push(entry),
            Some(_) => {}
            None => {
                idle.insert(address.to_string(), vec![entry]);
            }
        }
    }
}

/// The hyper pool: idle HTTP/1.1 senders, one shared HTTP/2 connection per instance (and
/// transport), and how to open new connections.
pub struct Pool {
    idle: Arc<IdleSet<SendRequest<Body>>>,
    h2: Mutex<FxHashMap<String, http2::SendRequest<Body>>>,
    dialer: Arc<Dialer>,
}

/// Why a connection could not be had.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP connect failed or timed out.
    Connect(std::io::Error),
    /// The HTTP handshake failed.
    Handshake(hyper::Error),
    /// The TLS handshake failed (or the instance's name is not a valid TLS name).
    Tls(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Connect(e) => write!(f, "{e}"),
            ConnectError::Handshake(e) => write!(f, "handshake: {e}"),
            ConnectError::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

/// A connection lent to one request: back to the pool when [`Lease::reusable`] was called
/// (the response was read to its end), closed otherwise.
pub struct Lease {
    pool: Arc<Pool>,
    address: String,
    sender: Option<SendRequest<Body>>,
    reusable: bool,
}

impl Lease {
    /// The response was read completely: the connection may serve another request.
    pub fn reusable(&mut self) {
        self.reusable = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (true, Some(sender)) = (self.reusable, self.sender.take()) {
            self.pool.idle.put(&self.address, sender, Instant::now());
        }
    }
}

impl Pool {
    /// An empty pool.
    pub fn new(dialer: Arc<Dialer>, idle_timeout: Duration, max_idle: usize) -> Arc<Pool> {
        Arc::new(Pool {
            idle: IdleSet::new(idle_timeout, max_idle),
            h2: Mutex::new(FxHashMap::default()),
            dialer,
        })
    }

    /// Sends `req` (origin-form URI, Host set) to `address` on a pooled or new connection,
    /// over `transport` (`None`: plain HTTP/1.1).
    pub async fn send(
        self: &Arc<Self>,
        transport: Option<&Transport>,
        address: &str,
        req: Request<Body>,
    ) -> Result<(http::Response<Incoming>, Lease), SendError> {
        match transport {
            None => self.send_h1(address, address, None, req).await,
            Some(t) if t.is_h2() => self.send_h2(t, address, req).await,
            Some(t) => self.send_h1(&t.key(address), address, t.tls.as_ref(), req).await,
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        key: &str,
        address: &str,
        tls: Option<&TlsClient>,
        req: Request<Body>,
    ) -> Result<(http::Response<Incoming>, Lease), SendError> {
        let mut req = req;
        let mut pooled = self.idle.take(key, Instant::now());
        let mut resent = false;
        loop {
            let (mut sender, reused) = match pooled.take() {
                Some(s) => (s, true),
                None => (self.connect(address, tls).await.map_err(SendError::Connect)?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        pool: self.clone(),
                        address: key.to_string(),
                        sender: Some(sender),
                        reusable: false,
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Unsent on a reused connection the instance had closed: the one rule
                    // (forward::Stale) sends it once more, on a fresh connection.
                    Some(unsent)
                        if reused && Stale::decide(false, false, resent) == Stale::ResendFresh =>
                    {
                        req = unsent;
                        resent = true;
                    }
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// HTTP/2: one connection per instance carries every request (streams); the request gets
    /// the absolute URI HTTP/2 needs (`:scheme`, `:authority` from its Host).
    async fn send_h2(
        self: &Arc<Self>,
        transport: &Transport,
        address: &str,
        mut req: Request<Body>,
    ) -> Result<(http::Response<Incoming>, Lease), SendError> {
        let key = transport.key(address);
        let existing =
            self.h2.lock().ok().and_then(|m| m.get(&key).filter(|s| !s.is_closed()).cloned());
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let s = self
                    .connect_h2(address, transport.tls.as_ref())
                    .await
                    .map_err(SendError::Connect)?;
                if let Ok(mut m) = self.h2.lock() {
                    m.insert(key.clone(), s.clone());
                }
                s
            }
        };
        let authority = req
            .headers_mut()
            .remove(http::header::HOST)
            .and_then(|h| h.to_str().ok().map(str::to_string))
            .unwrap_or_else(|| address.to_string());
        let scheme = if transport.tls.is_some() { "https" } else { "http" };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
        if let Ok(uri) =
            http::Uri::builder().scheme(scheme).authority(authority).path_and_query(path).build()
        {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = http::Version::HTTP_2;
        sender.ready().await.map_err(SendError::Http)?;
        let resp = sender.send_request(req).await.map_err(SendError::Http)?;
        let lease = Lease { pool: self.clone(), address: key, sender: None, reusable: false };
        Ok((resp, lease))
    }

    async fn connect(
        &self,
        address: &str,
        tls: Option<&TlsClient>,
    ) -> Result<SendRequest<Body>, ConnectError> {
        let stream = self.dialer.connect(address).await.map_err(ConnectError::Connect)?;
        match tls {
            None => handshake_h1(stream).await,
            Some(tls) => handshake_h1(self.tls(stream, address, tls).await?).await,
        }
    }

    async fn connect_h2(
        &self,
        address: &str,
        tls: Option<&TlsClient>,
    ) -> Result<http2::SendRequest<Body>, ConnectError> {
        let stream = self.dialer.connect(address).await.map_err(ConnectError::Connect)?;
        match tls {
            None => handshake_h2(stream).await,
            Some(tls) => handshake_h2(self.tls(stream, address, tls).await?).await,
        }
    }

    async fn tls(
        &self,
        stream: TcpStream,
        address: &str,
        tls: &TlsClient,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
        let limit = self.dialer.timeout();
        tls.handshake(stream, address, limit).await.map_err(ConnectError::Tls)
    }
}

async fn handshake_h1<I>(io: I) -> Result<SendRequest<Body>, ConnectError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        http1::handshake(TokioIo::new(io)).await.map_err(ConnectError::Handshake)?;
    // with_upgrades: a 101 answer hands the connection to a tunnel.
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            log::debug!("upstream connection closed: {e}");
        }
    });
    Ok(sender)
}

async fn handshake_h2<I>(io: I) -> Result<http2::SendRequest<Body>, ConnectError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("upstream HTTP/2 connection closed: {e}");
        }
    });
    Ok(sender)
}

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection (nothing was sent).
    Connect(ConnectError),
    /// The exchange failed.
    Http(hyper::Error),
}

/// Drops idle connections older than `idle_timeout`, every half of it, while the set lives.
async fn sweep<C: Pooled>(set: Weak<IdleSet<C>>) {
    let period = match set.upgrade() {
        Some(s) => (s.idle_timeout / 2).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(set) = set.upgrade() else { return };
        let Ok(mut idle) = set.idle.lock() else { return };
        let limit = set.idle_timeout;
        idle.retain(|_, list| {
            list.retain(|e| e.since.elapsed() < limit && e.conn.is_usable());
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_pooled_connection_gets_one_fresh_one_at_most() {
        assert_eq!(Stale::decide(false, false, false), Stale::ResendFresh, "nothing reached it");
        assert_eq!(Stale::decide(true, true, false), Stale::ResendFresh, "idempotent, held");
        assert_eq!(Stale::decide(true, false, false), Stale::Fail, "a POST may have run");
        assert_eq!(Stale::decide(false, true, true), Stale::Fail, "never a second resend");
    }
}
