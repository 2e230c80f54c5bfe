//! Open client connections (and upgraded tunnels), counted so that a draining worker can wait
//! until none is left, and reported in the metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::http::Body;

use crate::metrics::Metrics;

/// Connections being served by this worker, and a way to wait until there are none. It also
/// holds the `max_connections` permits, so an upgraded tunnel keeps counting after its HTTP
/// connection is gone.
pub struct Connections {
    active: AtomicUsize,
    idle: Notify,
    limit: Arc<Semaphore>,
}

impl Connections {
    /// No connection open yet, at most `max` at once.
    pub fn new(max: usize) -> Self {
        Connections {
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            limit: Arc::new(Semaphore::new(max.max(1))),
        }
    }

    /// Waits for a permit (the accept loop: beyond the limit, clients wait in the kernel queue).
    pub async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.limit.clone().acquire_owned().await.ok()
    }

    /// A permit if one is free now (a tunnel: refused when the worker is full).
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.limit.clone().try_acquire_owned().ok()
    }

    /// How many client connections are open.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Resolves when no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A client connection's `max_connections` permit, reachable from its requests (as a request
/// extension) so that an upgrade can move it to the tunnel that outlives the connection.
#[derive(Clone)]
pub struct ConnPermit(Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>);

impl ConnPermit {
    /// Shares `permit` with the connection's requests.
    pub fn new(permit: Option<OwnedSemaphorePermit>) -> Self {
        ConnPermit(Arc::new(std::sync::Mutex::new(permit)))
    }

    /// Takes the permit (once).
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.lock().ok()?.take()
    }

    /// Gives it back (the instance refused the upgrade: the connection goes on).
    pub fn put_back(&self, permit: OwnedSemaphorePermit) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(permit);
        }
    }
}

/// Counts one open connection (client connection, or upgraded tunnel) until dropped.
pub struct ConnGuard(Arc<Connections>, Metrics);

impl ConnGuard {
    /// Counts a connection in `c` and in the metrics.
    pub fn new(c: Arc<Connections>, metrics: Metrics) -> Self {
        c.active.fetch_add(1, Ordering::Relaxed);
        metrics.connections(1);
        ConnGuard(c, metrics)
    }

    /// The metrics it counts in.
    pub fn metrics(&self) -> Metrics {
        self.1
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.1.connections(-1);
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What moved on one connection: bytes either way (idle timeout, drain grace) and requests
/// (the first head's deadline, HTTP/2 idleness). Movements are counted, not timed — no clock
/// read per read or write on the hot path; a waiter compares counts one period apart, so
/// idleness is seen between one and two periods after the last movement.
#[derive(Default)]
pub struct Activity {
    moves: AtomicU64,
    read_any: AtomicBool,
    /// Requests open (handler running or answer streaming).
    open: AtomicUsize,
    /// Request starts and ends.
    requests: AtomicU64,
}

impl Activity {
    fn touch(&self, read: bool) {
        self.moves.fetch_add(1, Ordering::Relaxed);
        if read && !self.read_any.load(Ordering::Relaxed) {
            self.read_any.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the client ever sent a byte.
    pub fn read_any(&self) -> bool {
        self.read_any.load(Ordering::Relaxed)
    }

    /// Whether a complete request head ever arrived.
    pub fn requests_seen(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
    }

    /// What has moved so far (bytes, requests), to compare with later.
    pub fn snapshot(&self) -> (u64, u64) {
        (self.moves.load(Ordering::Relaxed), self.requests.load(Ordering::Relaxed))
    }

    /// Whether nothing moved since `before`: no byte, or for `by_streams` (HTTP/2, whose pings
    /// move bytes) no request started or ended and none open.
    pub fn quiet_since(&self, before: (u64, u64), by_streams: bool) -> bool {
        let (moves, requests) = self.snapshot();
        if by_streams {
            requests == before.1 && self.open.load(Ordering::Relaxed) == 0
        } else {
            moves == before.0
        }
    }

    /// Resolves once a whole `limit` passed with no byte moving either way.
    pub async fn idle_reaches(&self, limit: Duration) {
        loop {
            let before = self.moves.load(Ordering::Relaxed);
            tokio::time::sleep(limit).await;
            if self.moves.load(Ordering::Relaxed) == before {
                return;
            }
        }
    }
}

/// One open request on a connection, from its head to the end of its answer.
pub struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    /// Counts a request as open on `activity`.
    pub fn new(activity: Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Ordering::Relaxed);
        activity.requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard(activity)
    }

    /// The answer's body, which keeps the request open until it is done or dropped.
    pub fn wrap(self, body: Body) -> Body {
        crate::http::hold(body, self)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket (client connection, or either side of a tunnel) that records its activity.
pub struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    /// Wraps `inner`, recording on `activity`.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch(true);
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch(false);
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A client socket with bytes already read from it in front: what the engine read before
/// handing the connection to hyper is read again from here first.
pub struct Rewind<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T> Rewind<T> {
    /// `inner`, to be read after `prefix`.
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Rewind { prefix, pos: 0, inner }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How the client reached the gateway: told to instances in `X-Forwarded-Proto` (a request
/// extension, so the proxy needs no other channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain TCP.
    Http,
    /// TLS terminated here.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Who a connection is from and how it arrived.
#[derive(Debug, Clone)]
pub struct Client {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// The port it connected to (`X-Forwarded-Port`).
    pub port: u16,
    /// Plain or TLS.
    pub scheme: Scheme,
    /// When the connection was accepted: the first head (a TLS handshake included) is due
    /// within `header_read_timeout` of it, once.
    pub accepted: tokio::time::Instant,
    /// The subject of the certificate the client presented and the gateway verified (TLS
    /// with `client_ca`), for `X-Client-Cert-Subject`.
    pub cert_subject: Option<Arc<str>>,
}

/// The verified client certificate's subject, as a request extension (the hyper side).
#[derive(Debug, Clone)]
pub struct ClientCert(pub Arc<str>);

/// The port a request's connection came in on, as a request extension (`X-Forwarded-Port` on
/// the hyper side).
#[derive(Debug, Clone, Copy)]
pub struct LocalPort(pub u16);

/// How long a draining worker leaves an idle keep-alive connection open. A client that sends
/// its next request within it gets an answer with `Connection: close` instead of racing a close;
/// only a connection idle for at least this long (idleness is checked once per period, so up to
/// twice this) or at `shutdown_timeout` is closed under it.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_tells_bytes_from_requests() {
        let a = Arc::new(Activity::default());
        assert!(!a.read_any() && !a.requests_seen());
        let before = a.snapshot();
        a.touch(false);
        assert!(!a.read_any(), "a write is not a read");
        assert!(!a.quiet_since(before, false), "a byte moved");
        assert!(a.quiet_since(before, true), "HTTP/2: bytes alone (pings) are not activity");
        let before = a.snapshot();
        let open = RequestGuard::new(a.clone());
        assert!(a.requests_seen());
        assert!(!a.quiet_since(before, true), "a request started");
        let during = a.snapshot();
        assert!(!a.quiet_since(during, true), "a request open is never quiet");
        drop(open);
        let after = a.snapshot();
        assert!(a.quiet_since(after, true), "ended, and nothing since");
        a.touch(true);
        assert!(a.read_any());
    }
}
