//! Request targets and routing headers as a hostile client sends them: the router never
//! panics, and any path it forwards is origin-form (starts with '/'); header routing never
//! forwards a network-path reference ('//host'). The upstream URI is built from the instance's
//! address and this path, so no request can steer the gateway to a host of its choosing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use worker::config::{HeaderRouting, RouteRule};
use worker::http::router::Router;

fuzz_target!(|input: &[u8]| {
    let mut parts = input.splitn(3, |b| *b == b'\n');
    let (Some(target), Some(service), Some(api)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let Ok(uri) = http::Uri::try_from(target) else { return };
    let mut headers = http::HeaderMap::new();
    for (name, value) in [("service_name", service), ("api_name", api), ("host", service)] {
        if let Ok(v) = http::HeaderValue::from_bytes(value) {
            headers.insert(name, v);
        }
    }
    let rules = [
        RouteRule {
            strip_prefix: true,
            auth: Some("staff".into()),
            ..RouteRule::to("/users", "u")
        },
        RouteRule { host: Some("api.example".into()), ..RouteRule::to("/", "a") },
    ];
    let router = Router::new(&HeaderRouting::default(), &rules);
    if let Ok(target) = router.route(&uri, &headers) {
        let path = target.path.as_str();
        if uri.path().starts_with('/') {
            assert!(path.starts_with('/'), "forwarded {path:?} for {uri}");
        }
        if target.service.as_bytes() == service && uri.path().starts_with("/services") {
            assert!(!path.starts_with("//"), "header routing forwarded {path:?}");
        }
    }
});
