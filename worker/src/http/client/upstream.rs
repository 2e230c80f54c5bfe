//! The upstream side: one client per worker, on its own connection pool (see `client/pool.rs`).
//!
//! Keep-alive connections to instances are reused across requests of this worker (each worker
//! has its own pool: the price of processes, visible in per-worker figures). Connect and idle
//! timeouts are the pool's; the proxy times each attempt itself (`slow_after`, then
//! `request_timeout`, from the end of the request body) — `send` keeps a plain deadline for
//! health probes.

use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hyper::body::Incoming;
use tokio::sync::Notify;

use crate::config::ProxySettings;
use crate::http::client::dial::Dialer;
use crate::http::client::pool::{Lease, Pool, SendError};
use crate::http::client::transport::Transport;
use crate::http::Body;

/// An error reading the client's request body (as opposed to the instance failing), tagged
/// where the body is handed to the upstream client so a malformed upload is the client's 400.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(pub hyper::Error);

/// Why a request to an instance failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connection could not be made: nothing was sent, so the request may be retried.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The connection was reset or closed before a response came (an instance that died, or a
    /// pooled connection it closed as we sent): an idempotent request may be sent again.
    #[error("connection lost before the response: {0}")]
    Reset(String),
    /// The instance sent something that is not HTTP, or the exchange failed otherwise.
    #[error("{0}")]
    Failed(String),
    /// No response headers within `slow_after`; the attempt was abandoned for another instance.
    #[error("no response within {0:?} (slow_after)")]
    Slow(Duration),
    /// No response headers within `request_timeout`.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The client's body went over `max_body_bytes` while it streamed.
    #[error("request body over max_body_bytes")]
    BodyTooLarge,
    /// The client's body was malformed or cut while it streamed (the client's fault).
    #[error("{0}")]
    ClientBody(String),
}

/// A worker's client to every instance.
#[derive(Clone)]
pub struct Upstream {
    pool: Arc<Pool>,
    request_timeout: Duration,
}

impl Upstream {
    /// A client with the proxy's timeouts and its own connection pool, connecting through
    /// `dialer`.
    pub fn new(settings: &ProxySettings, dialer: Arc<Dialer>) -> Self {
        let pool = Pool::new(dialer, settings.idle_timeout, settings.max_connections_per_instance);
        Upstream { pool, request_timeout: settings.request_timeout }
    }

    /// Sends a request to `address` and waits for the response head, at most
    /// `request_timeout` (health probes; the proxy times its attempts itself).
    pub async fn send(
        &self,
        transport: Option<&Transport>,
        address: &str,
        req: http::Request<Body>,
    ) -> Result<(http::Response<Incoming>, Lease), UpstreamError> {
        let exchange = self.request(transport, address, req);
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout(self.request_timeout)),
        }
    }

    /// Sends a request (origin-form URI, Host set) to `address` and waits for the response
    /// head, with no deadline of its own. The lease returns the connection to the pool once
    /// the response was read to its end.
    pub async fn request(
        &self,
        transport: Option<&Transport>,
        address: &str,
        req: http::Request<Body>,
    ) -> Result<(http::Response<Incoming>, Lease), UpstreamError> {
        match self.pool.send(transport, address, req).await {
            Ok(answer) => Ok(answer),
            Err(SendError::Connect(e)) => Err(UpstreamError::Connect(e.to_string())),
            Err(SendError::Http(e)) if caused_by::<http_body_util::LengthLimitError>(&e) => {
                Err(UpstreamError::BodyTooLarge)
            }
            Err(SendError::Http(e)) if caused_by::<ClientBodyError>(&e) => {
                Err(UpstreamError::ClientBody(error_chain(&e)))
            }
            Err(SendError::Http(e)) if lost_connection(&e) => {
                Err(UpstreamError::Reset(error_chain(&e)))
            }
            Err(SendError::Http(e)) => Err(UpstreamError::Failed(error_chain(&e))),
        }
    }
}

/// Tells when a request body has been handed over completely (a request without body: at
/// once). Timers that judge the instance start there, not while the client is still uploading.
#[derive(Debug, Default)]
pub struct BodySent {
    done: AtomicBool,
    notify: Notify,
}

impl BodySent {
    /// The body is complete.
    pub fn mark(&self) {
        if !self.done.swap(true, Ordering::Relaxed) {
            self.notify.notify_waiters();
        }
    }

    /// Resolves once the body is complete.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.done.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }
}

/// A request body that marks its [`BodySent`] when it ends whole, its trailers filtered by
/// the policy (as on the engine's side).
pub type SentBody = crate::http::eos::Watched<Body, MarksSent>;

/// Wraps `inner`; an already finished body (none at all) is marked at once.
pub fn sent_body(inner: Body, sent: Arc<BodySent>) -> SentBody {
    crate::http::eos::Watched::new(inner, MarksSent(sent))
}

/// What a [`SentBody`] does as it streams.
pub struct MarksSent(Arc<BodySent>);

impl crate::http::eos::Watch for MarksSent {
    fn frame(&mut self, frame: &mut hyper::body::Frame<bytes::Bytes>) {
        if let Some(trailers) = frame.trailers_mut() {
            crate::http::policy::filter_request_trailers(trailers);
        }
    }

    fn end(&mut self, how: crate::http::eos::End) {
        if how == crate::http::eos::End::Whole {
            self.0.mark();
        }
    }
}

/// Whether the connection went away under the request (reset, EOF, a pooled connection closed
/// by the instance) rather than the instance answering something malformed.
fn lost_connection(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof)
            {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// "a: b: c" from an error and its sources: hyper's top-level messages alone say little.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
