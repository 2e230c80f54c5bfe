//! The shared core of the request path: what a worker proxies with ([`Proxy`]), the service a
//! request goes to, its `consistent_hash` key, the gateway's own answers, and the last phases
//! (`logging.rs`). Both protocol sides — the engine (`h1`) and hyper's (`h2`) — run their
//! requests through it, and through `router`, `limits`, `forward` and `policy`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderName;
use tokio::sync::watch;

use crate::auth::key::Keys;
use crate::auth::{Auth, Identity, Method, Presented, Refusal};
use crate::balance::hash_key;
use crate::config::{Config, HashOn, ProxySettings};
use crate::host::admission::Admission;
use crate::host::Host;
use crate::http::buffers::Buffers;
use crate::http::client::dial::Dialer;
use crate::http::client::forward::{Attempts, Forwarder};
use crate::http::client::transport::Transports;
use crate::http::connections::Connections;
use crate::http::edge::{Addresses, EdgeRules};
use crate::http::error::ProxyError;
use crate::http::headers;
use crate::http::limits::Limits;
use crate::http::mirror::{MirrorCopy, Mirrors};
use crate::http::policy::Policy;
use crate::http::router::{cookie, cookie_count, RequestView, Router, Target};
use crate::http::tee::{tee, OnEnd};
use crate::http::Body;
use crate::metrics::{Metrics, UNROUTED};
use crate::table::SharedTable;
use crate::table::{Service, Source};
use crate::trace::{Started, Tracer};

/// Everything a worker needs to proxy requests; shared by all its connections.
pub struct Proxy {
    /// Where a request goes.
    pub(crate) routes: Routes,
    /// Whether it may go: limits and credentials.
    pub(crate) gate: Gate,
    /// How it is sent, and what else is sent with it.
    pub(crate) send: Sending,
    /// What is recorded of it.
    pub(crate) observe: Observe,
    pub(crate) settings: ProxySettings,
    /// The header policy every protocol side follows.
    pub(crate) policy: Policy,
}

/// Where a request goes: the table, the router over it, and whether routes are loaded.
pub(crate) struct Routes {
    pub(crate) table: SharedTable,
    /// `Some` once routes are loaded (a listing or the snapshot).
    pub(crate) ready: watch::Receiver<Option<Source>>,
    pub(crate) router: Router,
    /// The metrics row of requests no route took.
    pub(crate) unrouted: usize,
    /// `[server] https_redirect`: plain requests go to HTTPS, on this port (`None`: no).
    pub(crate) https_redirect: Option<u16>,
    /// Each `[[route]]`'s edge rules, by its place in the file.
    pub(crate) edges: Vec<Option<EdgeRules>>,
}

impl Routes {
    /// The edge rules of the route a request matched (`allow`/`deny`, CORS, its own answer).
    pub(crate) fn edge(&self, target: &Target) -> Option<&EdgeRules> {
        self.edges.get(target.rule?)?.as_ref()
    }
}

/// Whether a request may go: rate limits and `max_requests`, and the routes' `[auth.NAME]`.
pub(crate) struct Gate {
    /// Rate limits and `max_requests`.
    pub(crate) limits: Limits,
    /// Rate-limit buckets and `max_requests` counts, host-wide.
    pub(crate) admission: Admission,
    /// The `[auth.NAME]` sections routes name.
    pub(crate) auth: Auth,
    /// Services' `allow`/`deny`, for those that have any.
    pub(crate) addresses: std::collections::HashMap<String, Addresses>,
}

/// How a request is sent: the forwarder (pick, attempts, retries), the transports of
/// services that are not plain HTTP/1.1, the engine's buffers, mirror copies, and the open
/// connections (tunnels count).
pub(crate) struct Sending {
    pub(crate) forwarder: Forwarder,
    /// How each service that is not plain HTTP/1.1 is reached.
    pub(crate) transports: Arc<Transports>,
    /// Buffers the engine's connections borrow while they work.
    pub(crate) buffers: Buffers,
    /// Copies to routes' shadow services.
    pub(crate) mirrors: Arc<Mirrors>,
    /// Upgraded tunnels count as open connections, so a draining worker waits for them too.
    pub(crate) connections: Arc<Connections>,
}

/// What is recorded of a request: counters, the access log, spans.
pub(crate) struct Observe {
    pub(crate) metrics: Metrics,
    pub(crate) access_log: bool,
    /// Trace context and span export (`[tracing]`).
    pub(crate) tracer: Option<Tracer>,
}

/// What the proxy shares with the rest of the worker.
pub struct Shared {
    /// The route table.
    pub table: SharedTable,
    /// `Some` once routes are loaded.
    pub ready: watch::Receiver<Option<Source>>,
    /// The host's shared region (counters, limits, instance state).
    pub host: Host,
    /// Open connections (tunnels count).
    pub connections: Arc<Connections>,
    /// Per-service transports toward instances.
    pub transports: Arc<Transports>,
    /// The `[auth.NAME]` sections, loaded.
    pub auth: Auth,
}

/// What the request path learned, for metrics and the access log.
#[derive(Default)]
pub(crate) struct Trace {
    pub(crate) service: Option<Arc<Service>>,
    pub(crate) attempts: Attempts,
    /// The `[[route]]` that matched.
    pub(crate) rule: Option<usize>,
    /// The request's span, when `[tracing]` is on.
    pub(crate) span: Option<Started>,
    /// Request body bytes, when known (`Content-Length`).
    pub(crate) bytes_in: u64,
    /// Answer body bytes, when known (`Content-Length`), if the caller of `log_request`
    /// passes none.
    pub(crate) bytes_out: u64,
    /// When the answer was sent, if the caller read the clock then already (the engine does,
    /// for its pool); else `log_request` reads it.
    pub(crate) finished: Option<std::time::Instant>,
}

impl Trace {
    /// The `traceparent` the instance gets: the gateway's span in the request's trace.
    pub(crate) fn traceparent(&self) -> Option<[u8; 55]> {
        self.span.map(|s| s.context.traceparent())
    }
}

/// The request line as logged.
pub(crate) struct RequestLine<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) client: SocketAddr,
    pub(crate) started: Instant,
}

impl Proxy {
    /// Builds the proxy of one worker. `via` is this gateway's pseudonym in `Via`.
    pub fn new(shared: Shared, router: Router, config: &Config, via: &str) -> Self {
        let keep_underscored = if config.proxy.underscores_in_headers {
            headers::Underscores::All
        } else {
            let routing = &config.header_routing;
            let names = [&routing.service_header, &routing.path_header];
            headers::Underscores::Only(
                names.iter().filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()).collect(),
            )
        };
        let dialer = Arc::new(Dialer::new(config.proxy.connect_timeout, config.own_addresses()));
        Proxy {
            routes: Routes {
                table: shared.table,
                ready: shared.ready,
                router,
                unrouted: shared.host.service_index(UNROUTED),
                https_redirect: config.server.https_redirect.then(|| {
                    config.server.listen_tls.first().map_or(443, std::net::SocketAddr::port)
                }),
                // `None` for a route without any: its requests skip the phase at once.
                edges: config
                    .routes
                    .iter()
                    .map(|r| Some(EdgeRules::of(r)).filter(|e| !e.is_empty()))
                    .collect(),
            },
            gate: Gate {
                limits: {
                    let limits = Limits::from_config(config);
                    limits.claim_rows(&Metrics::new(shared.host));
                    limits
                },
                admission: shared.host.admission(),
                auth: shared.auth,
                addresses: config
                    .services
                    .iter()
                    .map(|(name, s)| {
                        (name.clone(), Addresses { allow: s.allow.clone(), deny: s.deny.clone() })
                    })
                    .filter(|(_, a)| !a.is_empty())
                    .collect(),
            },
            send: Sending {
                forwarder: Forwarder::new(&config.proxy, Metrics::new(shared.host), dialer.clone()),
                transports: shared.transports,
                buffers: Buffers::default(),
                mirrors: Arc::new(Mirrors::new(&config.proxy, dialer)),
                connections: shared.connections,
            },
            observe: Observe {
                metrics: Metrics::new(shared.host),
                access_log: config.log.access,
                tracer: Tracer::from_config(config.tracing.as_ref(), Metrics::new(shared.host)),
            },
            settings: config.proxy.clone(),
            policy: Policy::new(
                headers::via_entry(via),
                keep_underscored,
                config.proxy.trusted_proxies.clone(),
                config.proxy.debug_headers.then(|| std::process::id().to_string().into_bytes()),
            )
            .with_release(config.release.as_deref()),
        }
    }

    /// Sends a copy of the request to its route's shadow service when the route has a mirror
    /// and the request is sampled; `copy` builds it (`None`: it cannot be copied), given the
    /// largest body a copy may carry. Never waits for the copy.
    pub(crate) fn mirror(&self, target: &Target, copy: impl FnOnce(usize) -> Option<MirrorCopy>) {
        let Some(mirror) = self.routes.router.mirror(target) else { return };
        if Mirrors::sampled(mirror) {
            let to = (&self.routes.table, &*self.send.transports, self.observe.metrics);
            self.send.mirrors.send(mirror, copy(self.send.mirrors.max_body), to);
        }
    }

    /// Mirrors a request whose body streams: the body passes through to the primary while a
    /// copy of it (up to `mirror_body_bytes`) is kept, and `head`'s copy leaves with it once
    /// the body has ended whole; a larger or broken body is counted skipped. Returns the body
    /// to forward (the same when the route has no mirror or the request is not sampled).
    pub(crate) fn mirror_streamed(
        &self,
        target: &Target,
        body: Body,
        head: impl FnOnce() -> MirrorCopy,
    ) -> Body {
        let Some(mirror) = self.routes.router.mirror(target) else { return body };
        if !Mirrors::sampled(mirror) {
            return body;
        }
        let (mirrors, mirror) = (self.send.mirrors.clone(), mirror.clone());
        let (table, transports, metrics) =
            (self.routes.table.clone(), self.send.transports.clone(), self.observe.metrics);
        let mut copy = head();
        let on_end: OnEnd = Box::new(move |whole| {
            let copy = whole.map(|body| {
                copy.body = body;
                copy
            });
            mirrors.send(&mirror, copy, (&table, &transports, metrics));
        });
        http_body_util::BodyExt::boxed(tee(body, self.send.mirrors.max_body, on_end))
    }

    /// The identity a routed request proves, when its route has `auth` (`Ok(None)`: no auth
    /// on the route). A route whose section could not be loaded refuses every request (503):
    /// authentication fails closed.
    pub(crate) async fn authenticate(
        &self,
        target: &Target,
        service: &str,
        req: &impl RequestView,
    ) -> Result<Option<Identity>, ProxyError> {
        let Some(name) = self.routes.router.auth(target) else { return Ok(None) };
        let refuse = |r: Refusal| {
            self.observe.metrics.auth_refused(target.auth.unwrap_or(0), r.status);
            ProxyError::Auth(service.to_string(), r)
        };
        let Some(method) = self.gate.auth.get(name) else {
            return Err(refuse(Refusal {
                status: 503,
                reason: format!("authentication {name} unavailable"),
                challenge: None,
            }));
        };
        // One credential, or none: with two, the gateway would verify one while the instance
        // might read the other (an unverified `alg: none` token sent last).
        let authorizations = req.headers(&http::header::AUTHORIZATION).count();
        let cookies = method.cookie().map_or(0, |c| cookie_count(req, c));
        if authorizations > 1 || cookies > 1 {
            return Err(refuse(Refusal {
                status: 400,
                reason: "credentials presented more than once".into(),
                challenge: None,
            }));
        }
        let key = match method.as_ref() {
            Method::Key(keys) => presented_key(req, keys).map_err(refuse)?,
            _ => None,
        };
        let presented = Presented {
            authorization: req.header(&http::header::AUTHORIZATION),
            cookie: method.cookie().and_then(|c| cookie(req, c)),
            key: key.as_deref(),
        };
        let mut identity = method.check(presented).await.map_err(refuse)?;
        identity.hide = method.hide();
        Ok(Some(identity))
    }

    /// The service in the current table. Unknown before the routes are loaded is "not ready"
    /// (503, retry), never "no such service" (404).
    pub(crate) fn service(&self, name: &str) -> Result<Arc<Service>, ProxyError> {
        if let Some(service) = self.routes.table.load().get(name) {
            return Ok(service.clone());
        }
        if self.routes.ready.borrow().is_none() {
            return Err(ProxyError::NotReady(name.to_string()));
        }
        Err(ProxyError::UnknownService(name.to_string()))
    }
}

/// The API key a request presents: its header, or its query parameter when the section
/// names one; presented twice (two lines, two parameters, or both) is refused (400) — the
/// gateway would check one while the instance might read the other.
fn presented_key<'r>(
    req: &'r impl RequestView,
    keys: &'r Keys,
) -> Result<Option<Cow<'r, [u8]>>, Refusal> {
    let twice = || Refusal {
        status: 400,
        reason: "API key presented more than once".into(),
        challenge: None,
    };
    let mut found = None;
    for line in req.headers(&keys.header) {
        if found.replace(Cow::Borrowed(line)).is_some() {
            return Err(twice());
        }
    }
    if let (Some(name), Some(query)) = (&keys.query, req.query()) {
        for value in query_values(query, name) {
            if found.replace(value).is_some() {
                return Err(twice());
            }
        }
    }
    Ok(found)
}

/// The values of parameter `name` in a query string (`a=1&name=v`), read as the instance's
/// framework reads them: name and value form-decoded (`%5F` → `_`, `+` → space), so a name
/// spelled `api%5Fkey` is the parameter `api_key` here too.
pub(crate) fn query_values<'q>(
    query: &'q str,
    name: &'q str,
) -> impl Iterator<Item = Cow<'q, [u8]>> + 'q {
    query.split('&').filter_map(move |kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (*form_decoded(k) == *name.as_bytes()).then(|| form_decoded(v))
    })
}

/// A query component form-decoded (`%XX` → the byte, `+` → space); a `%` not followed by two
/// hex digits stays as it is, as the common frameworks leave it.
pub(crate) fn form_decoded(s: &str) -> Cow<'_, [u8]> {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|b| matches!(b, b'%' | b'+')) {
        return Cow::Borrowed(bytes);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let pair = bytes.get(i + 1..i + 3).and_then(|p| Some(hex(p[0])? << 4 | hex(p[1])?));
        match (bytes[i], pair) {
            (b'%', Some(byte)) => (out.push(byte), i += 3),
            (b'+', _) => (out.push(b' '), i += 1),
            (b, _) => (out.push(b), i += 1),
        };
    }
    Cow::Owned(out)
}

/// The `consistent_hash` key of a request (`None` for other strategies: resolved at table build).
pub(crate) fn hash_on(
    service: &Service,
    req: &impl RequestView,
    client: SocketAddr,
) -> Option<u64> {
    match service.policy.hash_on.as_ref()? {
        HashOn::ClientIp => Some(hash_key(client.ip().to_string().as_bytes())),
        HashOn::Header(name) => req.header(name).map(hash_key),
        HashOn::Cookie(name) => cookie(req, name).map(hash_key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_named_as_the_instance_decodes_them() {
        let q = "a=1&api%5Fkey=k%2B1&api+key=2&api_key+=3&API_KEY=4&api_key=%zz&api%5fkey";
        let found: Vec<Cow<[u8]>> = query_values(q, "api_key").collect();
        assert_eq!(found, [&b"k+1"[..], b"%zz", b""]);
        assert_eq!(&*form_decoded("a+b%20c%2"), b"a b c%2");
        assert!(matches!(form_decoded("plain"), Cow::Borrowed(_)));
    }
}
