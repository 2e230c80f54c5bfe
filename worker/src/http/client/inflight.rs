//! A request in flight to an instance: counted against it (`least_request`, the per-instance
//! connection limit) and holding its upstream slot and pooled connection until the response
//! body ends — the body that carries it ([`InFlightBody`]) returns the connection to the pool
//! once read to its end.

use std::sync::Arc;

use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::http::client::pool::Lease;
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

/// A response body that keeps its [`InFlight`] until it ends: read whole, its connection goes
/// back to the pool; failed or dropped, it is closed.
pub type InFlightBody = crate::http::eos::Watched<Incoming, Returns>;

/// Wraps `inner` so the instance counts the request until the body is done.
pub fn in_flight_body(inner: Incoming, inflight: InFlight) -> InFlightBody {
    crate::http::eos::Watched::new(inner, Returns(Some(inflight)))
}

/// What an [`InFlightBody`] does at its end.
pub struct Returns(Option<InFlight>);

impl crate::http::eos::Watch for Returns {
    fn end(&mut self, how: crate::http::eos::End) {
        if let Some(mut inflight) = self.0.take() {
            if how == crate::http::eos::End::Whole {
                // Read to its end: the connection may carry the next request.
                if let Some(lease) = inflight.lease.as_mut() {
                    lease.reusable();
                }
            }
        }
    }
}
