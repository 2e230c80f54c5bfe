//! Request mirroring (`mirror = { service, percent }` on a route): a copy of a share of the
//! route's requests goes to a shadow service, and its answer is read and thrown away.
//!
//! The client's request never waits for the copy: it is handed to a task of its own before the
//! request is forwarded, and nothing of its outcome flows back. What a slow or dead shadow can
//! cost is bounded per worker: at most `mirror_max_in_flight` copies at once (a copy that finds
//! no slot is skipped, not queued), each within `request_timeout`, on a connection pool of its
//! own so the primary's pooled connections are never taken. A copy carries the request's body
//! up to `mirror_body_bytes`: an HTTP/1.1 body the gateway holds whole with its head, or an
//! HTTP/2 body kept as it streams to the primary (`tee`; the copy leaves once it ended). A
//! larger body, or an HTTP/1.1 body streamed or chunked, is not copied and the request is not
//! mirrored (counted `skipped`). Every copy is counted: `sent`, `skipped`, `failed`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Body as _;
use tokio::sync::Semaphore;

use crate::balance::PickContext;
use crate::config::{Mirror, ProxySettings};
use crate::http::client::dial::Dialer;
use crate::http::client::transport::Transports;
use crate::http::client::upstream::Upstream;
use crate::metrics::{Metrics, Mirrored};
use crate::table::SharedTable;

/// One worker's mirroring: its bound, its client, where copies go.
pub struct Mirrors {
    slots: Arc<Semaphore>,
    /// `mirror_max_in_flight`: every slot back means no copy in flight.
    capacity: u32,
    upstream: Arc<Upstream>,
    /// The largest body a copy carries.
    pub max_body: usize,
    timeout: Duration,
}

/// A request as the shadow service gets it (Host is set per instance).
pub struct MirrorCopy {
    /// The method.
    pub method: Method,
    /// Path and query, as forwarded to the primary.
    pub path: PathAndQuery,
    /// The headers the primary gets, but Host.
    pub headers: HeaderMap,
    /// The whole body (empty for a bodiless request).
    pub body: Bytes,
}

impl Mirrors {
    /// Mirroring with the bounds of `[proxy]`.
    pub fn new(settings: &ProxySettings, dialer: Arc<Dialer>) -> Self {
        Mirrors {
            slots: Arc::new(Semaphore::new(settings.mirror_max_in_flight)),
            capacity: u32::try_from(settings.mirror_max_in_flight).unwrap_or(u32::MAX),
            upstream: Arc::new(Upstream::new(settings, dialer)),
            max_body: settings.mirror_body_bytes,
            timeout: settings.request_timeout,
        }
    }

    /// Resolves once no copy is in flight (each bounded by `request_timeout`): a draining
    /// worker waits for this, so a copy already sent is answered and counted before it exits.
    pub async fn idle(&self) {
        if let Ok(all) = self.slots.acquire_many(self.capacity).await {
            drop(all);
        }
    }

    /// Whether this request is chosen for the route's mirror (its `percent`).
    pub fn sampled(mirror: &Mirror) -> bool {
        mirror.percent >= 100.0 || rand::random::<f64>() * 100.0 < mirror.percent
    }

    /// Hands `copy` (or, `None`, a request that cannot be copied) to the shadow service of
    /// `mirror` in a task of its own; returns at once.
    pub fn send(
        &self,
        mirror: &Mirror,
        copy: Option<MirrorCopy>,
        (table, transports, metrics): (&SharedTable, &Transports, Metrics),
    ) {
        let Some(service) = table.load().get(&mirror.service).cloned() else {
            let idx = metrics.service_index(&mirror.service);
            return metrics.mirror(idx, Mirrored::Failed);
        };
        // The row is looked up once per service (kept with it), not per copy.
        let idx = *service.stats.get_or_init(|| metrics.service_index(&service.name));
        let Some(copy) = copy else {
            return metrics.mirror(idx, Mirrored::Skipped);
        };
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            return metrics.mirror(idx, Mirrored::Skipped);
        };
        let transport = transports.get(&service.name).cloned();
        let (upstream, timeout) = (self.upstream.clone(), self.timeout);
        tokio::spawn(async move {
            let _permit = permit;
            let Some(i) = pick(&service) else {
                return metrics.mirror(idx, Mirrored::Failed);
            };
            let address = service.instances[i].address.clone();
            let mut req =
                Request::new(Full::new(copy.body).map_err(|never| match never {}).boxed());
            *req.method_mut() = copy.method;
            *req.uri_mut() = http::Uri::from(copy.path);
            *req.headers_mut() = copy.headers;
            // The copy holds its body whole: framed by its length, whatever framing the
            // client used (an HTTP/2 body has none of its own).
            if req.headers().contains_key(CONTENT_LENGTH)
                || req.body().size_hint().exact() != Some(0)
            {
                let length = req.body().size_hint().exact().unwrap_or(0);
                req.headers_mut().remove(TRANSFER_ENCODING);
                req.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(length));
            }
            if let Ok(host) = HeaderValue::from_str(&address) {
                req.headers_mut().insert(HOST, host);
            }
            let exchange = async {
                let (resp, _lease) = upstream.request(transport.as_deref(), &address, req).await?;
                // Read to the end, so the connection goes back to the mirror's pool.
                let _ = resp.into_body().collect().await;
                Ok::<_, crate::http::client::upstream::UpstreamError>(())
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(())) => metrics.mirror(idx, Mirrored::Sent),
                Ok(Err(e)) => {
                    log::debug!("mirror to service {} instance {address}: {e}", service.name);
                    metrics.mirror(idx, Mirrored::Failed)
                }
                Err(_) => {
                    log::debug!("mirror to service {} instance {address}: timed out", service.name);
                    metrics.mirror(idx, Mirrored::Failed)
                }
            }
        });
    }
}

/// An instance of the shadow service that may take traffic (a copy never goes to a held
/// fallback: it is a last resort for clients, not for copies).
fn pick(service: &crate::table::Service) -> Option<usize> {
    let health = &service.health;
    let skip = |i: usize| !health.available(i) || health.fallback(i);
    let load = |i: usize| health.active(i);
    service.balancer.pick(&PickContext { key: None, skip: &skip, load: &load })
}
