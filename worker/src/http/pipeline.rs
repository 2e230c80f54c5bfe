//! The phases of a request, written once for both protocol sides. A side (the engine, `h1`;
//! hyper's, `hyper`) reads a request's head, shows it to the phases as an `Exchange`, and
//! does with their decision what only it can do: write the head it forwards, move the body,
//! relay the answer.
//!
//! ```text
//! side: head read ─▶ Exchange
//!   server_itself()  OPTIONS * answered; CONNECT, targets that are not a path refused
//!   route()   loop check (Via) ─▶ router ─▶ service in the table
//!   side:     hands the request over / refuses what it cannot carry
//!   admit()   max_body_bytes ─▶ rate limits, max_requests ─▶ auth ─▶ per-identity limits
//!             ─▶ the consistent_hash key
//!   side:     Policy::request ─▶ body ─▶ mirror ─▶ Forwarder::forward ─▶ Policy::response
//!   refuse()  any phase's ProxyError ─▶ the gateway's OwnAnswer, logged once
//! ```
//!
//! "Where is auth applied?" has one answer: `admit`. A phase returns `Result<_, ProxyError>`;
//! the side turns the error into bytes or a `Response` through `Proxy::refuse`, never by
//! itself.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;

use http::uri::PathAndQuery;

use crate::auth::{Identity, Method};
use crate::host::admission::InFlightGuard;
use crate::http::compress::Coding;
use crate::http::edge::{EdgeRules, OwnRule};
use crate::http::error::{OwnAnswer, ProxyError, ALLOW};
use crate::http::policy::Line;
use crate::http::proxy::{form_decoded, hash_on, query_values, Proxy, RequestLine, Trace};
use crate::http::router::{HeaderActions, RequestView, Target};
use crate::metrics::EdgeAnswer;
use crate::table::Service;

/// A request as the phases read it, whichever side parsed it: its head (the router's view),
/// its header lines as sent, the body length it declares and who sent it.
pub(crate) trait Exchange: RequestView {
    /// Every header line, in the order sent.
    fn lines(&self) -> impl Iterator<Item = Line<'_>> + Clone;
    /// The body length the head declares (`Content-Length`), when it declares one.
    fn declared_length(&self) -> Option<u64>;
    /// The method, as sent.
    fn method(&self) -> &str;
    /// The client's address (before `trusted_proxies`: the peer).
    fn client(&self) -> SocketAddr;
    /// How the client reached the gateway: `http` or `https`, and the gateway's port.
    fn came_by(&self) -> (&'static str, u16);
}

/// What a request asks of the gateway itself, before any route: `OPTIONS *` asks about the
/// server and is answered here; CONNECT (405) and a target that is not a path (400) are
/// refused. Only origin-form targets (and absolute-form, whose path is used) are ever
/// forwarded, so no request can make the gateway build an upstream address of its choosing.
pub(crate) fn server_itself(
    proxy: &Proxy,
    ex: &impl Exchange,
) -> Result<Option<OwnAnswer>, ProxyError> {
    if ex.method() == "CONNECT" {
        return Err(ProxyError::Refused(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported",
        ));
    }
    if ex.path() == "*" && ex.method() == "OPTIONS" {
        let mut answer = OwnAnswer::empty(StatusCode::OK);
        answer.headers.insert(http::header::ALLOW, http::HeaderValue::from_static(ALLOW));
        return Ok(Some(answer));
    }
    if !ex.path().starts_with('/') {
        let why = "the request target must be a path (origin-form)";
        return Err(ProxyError::Refused(StatusCode::BAD_REQUEST, why));
    }
    if let (Some(port), ("http", _)) = (proxy.routes.https_redirect, ex.came_by()) {
        let to = match port {
            443 => "https://{host}{path}".to_string(),
            port => format!("https://{{host}}:{port}{{path}}"),
        };
        let redirect = OwnRule::Redirect { to, status: StatusCode::MOVED_PERMANENTLY };
        return Ok(Some(redirect.answer(ex, ex.came_by())));
    }
    Ok(None)
}

/// Where a request goes: the route that took it and its service, as the table has it now.
pub(crate) struct Routed {
    pub(crate) target: Target,
    pub(crate) service: Arc<Service>,
}

/// A request the gate let through, with what it proved.
pub(crate) struct Admitted {
    pub(crate) target: Target,
    pub(crate) service: Arc<Service>,
    /// What the route's auth verified (`None`: the route has no auth).
    pub(crate) identity: Option<Identity>,
    /// The `consistent_hash` key, for services that hash.
    pub(crate) key: Option<u64>,
    /// Counted in flight (`max_requests`) until dropped: the side holds it until the answer
    /// is sent whole.
    pub(crate) in_flight: Option<InFlightGuard>,
    /// The answer's header edits when CORS or compression add to the route's (`None`: the
    /// route's own).
    pub(crate) answer_actions: Option<Box<HeaderActions>>,
    /// The coding the client takes, on a route that compresses (the answer decides whether).
    pub(crate) coding: Option<Coding>,
}

/// The loop check, the route and the service: what a request is, before anything is spent on
/// it. Never consumes a token or a credential check, so a side may still hand the request to
/// the other after it.
pub(crate) fn route(
    proxy: &Proxy,
    ex: &impl Exchange,
    trace: &mut Trace,
) -> Result<Routed, ProxyError> {
    if proxy.policy.looped(ex.lines()) {
        let why = "request loop: it already passed through this gateway";
        return Err(ProxyError::Refused(StatusCode::LOOP_DETECTED, why));
    }
    let target = proxy.routes.router.route_view(ex)?;
    trace.rule = target.rule;
    if let Some(edge) = proxy.routes.edge(&target) {
        at_the_edge(proxy, ex, edge, &target)?;
    }
    let service = proxy.service(&target.service)?;
    trace.service = Some(service.clone());
    Ok(Routed { target, service })
}

/// A route's edge rules: a client address its `allow`/`deny` refuses (403); what the route
/// answers itself — a CORS preflight, its redirect, its fixed answer — as
/// [`ProxyError::Answered`], before its service is looked up (a route that only redirects
/// needs no instance).
fn at_the_edge(
    proxy: &Proxy,
    ex: &impl Exchange,
    edge: &EdgeRules,
    target: &Target,
) -> Result<(), ProxyError> {
    let count = |what| {
        let idx = proxy.observe.metrics.service_index(&target.service);
        proxy.observe.metrics.edge_answer(idx, what);
    };
    if !edge.addresses.is_empty() && !edge.addresses.admit(real_client(proxy, ex)) {
        count(EdgeAnswer::AddressRefused);
        return Err(ProxyError::AddressRefused(target.service.clone()));
    }
    // Only a route with cors reads Origin (a GET elsewhere pays nothing for it).
    let cors = edge.cors.as_ref().and_then(|c| Some((c, ex.header(&http::header::ORIGIN)?)));
    if let Some((cors, origin)) = cors {
        let preflight = ex.method() == "OPTIONS"
            && ex.header(&http::header::ACCESS_CONTROL_REQUEST_METHOD).is_some();
        if preflight {
            count(EdgeAnswer::Preflight);
            return Err(ProxyError::Answered(Box::new(cors.preflight(origin, ex))));
        }
    }
    if let Some(own) = &edge.own {
        count(match own {
            OwnRule::Redirect { .. } => EdgeAnswer::Redirect,
            OwnRule::Answer(_) => EdgeAnswer::Answer,
        });
        return Err(ProxyError::Answered(Box::new(own.answer(ex, ex.came_by()))));
    }
    Ok(())
}

/// The client's address after `trusted_proxies`.
fn real_client(proxy: &Proxy, ex: &impl Exchange) -> std::net::IpAddr {
    proxy.policy.client_ip(ex.client().ip(), ex.lines())
}

/// Whether the request may go: a declared body over `max_body_bytes` (413 before a byte of it
/// is read), the service's `allow`/`deny`, the rate limits and `max_requests`, the route's
/// auth, the limits per verified identity; then the key a `consistent_hash` service picks its
/// instance by, and the answer edits CORS adds.
pub(crate) async fn admit(
    proxy: &Proxy,
    ex: &impl Exchange,
    Routed { mut target, service }: Routed,
) -> Result<Admitted, ProxyError> {
    let max_body = proxy.settings.max_body_bytes;
    if max_body != 0 && ex.declared_length().is_some_and(|n| n > max_body) {
        return Err(ProxyError::BodyTooLarge(service.name.clone()));
    }
    if let Some(addresses) = proxy.gate.addresses.get(&service.name) {
        if !addresses.admit(real_client(proxy, ex)) {
            let idx = proxy.observe.metrics.service_index(&service.name);
            proxy.observe.metrics.edge_answer(idx, EdgeAnswer::AddressRefused);
            return Err(ProxyError::AddressRefused(service.name.clone()));
        }
    }
    let gate = &proxy.gate;
    let limited = (&proxy.observe.metrics, &gate.admission);
    let primary = proxy.routes.router.primary(&target);
    let in_flight = gate.limits.admit(limited, (&service, primary), ex, ex.client().ip())?;
    // Boxed, and only for a route with auth: a check's state (a bcrypt on the blocking pool, a
    // JWKS fetch) would otherwise enlarge every request's.
    let identity = match proxy.routes.router.auth(&target) {
        Some(name) => {
            let identity = Box::pin(proxy.authenticate(&target, &service.name, ex)).await?;
            // An API key in the query never reaches the instance.
            if let Some(Method::Key(keys)) = proxy.gate.auth.get(name).map(|m| &**m) {
                if let Some(param) = &keys.query {
                    target.path = without_param(&target.path, param);
                }
            }
            identity
        }
        None => None,
    };
    gate.limits.admit_identity(limited, (&service, primary), identity.as_ref())?;
    let key = hash_on(&service, ex, ex.client());
    let edge = proxy.routes.edge(&target);
    let (cors, compress) =
        (edge.and_then(|e| e.cors.as_ref()), edge.and_then(|e| e.compress.as_ref()));
    let answer_actions = (cors.is_some() || compress.is_some()).then(|| -> Box<HeaderActions> {
        let route = proxy.routes.router.header_actions(&target).map(|(_, response)| response);
        let mut actions = match cors {
            Some(cors) => cors.answer_actions(ex.header(&http::header::ORIGIN), route),
            None => route.cloned().unwrap_or_default(),
        };
        if compress.is_some() {
            // Every answer of the route may differ by Accept-Encoding: caches are told so.
            let vary = http::HeaderValue::from_static("accept-encoding");
            actions.add.push((http::header::VARY, vary));
        }
        Box::new(actions)
    });
    let coding = compress.and_then(|c| c.negotiate(ex.headers(&http::header::ACCEPT_ENCODING)));
    Ok(Admitted { target, service, identity, key, in_flight, answer_actions, coding })
}

/// `path` without the query parameter `name` (every occurrence, however its name is spelled:
/// `api%5Fkey` is `api_key` to the instance); the same when it has none.
fn without_param(path: &PathAndQuery, name: &str) -> PathAndQuery {
    let Some(query) = path.query() else { return path.clone() };
    if query_values(query, name).next().is_none() {
        return path.clone();
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| *form_decoded(kv.split_once('=').map_or(kv, |(k, _)| k)) != *name.as_bytes())
        .collect();
    let rebuilt = match kept.is_empty() {
        true => path.path().to_string(),
        false => format!("{}?{}", path.path(), kept.join("&")),
    };
    PathAndQuery::try_from(rebuilt).unwrap_or_else(|_| path.clone())
}

impl Proxy {
    /// The gateway's own answer to a request a phase refused, logged at the level the failure
    /// deserves; `grpc`: the client reads `grpc-status` (a trailers-only answer), not the HTTP
    /// status.
    pub(crate) fn refuse(&self, e: ProxyError, line: &RequestLine<'_>, grpc: bool) -> OwnAnswer {
        self.log_error(&e, line);
        match grpc {
            true => e.into_grpc_answer(),
            false => e.into_answer(),
        }
    }
}
