//! One client connection: hyper serves it (HTTP/1.1, or h2c with prior knowledge), with an idle
//! timeout when no byte moves either way, and a graceful end when the worker drains.
//!
//! Draining never races a keep-alive client: every HTTP/1 answer from then on carries
//! `Connection: close` (the client opens its next connection elsewhere), and an idle connection
//! is closed only once it has been idle for [`DRAIN_IDLE_GRACE`] — a connection that has not
//! sent its first bytes yet gets until `header_read_timeout`. HTTP/2 gets GOAWAY at once.
//!
//! Slow clients: the first complete request head must arrive within `header_read_timeout` of
//! the accept, whatever the protocol (a silent connection, an HTTP/2 preface dripped a byte at
//! a time); an HTTP/2 connection with no open stream for `idle_timeout` is closed (its pings
//! do not keep it); a connection on which nothing moves for `idle_timeout` — a client that
//! stops reading its answer — is closed, and with it the upstream request it held.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use crate::config::ProxySettings;
use crate::http::connections::{
    Activity, Client, ClientCert, ConnPermit, LocalPort, RequestGuard, Tracked, DRAIN_IDLE_GRACE,
};
use crate::shutdown::Shutdown;

use crate::http::proxy::Proxy;
use crate::http::Body;

/// How client connections are served; built once per worker from `[proxy]`.
pub struct ConnSettings {
    http: auto::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

impl ConnSettings {
    /// The deadline for a connection's first request head (and its TLS handshake).
    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout
    }

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
            .max_concurrent_streams(settings.max_streams_per_connection);
        ConnSettings {
            http,
            header_read_timeout: settings.header_read_timeout,
            idle_timeout: settings.idle_timeout,
        }
    }
}

/// Serves one client connection until it closes, idles out or the worker drains.
pub async fn serve<S>(
    stream: S,
    proxy: Arc<Proxy>,
    settings: Arc<ConnSettings>,
    mut shutdown: Shutdown,
    permit: ConnPermit,
    client: Client,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = client.peer;
    let http2 = Arc::new(AtomicBool::new(false));
    let activity = Arc::new(Activity::default());
    let (draining, h2, requests) = (shutdown.clone(), http2.clone(), activity.clone());
    let service = service_fn(move |mut req: Request<Incoming>| {
        tag(&mut req, &permit, &client);
        // Counts the request as open until its answer's body is done (HTTP/2 idleness).
        let guard = RequestGuard::new(requests.clone());
        answer(proxy.clone(), req, peer, (draining.clone(), h2.clone()), guard)
    });
    let io = Tracked::new(stream, activity.clone());
    let conn = settings.http.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let (idle_timeout, head_timeout) = (settings.idle_timeout, settings.header_read_timeout);
    // Idle: nothing moved for a whole idle_timeout — bytes for HTTP/1, streams for HTTP/2
    // (whose pings move bytes). The protocol is read each period: it is learnt with the first
    // request.
    let idle = async {
        loop {
            let before = activity.snapshot();
            tokio::time::sleep(idle_timeout).await;
            if activity.quiet_since(before, http2.load(Ordering::Relaxed)) {
                return;
            }
        }
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        // One deadline from accept to the first complete request head, whatever the protocol.
        _ = async {
            tokio::time::sleep(head_timeout).await;
            if activity.requests_seen() {
                std::future::pending::<()>().await;
            }
        } => {
            log::info!("connection from {peer} closed: no request head within {head_timeout:?}");
            return;
        }
        _ = idle => {
            conn.as_mut().graceful_shutdown();
            // A request in flight may finish, but not a client that stopped reading its answer:
            // nothing moving for another idle_timeout closes the connection (and the upstream
            // request with it).
            tokio::select! {
                r = conn.as_mut() => r,
                _ = activity.idle_reaches(idle_timeout) => {
                    log::info!("connection from {peer} closed: no progress for {idle_timeout:?}");
                    return;
                }
            }
        }
        _ = shutdown.recv() => {
            if !http2.load(Ordering::Relaxed) {
                // HTTP/1: busy connections end with their next answer (Connection: close). An
                // idle one is closed only after a grace, so a client about to reuse it is not
                // raced; one that has not sent a byte yet gets until its header timeout.
                let grace = if activity.read_any() { DRAIN_IDLE_GRACE } else { head_timeout };
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

/// Tags a request with what its connection knows: the permit (an upgrade moves it to its
/// tunnel, see proxy), the scheme, the local port, the verified client certificate.
fn tag(req: &mut Request<Incoming>, permit: &ConnPermit, client: &Client) {
    req.extensions_mut().insert(permit.clone());
    req.extensions_mut().insert(client.scheme);
    req.extensions_mut().insert(LocalPort(client.port));
    if let Some(subject) = &client.cert_subject {
        req.extensions_mut().insert(ClientCert(subject.clone()));
    }
}

/// One request's answer; while the worker drains, an HTTP/1 answer says it is the
/// connection's last. `h2` learns the protocol from the first request.
async fn answer(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
    peer: SocketAddr,
    (draining, h2): (Shutdown, Arc<AtomicBool>),
    guard: RequestGuard,
) -> Result<Response<Body>, Infallible> {
    let http1 = req.version() < Version::HTTP_2;
    if !http1 {
        h2.store(true, Ordering::Relaxed);
    }
    let mut resp = proxy.handle(req, peer).await;
    if http1 && draining.is_shutdown() {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // Only HTTP/2 idleness is measured in open streams: an HTTP/1 answer needs no wrapper
    // (its connection's idleness is measured in bytes).
    if http1 {
        drop(guard);
        return Ok(resp);
    }
    Ok(resp.map(|b| guard.wrap(b)))
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
