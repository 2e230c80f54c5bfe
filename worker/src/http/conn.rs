//! One client connection: hyper serves it (HTTP/1.1, or h2c with prior knowledge), with an idle
//! timeout when no byte moves either way, and a graceful end when the worker drains.
//!
//! Draining never races a keep-alive client: every HTTP/1 answer from then on carries
//! `Connection: close` (the client opens its next connection elsewhere), and an idle connection
//! is closed only once it has been idle for [`DRAIN_IDLE_GRACE`] — a connection that has not
//! sent its first bytes yet gets until `header_read_timeout`. HTTP/2 gets GOAWAY at once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::ProxySettings;
use crate::http::connections::stopped;
use crate::http::proxy::Proxy;

/// How client connections are served; built once per worker from `[proxy]`.
pub struct ConnSettings {
    http: auto::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

impl ConnSettings {
    /// HTTP/1.1 with keep-alive and the header limits, and h2c when a client opens with its
    /// preface.
    pub fn new(settings: &ProxySettings) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(settings.header_read_timeout)
            // hyper answers 431 when the head does not fit; its floor is 8 KiB.
            .max_buf_size(settings.max_header_bytes.max(8192));
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256);
        ConnSettings {
            http,
            header_read_timeout: settings.header_read_timeout,
            idle_timeout: settings.idle_timeout,
        }
    }
}

/// How long a draining worker leaves an idle keep-alive connection open. A client that sends
/// its next request within it gets an answer with `Connection: close` instead of racing a close;
/// only a connection idle for this long (or at `shutdown_timeout`) is closed under it.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(2);

/// Serves one client connection until it closes, idles out or the worker drains.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    settings: Arc<ConnSettings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let http2 = Arc::new(AtomicBool::new(false));
    let (draining, h2) = (shutdown.clone(), http2.clone());
    let service = service_fn(move |req: Request<Incoming>| {
        let (proxy, draining, h2) = (proxy.clone(), draining.clone(), h2.clone());
        async move {
            let http1 = req.version() < Version::HTTP_2;
            if !http1 {
                h2.store(true, Ordering::Relaxed);
            }
            let mut resp = proxy.handle(req, peer).await;
            // Draining: this answer is the connection's last, and the client is told so.
            if http1 && *draining.borrow() {
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let activity = Arc::new(Activity::default());
    let io = Tracked { inner: stream, activity: activity.clone() };
    let conn = settings.http.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let idle_timeout = settings.idle_timeout;
    let result = tokio::select! {
        r = conn.as_mut() => r,
        // A client connection with no bytes either way for idle_timeout is closed
        // (hyper finishes a request still in flight first).
        _ = activity.idle_reaches(idle_timeout) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = stopped(&mut shutdown) => {
            if !http2.load(Ordering::Relaxed) {
                // HTTP/1: busy connections end with their next answer (Connection: close). An
                // idle one is closed only after a grace, so a client about to reuse it is not
                // raced; one that has not sent a byte yet gets until its header timeout.
                let grace = if activity.read_any() {
                    DRAIN_IDLE_GRACE
                } else {
                    settings.header_read_timeout
                };
                tokio::select! {
                    r = conn.as_mut() => return log_end(peer, r),
                    _ = activity.idle_reaches(grace) => {}
                }
            }
            // HTTP/2: GOAWAY at once; streams in flight finish.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    log_end(peer, result);
}

fn log_end(peer: SocketAddr, result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    let Err(e) = result else { return };
    // Malformed or hostile HTTP and header timeouts are worth one line each; a client going
    // away mid-connection is not.
    match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse() || h.is_parse_too_large() || h.is_timeout() => {
            log::info!("connection from {peer} closed: {e}")
        }
        _ => log::debug!("connection from {peer}: {e}"),
    }
}

/// When a client connection last moved a byte, and whether it ever sent one.
struct Activity {
    opened: tokio::time::Instant,
    /// Milliseconds after `opened` of the last read or write.
    last: AtomicU64,
    read_any: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            opened: tokio::time::Instant::now(),
            last: AtomicU64::new(0),
            read_any: AtomicBool::new(false),
        }
    }
}

impl Activity {
    fn touch(&self, read: bool) {
        self.last.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        if read && !self.read_any.load(Ordering::Relaxed) {
            self.read_any.store(true, Ordering::Relaxed);
        }
    }

    fn read_any(&self) -> bool {
        self.read_any.load(Ordering::Relaxed)
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }

    /// Resolves once no byte has moved either way for `limit`.
    async fn idle_reaches(&self, limit: Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// A client socket that records its activity (for the idle timeout and the drain grace).
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for Tracked {
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

impl tokio::io::AsyncWrite for Tracked {
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
