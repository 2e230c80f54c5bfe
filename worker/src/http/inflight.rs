//! A request in flight to an instance: counted against it (`least_request`, the per-instance
//! connection limit) and holding its upstream slot and pooled connection until the response
//! body ends — the body that carries it ([`InFlightBody`]) returns the connection to the pool
//! once read to its end.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::{Body as _, Incoming};
use tokio::sync::OwnedSemaphorePermit;

use crate::http::pool::Lease;
use crate::table::Service;

/// Counts a request against its instance (`least_request`, the per-instance limit) and holds
/// its upstream slot and connection until its response body ends.
pub struct InFlight {
    service: Arc<Service>,
    idx: usize,
    _slot: OwnedSemaphorePermit,
    /// The upstream connection; back to the pool if the body was read to its end.
    lease: Option<Lease>,
}

impl InFlight {
    /// Holds the upstream connection until the response body is done.
    pub fn hold(&mut self, lease: Lease) {
        self.lease = Some(lease);
    }

    /// The connection was taken over (101 Switching Protocols): it never returns to the pool.
    pub fn detach_connection(&mut self) {
        self.lease = None;
    }

    /// A request to instance `idx` of `service` starts, holding an upstream slot.
    pub(crate) fn start(service: Arc<Service>, idx: usize, slot: OwnedSemaphorePermit) -> Self {
        service.health.started(idx);
        InFlight { service, idx, _slot: slot, lease: None }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.service.health.finished(self.idx);
    }
}

/// A response body that keeps its [`InFlight`] alive while it streams.
pub struct InFlightBody {
    inner: Incoming,
    _inflight: InFlight,
}

impl InFlightBody {
    /// Wraps `inner` so the instance counts the request until the body is done.
    pub fn new(inner: Incoming, mut inflight: InFlight) -> Self {
        // No body at all (HEAD, 204, 304): complete already, whether or not it is ever polled.
        if inner.is_end_stream() {
            if let Some(lease) = inflight.lease.as_mut() {
                lease.reusable();
            }
        }
        InFlightBody { inner, _inflight: inflight }
    }
}

impl hyper::body::Body for InFlightBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        let done = matches!(polled, std::task::Poll::Ready(None))
            || (matches!(polled, std::task::Poll::Ready(Some(Ok(_))))
                && self.inner.is_end_stream());
        if done {
            // Read to its end: the connection may carry the next request.
            if let Some(lease) = self._inflight.lease.as_mut() {
                lease.reusable();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
