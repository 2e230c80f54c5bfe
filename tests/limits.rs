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
