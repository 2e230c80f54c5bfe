//! The request path: route → pick an instance → forward (retrying a refused connection on
//! another instance) → clean the response. Each step is a named function below; errors become
//! short JSON answers with the status an operator expects from a gateway.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;

use crate::balance::{hash_key, PickContext, Strategy};
use crate::headers;
use crate::metrics::{Metrics, UNROUTED};
use crate::router::{request_host, RouteError, Router, Target};
use crate::routes::Service;
use crate::server::{ConnGuard, Connections};
use crate::settings::{HashOn, ProxySettings, Services};
use crate::upstream::{error_chain, Body, BoxError, Upstream, UpstreamError};
use crate::SharedTable;

/// Fewest retries allowed at once whatever the budget, so a quiet worker can still retry.
const MIN_RETRY_CONCURRENCY: usize = 3;

/// Why a request was answered by the gateway itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route, or a route to a service nobody registered: 404.
    #[error("{0}")]
    Route(#[from] RouteError),
    /// The service is not in the route table: 404.
    #[error("unknown service")]
    UnknownService(String),
    /// The service has no instance that may take traffic: 503.
    #[error("no healthy instance")]
    NoInstance(String),
    /// The instance failed: 502; timed out: 504; the body was too large: 413.
    #[error("{1}")]
    Upstream(String, UpstreamError),
    /// `Content-Length` over `max_body_bytes`: 413.
    #[error("request body too large")]
    BodyTooLarge(String),
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            ProxyError::Route(RouteError::BadRequest(_)) => StatusCode::BAD_REQUEST,
            ProxyError::Route(RouteError::NoRoute) | ProxyError::UnknownService(_) => StatusCode::NOT_FOUND,
            ProxyError::NoInstance(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream(_, UpstreamError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(_, UpstreamError::BodyTooLarge) | ProxyError::BodyTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ProxyError::Upstream(_, UpstreamError::ClientBody(_)) => StatusCode::BAD_REQUEST,
            ProxyError::Upstream(..) => StatusCode::BAD_GATEWAY,
        }
    }

    fn service(&self) -> Option<&str> {
        match self {
            ProxyError::UnknownService(s)
            | ProxyError::NoInstance(s)
            | ProxyError::Upstream(s, _)
            | ProxyError::BodyTooLarge(s) => Some(s),
            ProxyError::Route(_) => None,
        }
    }

    /// The JSON answer: `{"error": "...", "service": "..."}`.
    pub fn into_response(self) -> Response<Body> {
        let message = match &self {
            ProxyError::Upstream(_, UpstreamError::Timeout(_)) => "upstream timeout".to_string(),
            ProxyError::Upstream(_, UpstreamError::BodyTooLarge) => "request body too large".to_string(),
            ProxyError::Upstream(_, UpstreamError::ClientBody(_)) => "malformed request body".to_string(),
            ProxyError::Upstream(..) => "upstream failure".to_string(),
            other => other.to_string(),
        };
        json_response(self.status(), &message, self.service())
    }
}

/// A small JSON error body, for the proxy and the server's own refusals.
pub fn json_response(status: StatusCode, error: &str, service: Option<&str>) -> Response<Body> {
    let mut body = serde_json::json!({ "error": error });
    if let Some(s) = service {
        body["service"] = serde_json::Value::from(s);
    }
    let mut resp = Response::new(full(format!("{body}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn full(s: String) -> Body {
    Full::new(Bytes::from(s)).map_err(|never| match never {}).boxed()
}

/// Everything a worker needs to proxy requests; shared by all its connections.
pub struct Proxy {
    table: SharedTable,
    router: Router,
    upstream: Upstream,
    settings: ProxySettings,
    services: Services,
    worker: HeaderValue,
    active: AtomicUsize,
    retrying: AtomicUsize,
    metrics: Metrics,
    unrouted: usize,
    access_log: bool,
    /// Upgraded tunnels count as open connections, so a draining worker waits for them too.
    connections: Arc<Connections>,
}

/// What the request path learned, for metrics and the access log.
#[derive(Default)]
struct Trace {
    service: Option<Arc<Service>>,
    instance: Option<String>,
    latency: Option<Duration>,
}

impl Proxy {
    /// Builds the proxy of one worker.
    pub fn new(
        table: SharedTable,
        router: Router,
        settings: ProxySettings,
        services: Services,
        metrics: Metrics,
        access_log: bool,
        connections: Arc<Connections>,
    ) -> Self {
        Proxy {
            table,
            router,
            upstream: Upstream::new(&settings),
            settings,
            services,
            worker: HeaderValue::from(std::process::id()),
            active: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            unrouted: metrics.service_index(UNROUTED),
            metrics,
            access_log,
            connections,
        }
    }

    /// Answers one client request; never fails (errors are answered with their status).
    pub async fn handle(&self, req: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        // A guard, not a decrement at the end: hyper drops this future when the client leaves.
        let _active = CountGuard::new(&self.active);
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let mut trace = Trace::default();
        let resp = match self.proxy(req, client, &mut trace).await {
            Ok(resp) => resp,
            Err(e) => {
                match &e {
                    ProxyError::Upstream(svc, err @ UpstreamError::ClientBody(_)) => {
                        log::info!("service {svc}: {method} {path} from {client}: {err}")
                    }
                    ProxyError::Upstream(svc, err) => log::warn!("service {svc}: {method} {path}: {err}"),
                    ProxyError::NoInstance(svc) => {
                        log::warn!("service {svc}: {method} {path}: no instance may take traffic")
                    }
                    _ => log::debug!("{method} {path} from {client}: {e}"),
                }
                e.into_response()
            }
        };
        let idx = match &trace.service {
            Some(s) => *s.stats.get_or_init(|| self.metrics.service_index(&s.name)),
            None => self.unrouted,
        };
        self.metrics.request(idx, resp.status().as_u16(), trace.latency);
        if self.access_log {
            let bytes = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("-");
            log::info!(
                target: "access",
                "{client} \"{method} {path}\" {} {bytes} service={} instance={} {:.1}ms",
                resp.status().as_u16(),
                trace.service.as_ref().map_or("-", |s| s.name.as_str()),
                trace.instance.as_deref().unwrap_or("-"),
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        resp
    }

    async fn proxy(
        &self,
        mut req: Request<Incoming>,
        client: SocketAddr,
        trace: &mut Trace,
    ) -> Result<Response<Body>, ProxyError> {
        let target = self.router.route(req.uri(), req.headers())?;
        let table = self.table.load_full();
        let service =
            table.get(&target.service).cloned().ok_or_else(|| ProxyError::UnknownService(target.service.clone()))?;
        trace.service = Some(service.clone());
        let key = self.hash_key(&service, &req, client);
        let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let body = self.limit_body(&service, &parts.headers, body)?;
        // A request without a body can be rebuilt for a retry; one with a body cannot (it streams).
        let replayable = body_is_empty(&parts.headers) && upgrade.is_none();
        let mut body = Some(body);
        let mut tried: Vec<usize> = Vec::new();
        let mut _retry: Option<CountGuard<'_>> = None;
        loop {
            let idx = self.pick(&service, key, &tried)?;
            tried.push(idx);
            let instance = &service.instances[idx];
            let b = body.take().unwrap_or_else(|| Empty::new().map_err(|never| match never {}).boxed());
            let outgoing = self.prepare(&parts, b, &target, &instance.address, client, upgrade.is_some());
            let inflight = InFlight::start(service.clone(), idx);
            trace.instance = Some(instance.address.clone());
            let sent = Instant::now();
            let result = self.upstream.send(outgoing).await;
            trace.latency = Some(sent.elapsed());
            self.record(&service, idx, &result);
            match result {
                Ok(resp) => return Ok(self.respond(resp, parts.version, &instance.address, inflight, upgrade)),
                Err(UpstreamError::Connect(e)) if replayable && self.may_retry(&service, tried.len()) => {
                    log::warn!(
                        "service {}: instance {}: {e}; retrying on another instance",
                        service.name,
                        instance.address
                    );
                    _retry.get_or_insert_with(|| CountGuard::new(&self.retrying));
                    self.metrics.retry();
                    continue;
                }
                Err(e) => return Err(ProxyError::Upstream(service.name.clone(), e)),
            }
        }
    }

    /// Refuses a declared body over `max_body_bytes` at once (413) and caps a streamed one.
    fn limit_body(&self, service: &Service, headers: &http::HeaderMap, body: Incoming) -> Result<Body, ProxyError> {
        // Tag the client's own body errors, so a malformed upload is the client's 400, not the
        // instance's 502 (and does not count against the instance).
        let body = body.map_err(|e| BoxError::from(ClientBodyError(e)));
        let max = self.settings.max_body_bytes;
        if max == 0 {
            return Ok(body.boxed());
        }
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(ProxyError::BodyTooLarge(service.name.clone()));
        }
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        Ok(http_body_util::Limited::new(body, limit).boxed())
    }

    /// Feeds the outcome of one attempt to outlier detection.
    fn record(&self, service: &Service, idx: usize, result: &Result<Response<Incoming>, UpstreamError>) {
        let failed = match result {
            Ok(resp) => resp.status().is_server_error(),
            Err(UpstreamError::BodyTooLarge | UpstreamError::ClientBody(_)) => return,
            Err(_) => true,
        };
        if !failed {
            service.health.success(idx);
        } else if let Some(span) = service.health.failure(idx, &self.settings.outlier) {
            self.metrics.ejection();
            log::warn!(
                "service {}: instance {} ejected for {}s after {} consecutive failures",
                service.name,
                service.instances[idx],
                span.as_secs(),
                self.settings.outlier.consecutive_failures
            );
        }
    }

    /// Picks among available instances not tried yet; when none is available (all ejected or
    /// unhealthy), among every instance not tried yet: a degraded answer beats a 503 (Envoy's
    /// panic mode).
    fn pick(&self, service: &Service, key: Option<u64>, tried: &[usize]) -> Result<usize, ProxyError> {
        let healthy = |i: usize| tried.contains(&i) || !service.health.available(i);
        let untried = |i: usize| tried.contains(&i);
        let balancer = &service.balancer;
        balancer
            .pick(&PickContext { key, skip: &healthy })
            .or_else(|| balancer.pick(&PickContext { key, skip: &untried }))
            .ok_or_else(|| ProxyError::NoInstance(service.name.clone()))
    }

    /// Whether one more attempt is allowed: within `retries`, and within the retry budget (a
    /// share of the worker's active requests) so a dying service is not hammered.
    fn may_retry(&self, service: &Service, attempts: usize) -> bool {
        if attempts > self.settings.retries || attempts >= service.instances.len() {
            return false;
        }
        let active = self.active.load(Ordering::Relaxed);
        let budget = ((active as f64 * self.settings.retry_budget) as usize).max(MIN_RETRY_CONCURRENCY);
        self.retrying.load(Ordering::Relaxed) < budget
    }

    fn hash_key(&self, service: &Service, req: &Request<Incoming>, client: SocketAddr) -> Option<u64> {
        if service.strategy != Strategy::ConsistentHash {
            return None;
        }
        let hash_on =
            self.services.get(&service.name).and_then(|s| s.hash_on.as_ref()).unwrap_or(&self.settings.hash_on);
        match hash_on {
            HashOn::ClientIp => Some(hash_key(client.ip().to_string().as_bytes())),
            HashOn::Header(name) => req.headers().get(name).map(|v| hash_key(v.as_bytes())),
            HashOn::Cookie(name) => cookie(req.headers(), name).map(|v| hash_key(v.as_bytes())),
        }
    }

    /// The request as the instance receives it.
    fn prepare(
        &self,
        parts: &http::request::Parts,
        body: Body,
        target: &Target,
        address: &str,
        client: SocketAddr,
        upgrade: bool,
    ) -> Request<Body> {
        let mut headers = parts.headers.clone();
        let original_host = request_host(&parts.uri, &headers);
        let upgrade_proto = headers.get(header::UPGRADE).cloned();
        headers::remove_hop_by_hop(&mut headers);
        if let (true, Some(proto)) = (upgrade, upgrade_proto) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto);
        }
        headers::add_forwarded(&mut headers, client.ip(), original_host.as_deref());
        // HTTP/2 carries the host in :authority, not in a Host header.
        let client_host = headers
            .get(header::HOST)
            .cloned()
            .or_else(|| parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        let host = match client_host {
            Some(h) if self.settings.preserve_host => Some(h),
            _ => HeaderValue::from_str(address).ok(),
        };
        if let Some(h) = host {
            headers.insert(header::HOST, h);
        }
        let uri = format!("http://{address}{}", target.path);
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        *req.headers_mut() = headers;
        req
    }

    /// The response as the client receives it.
    fn respond(
        &self,
        resp: Response<Incoming>,
        version: http::Version,
        address: &str,
        inflight: InFlight,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        // The client speaks its own HTTP version with us, whatever the instance spoke.
        parts.version = version;
        let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            if let Some(client_side) = upgrade {
                let mut up = Response::from_parts(parts.clone(), ());
                let upstream_side = hyper::upgrade::on(&mut up);
                let guard = ConnGuard::new(self.connections.clone(), self.metrics);
                tokio::spawn(tunnel(client_side, upstream_side, address.to_string(), guard));
            }
        } else {
            headers::remove_hop_by_hop(&mut parts.headers);
        }
        headers::append_via(&mut parts.headers);
        if self.settings.debug_headers {
            if let Ok(v) = HeaderValue::from_str(address) {
                parts.headers.insert("x-zkgate-instance", v);
            }
            parts.headers.insert("x-zkgate-worker", self.worker.clone());
        }
        let body = InFlightBody { inner: body, _inflight: inflight }.map_err(BoxError::from).boxed();
        Response::from_parts(parts, body)
    }
}

/// Copies bytes both ways between an upgraded client connection and instance connection.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    address: String,
    _open: ConnGuard,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            log::warn!("instance {address}: upgrade failed: {}", error_chain(&e));
            return;
        }
    };
    let mut c = hyper_util::rt::TokioIo::new(client);
    let mut u = hyper_util::rt::TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
        log::debug!("instance {address}: upgraded connection closed: {e}");
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

fn body_is_empty(headers: &http::HeaderMap) -> bool {
    !headers.contains_key(header::TRANSFER_ENCODING)
        && headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) == Some(0))
}

fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// An error reading the client's request body (as opposed to the instance failing).
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(hyper::Error);

/// Counts a request in `counter` (active, or retrying) for as long as it lives.
struct CountGuard<'a>(&'a AtomicUsize);

impl<'a> CountGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        CountGuard(counter)
    }
}

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request against its instance (for `least_request`) until its response body ends.
struct InFlight {
    service: Arc<Service>,
    idx: usize,
}

impl InFlight {
    fn start(service: Arc<Service>, idx: usize) -> Self {
        service.balancer.started(idx);
        InFlight { service, idx }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.service.balancer.finished(self.idx);
    }
}

/// A response body that keeps its [`InFlight`] alive while it streams.
struct InFlightBody {
    inner: Incoming,
    _inflight: InFlight,
}

impl hyper::body::Body for InFlightBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = http::HeaderMap::new();
        h.insert(header::COOKIE, "a=1; sid=xyz; sidx=2".parse().unwrap());
        assert_eq!(cookie(&h, "sid"), Some("xyz"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn errors_map_to_the_statuses_operators_expect() {
        let cases = [
            (ProxyError::Route(RouteError::NoRoute), 404),
            (ProxyError::Route(RouteError::BadRequest("x".into())), 400),
            (ProxyError::UnknownService("s".into()), 404),
            (ProxyError::NoInstance("s".into()), 503),
            (ProxyError::Upstream("s".into(), UpstreamError::Connect("refused".into())), 502),
            (ProxyError::Upstream("s".into(), UpstreamError::Timeout(std::time::Duration::from_secs(1))), 504),
        ];
        for (e, code) in cases {
            assert_eq!(e.status().as_u16(), code);
        }
    }
}
