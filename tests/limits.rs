//! Traffic limits on the real binary with 2 workers: a `[[rate_limit]]` is exact for the host
//! (a client at 3× the rate gets the rate, not once per worker), answers 429 with
//! `Retry-After`; `max_requests` refuses at once beyond its count across workers; both are
//! visible in `/metrics`.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::http::request;
use support::{Backend, Gateway, Toml};

#[test]
fn a_rate_limit_holds_for_the_host_whatever_worker_a_request_lands_on() {
    let b = Backend::start("b");
    let toml =
        Toml::new().backends("web", &[&b]).route_all("web").proxy("debug_headers = true").section(
            "[[rate_limit]]",
            "service = \"web\"\nper = \"global\"\nrate = \"20/s\"\nburst = 5",
        );
    let gw = Gateway::with(toml).workers(2).admin().start();
    // 60 requests per second (3× the rate) for 3 s, each on a fresh connection so the kernel
    // spreads them over both workers.
    let (rate, secs) = (60u32, 3u32);
    let started = Instant::now();
    let (mut ok, mut limited, mut workers) = (0u32, 0u32, BTreeSet::new());
    for i in 0..rate * secs {
        let due = started + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let r = request(gw.port, "GET", "/", &[], b"").unwrap();
        match r.status {
            200 => {
                ok += 1;
                workers.insert(r.header("x-zkgate-worker").unwrap().to_string());
            }
            429 => {
                limited += 1;
                let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                assert!(retry >= 1);
            }
            other => panic!("status {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // burst + rate × elapsed, within 10 %; per-worker buckets would admit about twice that.
    let expected = 5.0 + 20.0 * elapsed;
    eprintln!(
        "rate limit: {ok} admitted, {limited} refused in {elapsed:.2}s (expected ~{expected:.0})"
    );
    assert!(
        (f64::from(ok) - expected).abs() <= expected * 0.1,
        "{ok} admitted, expected ~{expected:.0}"
    );
    assert_eq!(workers.len(), 2, "both workers admitted requests: {workers:?}");
    assert_eq!(gw.metric("zkgate_rate_limited_total", "service=\"web\""), u64::from(limited));
}

#[test]
fn per_client_buckets_are_separate() {
    let b = Backend::start("b");
    let toml = Toml::new().backends("web", &[&b]).route_all("web").section(
        "[[rate_limit]]",
        "service = \"web\"\nper = \"header:x-api-key\"\nrate = \"1/m\"\nburst = 2",
    );
    let gw = Gateway::with(toml).workers(2).start();
    let call = |key: &str| request(gw.port, "GET", "/", &[("x-api-key", key)], b"").unwrap().status;
    assert_eq!([call("a"), call("a"), call("a")], [200, 200, 429]);
    assert_eq!([call("b"), call("b"), call("b")], [200, 200, 429], "another key, its own bucket");
}

#[test]
fn max_requests_refuses_at_once_beyond_its_count_across_workers() {
    let b = Backend::start("b");
    let toml = Toml::new()
        .section("[services.web]", &format!("instances = [\"{}\"]\nmax_requests = 2", b.address()))
        .route_all("web");
    let gw = Gateway::with(toml).workers(2).admin().start();
    let port = gw.port;
    // 6 slow requests at once, on 6 connections spread over both workers.
    let calls: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                let started = Instant::now();
                let status = request(port, "GET", "/slow/1500", &[], b"").unwrap().status;
                (status, started.elapsed())
            })
        })
        .collect();
    let results: Vec<(u16, Duration)> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!((ok, refused.len()), (2, 4), "{results:?}");
    assert!(
        refused.iter().all(|(_, t)| *t < Duration::from_millis(1000)),
        "refusals wait: {results:?}"
    );
    assert_eq!(b.peak.load(std::sync::atomic::Ordering::SeqCst), 2, "the instance never had more");
    assert_eq!(gw.metric("zkgate_overloaded_total", "service=\"web\""), 4);
    // Released: the next one passes.
    assert_eq!(request(port, "GET", "/", &[], b"").unwrap().status, 200);
}

#[test]
fn keys_crafted_to_collide_under_the_old_hash_keep_their_own_buckets() {
    // Nine header values whose old hashes (the unkeyed hash_key the buckets used) all start at
    // the same bucket: eight places are
    // probed, so the ninth pushed the oldest out and every key started again from a full burst.
    let mut keys = Vec::new();
    let mut i = 0u64;
    while keys.len() < 9 {
        let k = format!("key-{i}");
        if worker::balance::hash_key(k.as_bytes()) % 4096 == 7 {
            keys.push(k);
        }
        i += 1;
    }
    let b = Backend::start("b");
    let toml = Toml::new().backends("web", &[&b]).route_all("web").section(
        "[[rate_limit]]",
        "service = \"web\"\nper = \"header:x-api-key\"\nrate = \"1/m\"\nburst = 1",
    );
    let gw = Gateway::with(toml).workers(2).start();
    let mut admitted = 0;
    for _ in 0..5 {
        for k in &keys {
            if request(gw.port, "GET", "/", &[("x-api-key", k)], b"").unwrap().status == 200 {
                admitted += 1;
            }
        }
    }
    assert_eq!(admitted, 9, "one request per key per minute (the unkeyed hash let 45 of 45 in)");
}

#[test]
fn a_header_limit_cannot_be_dodged_with_several_lines_or_a_canary() {
    let (b, canary) = (Backend::start("b"), Backend::start("canary"));
    let toml = Toml::new()
        .backends("web", &[&b])
        .backends("web-canary", &[&canary])
        .section(
            "[[route]]",
            "path_prefix = \"/\"\nservice = \"web\"\ncanary = { service = \"web-canary\", header = \"x-canary: 1\" }",
        )
        .section(
            "[[rate_limit]]",
            "service = \"web\"\nper = \"header:x-api-key\"\nrate = \"1/m\"\nburst = 1",
        );
    let gw = Gateway::with(toml).workers(2).start();
    // A fresh first line per request, the real key after it: refused, never a fresh bucket.
    for i in 0..3 {
        let r = support::http::raw(
            gw.port,
            format!("GET / HTTP/1.1\r\nhost: x\r\nx-api-key: fresh-{i}\r\nx-api-key: real\r\nconnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(support::http::status_of(&r), 400, "{r}");
    }
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
    // The canary has no limit of its own: it shares the primary's bucket.
    let call = |canary: bool| {
        let mut h = vec![("x-api-key", "k")];
        if canary {
            h.push(("x-canary", "1"));
        }
        request(gw.port, "GET", "/", &h, b"").unwrap()
    };
    let first = call(true);
    assert_eq!((first.status, first.backend()), (200, "canary".to_string()));
    assert_eq!(call(true).status, 429, "the canary escaped the primary's limit");
    assert_eq!(call(false).status, 429, "the canary's request spent the primary's bucket");
}

#[test]
fn services_never_share_a_max_requests_count_whatever_the_table_holds() {
    // More services touched first than the host's name table has rows (the last is `_other`);
    // the two limited services were given rows at start, so each keeps a count of its own.
    let fillers = worker::host::MAX_SERVICES + 4;
    let b = Backend::start("b");
    let mut toml = Toml::new()
        .service("victim", &[b.address()], "max_requests = 1")
        .service("other", &[b.address()], "max_requests = 1")
        .section("[header_routing]", "enabled = true");
    for i in 0..fillers {
        toml = toml.service(&format!("filler-{i}"), &[b.address()], "");
    }
    let gw = Gateway::with(toml).workers(2).start();
    let via = |service: &str, path: &str| {
        request(gw.port, "GET", "/services", &[("service_name", service), ("api_name", path)], b"")
            .unwrap()
            .status
    };
    for i in 0..fillers {
        assert_eq!(via(&format!("filler-{i}"), "/"), 200);
    }
    // One request in flight to `other` …
    let port = gw.port;
    let slow = std::thread::spawn(move || {
        request(
            port,
            "GET",
            "/services",
            &[("service_name", "other"), ("api_name", "/slow/1500")],
            b"",
        )
        .unwrap()
        .status
    });
    assert_eventually!(5, b.requests_to("GET /slow/1500") == 1, "the slow request never arrived");
    // … leaves `victim` idle and open, and `other` at its limit.
    assert_eq!(via("victim", "/"), 200, "victim shares other's max_requests count");
    assert_eq!(via("other", "/"), 503);
    assert_eq!(slow.join().unwrap(), 200);
}
