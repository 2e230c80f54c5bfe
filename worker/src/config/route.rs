//! `[[route]]` rules: what a request matches and what happens on its way (canary, mirror,
//! authentication, header edits).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::edge::{Compress, Cors, Redirect, StaticAnswer};
use super::values::{absolute_path, AddressBlocks};
use super::DEFAULT_PATH_PREFIX;

/// One `[[route]]` rule. Rules are tried in order; the first match wins.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Match only this host (the `Host` header without port, case-insensitive).
    #[serde(default)]
    pub host: Option<String>,
    /// Match paths equal to this prefix or continuing it with `/` or `?` (a prefix ending in
    /// `/` matches anything below it): `/users` matches `/users/7` but not `/usersx`.
    #[serde(default = "default_path_prefix", deserialize_with = "absolute_path")]
    pub path_prefix: String,
    /// The service requests go to.
    pub service: String,
    /// Remove `path_prefix` from the path before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// A share of the requests (and those carrying a header or cookie) to another service.
    #[serde(default)]
    pub canary: Option<Canary>,
    /// A copy of a share of the requests to a shadow service; its answers are discarded.
    #[serde(default)]
    pub mirror: Option<Mirror>,
    /// The `[auth.NAME]` section clients of this route must satisfy.
    #[serde(default)]
    pub auth: Option<String>,
    /// Headers set, added and removed on the request before it is forwarded.
    #[serde(default)]
    pub request_headers: HeaderRules,
    /// Headers set, added and removed on the response before the client gets it.
    #[serde(default)]
    pub response_headers: HeaderRules,
    /// Client addresses (after `trusted_proxies`) that may use the route; empty: any.
    #[serde(default)]
    pub allow: AddressBlocks,
    /// Client addresses refused (403), whatever `allow` says.
    #[serde(default)]
    pub deny: AddressBlocks,
    /// Browsers on other origins that may call the route.
    #[serde(default)]
    pub cors: Option<Cors>,
    /// The route answers with a redirect (its service is not asked).
    #[serde(default)]
    pub redirect: Option<Redirect>,
    /// The route answers every request itself (its service is not asked).
    #[serde(default)]
    pub answer: Option<StaticAnswer>,
    /// Answers compressed for clients that accept it.
    #[serde(default)]
    pub compress: Option<Compress>,
}

impl RouteRule {
    /// A rule sending `path_prefix` to `service`, everything else at its default (what a
    /// `[[route]]` with only those two keys reads as).
    pub fn to(path_prefix: &str, service: &str) -> Self {
        RouteRule {
            host: None,
            path_prefix: path_prefix.into(),
            service: service.into(),
            strip_prefix: false,
            canary: None,
            mirror: None,
            auth: None,
            request_headers: HeaderRules::default(),
            response_headers: HeaderRules::default(),
            allow: AddressBlocks::default(),
            deny: AddressBlocks::default(),
            cors: None,
            redirect: None,
            answer: None,
            compress: None,
        }
    }
}

/// `canary = { service, percent, header, cookie }` of a route.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The service the canary share goes to.
    pub service: String,
    /// Share of the other requests sent there, 0..100 (fractions allowed).
    #[serde(default)]
    pub percent: f64,
    /// `"name: value"`: requests with this header always go there.
    #[serde(default)]
    pub header: Option<String>,
    /// `"name=value"`: requests with this cookie always go there.
    #[serde(default)]
    pub cookie: Option<String>,
}

/// `mirror = { service, percent }` of a route: a copy of each chosen request goes to `service`
/// (its body too, up to `[proxy] mirror_body_bytes`), its answer discarded. The client's request
/// never waits for it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The shadow service.
    pub service: String,
    /// Share of the route's requests copied, 0..100 (fractions allowed); 100 when absent.
    #[serde(default = "all_requests")]
    pub percent: f64,
}

fn all_requests() -> f64 {
    100.0
}

/// Header edits: `set` replaces every line of a name, `add` appends one, `remove` drops them.
/// Applied after the gateway's own (hop-by-hop, `X-Forwarded-*`, `Via`), in that order.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderRules {
    /// Names to values, replacing what is there.
    pub set: BTreeMap<String, String>,
    /// Names to values, appended.
    pub add: BTreeMap<String, String>,
    /// Names removed.
    pub remove: Vec<String>,
}

fn default_path_prefix() -> String {
    DEFAULT_PATH_PREFIX.into()
}
