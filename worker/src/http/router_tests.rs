//! Unit tests of `router.rs`.

use super::*;

fn router() -> Router {
    Router::new(
        &HeaderRouting::default(),
        &[
            RouteRule {
                host: Some("api.example.com".into()),
                strip_prefix: true,
                ..RouteRule::to("/users", "user")
            },
            RouteRule::to("/users", "user-public"),
            RouteRule::to("/static/", "static"),
        ],
    )
}

fn req(uri: &str, headers: &[(&str, &str)]) -> Result<Target, RouteError> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    router().route(&uri.parse().unwrap(), &h)
}

/// One rule sending every path to service `a`.
fn everything() -> RouteRule {
    RouteRule::to("/", "a")
}

#[test]
fn an_empty_path_with_a_query_is_forwarded_origin_form() {
    let router = Router::new(&HeaderRouting::default(), &[everything()]);
    let uri = "http://api.example?7".parse().unwrap();
    let t = router.route(&uri, &HeaderMap::new()).unwrap();
    assert_eq!(t.path.as_str(), "/?7");
}

#[test]
fn header_routing_keeps_a_services_route_rules_and_hides_canaries_and_shadows() {
    let request_headers =
        crate::config::HeaderRules { remove: vec!["x-user-id".into()], ..Default::default() };
    let canary = crate::config::Canary {
        service: "user-canary".into(),
        percent: 0.0,
        header: None,
        cookie: None,
    };
    let rules = [RouteRule {
        canary: Some(canary),
        mirror: Some(crate::config::Mirror { service: "user-shadow".into(), percent: 100.0 }),
        request_headers,
        ..RouteRule::to("/users", "user")
    }];
    let routing =
        HeaderRouting { deny_services: vec!["internal".into()], ..HeaderRouting::default() };
    let router = Router::new(&routing, &rules);
    let named = |service: &str| {
        let mut h = HeaderMap::new();
        h.insert("service_name", service.parse().unwrap());
        h.insert("api_name", "/x".parse().unwrap());
        router.route(&"/services".parse().unwrap(), &h)
    };
    let user = named("user").unwrap();
    assert_eq!(user.rule, Some(0));
    let (request, _) = router.header_actions(&user).expect("the route's rules apply");
    assert!(request.drops(b"X-User-Id"));
    assert_eq!(named("user-canary"), Err(RouteError::NoRoute));
    assert_eq!(named("user-shadow"), Err(RouteError::NoRoute), "a shadow past the route's auth");
    assert_eq!(named("internal"), Err(RouteError::NoRoute));
    assert_eq!(named("other").unwrap().rule, None);
}

#[test]
fn header_mode_takes_service_and_path_from_headers() {
    let t = req("/services", &[("service_name", "service_1"), ("api_name", "/user?id=1")]).unwrap();
    assert_eq!(t.service, "service_1");
    assert_eq!(t.path.as_str(), "/user?id=1");
    assert!(req("/services/anything", &[("service_name", "s"), ("api_name", "/")]).is_ok());
}

#[test]
fn header_mode_refuses_anything_but_an_origin_path() {
    for bad in ["http://evil.example/", "//evil.example/x", "evil.example:80", "user"] {
        let e = req("/services", &[("service_name", "s"), ("api_name", bad)]).unwrap_err();
        assert!(matches!(e, RouteError::BadRequest(_)), "{bad}: {e:?}");
    }
    assert!(matches!(req("/services", &[("api_name", "/")]), Err(RouteError::BadRequest(_))));
}

#[test]
fn rules_match_host_then_prefix_at_segment_boundaries_and_strip() {
    let t = req("/users/7?x=1", &[("host", "API.example.com:8080")]).unwrap();
    assert_eq!((t.service.as_str(), t.path.as_str()), ("user", "/7?x=1"));
    let t = req("/users", &[("host", "api.example.com")]).unwrap();
    assert_eq!(t.path.as_str(), "/");
    let t = req("/users/7", &[("host", "other")]).unwrap();
    assert_eq!((t.service.as_str(), t.path.as_str()), ("user-public", "/users/7"));
    assert_eq!(req("/usersx", &[]), Err(RouteError::NoRoute));
    assert_eq!(req("/static/a.css", &[]).unwrap().service, "static");
    assert_eq!(req("/servicesx", &[]), Err(RouteError::NoRoute));
}

#[test]
fn a_header_cannot_route_around_a_routes_auth() {
    let rule = |prefix: &str, service: &str, auth: Option<&str>| RouteRule {
        auth: auth.map(String::from),
        ..RouteRule::to(prefix, service)
    };
    // The service's first route is open, a later one guarded: by header, the guard applies.
    let rules = [rule("/open", "pay", None), rule("/pay", "pay", Some("staff"))];
    let router = Router::new(&HeaderRouting::default(), &rules);
    let mut h = HeaderMap::new();
    h.insert("service_name", "pay".parse().unwrap());
    h.insert("api_name", "/x".parse().unwrap());
    let by_header = router.route(&"/services".parse().unwrap(), &h).unwrap();
    assert_eq!(router.auth(&by_header), Some("staff"));
    let open = router.route(&"/open/x".parse().unwrap(), &HeaderMap::new()).unwrap();
    assert_eq!(router.auth(&open), None);
    let guarded = router.route(&"/pay/x".parse().unwrap(), &HeaderMap::new()).unwrap();
    assert_eq!(router.auth(&guarded), Some("staff"));
}

/// A protected `/admin` route beside a catch-all to the same service, and a protected host.
fn guarded() -> Router {
    let rule = |host: Option<&str>, prefix: &str, auth: Option<&str>| RouteRule {
        host: host.map(str::to_string),
        auth: auth.map(str::to_string),
        ..RouteRule::to(prefix, "web")
    };
    Router::new(
        &HeaderRouting::default(),
        &[
            rule(Some("admin.example"), "/", Some("idp")),
            rule(None, "/admin", Some("idp")),
            rule(None, "/", None),
        ],
    )
}

#[test]
fn every_spelling_of_a_protected_path_is_routed_under_its_auth_or_refused() {
    let router = guarded();
    let route = |target: &str, host: &str| {
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, host.parse().unwrap());
        router.route(&target.parse().unwrap(), &h)
    };
    // Read by Tomcat, Go or Python as /admin/secret: each is either refused or sent there
    // under the route's auth, never forwarded unauthenticated.
    for spelling in [
        "/admin/secret",
        "/%61dmin/secret",
        "/x/../admin/secret",
        "/./admin/secret",
        "//admin/secret",
        "/%2e/admin/secret",
        "/x/%2e%2e/admin/secret",
        "/admin;x=1/secret",
        "/public/..;x=1/admin/secret",
        "/public%2f..%2fadmin/secret",
        "/public%5C..%5Cadmin/secret",
        "/admin%2fsecret",
    ] {
        match route(spelling, "www.example") {
            Ok(t) => {
                assert_eq!(t.auth, Some(1), "{spelling} forwarded without auth as {}", t.path);
                assert!(t.path.as_str().starts_with("/admin"), "{spelling}: {}", t.path);
            }
            Err(RouteError::BadRequest(_)) => {}
            Err(e) => panic!("{spelling}: {e}"),
        }
    }
    assert_eq!(route("/%61dmin/secret?q=%61", "www.example").unwrap().path, "/admin/secret?q=%61");
    assert_eq!(route("/public/x", "www.example").unwrap().auth, None);
    assert_eq!(route("/public;v=2/x", "www.example").unwrap().path, "/public;v=2/x");
    // Host spellings: case, one trailing dot, a port.
    for host in ["admin.example", "ADMIN.example", "admin.example.", "admin.example:80"] {
        assert_eq!(route("/x", host).unwrap().auth, Some(0), "{host}");
    }
}

/// Found by the `canonical` fuzz target: a target whose query holds dots and parameters is
/// routed on its path alone, and forwarded as its canonical path plus the query untouched.
#[test]
fn a_query_is_never_read_as_part_of_the_path() {
    let input = "/x/%2e%2E?%d16min;j=1/ma";
    let rules = PathRules::default();
    let once = target::canonical(input, &rules).unwrap();
    assert_eq!(target::canonical(&once, &rules).unwrap(), once);
    let uri: Uri = input.parse().unwrap();
    let router = Router::new(&HeaderRouting::default(), &[everything()]);
    let t = router.route(&uri, &HeaderMap::new()).unwrap();
    assert_eq!(t.path.path(), target::canonical(uri.path(), &rules).unwrap());
}

#[test]
fn cookies_are_found_by_exact_name() {
    let mut h = http::HeaderMap::new();
    h.insert(http::header::COOKIE, "a=1; sid=xyz; sidx=2".parse().unwrap());
    let uri = http::Uri::from_static("/");
    let req = HyperRequest { uri: &uri, headers: &h, host: None };
    assert_eq!(cookie(&req, "sid"), Some(&b"xyz"[..]));
    assert_eq!(cookie(&req, "missing"), None);
}
