//! A route's edge rules, compiled once from its `[[route]]` (and its service's `allow`/`deny`):
//! which client addresses may use it, what it answers itself (a redirect, a fixed answer, a
//! CORS preflight) and what it adds to an instance's answer (CORS). The pipeline's `edge`
//! phase reads them; neither protocol side does.

use http::header::{self, HeaderName, HeaderValue};
use http::StatusCode;

use crate::config::{AddressBlocks, Cors, Redirect, RouteRule, StaticAnswer};
use crate::http::compress::CompressRule;
use crate::http::own::OwnAnswer;
use crate::http::router::{HeaderActions, RequestView};

/// One route's edge rules.
#[derive(Debug, Clone, Default)]
pub struct EdgeRules {
    /// Who may use the route.
    pub addresses: Addresses,
    /// Cross-origin calls from browsers.
    pub cors: Option<CorsRule>,
    /// The route answers itself: a redirect or a fixed answer.
    pub own: Option<OwnRule>,
    /// Answers compressed for clients that accept it.
    pub compress: Option<CompressRule>,
}

impl EdgeRules {
    /// Whether the route has no edge rule at all.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
            && self.cors.is_none()
            && self.own.is_none()
            && self.compress.is_none()
    }

    /// The rules of `rule`.
    pub fn of(rule: &RouteRule) -> Self {
        let own = match (&rule.redirect, &rule.answer) {
            (Some(r), _) => Some(OwnRule::redirect(r)),
            (None, Some(a)) => Some(OwnRule::Answer(fixed_answer(a))),
            (None, None) => None,
        };
        EdgeRules {
            addresses: Addresses { allow: rule.allow.clone(), deny: rule.deny.clone() },
            cors: rule.cors.as_ref().map(CorsRule::of),
            own,
            compress: rule.compress.as_ref().map(CompressRule::of),
        }
    }
}

/// `allow` and `deny`: `deny` wins; a non-empty `allow` admits only what it lists.
#[derive(Debug, Clone, Default)]
pub struct Addresses {
    /// Admitted when listed (empty: anyone not denied).
    pub allow: AddressBlocks,
    /// Refused when listed.
    pub deny: AddressBlocks,
}

impl Addresses {
    /// Whether `ip` may pass.
    pub fn admit(&self, ip: std::net::IpAddr) -> bool {
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }

    /// Whether there is any rule to check.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// What a route answers instead of forwarding.
#[derive(Debug, Clone)]
pub enum OwnRule {
    /// A redirect to `to`, its placeholders filled per request.
    Redirect {
        /// The location, with its placeholders.
        to: String,
        /// 301, 302, 303, 307 or 308.
        status: StatusCode,
    },
    /// The same answer to every request.
    Answer(OwnAnswer),
}

impl OwnRule {
    fn redirect(r: &Redirect) -> Self {
        let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
        OwnRule::Redirect { to: r.to.clone(), status }
    }

    /// The answer to `req`, which came by `scheme` to the gateway's `port`.
    pub fn answer(&self, req: &impl RequestView, (scheme, port): (&str, u16)) -> OwnAnswer {
        match self {
            OwnRule::Answer(answer) => answer.clone(),
            OwnRule::Redirect { to, status } => {
                let path = req.path_and_query();
                let location = to
                    .replace("{scheme}", scheme)
                    .replace("{host}", req.host().unwrap_or(""))
                    .replace("{port}", &port.to_string())
                    .replace("{path}", path.as_str());
                let mut answer = OwnAnswer::empty(*status);
                // A value that cannot be a header (a control character in the path cannot
                // reach here: the target was checked) is left out rather than sent broken.
                if let Ok(v) = HeaderValue::from_str(&location) {
                    answer.headers.insert(header::LOCATION, v);
                }
                answer
            }
        }
    }
}

fn fixed_answer(a: &StaticAnswer) -> OwnAnswer {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK);
    let mut answer = OwnAnswer::empty(status);
    answer.body = bytes::Bytes::from(a.body.clone().unwrap_or_default());
    if let Ok(v) = HeaderValue::from_str(&a.content_type) {
        answer.headers.insert(header::CONTENT_TYPE, v);
    }
    answer
}

/// A route's `cors`, compiled.
#[derive(Debug, Clone)]
pub struct CorsRule {
    /// `*`: any origin.
    any: bool,
    /// Exact origins, lowercased.
    exact: Vec<String>,
    /// `scheme://*.domain[:port]` patterns: (`scheme://`, `.domain[:port]`), lowercased.
    wildcard: Vec<(String, String)>,
    methods: Vec<String>,
    headers: Vec<String>,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

impl CorsRule {
    fn of(c: &Cors) -> Self {
        let (mut any, mut exact, mut wildcard) = (false, Vec::new(), Vec::new());
        for o in &c.origins {
            let o = o.trim().to_ascii_lowercase();
            if o == "*" {
                any = true;
            } else if let Some((scheme, rest)) = o.split_once("://*.") {
                wildcard.push((format!("{scheme}://"), format!(".{rest}")));
            } else {
                exact.push(o);
            }
        }
        let join = |v: &[String]| HeaderValue::from_str(&v.join(", ")).ok();
        let methods: Vec<String> = c.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
        let headers: Vec<String> = c.headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        CorsRule {
            any,
            exact,
            wildcard,
            allow_methods: join(&methods).unwrap_or(HeaderValue::from_static("GET, HEAD, POST")),
            allow_headers: (!headers.is_empty()).then(|| join(&headers)).flatten(),
            expose: (!c.expose.is_empty()).then(|| join(&c.expose)).flatten(),
            methods,
            headers,
            credentials: c.credentials,
            max_age: HeaderValue::from(c.max_age.as_secs()),
        }
    }

    /// Whether `origin` (an `Origin` value) may call the route.
    pub fn allows(&self, origin: &[u8]) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else { return false };
        let origin = origin.to_ascii_lowercase();
        if self.any || self.exact.contains(&origin) {
            return true;
        }
        self.wildcard.iter().any(|(scheme, suffix)| {
            origin.strip_prefix(scheme.as_str()).is_some_and(|host| {
                // One or more labels before the domain, never the bare domain.
                host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && !host[..host.len() - suffix.len()].contains(['/', ':'])
            })
        })
    }

    /// A preflight's answer: 204 with what the origin may do, or 403 when the origin, the
    /// method or a header asked for is not allowed (the browser then refuses the call).
    pub fn preflight(&self, origin: &[u8], req: &impl RequestView) -> OwnAnswer {
        let method = req.header(&header::ACCESS_CONTROL_REQUEST_METHOD).unwrap_or(b"");
        let method_ok = self.methods.iter().any(|m| m.as_bytes() == method)
            || matches!(method, b"GET" | b"HEAD" | b"POST");
        let asked = req.headers(&header::ACCESS_CONTROL_REQUEST_HEADERS);
        let headers_ok = asked.flat_map(|v| v.split(|b| *b == b',')).all(|h| {
            let h = String::from_utf8_lossy(h.trim_ascii()).to_ascii_lowercase();
            h.is_empty() || self.headers.contains(&h)
        });
        if !(self.allows(origin) && method_ok && headers_ok) {
            let mut refused = OwnAnswer::json(
                StatusCode::FORBIDDEN,
                "CORS preflight refused: origin, method or headers not allowed",
                None,
            );
            refused.headers.insert(header::VARY, HeaderValue::from_static("origin"));
            return refused;
        }
        let mut answer = OwnAnswer::empty(StatusCode::NO_CONTENT);
        for (name, value) in self.answer_lines(origin) {
            answer.headers.append(name, value);
        }
        let h = &mut answer.headers;
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
        if let Some(v) = &self.allow_headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        answer
    }

    /// The lines an answer to an allowed `origin` carries: the origin echoed (`*` for any
    /// origin without credentials), credentials, exposed headers, and `Vary: Origin`.
    fn answer_lines(&self, origin: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
        let mut lines = Vec::with_capacity(4);
        let echoed = match self.any && !self.credentials {
            true => Some(HeaderValue::from_static("*")),
            false => HeaderValue::from_bytes(origin).ok(),
        };
        if let Some(v) = echoed {
            lines.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, v));
        }
        if self.credentials {
            lines
                .push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true")));
        }
        if let Some(v) = &self.expose {
            lines.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone()));
        }
        lines.push((header::VARY, HeaderValue::from_static("origin")));
        lines
    }

    /// The route's answer edits for a request from `origin` (`None`: not a cross-origin call,
    /// or one from an origin not allowed, whose answer gets `Vary: Origin` alone): the
    /// instance's own `Access-Control-*` lines are replaced by the gateway's.
    pub fn answer_actions(
        &self,
        origin: Option<&[u8]>,
        route: Option<&HeaderActions>,
    ) -> HeaderActions {
        let mut actions = route.cloned().unwrap_or_default();
        let allowed = origin.filter(|o| self.allows(o));
        for name in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
        ] {
            actions.remove.push(name);
        }
        match allowed {
            Some(origin) => {
                for (name, value) in self.answer_lines(origin) {
                    match name == header::VARY {
                        true => actions.add.push((name, value)),
                        false => actions.set.push((name, value)),
                    }
                }
            }
            None => actions.add.push((header::VARY, HeaderValue::from_static("origin"))),
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(origins: &[&str], credentials: bool) -> CorsRule {
        CorsRule::of(&Cors {
            origins: origins.iter().map(|o| o.to_string()).collect(),
            methods: vec!["GET".into(), "PUT".into()],
            headers: vec!["Content-Type".into()],
            expose: vec!["x-request-id".into()],
            credentials,
            max_age: std::time::Duration::from_secs(600),
        })
    }

    #[test]
    fn origins_match_exactly_or_by_a_leading_label_wildcard() {
        let r = rule(&["https://app.example", "https://*.example.com"], true);
        assert!(r.allows(b"https://app.example") && r.allows(b"HTTPS://App.Example"));
        assert!(!r.allows(b"http://app.example") && !r.allows(b"https://app.example.evil"));
        assert!(r.allows(b"https://a.example.com") && r.allows(b"https://a.b.example.com"));
        assert!(!r.allows(b"https://example.com"), "never the bare domain");
        assert!(!r.allows(b"https://evilexample.com") && !r.allows(b"https://a.example.com.evil"));
        assert!(!r.allows(b"null"));
        assert!(rule(&["*"], false).allows(b"https://anyone.example"));
    }

    #[test]
    fn allow_and_deny_deny_wins() {
        let a = Addresses {
            allow: AddressBlocks::parse(["10.0.0.0/8"]).unwrap(),
            deny: AddressBlocks::parse(["10.1.0.0/16"]).unwrap(),
        };
        assert!(a.admit("10.2.3.4".parse().unwrap()));
        assert!(!a.admit("10.1.3.4".parse().unwrap()) && !a.admit("192.0.2.1".parse().unwrap()));
        assert!(Addresses::default().admit("192.0.2.1".parse().unwrap()));
    }
}
