//! One client connection: hyper serves it (HTTP/1.1, or h2c with prior knowledge), with an idle
//! timeout when no byte moves either way, and a graceful end when the worker drains.
//!
//! hyper's graceful shutdown closes idle keep-alive connections and answers the current request
//! with `Connection: close`; a connection that has not sent its first bytes yet gets until then
//! (bounded by `header_read_timeout`) so a client that connected just before a drain still gets
//! an answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

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

/// Serves one client connection until it closes, idles out or the worker drains.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    settings: Arc<ConnSettings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
    });
    let first_read = Arc::new(Notify::new());
    let activity = Arc::new(AtomicU64::new(0));
    let opened = tokio::time::Instant::now();
    let io = Tracked {
        inner: stream,
        seen: false,
        notify: first_read.clone(),
        activity: activity.clone(),
        opened,
    };
    let conn = settings.http.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let idle_for = |now: tokio::time::Instant| {
        now.duration_since(opened)
            .saturating_sub(Duration::from_millis(activity.load(Ordering::Relaxed)))
    };
    let idle_timeout = settings.idle_timeout;
    let result = tokio::select! {
        r = conn.as_mut() => r,
        // A client connection with no bytes either way for idle_timeout is closed
        // (hyper finishes a request still in flight first).
        _ = async {
            loop {
                let idle = idle_for(tokio::time::Instant::now());
                if idle >= idle_timeout {
                    return;
                }
                tokio::time::sleep(idle_timeout - idle).await;
            }
        } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = stopped(&mut shutdown) => {
            // hyper's graceful shutdown closes a connection that has not sent a byte yet;
            // a client that connected just before the shutdown would read EOF instead of
            // an answer. Give such a connection until its first bytes (or the header
            // timeout) before asking hyper to finish.
            let grace = tokio::time::sleep(settings.header_read_timeout);
            tokio::select! {
                r = conn.as_mut() => return log_end(peer, r),
                _ = first_read.notified() => {}
                _ = grace => {}
            }
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

/// A client socket that signals its first received bytes (see the shutdown comment above) and
/// records when it last moved a byte (for the idle timeout).
struct Tracked {
    inner: TcpStream,
    seen: bool,
    notify: Arc<Notify>,
    /// Milliseconds after `opened` of the last read or write.
    activity: Arc<AtomicU64>,
    opened: tokio::time::Instant,
}

impl Tracked {
    fn touch(&self) {
        self.activity.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
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
            self.touch();
            if !self.seen {
                self.seen = true;
                // notify_one stores a permit, so a waiter that arrives later still sees it.
                self.notify.notify_one();
            }
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
            self.touch();
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
