//! The router: from a request to the service it goes to and the path it is forwarded with.
//!
//! Two modes, tried in this order:
//! - header routing (the seed's): under `mount`, the `service_name` header names the service and
//!   `api_name` the upstream path. `api_name` must be an origin-form path (starts with `/`), so a
//!   client can choose the path on an instance but never the instance's host;
//! - `[[route]]` rules on host and path prefix, first match wins, with optional prefix stripping.

use std::borrow::Cow;

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use crate::config::{Canary, HeaderRouting, HeaderRules, RouteRule};
pub use crate::http::host::{host_of, request_host};
use crate::http::target::{self, PathParameters, PathRules, Unreadable};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Service name.
    pub service: String,
    /// Path and query to send to the instance.
    pub path: PathAndQuery,
    /// The `[[route]]` whose header rules apply: the one that matched, or for a request routed
    /// by header the first route to its service.
    pub rule: Option<usize>,
    /// The `[auth.NAME]` the request must satisfy: its rule's; for a request routed by header,
    /// that of the first route to the service that has one (a header must not be a way around
    /// a route's authentication).
    pub auth: Option<usize>,
}

/// A route's header edits, parsed once.
#[derive(Debug, Clone, Default)]
pub struct HeaderActions {
    /// Replace every line of these names.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append these lines.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Drop these names.
    pub remove: Vec<HeaderName>,
}

impl HeaderActions {
    /// Parses a route's rules (invalid names or values are refused by `zkgate check`; here
    /// they are left out).
    pub fn new(rules: &HeaderRules) -> Self {
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect()
        };
        HeaderActions {
            set: pairs(&rules.set),
            add: pairs(&rules.add),
            remove: rules
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Whether a line named `name` is dropped (removed, or replaced by `set`).
    pub fn drops(&self, name: &[u8]) -> bool {
        let is = |n: &HeaderName| n.as_str().as_bytes().eq_ignore_ascii_case(name);
        self.remove.iter().any(is) || self.set.iter().any(|(n, _)| is(n))
    }

    /// Applies the edits to a header map.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A route's canary, parsed once.
#[derive(Debug, Clone)]
struct CanaryRule {
    service: String,
    percent: f64,
    header: Option<(HeaderName, Vec<u8>)>,
    cookie: Option<(String, Vec<u8>)>,
}

impl CanaryRule {
    fn new(c: &Canary) -> Self {
        let header = c.header.as_deref().and_then(|h| {
            let (n, v) = h.split_once(':')?;
            Some((HeaderName::from_bytes(n.trim().as_bytes()).ok()?, v.trim().as_bytes().to_vec()))
        });
        let cookie = c.cookie.as_deref().and_then(|c| {
            let (n, v) = c.split_once('=')?;
            Some((n.trim().to_string(), v.trim().as_bytes().to_vec()))
        });
        CanaryRule { service: c.service.clone(), percent: c.percent, header, cookie }
    }

    /// Whether this request goes to the canary.
    fn takes(&self, req: &impl RequestView) -> bool {
        self.header.as_ref().is_some_and(|(n, v)| req.header(n) == Some(v.as_slice()))
            || self.cookie.as_ref().is_some_and(|(n, v)| cookie(req, n) == Some(v.as_slice()))
            || (self.percent > 0.0 && rand::random::<f64>() * 100.0 < self.percent)
    }
}

/// Everything a rule does beyond matching.
#[derive(Debug, Clone, Default)]
struct RuleExtras {
    canary: Option<CanaryRule>,
    request: HeaderActions,
    response: HeaderActions,
}

/// The value of cookie `name` in the request's `Cookie` lines.
pub fn cookie<'a>(req: &'a impl RequestView, name: &str) -> Option<&'a [u8]> {
    cookies(req).find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| v)
}

/// How many cookies named `name` the request's `Cookie` lines carry.
pub fn cookie_count(req: &impl RequestView, name: &str) -> usize {
    cookies(req).filter(|(k, _)| *k == name.as_bytes()).count()
}

/// Every `name=value` pair of the request's `Cookie` lines.
fn cookies<'a>(req: &'a impl RequestView) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
    req.headers(&http::header::COOKIE).flat_map(|v| v.split(|b| *b == b';')).filter_map(|kv| {
        let kv = kv.trim_ascii();
        let eq = kv.iter().position(|b| *b == b'=')?;
        Some((&kv[..eq], &kv[eq + 1..]))
    })
}

/// Why a request cannot be routed; each maps to a status in the gateway's error answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No rule matches (404).
    #[error("no route for this request")]
    NoRoute,
    /// Header routing with a missing or malformed header (400).
    #[error("{0}")]
    BadRequest(String),
}

/// Header mode, compiled: the header names parsed once, not on every request.
#[derive(Debug, Clone)]
struct HeaderMode {
    mount: String,
    service: HeaderName,
    path: HeaderName,
    /// Services a client may not name: `deny_services`, and every service that is only a
    /// canary target or a shadow.
    hidden: Vec<String>,
    /// Per service, the first `[[route]]` to it: its header rules apply to the service however
    /// a request reaches it.
    rule_of: rustc_hash::FxHashMap<String, usize>,
    /// Per service, the first `[[route]]` to it (or to it as a canary) with `auth`.
    auth_of: rustc_hash::FxHashMap<String, usize>,
}

/// The compiled routing rules of a worker.
#[derive(Debug, Clone)]
pub struct Router {
    header: Option<HeaderMode>,
    rules: Vec<RouteRule>,
    extras: Vec<RuleExtras>,
    /// How a path is put in its one canonical form before anything reads it.
    paths: PathRules,
}

/// What a canonical path and host match, before the canary and the forwarded path are worked
/// out: compared between the two readings of a path with parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Matched {
    Header,
    Rule(usize),
    Nothing,
}

impl Router {
    /// The header edits of the rule a request matched: (request, response); `None` when there
    /// are none.
    pub fn header_actions(&self, target: &Target) -> Option<(&HeaderActions, &HeaderActions)> {
        let extras = &self.extras[target.rule?];
        (!extras.request.is_empty() || !extras.response.is_empty())
            .then_some((&extras.request, &extras.response))
    }

    /// Builds a router from the configuration (header names that are not valid header names
    /// are refused by `zkgate check`; here they disable header mode).
    pub fn new(header: &HeaderRouting, rules: &[RouteRule]) -> Self {
        let mode = header.enabled.then(|| {
            let routed = |name: &str| rules.iter().any(|r| r.service == name);
            // A service reachable only as a route's canary or shadow (mirror) is the route's
            // business: naming it in a header would reach it without the route's auth.
            let canaries = rules.iter().filter_map(|r| r.canary.as_ref().map(|c| &c.service));
            let shadows = rules.iter().filter_map(|r| r.mirror.as_ref().map(|m| &m.service));
            let mut hidden: Vec<String> = header.deny_services.clone();
            hidden.extend(canaries.chain(shadows).filter(|c| !routed(c)).cloned());
            let mut rule_of = rustc_hash::FxHashMap::default();
            let mut auth_of = rustc_hash::FxHashMap::default();
            for (i, rule) in rules.iter().enumerate() {
                rule_of.entry(rule.service.clone()).or_insert(i);
                if rule.auth.is_some() {
                    auth_of.entry(rule.service.clone()).or_insert(i);
                    if let Some(c) = &rule.canary {
                        auth_of.entry(c.service.clone()).or_insert(i);
                    }
                }
            }
            Some(HeaderMode {
                mount: header.mount.clone(),
                service: HeaderName::from_bytes(header.service_header.as_bytes()).ok()?,
                path: HeaderName::from_bytes(header.path_header.as_bytes()).ok()?,
                hidden,
                rule_of,
                auth_of,
            })
        });
        let extras = rules
            .iter()
            .map(|r| RuleExtras {
                canary: r.canary.as_ref().map(CanaryRule::new),
                request: HeaderActions::new(&r.request_headers),
                response: HeaderActions::new(&r.response_headers),
            })
            .collect();
        Router {
            header: mode.flatten(),
            rules: rules.to_vec(),
            extras,
            paths: PathRules::default(),
        }
    }

    /// The same router, reading paths by `paths` (`[proxy] path_normalization`).
    pub fn with_paths(mut self, paths: PathRules) -> Self {
        self.paths = paths;
        self
    }

    /// The `[auth.NAME]` a routed request must satisfy.
    pub fn auth(&self, target: &Target) -> Option<&str> {
        self.rules.get(target.auth?)?.auth.as_deref()
    }

    /// The service of the route a request matched (for a canary's request, the primary's).
    pub fn primary(&self, target: &Target) -> Option<&str> {
        self.rules.get(target.rule?).map(|r| r.service.as_str())
    }

    /// The route's mirror, when it has one.
    pub fn mirror(&self, target: &Target) -> Option<&crate::config::Mirror> {
        self.rules.get(target.rule?)?.mirror.as_ref()
    }

    /// The route's label in metrics: its host and path prefix.
    pub fn label(&self, rule: usize) -> String {
        self.rules.get(rule).map_or_else(String::new, |r| {
            format!("{}{}", r.host.as_deref().unwrap_or(""), r.path_prefix)
        })
    }

    /// Routes one request.
    pub fn route(&self, uri: &Uri, headers: &HeaderMap) -> Result<Target, RouteError> {
        let host = request_host(uri, headers);
        self.route_view(&HyperRequest { uri, headers, host: host.as_deref() })
    }

    /// Routes one request, whichever way it was parsed (hyper's types or the engine's), on the
    /// canonical form of its path and host (see [`target`](crate::http::target)): a path with
    /// no one reading is 400, and the instance receives the canonical path.
    pub fn route_view(&self, req: &impl RequestView) -> Result<Target, RouteError> {
        let unreadable = |e: Unreadable| RouteError::BadRequest(e.to_string());
        let path = target::canonical(req.path(), &self.paths).map_err(unreadable)?;
        let host = req.host().map(|h| h.strip_suffix('.').unwrap_or(h));
        let matched = self.matched(&path, host);
        if self.paths.path_parameters == PathParameters::RejectAmbiguous {
            if let Some(other) = target::without_parameters(&path, &self.paths) {
                if self.matched(&other, host) != matched {
                    return Err(unreadable(Unreadable::Parameters));
                }
            }
        }
        let i = match matched {
            Matched::Header => {
                let h = self.header.as_ref().expect("matched in header mode");
                return route_by_headers(h, req, &self.paths);
            }
            Matched::Rule(i) => i,
            Matched::Nothing => return Err(RouteError::NoRoute),
        };
        let rule = &self.rules[i];
        let forwarded = match (&path, rule.strip_prefix) {
            (_, true) => strip(&rule.path_prefix, &path, req.query()),
            (Cow::Borrowed(_), false) => origin_form(req.path_and_query()),
            (Cow::Owned(p), false) => with_query(p, req.query()),
        };
        let service = match &self.extras[i].canary {
            Some(canary) if canary.takes(req) => canary.service.clone(),
            _ => rule.service.clone(),
        };
        let auth = rule.auth.is_some().then_some(i);
        Ok(Target { service, path: forwarded, rule: Some(i), auth })
    }

    /// What a canonical `path` on `host` (no trailing dot) matches: header routing under its
    /// mount, else the first `[[route]]`.
    fn matched(&self, path: &str, host: Option<&str>) -> Matched {
        if self.header.as_ref().is_some_and(|h| prefix_matches(&h.mount, path)) {
            return Matched::Header;
        }
        let hit = self.rules.iter().position(|rule| {
            rule.host.as_ref().is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)))
                && prefix_matches(&rule.path_prefix, path)
        });
        hit.map_or(Matched::Nothing, Matched::Rule)
    }
}

/// What the router (and the hash key) reads of a request: the hyper path's `Uri` and
/// `HeaderMap`, or the engine's parsed head, alike.
pub trait RequestView {
    /// The path, without the query.
    fn path(&self) -> &str;
    /// The query, without `?`.
    fn query(&self) -> Option<&str>;
    /// Path and query as forwarded when no rule rewrites them.
    fn path_and_query(&self) -> PathAndQuery;
    /// The host the request was for, without port (see [`request_host`]).
    fn host(&self) -> Option<&str>;
    /// The first value of a header.
    fn header(&self, name: &HeaderName) -> Option<&[u8]>;
    /// Every value of a header, in order.
    fn headers<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a;
}

/// A request as hyper parsed it.
pub struct HyperRequest<'a> {
    /// Its URI.
    pub uri: &'a Uri,
    /// Its headers.
    pub headers: &'a HeaderMap,
    /// Its host, from [`request_host`].
    pub host: Option<&'a str>,
}

impl RequestView for HyperRequest<'_> {
    fn path(&self) -> &str {
        self.uri.path()
    }
    fn query(&self) -> Option<&str> {
        self.uri.query()
    }
    fn path_and_query(&self) -> PathAndQuery {
        self.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"))
    }
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        self.headers.get(name).map(|v| v.as_bytes())
    }
    fn headers<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.get_all(name).iter().map(|v| v.as_bytes())
    }
}

fn route_by_headers(
    h: &HeaderMode,
    req: &impl RequestView,
    paths: &PathRules,
) -> Result<Target, RouteError> {
    let header = |name: &HeaderName| -> Result<&str, RouteError> {
        let v = req
            .header(name)
            .ok_or_else(|| RouteError::BadRequest(format!("missing header {name}")))?;
        // Visible ASCII only, as `HeaderValue::to_str`.
        let ascii = v.iter().all(|b| *b == b'\t' || (b' '..=b'~').contains(b));
        let v = std::str::from_utf8(v).ok().filter(|_| ascii).map(str::trim);
        v.filter(|v| !v.is_empty())
            .ok_or_else(|| RouteError::BadRequest(format!("header {name} is empty or not ASCII")))
    };
    let service = header(&h.service)?;
    if h.hidden.iter().any(|hidden| hidden == service) {
        // As if there were no such service: its existence is not the client's business.
        return Err(RouteError::NoRoute);
    }
    let api = header(&h.path)?;
    if !api.starts_with('/') || api.starts_with("//") {
        return Err(RouteError::BadRequest(format!(
            "header {} must be a path starting with '/', got {api:?}",
            h.path
        )));
    }
    // The path the client chose on the instance, in its canonical form too.
    let (api_path, query) = api.split_once('?').map_or((api, None), |(p, q)| (p, Some(q)));
    let canonical = target::canonical(api_path, paths)
        .map_err(|e| RouteError::BadRequest(format!("header {}: {e}", h.path)))?;
    let path: PathAndQuery = match canonical {
        Cow::Borrowed(_) => api.parse().ok(),
        Cow::Owned(p) => with_query(&p, query).into(),
    }
    .ok_or_else(|| RouteError::BadRequest(format!("header {} is not a valid path", h.path)))?;
    let rule = h.rule_of.get(service).copied();
    let auth = h.auth_of.get(service).copied();
    Ok(Target { service: service.to_string(), path, rule, auth })
}

/// The router's own rule, whatever the server did before it: what it forwards is origin-form
/// (an absolute-form target with an empty path, `http://host?q`, has the path-and-query `?q`).
fn origin_form(pq: PathAndQuery) -> PathAndQuery {
    if pq.as_str().starts_with('/') {
        return pq;
    }
    format!("/{}", pq.as_str()).parse().unwrap_or_else(|_| PathAndQuery::from_static("/"))
}

/// A canonical path and the request's query, as forwarded.
fn with_query(path: &str, query: Option<&str>) -> PathAndQuery {
    let full = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    // A canonical path only decodes unreserved characters of a valid target: still valid.
    full.parse().unwrap_or_else(|_| PathAndQuery::from_static("/"))
}

/// `prefix` matches `path` when equal, or when `path` continues it at a segment boundary.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() || prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn strip(prefix: &str, path: &str, query: Option<&str>) -> PathAndQuery {
    let rest = path.strip_prefix(prefix.trim_end_matches('/')).unwrap_or(path);
    let rest = if rest.starts_with('/') { rest.to_string() } else { format!("/{rest}") };
    let full = match query {
        Some(q) => format!("{rest}?{q}"),
        None => rest,
    };
    // Built from an already valid path and query, minus a prefix: still valid.
    full.parse().unwrap_or_else(|_| PathAndQuery::from_static("/"))
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
