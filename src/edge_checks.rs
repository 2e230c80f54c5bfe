//! `check`'s rules for the edge sections: `[auth.NAME]` and the routes that name them,
//! routes' `mirror`, client certificates in `[[tls]]`, and `[tracing]`. (The files they name
//! are read by `config::load`, so a bad JWKS or htpasswd fails `check` and a reload.)

use worker::config::{AuthSettings, Config};

/// Every edge rule; the first broken one, in words.
pub fn check(config: &Config) -> Result<(), String> {
    for (name, auth) in &config.auth {
        check_auth(name, auth)?;
    }
    for (i, r) in config.routes.iter().enumerate() {
        let at = format!("route[{i}] ({})", r.path_prefix);
        if let Some(name) = &r.auth {
            if !config.auth.contains_key(name) {
                return Err(format!("{at}.auth: no [auth.{name}] section"));
            }
        }
        check_edge(&at, r)?;
        if let Some(m) = &r.mirror {
            if !(0.0..=100.0).contains(&m.percent) {
                return Err(format!("{at}.mirror.percent: {} is not within 0..100", m.percent));
            }
            if m.service == r.service {
                return Err(format!(
                    "{at}.mirror.service: {} is the route's own service",
                    m.service
                ));
            }
        }
    }
    for (i, t) in config.tls.iter().enumerate() {
        if i > 0 && (t.client_ca.is_some() || t.client_auth.is_some() || t.client_crl.is_some()) {
            return Err(format!(
                "tls[{i}]: client_ca, client_auth and client_crl apply to every name: set them on the first [[tls]] entry"
            ));
        }
        if t.client_ca.is_none() && (t.client_auth.is_some() || t.client_crl.is_some()) {
            return Err(format!("tls[{i}]: client_auth and client_crl need client_ca"));
        }
    }
    if let Some(t) = &config.tracing {
        if !(0.0..=1.0).contains(&t.sample) {
            return Err(format!("tracing.sample: {} is not a ratio within 0..1", t.sample));
        }
        if let Some(url) = &t.otlp_endpoint {
            let ok = url.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                return Err(format!(
                    "tracing.otlp_endpoint: {url:?} is not an http(s) URL (e.g. \"http://127.0.0.1:4318/v1/traces\")"
                ));
            }
        }
        if t.queue == 0 || t.batch == 0 {
            return Err("tracing.queue and tracing.batch: at least 1".into());
        }
    }
    Ok(())
}

/// A route's `cors`, `redirect` and `answer`.
fn check_edge(at: &str, r: &worker::config::RouteRule) -> Result<(), String> {
    if r.redirect.is_some() && r.answer.is_some() {
        return Err(format!("{at}: redirect and answer both set; a route answers one way"));
    }
    if let Some(c) = &r.cors {
        check_cors(at, c)?;
    }
    if let Some(c) = &r.compress {
        check_compress(at, c)?;
    }
    if let Some(d) = &r.redirect {
        if ![301, 302, 303, 307, 308].contains(&d.status) {
            return Err(format!(
                "{at}.redirect.status: {} is not 301, 302, 303, 307 or 308",
                d.status
            ));
        }
        let unknown =
            d.to.split('{')
                .skip(1)
                .filter_map(|p| p.split_once('}').map(|(name, _)| name))
                .find(|name| !matches!(*name, "scheme" | "host" | "port" | "path"));
        if let Some(name) = unknown {
            return Err(format!(
                "{at}.redirect.to: {{{name}}} is not a placeholder ({{scheme}}, {{host}}, {{port}}, {{path}})"
            ));
        }
        if d.to.is_empty() {
            return Err(format!("{at}.redirect.to: empty"));
        }
    }
    if let Some(a) = &r.answer {
        if !(200..=599).contains(&a.status) {
            return Err(format!("{at}.answer.status: {} is not within 200..599", a.status));
        }
        if http::HeaderValue::from_str(&a.content_type).is_err() {
            return Err(format!(
                "{at}.answer.content_type: {:?} is not a header value",
                a.content_type
            ));
        }
    }
    Ok(())
}

/// A route's `cors`: origins, methods and header names that can be what they claim.
fn check_cors(at: &str, c: &worker::config::Cors) -> Result<(), String> {
    if c.origins.is_empty() {
        return Err(format!("{at}.cors.origins: at least one origin (\"*\" for any)"));
    }
    for o in &c.origins {
        if o == "*" {
            if c.credentials {
                return Err(format!(
                    "{at}.cors: origins = [\"*\"] with credentials = true would hand any site the user's cookies; list the origins"
                ));
            }
            continue;
        }
        let plain = o.replacen("://*.", "://", 1);
        let ok = plain.parse::<http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some()
                && u.path_and_query().is_none_or(|p| p.as_str() == "/")
                && !plain.ends_with('/')
        });
        if !ok {
            return Err(format!(
                "{at}.cors.origins: {o:?} is not an origin (scheme://host[:port], e.g. \"https://app.example\" or \"https://*.example.com\")"
            ));
        }
    }
    for m in &c.methods {
        if http::Method::from_bytes(m.as_bytes()).is_err() {
            return Err(format!("{at}.cors.methods: {m:?} is not a method"));
        }
    }
    for h in c.headers.iter().chain(&c.expose) {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            return Err(format!("{at}.cors: {h:?} is not a header name"));
        }
    }
    Ok(())
}

/// A route's `compress`: codings the gateway has, media types, a level some codec takes.
fn check_compress(at: &str, c: &worker::config::Compress) -> Result<(), String> {
    if let Some(bad) = c.codings.iter().find(|t| !matches!(t.as_str(), "br" | "zstd" | "gzip")) {
        return Err(format!("{at}.compress.codings: {bad:?} is not br, zstd or gzip"));
    }
    if c.codings.is_empty() || c.types.is_empty() {
        return Err(format!("{at}.compress: types and codings need at least one entry"));
    }
    let token = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+*".contains(&b))
    };
    for t in &c.types {
        let (top, sub) = t.split_once('/').unwrap_or(("", ""));
        if !token(top) || !token(sub) || (sub.contains('*') && sub != "*") {
            return Err(format!(
                "{at}.compress.types: {t:?} is not a media type (\"application/json\", \"text/*\")"
            ));
        }
    }
    if c.level > 19 {
        return Err(format!(
            "{at}.compress.level: {} is above 19 (gzip takes 1..9, brotli 0..11, zstd 1..19)",
            c.level
        ));
    }
    Ok(())
}

fn check_auth(name: &str, auth: &AuthSettings) -> Result<(), String> {
    let at = format!("auth.{name}");
    match auth {
        AuthSettings::Jwt(j) => {
            if j.jwks.is_none() && j.jwks_url.is_none() {
                return Err(format!("{at}: set jwks (a JWKS file) or jwks_url"));
            }
            if j.algorithms.is_empty() {
                return Err(format!("{at}.algorithms: at least one"));
            }
            for a in &j.algorithms {
                if worker::auth::jwt::algorithm(a).is_none() {
                    return Err(format!(
                        "{at}.algorithms: {a:?} is not accepted (HMAC and none never are): RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
                    ));
                }
            }
            for (claim, header) in &j.claims_to_headers {
                let lower = header.to_ascii_lowercase();
                if !lower.starts_with("x-auth-")
                    || http::HeaderName::from_bytes(lower.as_bytes()).is_err()
                {
                    return Err(format!(
                        "{at}.claims_to_headers.{claim}: {header:?} must be a header name starting with X-Auth- (the only names the gateway drops from clients)"
                    ));
                }
            }
            if let Some(cookie) = &j.cookie {
                if cookie.is_empty() || cookie.contains([';', '=', ' ']) {
                    return Err(format!("{at}.cookie: {cookie:?} is not a cookie name"));
                }
            }
        }
        AuthSettings::Basic(b) => {
            if b.realm.contains(['"', '\r', '\n']) {
                return Err(format!("{at}.realm: no quotes or line breaks"));
            }
        }
        AuthSettings::Key(k) => {
            if http::HeaderName::from_bytes(k.header.as_bytes()).is_err() {
                return Err(format!("{at}.header: {:?} is not a header name", k.header));
            }
            let bad = |q: &str| q.is_empty() || q.contains(['&', '=', '#', ' ', '?']);
            if let Some(q) = k.query.as_deref().filter(|q| bad(q)) {
                return Err(format!("{at}.query: {q:?} is not a query parameter name"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn auth_names_algorithms_and_claim_headers_are_checked() {
        let base = "[auth.staff]\ntype = \"jwt\"\njwks = \"k.json\"\n";
        assert!(check(&parsed(base)).is_ok());
        let hmac = format!("{base}algorithms = [\"HS256\"]\n");
        assert!(check(&parsed(&hmac)).unwrap_err().contains("HS256"));
        let none = format!("{base}algorithms = [\"none\"]\n");
        assert!(check(&parsed(&none)).is_err());
        let header = format!("{base}[auth.staff.claims_to_headers]\nemail = \"X-Email\"\n");
        assert!(check(&parsed(&header)).unwrap_err().contains("X-Auth-"));
        let missing = "[[route]]\npath_prefix = \"/a\"\nservice = \"a\"\nauth = \"nobody\"\n";
        assert!(check(&parsed(missing)).unwrap_err().contains("[auth.nobody]"));
        let sample = "[tracing]\nsample = 2.0\n";
        assert!(check(&parsed(sample)).unwrap_err().contains("tracing.sample"));
    }
}
