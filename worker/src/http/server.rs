//! The client side: accept loops on the slot's sockets, one task per client (the engine, `h1::serve`, or hyper's `hyper::conn::serve`), and
//! `max_connections`, which keeps a worker alive under excessive traffic.
//!
//! Shutdown is explicit: a `watch` channel flips to `true`, accept loops take what is already
//! queued on their socket and close it, and every connection finishes its in-flight request
//! (hyper's graceful shutdown closes idle keep-alive connections and answers the current request
//! with `Connection: close`).

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;

use crate::config::ProxySettings;
use crate::http::connections::{Client, ConnGuard, ConnPermit, Connections, Rewind, Scheme};
use crate::http::h1::io::Io;
use crate::http::h1::{self, End};
use crate::http::hyper::conn::{self, ConnSettings};
use crate::http::proxy::Proxy;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// What every connection task shares.
pub struct Server {
    proxy: Arc<Proxy>,
    conn: Arc<ConnSettings>,
    /// Open connections.
    pub connections: Arc<Connections>,
    shutdown: Shutdown,
    metrics: Metrics,
}

impl Server {
    /// A server for `proxy` with the limits of `[proxy]`.
    pub fn new(
        proxy: Arc<Proxy>,
        settings: &ProxySettings,
        shutdown: Shutdown,
        metrics: Metrics,
        connections: Arc<Connections>,
    ) -> Arc<Self> {
        Arc::new(Server {
            proxy,
            conn: Arc::new(ConnSettings::new(settings)),
            connections,
            shutdown,
            metrics,
        })
    }

    /// Resolves once what requests started in the background is done: mirror copies in
    /// flight answered, spans ended exported. Waited for after the last connection closes.
    pub async fn background_done(&self) {
        self.proxy.send.mirrors.idle().await;
        if let Some(tracer) = &self.proxy.observe.tracer {
            tracer.flushed().await;
        }
    }

    /// Accepts on `listener` until shutdown, then serves what is already queued and closes it.
    /// With `tls`, each connection is a TLS handshake first (within `header_read_timeout`).
    /// `index`: the socket's place among the listeners (its connection gauge).
    pub async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        index: usize,
    ) {
        let mut shutdown = self.shutdown.clone();
        loop {
            // Beyond max_connections, stop accepting: clients wait in the kernel queue instead of
            // the worker running out of descriptors.
            let permit = tokio::select! {
                p = self.connections.permit() => match p { Some(p) => p, None => break },
                _ = shutdown.recv() => break,
            };
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.recv() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    self.clone().spawn_connection(stream, peer, Some(permit), (tls.clone(), index))
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the queue keeps the clients.
                    log::warn!("accept on {:?}: {e}", listener.local_addr().ok());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        self.drain_queue(listener, (tls, index)).await;
    }

    /// Takes every connection already queued on the socket, then closes this worker's copy of it.
    /// A second pass a moment later catches handshakes that were completing during the first
    /// (when the slot is being removed, the supervisor has already steered new ones elsewhere).
    async fn drain_queue(
        self: Arc<Self>,
        listener: TcpListener,
        (tls, index): (Option<TlsAcceptor>, usize),
    ) {
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
                    self.clone().spawn_connection(stream, peer, None, (tls.clone(), index));
                }
            }
        }
    }

    fn spawn_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        permit: Option<OwnedSemaphorePermit>,
        (tls, index): (Option<TlsAcceptor>, usize),
    ) {
        let _ = stream.set_nodelay(true);
        let open = Open::new(ConnGuard::new(self.connections.clone(), self.metrics), index);
        let (proxy, settings, shutdown) =
            (self.proxy.clone(), self.conn.clone(), self.shutdown.clone());
        let accepted = tokio::time::Instant::now();
        let port = stream.local_addr().map_or(0, |a| a.port());
        let scheme = if tls.is_some() { Scheme::Https } else { Scheme::Http };
        let client = Client { peer, port, scheme, accepted, cert_subject: None };
        let on = On { proxy, settings, shutdown, permit: ConnPermit::new(permit) };
        // Until its first byte a connection's task holds what it was accepted with and a read
        // event — nginx's shape: a silent connection costs its registration, not an engine's
        // (or a TLS session's) state. That state is boxed when the client speaks; a plain
        // connection's holds none of TLS's, and neither holds hyper's until a handover.
        tokio::spawn(async move {
            // Held by reference: moved into a local, it would be stored twice in the task.
            let _open = &open;
            let Some(first) = first_bytes(&stream, (&client, &on), tls.is_some()).await else {
                return;
            };
            match tls {
                None => Box::pin(serve_http1(stream, first, client, on)).await,
                Some(acceptor) => Box::pin(serve_tls(stream, acceptor, client, on)).await,
            }
        });
    }
}

/// Counts a client connection while it is open: among the worker's connections, and on its
/// listening socket (`listener`: the socket's index).
struct Open {
    conn: ConnGuard,
    listener: usize,
}

impl Open {
    fn new(conn: ConnGuard, listener: usize) -> Self {
        conn.metrics().listener_connection(listener, 1);
        Open { conn, listener }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.conn.metrics().listener_connection(self.listener, -1);
    }
}

/// What a connection's task is served with.
struct On {
    proxy: Arc<Proxy>,
    settings: Arc<ConnSettings>,
    shutdown: Shutdown,
    permit: ConnPermit,
}

/// Waits for the client's first bytes, within `header_read_timeout` of the accept (a TLS
/// handshake and the first head have to fit in it anyway), holding no buffer meanwhile. tokio
/// reports a new socket readable at once, so a read that finds nothing gives its buffer back
/// and the wait goes on without one (nginx frees its buffer there too). Plain TCP: the bytes
/// read, for the engine; TLS: none taken (the handshake reads them), only seen with a peek.
/// `None`: closed, failed, or silent too long.
async fn first_bytes(
    stream: &TcpStream,
    (client, on): (&Client, &On),
    tls: bool,
) -> Option<Vec<u8>> {
    let buffers = &on.proxy.send.buffers;
    let wait = async {
        loop {
            // Polled bare: `readable()`'s future would keep a waiter node in the task.
            std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await.ok()?;
            let found = match tls {
                // The handshake reads the bytes itself: they are only looked at.
                true => stream
                    .try_io(Interest::READABLE, || {
                        SockRef::from(stream).peek(&mut [MaybeUninit::uninit()])
                    })
                    .map(|n| (n > 0).then(Vec::new)),
                false => {
                    let mut buf = buffers.take();
                    buf.reserve(4096);
                    match stream.try_read_buf(&mut buf) {
                        Ok(n) if n > 0 => Ok(Some(buf)),
                        other => {
                            buffers.give(buf);
                            other.map(|_| None)
                        }
                    }
                }
            };
            match found {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                found => return found.ok().flatten(),
            }
        }
    };
    let limit = on.settings.header_read_timeout();
    match tokio::time::timeout_at(client.accepted + limit, wait).await {
        Ok(first) => first,
        Err(_) => {
            log::info!("connection from {} closed: no request head within {limit:?}", client.peer);
            None
        }
    }
}

/// HTTP/1.1 on the engine (`first`: bytes the client sent already), or hyper for a connection
/// that opens with HTTP/2's preface (its state is boxed: a connection's task does not carry it
/// while the engine serves).
async fn serve_http1<S: Io + 'static>(stream: S, first: Vec<u8>, client: Client, on: On) {
    let mut drain = on.shutdown.clone();
    let engine = h1::serve((stream, first), client.clone(), &on.proxy, &mut drain);
    let (stream, read) = match engine.await {
        End::Closed => return,
        End::Handover(stream, read) => (stream, read),
    };
    let stream = Rewind::new(read, stream);
    Box::pin(conn::serve(stream, on.proxy, on.settings, on.shutdown, on.permit, client)).await
}

/// A TLS connection: the handshake, then HTTP/2 on hyper (ALPN `h2`) or HTTP/1.1 on the
/// engine.
async fn serve_tls(stream: TcpStream, acceptor: TlsAcceptor, mut client: Client, on: On) {
    let peer = client.peer;
    // The handshake is part of the first head: one deadline for both, from the accept.
    let deadline = client.accepted + on.settings.header_read_timeout();
    let metrics = on.proxy.observe.metrics;
    let stream = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            metrics.tls_handshake(false);
            return log::debug!("TLS handshake from {peer}: {e}");
        }
        Err(_) => {
            metrics.tls_handshake(false);
            let limit = on.settings.header_read_timeout();
            return log::info!("connection from {peer} closed: no TLS handshake within {limit:?}");
        }
    };
    metrics.tls_handshake(true);
    // rustls verified the chain (client_ca, CRLs); what reaches the instance is its subject.
    client.cert_subject = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| crate::tls::subject(leaf));
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        return conn::serve(stream, on.proxy, on.settings, on.shutdown, on.permit, client).await;
    }
    serve_http1(stream, Vec::new(), client, on).await
}
