//! The client side: accept loops on the slot's sockets and one hyper connection task (HTTP/1.1,
//! or h2c with prior knowledge) per client, with the limits that keep a worker alive under hostile or excessive traffic.
//!
//! Shutdown is explicit: a `watch` channel flips to `true`, accept loops take what is already
//! queued on their socket and close it, and every connection finishes its in-flight request
//! (hyper's graceful shutdown closes idle keep-alive connections and answers the current request
//! with `Connection: close`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::settings::ProxySettings;

/// Connections being served by this worker, and a way to wait until there are none.
#[derive(Default)]
pub struct Connections {
    active: AtomicUsize,
    idle: Notify,
}

impl Connections {
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

/// Resolves once shutdown was requested (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // Drop the returned guard here: it must not be held across an await.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
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
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.1.connections(-1);
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What every connection task shares.
pub struct Server {
    proxy: Arc<Proxy>,
    http: auto::Builder<TokioExecutor>,
    limit: Arc<Semaphore>,
    /// Open connections.
    pub connections: Arc<Connections>,
    shutdown: watch::Receiver<bool>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    metrics: Metrics,
}

impl Server {
    /// Prepares the HTTP/1.1 settings from `[proxy]`.
    pub fn new(
        proxy: Arc<Proxy>,
        settings: &ProxySettings,
        shutdown: watch::Receiver<bool>,
        metrics: Metrics,
        connections: Arc<Connections>,
    ) -> Arc<Self> {
        // HTTP/1.1, and HTTP/2 with prior knowledge (h2c) when a client opens with its preface.
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
        Arc::new(Server {
            proxy,
            http,
            limit: Arc::new(Semaphore::new(settings.max_connections.max(1))),
            connections,
            shutdown,
            header_read_timeout: settings.header_read_timeout,
            idle_timeout: settings.idle_timeout,
            metrics,
        })
    }

    /// Accepts on `listener` until shutdown, then serves what is already queued and closes it.
    pub async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let mut shutdown = self.shutdown.clone();
        loop {
            // Beyond max_connections, stop accepting: clients wait in the kernel queue instead of
            // the worker running out of descriptors.
            let permit = tokio::select! {
                p = self.limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = stopped(&mut shutdown) => break,
            };
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stopped(&mut shutdown) => break,
            };
            match accepted {
                Ok((stream, peer)) => self.clone().spawn_connection(stream, peer, Some(permit)),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the queue keeps the clients.
                    log::warn!("accept on {:?}: {e}", listener.local_addr().ok());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        self.drain_queue(listener).await;
    }

    /// Takes every connection already queued on the socket, then closes this worker's copy of it.
    /// A second pass a moment later catches handshakes that were completing during the first
    /// (when the slot is being removed, the supervisor has already steered new ones elsewhere).
    async fn drain_queue(self: Arc<Self>, listener: TcpListener) {
        let Ok(std) = listener.into_std() else { return };
        for pass in 0..2 {
            if pass == 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            while let Ok((stream, peer)) = std.accept() {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if let Ok(stream) = TcpStream::from_std(stream) {
                    self.clone().spawn_connection(stream, peer, None);
                }
            }
        }
    }

    fn spawn_connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, permit: Option<OwnedSemaphorePermit>) {
        let _ = stream.set_nodelay(true);
        let guard = ConnGuard::new(self.connections.clone(), self.metrics);
        tokio::spawn(async move {
            let _guard = guard;
            let _permit = permit;
            let proxy = self.proxy.clone();
            let service = service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
            });
            let first_read = Arc::new(Notify::new());
            let activity = Arc::new(AtomicU64::new(0));
            let opened = tokio::time::Instant::now();
            let io =
                Tracked { inner: stream, seen: false, notify: first_read.clone(), activity: activity.clone(), opened };
            let conn = self.http.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(conn);
            let mut shutdown = self.shutdown.clone();
            let idle_for = |now: tokio::time::Instant| {
                now.duration_since(opened).saturating_sub(Duration::from_millis(activity.load(Ordering::Relaxed)))
            };
            let idle_timeout = self.idle_timeout;
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
                    let grace = tokio::time::sleep(self.header_read_timeout);
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
        });
    }
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
