//! End-to-end data plane: balancers from config, outlier ejection, retries, limits, slowloris,
//! WebSocket pass-through and streaming with flat memory. Real binary, real sockets.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::http::{h2_upload, request};
use support::{request_loop, Backend, Gateway, Toml};

/// Service `name` on these instances with more keys, and every path routed to it.
fn service(name: &str, instances: &[String], extra: &str) -> Toml {
    Toml::new().service(name, instances, extra).route_all(name)
}

fn counts(gw: &Gateway, n: usize, headers: &[(&str, &str)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let r = request(gw.port, "GET", "/", headers, b"").unwrap();
        *m.entry(r.backend()).or_insert(0) += 1;
    }
    m
}

#[test]
fn weighted_balancer_follows_configured_weights_exactly() {
    let (a, b, c) = (Backend::start("a"), Backend::start("b"), Backend::start("c"));
    let inst =
        [format!("{{ address = \"{}\", weight = 5 }}", a.address()), b.address(), c.address()];
    let gw = Gateway::with(service("web", &inst, "load_balance = \"weighted\"")).workers(1).start();
    let seq: Vec<String> = (0..7).map(|_| gw.get("/").unwrap().backend()).collect();
    // nginx's sequence for 5,1,1 is a a x a y a a (x, y: the weight-1 instances in address order).
    let light: std::collections::BTreeSet<&str> = [seq[2].as_str(), seq[4].as_str()].into();
    assert_eq!(light, ["b", "c"].into(), "{seq:?}");
    assert!(
        [0, 1, 3, 5, 6].iter().all(|i| seq[*i] == "a"),
        "smooth weighted round robin interleaves: {seq:?}"
    );
    let m = counts(&gw, 70, &[]);
    assert_eq!((m["a"], m["b"], m["c"]), (50, 10, 10));
}

#[test]
fn consistent_hash_on_a_header_keeps_each_key_on_one_instance() {
    let bs: Vec<Backend> = (0..4).map(|i| Backend::start(&format!("b{i}"))).collect();
    let inst: Vec<String> = bs.iter().map(Backend::address).collect();
    let body =
        service("web", &inst, "load_balance = \"consistent_hash\"\nhash_on = \"header:x-user\"");
    let gw = Gateway::with(&body).workers(2).start();
    let mut owners = BTreeMap::new();
    for user in 0..40 {
        let key = format!("user-{user}");
        let first = request(gw.port, "GET", "/", &[("x-user", &key)], b"").unwrap().backend();
        for _ in 0..3 {
            assert_eq!(
                request(gw.port, "GET", "/", &[("x-user", &key)], b"").unwrap().backend(),
                first,
                "{key} moved"
            );
        }
        *owners.entry(first).or_insert(0) += 1;
    }
    assert!(owners.len() >= 3, "keys spread over the instances: {owners:?}");
}

#[test]
fn a_failing_instance_is_ejected_then_returns() {
    let (good, bad) = (Backend::start("good"), Backend::start("bad"));
    let body = service("web", &[good.address(), bad.address()], "")
        .section("[proxy.outlier]", "consecutive_failures = 3\nbase_ejection = \"1s\"");
    let gw = Gateway::with(&body).workers(1).admin().start();
    bad.failing.store(true, Ordering::Relaxed);
    let mut failures = 0;
    for _ in 0..10 {
        if gw.get("/").unwrap().status == 503 {
            failures += 1;
        }
    }
    assert_eq!(failures, 3, "three failures eject the instance");
    assert_eq!(gw.metric("zkgate_ejections_total", ""), 1);
    assert!(gw.log().contains(&format!(
        "instance {} ejected for 1s after 3 consecutive failures",
        bad.address()
    )));
    let ejected_at = Instant::now();
    let m = counts(&gw, 20, &[]);
    assert_eq!(m.get("good"), Some(&20), "ejected instance gets nothing: {m:?}");
    bad.failing.store(false, Ordering::Relaxed);
    // Wait for the ejection to expire: the first request that reaches `bad` again.
    assert_eventually!(5, counts(&gw, 2, &[]).contains_key("bad"), "never back after its ejection");
    assert!(
        ejected_at.elapsed() >= Duration::from_millis(900),
        "back before its 1 s ejection ended"
    );
    let m = counts(&gw, 20, &[]);
    assert_eq!(m.get("bad"), Some(&10), "back in the rotation: {m:?}");
}

#[test]
fn a_refused_connection_is_retried_on_another_instance_with_no_client_error() {
    let good = Backend::start("good");
    let dead = format!("127.0.0.1:{}", support::free_port());
    let gw = Gateway::with(service("web", &[good.address(), dead], "")).workers(2).start();
    let stop = Arc::new(AtomicBool::new(false));
    let s = request_loop(gw.port, "/", 200, 20, stop).join().unwrap();
    assert_eq!(s.ok, 200, "{:?}", s.errors);
    assert!(gw.log().contains("retrying on another instance"), "{}", gw.log());
}

/// An HTTP/2 upload needs no content-length: a PUT streamed that way is not bodiless, so a
/// refused first instance is never "retried" with its body gone. Every answer the instance
/// gives is for the whole body; a request whose only try was refused gets the gateway's error.
#[test]
fn an_http2_upload_without_a_length_is_never_replayed_without_its_body() {
    let good = Backend::start("good");
    let dead = format!("127.0.0.1:{}", support::free_port());
    let gw = Gateway::with(service("web", &[good.address(), dead], "")).workers(1).start();
    let mut statuses = BTreeMap::new();
    for _ in 0..6 {
        let (status, body) = h2_upload(gw.port, "PUT", "/doc", vec![vec![b'x'; 1000]; 3]);
        *statuses.entry(status).or_insert(0) += 1;
        if status == 200 {
            let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(echoed["received"], 3000, "a PUT reached the instance without its body");
        }
    }
    // Round robin sent some of them to the refused instance first: not replayed.
    assert!(statuses.keys().any(|s| *s != 200), "{statuses:?}");
    assert_eq!(good.requests_to("PUT /doc"), statuses[&200], "{statuses:?}");
}

#[test]
fn active_health_checks_take_a_failing_instance_out_and_back() {
    let (good, bad) = (Backend::start("good"), Backend::start("bad"));
    let extra =
        "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"500ms\", healthy = 2, unhealthy = 2 }";
    let body = service("web", &[good.address(), bad.address()], extra)
        .section("[proxy.outlier]", "consecutive_failures = 0");
    let gw = Gateway::with(&body).workers(1).start();
    bad.failing.store(true, Ordering::Relaxed);
    assert_eventually!(
        5,
        gw.log().contains("unhealthy after 2 failed health checks"),
        "not marked unhealthy"
    );
    assert_eq!(counts(&gw, 10, &[]).get("good"), Some(&10));
    bad.failing.store(false, Ordering::Relaxed);
    assert_eventually!(5, gw.log().contains("healthy again"), "not marked healthy again");
    assert_eq!(counts(&gw, 10, &[]).get("bad"), Some(&5));
}

#[test]
fn oversize_headers_get_431_and_oversize_bodies_413() {
    let b = Backend::start("b");
    let body =
        service("web", &[b.address()], "").proxy("max_header_bytes = 8192\nmax_body_bytes = 1000");
    let gw = Gateway::with(&body).workers(1).start();
    let big = "x".repeat(20_000);
    let r = request(gw.port, "GET", "/", &[("x-big", &big)], b"").unwrap();
    assert_eq!(r.status, 431);
    let r = request(gw.port, "POST", "/", &[], &[b'y'; 2000]).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "request body too large");
    let r = request(gw.port, "POST", "/", &[], &[b'y'; 900]).unwrap();
    assert_eq!((r.status, r.json()["received"].as_u64()), (200, Some(900)));
    assert_eq!(b.hits.load(Ordering::Relaxed), 1, "refused requests never reach the instance");
}

#[test]
fn a_slowloris_connection_is_closed_after_the_header_timeout_while_others_are_served() {
    let b = Backend::start("b");
    let body = service("web", &[b.address()], "").proxy("header_read_timeout = \"1s\"");
    let gw = Gateway::with(&body).workers(1).start();
    let mut slow = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n").unwrap();
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(gw.get("/").unwrap().status, 200, "others are served meanwhile");
    }
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "closed by the server, not by our read timeout ({took:?})"
    );
    assert!(!String::from_utf8_lossy(&buf).contains("200"), "no request was served on it");
}

#[test]
fn more_clients_than_max_connections_wait_instead_of_failing() {
    let b = Backend::start("b");
    let body = service("web", &[b.address()], "").proxy("max_connections = 2");
    let gw = Gateway::with(&body).workers(1).start();
    let port = gw.port;
    let clients: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                request(port, "GET", "/slow/300", &[], b"").map(|r| r.status)
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap().unwrap(), 200);
    }
}

/// Opens a WebSocket-style upgrade through the gateway and returns the upgraded stream.
fn open_tunnel(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s
}

fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

#[test]
fn websocket_upgrade_passes_through_and_echoes() {
    let b = Backend::start("b");
    let gw = Gateway::with(service("web", &[b.address()], "")).workers(1).start();
    let mut s = open_tunnel(gw.port);
    for msg in [&b"hello"[..], b"through the gateway"] {
        echo(&mut s, msg);
    }
}

#[test]
fn an_open_websocket_survives_a_reload_and_its_worker_waits_for_it() {
    let b = Backend::start("b");
    let gw = Gateway::with(service("web", &[b.address()], "")).workers(1).start();
    let old = gw.workers();
    let mut s = open_tunnel(gw.port);
    let ready = gw.readiness();
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    // In service on every slot: the old worker was told to drain.
    assert_eventually!(10, gw.reloaded(ready), "reload did not finish");
    echo(&mut s, b"still here after the reload");
    assert!(gw.workers().contains(&old[0]), "the old worker drains while the tunnel is open");
    drop(s);
    assert_eventually!(
        10,
        !gw.workers().contains(&old[0]),
        "old worker exits once the tunnel closed"
    );
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples a worker's RSS while `f` runs; returns the peak in KiB.
fn peak_rss_during(pid: i32, f: impl FnOnce()) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while !s.load(Ordering::Relaxed) {
            peak = peak.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    f();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap()
}

const GIB: u64 = 1 << 30;

#[test]
fn a_gibibyte_streams_both_ways_through_a_worker_with_flat_memory() {
    let b = Backend::start("b");
    let gw = Gateway::with(service("web", &[b.address()], "")).workers(1).start();
    let worker = gw.workers()[0];
    let before = rss_kib(worker);

    let down = peak_rss_during(worker, || {
        let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        s.write_all(
            format!("GET /bytes/{GIB} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        assert!(total > GIB, "whole body received ({total} bytes with framing)");
    });

    let up = peak_rss_during(worker, || {
        let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        s.write_all(
            format!("POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {GIB}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let chunk = vec![b'u'; 1 << 20];
        for _ in 0..1024 {
            s.write_all(&chunk).unwrap();
        }
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let r = support::http::parse(&resp).unwrap();
        assert_eq!(r.json()["received"].as_u64(), Some(GIB));
    });
    eprintln!(
        "worker RSS: {before} KiB before, peak {down} KiB downloading, {up} KiB uploading 1 GiB"
    );
    assert!(down < 50 * 1024 && up < 50 * 1024, "RSS must stay under 50 MiB: {down} / {up} KiB");
}

#[test]
fn an_idle_keep_alive_client_connection_is_closed_after_idle_timeout() {
    let b = Backend::start("b");
    let body = service("web", &[b.address()], "")
        .proxy("idle_timeout = \"500ms\"\nheader_read_timeout = \"10s\"");
    let gw = Gateway::with(&body).workers(1).start();
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "first request served");
    let idle_since = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let waited = idle_since.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

#[test]
fn h2c_clients_with_prior_knowledge_are_proxied_to_http1_instances() {
    use http_body_util::{BodyExt, Empty};
    let b = Backend::start("b");
    let gw = Gateway::with(service("web", &[b.address()], "")).workers(1).start();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<bytes::Bytes>>();
    let (version, status, body) = rt.block_on(async {
        let uri: hyper::Uri = format!("http://127.0.0.1:{}/over-h2?x=1", gw.port).parse().unwrap();
        let resp = client.get(uri).await.expect("h2c request");
        let (version, status) = (resp.version(), resp.status());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (version, status, body)
    });
    assert_eq!((version, status.as_u16()), (hyper::Version::HTTP_2, 200));
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["path"], "/over-h2?x=1");
    assert_eq!(
        json["headers"]["host"],
        format!("127.0.0.1:{}", gw.port),
        "the :authority becomes Host"
    );
}

#[test]
fn hostile_requests_get_a_clean_400_and_never_crash_a_worker() {
    let b = Backend::start("b");
    let gw = Gateway::with(service("web", &[b.address()], "")).workers(1).start();
    let worker = gw.workers();
    // Each with the one answer it gets (the chunked body fails after the head was forwarded:
    // the instance's answer never comes, the client gets the gateway's 400).
    let hostile: [(&[u8], &str); 7] = [
        (b"GARBAGE\r\n\r\n", "HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n", "HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", "HTTP/1.1 400"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzzzz\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            "HTTP/1.1 400",
        ),
        // A version this server does not speak (RFC 9110 §15.6.6, as nginx answers it), and
        // one no server speaks.
        (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", "HTTP/1.1 505"),
        (b"GET / HTTP/1.x\r\nHost: x\r\n\r\n", "HTTP/1.1 400"),
    ];
    for (raw, expected) in hostile {
        let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(raw).unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with(expected), "{:?} -> {text}", String::from_utf8_lossy(raw));
    }
    // Both CL and TE: refused and the connection closed (RFC 9112 §6.1 allows either; two
    // framings that two parsers may read differently are how requests are smuggled).
    let hits = b.hits.load(std::sync::atomic::Ordering::Relaxed);
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let r = support::http::parse(&resp).unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::Relaxed), hits, "nothing forwarded");
    assert_eq!(gw.workers(), worker, "no worker crashed");
    assert_eq!(gw.get("/").unwrap().status, 200);
    assert_eventually!(
        5,
        gw.log_count("closed: invalid HTTP") >= 3,
        "hostile input not logged:\n{}",
        gw.log()
    );
}

#[test]
fn upstream_connections_are_reused_and_idle_ones_expire() {
    let b = Backend::start("b");
    let gw = Gateway::with(service("web", &[b.address()], "").proxy("idle_timeout = \"1s\""))
        .workers(1)
        .start();
    for _ in 0..50 {
        assert_eq!(gw.get("/").unwrap().status, 200);
    }
    for _ in 0..20 {
        // HEAD answers have no body to read: their connection is reusable at once.
        let r = request(gw.port, "HEAD", "/", &[], b"").unwrap();
        assert_eq!(r.status, 200);
    }
    let used = b.connections.load(Ordering::Relaxed);
    assert!(used <= 2, "70 sequential requests opened {used} upstream connections");
    // Idle longer than idle_timeout: the pooled connection is dropped, the next request opens
    // a new one (and still succeeds).
    assert_eventually!(
        10,
        {
            std::thread::sleep(Duration::from_millis(1500));
            gw.get("/").unwrap().status == 200 && b.connections.load(Ordering::Relaxed) > used
        },
        "an idle upstream connection was never replaced"
    );
}
