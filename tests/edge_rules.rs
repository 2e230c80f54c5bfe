//! What a route decides at the edge, the same on every side (HTTP/1.1 plain, HTTP/1.1 over TLS,
//! HTTP/2): `allow`/`deny` on the client's real address, redirects, fixed answers, CORS
//! preflights and the lines CORS adds to answers, and `[server] https_redirect`. Each case
//! asserts what the client got and that the instance received nothing it should not have.

mod support;

use std::sync::atomic::Ordering;

use support::sides::{Sides, WAYS};
use support::{write_file, Backend, Toml};

/// Routes of every kind on one service, `web`, and a service-level `deny`.
fn edge_gateway(b: &Backend, dir: &std::path::Path) -> Sides {
    let page = write_file(dir, "maint.html", "<h1>back soon</h1>\n");
    let toml = Toml::new()
        .service("web", &[b.address()], "")
        .service("closed", &[b.address()], "deny = [\"127.0.0.0/8\"]")
        .section(
            "[[route]]",
            "path_prefix = \"/inner\"\nservice = \"web\"\nallow = [\"10.0.0.0/8\"]",
        )
        .section(
            "[[route]]",
            "path_prefix = \"/blocked\"\nservice = \"web\"\ndeny = [\"127.0.0.1\"]",
        )
        .section("[[route]]", "path_prefix = \"/closed\"\nservice = \"closed\"")
        .section(
            "[[route]]",
            "path_prefix = \"/old\"\nservice = \"web\"\nredirect = { to = \"https://{host}/new{path}\", status = 308 }",
        )
        .section(
            "[[route]]",
            &format!(
                "path_prefix = \"/maint\"\nservice = \"web\"\nanswer = {{ status = 503, body_file = {:?}, content_type = \"text/html\" }}",
                page
            ),
        )
        .section(
            "[[route]]",
            "path_prefix = \"/api\"\nservice = \"web\"\n\
             cors = { origins = [\"https://app.example\", \"https://*.apps.example\"], methods = [\"GET\", \"PUT\"], \
             headers = [\"content-type\", \"x-token\"], expose = [\"x-request-id\"], credentials = true, max_age = \"10m\" }",
        )
        .route_all("web");
    Sides::start(toml, "")
}

#[test]
fn allow_and_deny_refuse_by_the_clients_address_on_every_side() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let sides = edge_gateway(&b, dir.path());
    for way in WAYS {
        for path in ["/inner/x", "/blocked/x", "/closed/x"] {
            let r = sides.send(way, "GET", path, &[]);
            assert_eq!(r.status, 403, "{way} {path}: {}", r.body_text());
            assert_eq!(r.json()["error"], "client address not allowed", "{way} {path}");
            assert!(r.json()["service"].is_string(), "{way} {path}: {}", r.body_text());
        }
        // A client's own X-Forwarded-For is not believed from an untrusted peer.
        let r = sides.send(way, "GET", "/inner/x", &[("x-forwarded-for", "10.1.1.1")]);
        assert_eq!(r.status, 403, "{way}: a spoofed address");
        assert_eq!(sides.send(way, "GET", "/open", &[]).status, 200, "{way}");
    }
    assert_eq!(
        b.requests_to("GET /inner") + b.requests_to("GET /blocked") + b.requests_to("GET /closed"),
        0
    );
    let refused = sides.gw.metric("zkgate_ip_refusals_total", "service=\"web\"");
    assert_eq!(refused, 9, "route-level refusals counted host-wide, the spoofed ones too");
    assert_eq!(sides.gw.metric("zkgate_ip_refusals_total", "service=\"closed\""), 3);
}

#[test]
fn a_trusted_proxys_forwarded_address_is_the_one_allow_judges() {
    let b = Backend::start("b");
    let toml = Toml::new()
        .backends("web", &[&b])
        .proxy("trusted_proxies = [\"127.0.0.0/8\"]")
        .section(
            "[[route]]",
            "path_prefix = \"/inner\"\nservice = \"web\"\nallow = [\"10.0.0.0/8\"]\ndeny = [\"10.9.0.0/16\"]",
        );
    let sides = Sides::start(toml, "");
    for way in WAYS {
        let inside = [("x-forwarded-for", "10.1.1.1")];
        assert_eq!(sides.send(way, "GET", "/inner/a", &inside).status, 200, "{way}");
        // The last address no trusted proxy wrote is the client: 10.9.9.9, denied.
        let chain = [("x-forwarded-for", "10.1.1.1, 10.9.9.9, 127.0.0.5")];
        assert_eq!(sides.send(way, "GET", "/inner/b", &chain).status, 403, "{way}");
        assert_eq!(sides.send(way, "GET", "/inner/c", &[]).status, 403, "{way}: the peer itself");
    }
    assert_eq!(b.requests_to("GET /inner/a"), 3);
    assert_eq!(b.requests_to("GET /inner/b") + b.requests_to("GET /inner/c"), 0);
}

#[test]
fn redirects_and_fixed_answers_never_reach_the_instance() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let sides = edge_gateway(&b, dir.path());
    for way in WAYS {
        let r = sides.send(way, "GET", "/old/page?x=1", &[]);
        assert_eq!(r.status, 308, "{way}");
        assert_eq!(r.header("location"), Some("https://api.example/new/old/page?x=1"), "{way}");
        let r = sides.send(way, "GET", "/maint/anything", &[]);
        assert_eq!(r.status, 503, "{way}");
        assert_eq!(r.header("content-type"), Some("text/html"), "{way}");
        assert_eq!(r.body_text(), "<h1>back soon</h1>\n", "{way}");
    }
    assert_eq!(b.hits.load(Ordering::Relaxed), 0, "the instance received nothing");
    assert_eq!(sides.gw.metric("zkgate_edge_answers_total", "outcome=\"redirect\""), 3);
    // `/explain` says what the edge decides for a request.
    let why = sides.gw.admin_get("/explain?host=api.example&path=/old/p%3Fq%3D1").json();
    assert_eq!(why["route"]["edge"]["answers_itself"]["status"], 308, "{why}");
    assert_eq!(
        why["route"]["edge"]["answers_itself"]["location"],
        "https://api.example/new/old/p?q=1"
    );
    let why = sides.gw.admin_get("/explain?host=api.example&path=/inner/x&client=10.1.2.3").json();
    assert_eq!(why["route"]["edge"]["client_allowed"], true, "{why}");
    assert_eq!(why["route"]["edge"]["allow"][0], "10.0.0.0/8", "{why}");
    let why = sides
        .gw
        .admin_get("/explain?host=api.example&path=/api/x&header=origin:https://a.apps.example")
        .json();
    assert_eq!(why["route"]["edge"]["cors"]["origin_allowed"], true, "{why}");
    assert_eq!(sides.gw.metric("zkgate_edge_answers_total", "outcome=\"answer\""), 3);
}

#[test]
fn cors_preflights_are_answered_and_answers_carry_the_routes_cors_lines() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let sides = edge_gateway(&b, dir.path());
    let preflight = |origin: &str, method: &str, headers: &str| {
        vec![
            ("origin", origin.to_string()),
            ("access-control-request-method", method.to_string()),
            ("access-control-request-headers", headers.to_string()),
        ]
    };
    for way in WAYS {
        let ask = preflight("https://app.example", "PUT", "Content-Type, X-Token");
        let ask: Vec<(&str, &str)> = ask.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = sides.send(way, "OPTIONS", "/api/items", &ask);
        assert_eq!(r.status, 204, "{way}");
        assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"), "{way}");
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"), "{way}");
        assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"), "{way}");
        assert_eq!(r.header("access-control-allow-headers"), Some("content-type, x-token"));
        assert_eq!(r.header("access-control-max-age"), Some("600"), "{way}");
        assert_eq!(r.header("vary"), Some("origin"), "{way}");
        for (origin, method, headers) in [
            ("https://evil.example", "GET", ""),
            ("https://app.example", "DELETE", ""),
            ("https://app.example", "GET", "x-other"),
            ("https://apps.example", "GET", ""),
        ] {
            let ask = preflight(origin, method, headers);
            let ask: Vec<(&str, &str)> = ask.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let r = sides.send(way, "OPTIONS", "/api/items", &ask);
            assert_eq!(r.status, 403, "{way} {origin} {method} {headers}");
            assert_eq!(r.header("access-control-allow-origin"), None, "{way}");
        }
        // An actual request from an allowed origin (a wildcard one): forwarded, its answer
        // carrying the gateway's lines.
        let r = sides.send(way, "GET", "/api/items", &[("origin", "https://x.apps.example")]);
        assert_eq!(r.status, 200, "{way}");
        assert_eq!(r.header("access-control-allow-origin"), Some("https://x.apps.example"));
        assert_eq!(r.header("access-control-expose-headers"), Some("x-request-id"), "{way}");
        let r = sides.send(way, "GET", "/api/items", &[("origin", "https://evil.example")]);
        assert_eq!(r.status, 200, "{way}: the instance answers; the browser refuses to read it");
        assert_eq!(r.header("access-control-allow-origin"), None, "{way}");
        assert_eq!(r.header("vary"), Some("origin"), "{way}");
    }
    assert_eq!(
        b.requests_to("GET /api/items") + b.requests_to("OPTIONS /api/items"),
        6,
        "preflights never reach the instance"
    );
    assert_eq!(sides.gw.metric("zkgate_edge_answers_total", "outcome=\"preflight\""), 15);
}

#[test]
fn https_redirect_sends_plain_requests_to_the_tls_listener() {
    let b = Backend::start("b");
    let toml = Toml::new().backends("web", &[&b]).route_all("web");
    let sides = Sides::start(toml, "https_redirect = true");
    let r = sides.send("h1", "GET", "/a/b?c=d", &[]);
    assert_eq!(r.status, 301);
    let want = format!("https://api.example:{}/a/b?c=d", sides.tls_port);
    assert_eq!(r.header("location"), Some(want.as_str()));
    assert_eq!(b.hits.load(Ordering::Relaxed), 0);
    for way in ["tls", "h2"] {
        assert_eq!(sides.send(way, "GET", "/a/b", &[]).status, 200, "{way}: served");
    }
}

/// A page on one origin calling the gateway on another with `fetch` and credentials, in
/// Debian's headless Chromium: the call to a route that allows the page's origin goes through
/// (preflight, then the PUT); the one to a route that does not is refused by the browser and
/// never reaches the instance.
#[test]
fn a_browser_on_another_origin_calls_the_route_that_allows_it_and_not_the_other() {
    let b = Backend::start("b");
    let port = support::free_port();
    let page = format!(
        r#"<html><body><script>
        const call = (path, attr) => fetch("http://localhost:{port}" + path, {{
            method: "PUT", credentials: "include",
            headers: {{"Content-Type": "application/json", "X-Token": "t"}}, body: "{{}}"
        }}).then(r => r.json()).then(j => document.body.setAttribute(attr, "ok " + j.backend))
          .catch(e => document.body.setAttribute(attr, "blocked"));
        call("/api/data", "data-allowed"); call("/other/data", "data-refused");
        </script></body></html>"#
    );
    let toml = Toml::new()
        .backends("web", &[&b])
        .section(
            "[[route]]",
            &format!(
                "path_prefix = \"/page\"\nservice = \"web\"\nanswer = {{ body = {page:?}, content_type = \"text/html\" }}"
            ),
        )
        .section(
            "[[route]]",
            &format!(
                "path_prefix = \"/api\"\nservice = \"web\"\ncors = {{ origins = [\"http://127.0.0.1:{port}\"], methods = [\"GET\", \"PUT\"], headers = [\"content-type\", \"x-token\"], credentials = true }}"
            ),
        )
        .section(
            "[[route]]",
            "path_prefix = \"/other\"\nservice = \"web\"\ncors = { origins = [\"https://elsewhere.example\"], methods = [\"PUT\"], headers = [\"content-type\", \"x-token\"], credentials = true }",
        );
    let gw = support::Gateway::with(toml).workers(1).port(port).start();
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .arg("--disable-background-networking")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--virtual-time-budget=10000")
        .arg("--dump-dom")
        .arg(format!("http://127.0.0.1:{}/page", gw.port))
        .output()
        .expect("chromium (Debian package chromium; scripts/test installs it)");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("data-allowed=\"ok b\""), "{dom}");
    assert!(dom.contains("data-refused=\"blocked\""), "{dom}");
    assert_eq!(b.requests_to("PUT /api/data"), 1, "the allowed call reached the instance");
    assert_eq!(b.requests_to("PUT /other") + b.requests_to("OPTIONS"), 0, "nothing else did");
}
