//! Mirroring and tracing on the real binary.
//!
//! Mirroring: every copy reaches the shadow service (bodies too), a share is honoured, and a
//! shadow that hangs or is down never delays or fails a client request, with copies bounded
//! (`mirror_max_in_flight`) and counted. Tracing: the instance gets the client's trace id with
//! the gateway's span as parent (W3C `traceparent`, B3 on input), a small OTLP/HTTP collector
//! in the test receives that span, `sample` is followed, and a collector that is down costs
//! dropped spans, counted, and no failed request.

mod support;

use support::backend::Hung;
use support::http::{h2_upload, request};
use support::otlp::Collector;
use support::{free_port, Backend, Gateway, Toml};

fn mirrored(primary: &Backend, shadow: &str, mirror: &str, proxy: &str) -> Gateway {
    let toml = Toml::new()
        .backends("web", &[primary])
        .service("shadow", &[shadow.to_string()], "")
        .section(
            "[[route]]",
            &format!("path_prefix = \"/m\"\nservice = \"web\"\nmirror = {{ service = \"shadow\", {mirror} }}"),
        )
        .route_all("web")
        .proxy(proxy);
    Gateway::with(toml).workers(2).admin().start()
}

#[test]
fn every_copy_reaches_the_shadow_with_its_body_and_the_share_is_honoured() {
    let (primary, shadow) = (Backend::start("primary"), Backend::start("shadow"));
    let gw = mirrored(&primary, &shadow.address(), "percent = 100", "");
    for i in 0..30 {
        let r = request(gw.port, "GET", &format!("/m/{i}"), &[], b"").unwrap();
        assert_eq!((r.status, r.backend()), (200, "primary".to_string()));
    }
    let r =
        request(gw.port, "POST", "/m/post", &[("content-type", "text/plain")], b"hello").unwrap();
    assert_eq!(r.status, 200);
    assert_eventually!(
        10,
        shadow.requests_to("GET /m/") == 30,
        "copies: {}",
        shadow.requests_to("GET /m/")
    );
    assert_eventually!(10, shadow.requests_to("POST /m/post") == 1, "the POST's copy");
    let head =
        shadow.heads.lock().unwrap().iter().find(|h| h.starts_with("POST")).cloned().unwrap();
    assert!(head.to_ascii_lowercase().contains("content-length: 5"), "{head}");
    assert!(head.contains(&format!("host: {}", shadow.address())), "{head}");
    assert_eq!(primary.requests_to("GET /m/"), 30);
    assert_eq!(request(gw.port, "GET", "/other", &[], b"").unwrap().status, 200);
    assert_eventually!(
        5,
        gw.metric("zkgate_mirror_requests_total", "outcome=\"sent\"") == 31,
        "counted"
    );
    assert_eq!(shadow.requests_to("GET /other"), 0, "a route without mirror is not copied");

    // A share: 10 % of 400 requests (binomial: 40 expected, far outside 10..90 is a bug).
    let (primary, shadow) = (Backend::start("primary"), Backend::start("shadow"));
    let gw = mirrored(&primary, &shadow.address(), "percent = 10", "");
    for _ in 0..400 {
        assert_eq!(request(gw.port, "GET", "/m", &[], b"").unwrap().status, 200);
    }
    let sent = || gw.metric("zkgate_mirror_requests_total", "outcome=\"sent\"") as usize;
    assert_eventually!(5, sent() == shadow.requests_to("GET /m"), "every sampled copy arrives");
    let copies = shadow.requests_to("GET /m");
    assert!((10..=90).contains(&copies), "{copies} copies of 400 at 10 %");
}

#[test]
fn a_hung_shadow_delays_nothing_and_copies_stay_bounded() {
    let primary = Backend::start("primary");
    let hung = Hung::start();
    let proxy = "mirror_max_in_flight = 4\nrequest_timeout = \"4s\"";
    let gw = mirrored(&primary, &hung.address(), "percent = 100", proxy);
    for i in 0..40 {
        let r = request(gw.port, "GET", &format!("/m/{i}"), &[], b"").unwrap();
        assert_eq!(r.status, 200);
    }
    // Every client request was answered while the copies still hang (none has failed yet:
    // they fail at request_timeout), and only 4 per worker were ever sent.
    let failed = gw.metric("zkgate_mirror_requests_total", "outcome=\"failed\"");
    let skipped = gw.metric("zkgate_mirror_requests_total", "outcome=\"skipped\"");
    assert_eq!(failed, 0, "a copy timed out before the clients were done: they waited for it");
    assert!(skipped >= 40 - 8, "at most 4 copies in flight per worker: {skipped} skipped of 40");
    assert_eventually!(
        15,
        gw.metric("zkgate_mirror_requests_total", "outcome=\"failed\"") == 40 - skipped,
        "the hung copies end at request_timeout"
    );
    assert_eq!(primary.requests_to("GET /m/"), 40);
}

/// An HTTP/2 request's body streams to the primary; its copy, the same bytes, leaves once the
/// body ended within `mirror_body_bytes`, and a larger body is counted skipped.
#[test]
fn http2_bodies_are_mirrored_once_whole_and_larger_ones_skipped() {
    let (primary, shadow) = (Backend::start("primary"), Backend::start("shadow"));
    let gw = mirrored(&primary, &shadow.address(), "percent = 100", "mirror_body_bytes = 4096");
    // Streamed in 1000-byte frames, no content-length: the size is known only at the end.
    let post = |path: &str, chunks: usize| {
        let frames = (0..chunks).map(|i| vec![b'a' + i as u8; 1000]).collect();
        let (status, body) = h2_upload(gw.port, "POST", path, frames);
        (status, serde_json::from_slice::<serde_json::Value>(&body).unwrap())
    };
    let (status, echoed) = post("/m/h2", 3);
    assert_eq!((status, echoed["received"].as_u64()), (200, Some(3000)));
    assert_eventually!(10, shadow.requests_to("POST /m/h2") == 1, "no copy of the h2 body");
    let head = shadow.heads.lock().unwrap().iter().find(|h| h.starts_with("POST")).cloned();
    let head = head.unwrap().to_ascii_lowercase();
    assert!(head.contains("content-length: 3000\r\n"), "the whole body, framed: {head}");
    assert_eventually!(
        5,
        gw.metric("zkgate_mirror_requests_total", "outcome=\"sent\"") == 1,
        "counted"
    );

    // Larger than mirror_body_bytes: the primary gets it all, the shadow nothing.
    let (status, echoed) = post("/m/big", 6);
    assert_eq!((status, echoed["received"].as_u64()), (200, Some(6000)));
    assert_eventually!(
        5,
        gw.metric("zkgate_mirror_requests_total", "outcome=\"skipped\"") == 1,
        "not counted skipped"
    );
    assert_eq!(shadow.requests_to("POST /m/big"), 0);
}

#[test]
fn a_dead_shadow_fails_no_client_request() {
    let primary = Backend::start("primary");
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = mirrored(&primary, &dead, "percent = 100", "");
    for i in 0..20 {
        assert_eq!(request(gw.port, "GET", &format!("/m/{i}"), &[], b"").unwrap().status, 200);
    }
    assert_eventually!(
        10,
        gw.metric("zkgate_mirror_requests_total", "outcome=\"failed\"") == 20,
        "every copy to the dead shadow is counted failed"
    );
}

/// A small OTLP/HTTP collector: answers 200 to every POST and keeps the spans it decoded as
/// (trace id, span id, parent span id, attributes as text).
fn traced(backend: &Backend, tracing: &str) -> Gateway {
    let toml = Toml::new()
        .backends("web", &[backend])
        .section("[[route]]", "path_prefix = \"/api\"\nservice = \"web\"")
        .section("[tracing]", tracing);
    Gateway::with(toml).workers(2).admin().start()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[test]
fn the_instance_continues_the_clients_trace_and_the_collector_gets_the_gateways_span() {
    let backend = Backend::start("web");
    let collector = Collector::start();
    let gw = traced(
        &backend,
        &format!("otlp_endpoint = {:?}\nflush_every = \"100ms\"", collector.endpoint()),
    );
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let r =
        request(gw.port, "GET", "/api/x", &[("traceparent", &tp), ("tracestate", "vendor=1")], b"")
            .unwrap();
    assert_eq!(r.status, 200);
    let seen = r.json()["headers"].clone();
    let forwarded = seen["traceparent"].as_str().unwrap().to_string();
    let parts: Vec<&str> = forwarded.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE, "01"), "{forwarded}");
    assert_ne!(parts[2], PARENT, "the instance's parent is the gateway's span");
    assert_eq!(seen["tracestate"], "vendor=1");
    let head = backend.heads.lock().unwrap().last().cloned().unwrap();
    assert_eq!(head.matches("traceparent").count(), 1, "{head}");
    assert_eventually!(10, !collector.spans.lock().unwrap().is_empty(), "no span exported");
    let spans = collector.spans.lock().unwrap().clone();
    let (trace, span, parent, attrs) = &spans[0];
    assert_eq!((trace.as_str(), span.as_str(), parent.as_str()), (TRACE, parts[2], PARENT));
    for want in [
        "zkgate.service=web",
        "http.response.status_code=200",
        "http.route=/api",
        "http.request.method=GET",
    ] {
        assert!(attrs.contains(want), "{want} in {attrs}");
    }
    assert!(attrs.contains(&format!("server.address={}", backend.address())), "{attrs}");

    // B3 on input: the same trace continues as traceparent.
    let b3 = format!("{TRACE}-{PARENT}-1");
    let r = request(gw.port, "GET", "/api/b3", &[("b3", &b3)], b"").unwrap();
    let forwarded = r.json()["headers"]["traceparent"].as_str().unwrap().to_string();
    assert!(forwarded.starts_with(&format!("00-{TRACE}-")), "{forwarded}");
    // No context: a new trace, sampled (sample defaults to 1).
    let r = request(gw.port, "GET", "/api/new", &[], b"").unwrap();
    let forwarded = r.json()["headers"]["traceparent"].as_str().unwrap().to_string();
    assert!(
        forwarded.starts_with("00-") && forwarded.ends_with("-01") && !forwarded.contains(TRACE)
    );
    assert_eventually!(10, collector.spans.lock().unwrap().len() == 3, "three spans");
    assert_eventually!(
        5,
        gw.metric("zkgate_trace_spans_total", "outcome=\"exported\"") == 3,
        "counted"
    );
}

#[test]
fn unsampled_requests_carry_context_but_export_nothing() {
    let backend = Backend::start("web");
    let collector = Collector::start();
    let tracing = format!(
        "otlp_endpoint = {:?}\nsample = 0.0\nflush_every = \"100ms\"",
        collector.endpoint()
    );
    let gw = traced(&backend, &tracing);
    for _ in 0..10 {
        let r = request(gw.port, "GET", "/api/x", &[], b"").unwrap();
        let forwarded = r.json()["headers"]["traceparent"].as_str().unwrap().to_string();
        assert!(forwarded.ends_with("-00"), "unsampled: {forwarded}");
    }
    // A client's sampled parent is followed whatever `sample` says.
    let tp = format!("00-{TRACE}-{PARENT}-01");
    request(gw.port, "GET", "/api/x", &[("traceparent", &tp)], b"").unwrap();
    assert_eventually!(10, collector.spans.lock().unwrap().len() == 1, "the sampled span");
    assert_eq!(gw.metric("zkgate_trace_spans_total", "outcome=\"exported\""), 1);
    assert_eq!(collector.spans.lock().unwrap()[0].0, TRACE);
}

#[test]
fn a_collector_that_is_down_costs_dropped_spans_not_requests() {
    let backend = Backend::start("web");
    let dead = format!("http://127.0.0.1:{}/v1/traces", free_port());
    let gw =
        traced(&backend, &format!("otlp_endpoint = {dead:?}\nqueue = 8\nflush_every = \"50ms\""));
    for _ in 0..50 {
        assert_eq!(request(gw.port, "GET", "/api/x", &[], b"").unwrap().status, 200);
    }
    assert_eventually!(
        10,
        gw.metric("zkgate_trace_spans_total", "outcome=\"dropped\"") == 50,
        "every span dropped: {}",
        gw.metric("zkgate_trace_spans_total", "outcome=\"dropped\"")
    );
    assert_eq!(gw.metric("zkgate_trace_spans_total", "outcome=\"exported\""), 0);
    assert_eq!(backend.requests_to("GET /api/x"), 50);
}

#[test]
fn edge_metrics_count_durations_bytes_instances_and_listeners() {
    let (good, bad) = (Backend::start("good"), Backend::start("bad"));
    bad.failing.store(true, std::sync::atomic::Ordering::Relaxed);
    let toml = Toml::new()
        .backends("web", &[&good])
        .backends("flaky", &[&bad])
        .section("[[route]]", "path_prefix = \"/flaky\"\nservice = \"flaky\"")
        .route_all("web")
        .section("[proxy.outlier]", "consecutive_failures = 0");
    let gw = Gateway::with(toml).workers(2).admin().start();
    for _ in 0..10 {
        assert_eq!(request(gw.port, "POST", "/w", &[], b"0123456789").unwrap().status, 200);
    }
    for _ in 0..4 {
        assert_eq!(request(gw.port, "GET", "/flaky", &[], b"").unwrap().status, 503);
    }
    let web = "service=\"web\"";
    assert_eq!(gw.metric("zkgate_request_duration_seconds_count", web), 10);
    assert_eq!(gw.metric("zkgate_request_bytes_total", web), 100);
    assert!(gw.metric("zkgate_response_bytes_total", web) > 100);
    let good_instance = format!("instance=\"{}\"", good.address());
    assert_eq!(gw.metric("zkgate_instance_requests_total", &good_instance), 10);
    assert_eq!(gw.metric("zkgate_instance_errors_total", &good_instance), 0);
    let bad_instance = format!("instance=\"{}\"", bad.address());
    assert_eq!(gw.metric("zkgate_instance_errors_total", &bad_instance), 4);
    // A connection held open shows on its listener.
    let held = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    let listener = format!("listener=\"127.0.0.1:{}\"", gw.port);
    assert_eventually!(
        5,
        gw.metric("zkgate_listener_connections", &listener) == 1,
        "open connection not counted"
    );
    drop(held);
    assert_eventually!(
        5,
        gw.metric("zkgate_listener_connections", &listener) == 0,
        "closed connection still counted"
    );
}
