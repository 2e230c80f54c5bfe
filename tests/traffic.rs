//! Traffic splits and header rules on the real binary: a canary share of a route goes to
//! another service (and every request with the canary header or cookie), changed on HUP under
//! load without a failed request; per-route request and response header edits, on the fast
//! path and on hyper's alike.

mod support;

use std::collections::BTreeMap;

use nix::sys::signal::Signal;
use support::http::{request, KeepAlive};
use support::load::{Load, Reuse, Spec};
use support::{Backend, Gateway, Toml};

fn canary_config(v1: &Backend, v2: &Backend, percent: u32) -> Toml {
    Toml::new()
        .backends("user", &[v1])
        .backends("user-v2", &[v2])
        .section(
            "[[route]]",
            &format!(
                "path_prefix = \"/\"\nservice = \"user\"\ncanary = {{ service = \"user-v2\", percent = {percent}, header = \"x-canary: 1\", cookie = \"canary=yes\" }}"
            ),
        )
}

fn shares(port: u16, n: usize, headers: &[(&str, &str)]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = request(port, "GET", "/u", headers, b"").unwrap();
        assert_eq!(r.status, 200);
        *seen.entry(r.backend()).or_insert(0) += 1;
    }
    seen
}

#[test]
fn a_canary_takes_its_share_its_header_and_cookie_and_changes_on_hup_without_a_failure() {
    let (v1, v2) = (Backend::start("v1"), Backend::start("v2"));
    let gw = Gateway::with(canary_config(&v1, &v2, 20)).workers(2).start();
    let seen = shares(gw.port, 1000, &[]);
    let canary = seen.get("v2").copied().unwrap_or(0);
    assert!((150..=250).contains(&canary), "20 % of 1000 expected, got {seen:?}");
    assert_eq!(shares(gw.port, 50, &[("x-canary", "1")]), BTreeMap::from([("v2".into(), 50)]));
    assert_eq!(
        shares(gw.port, 50, &[("cookie", "a=b; canary=yes")]),
        BTreeMap::from([("v2".into(), 50)])
    );

    // 0 % after a HUP, under load with keep-alive clients: nothing fails.
    let load = Load::start(Spec::paced(gw.port, Reuse::Unchecked));
    load.wait_for(300);
    gw.rewrite_config(&gw.config_text().replace("percent = 20", "percent = 0"));
    let before = gw.readiness();
    gw.signal(Signal::SIGHUP);
    assert_eventually!(20, gw.reloaded(before), "{}", gw.log());
    load.wait_for(300);
    let tally = load.stop();
    assert_eq!(tally.lost(), 0, "{tally}");
    assert_eq!(shares(gw.port, 200, &[]), BTreeMap::from([("v1".into(), 200)]));
    // The header still opts in.
    assert_eq!(shares(gw.port, 10, &[("x-canary", "1")]), BTreeMap::from([("v2".into(), 10)]));
}

#[test]
fn route_header_rules_edit_requests_and_responses_on_both_paths() {
    let b = Backend::start("b");
    let toml = Toml::new().backends("web", &[&b]).section(
        "[[route]]",
        "path_prefix = \"/\"\nservice = \"web\"\n\
         request_headers = { set = { x-env = \"prod\", x-forwarded-proto = \"https\" }, add = { x-tag = \"gw\" }, remove = [\"x-secret\"] }\n\
         response_headers = { set = { cache-control = \"no-store\" }, remove = [\"x-backend-internal\", \"content-type\"] }",
    );
    let gw = Gateway::with(toml).workers(1).start();
    let check = |r: &support::http::Response| {
        assert_eq!(r.status, 200, "{}", r.body_text());
        let seen = &r.json()["headers"];
        assert_eq!(seen["x-env"], "prod", "{seen}");
        assert_eq!(seen["x-forwarded-proto"], "https", "set replaces the gateway's own: {seen}");
        assert_eq!(seen["x-tag"], "gw", "{seen}");
        assert!(seen.get("x-secret").is_none(), "{seen}");
        assert_eq!(seen["x-keep"], "1");
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.header("content-type"), None, "{:?}", r.headers);
    };
    let headers = [("x-secret", "s3cret"), ("x-env", "dev"), ("x-keep", "1")];
    // The fast path (keep-alive, no body)…
    let mut c = KeepAlive::connect(gw.port);
    check(&c.request("GET", "/a", &headers));
    check(&c.request("GET", "/b", &headers));
    // …and hyper's (a body).
    check(&request(gw.port, "POST", "/c", &headers, b"payload").unwrap());
}

#[test]
fn a_hung_instance_costs_no_504_when_slow_after_reaches_request_timeout() {
    // slow_after keeps its default (5 s), at or beyond request_timeout: an idempotent request
    // stuck on the hung instance must still leave room to be answered by the other one.
    let (good, hung) = (Backend::start("good"), support::backend::Hung::start());
    let toml = Toml::new()
        .service("web", &[good.address(), hung.address()], "")
        .route_all("web")
        .proxy("request_timeout = \"2s\"");
    let gw = Gateway::with(toml).workers(1).start();
    let statuses: Vec<u16> = (0..6)
        .map(|i| request(gw.port, "GET", &format!("/{i}"), &[], b"").unwrap().status)
        .collect();
    assert_eq!(statuses, [200; 6], "504s: the retry did not fit in the deadline");
    assert_eq!(good.requests_to("GET /"), 6);
}
