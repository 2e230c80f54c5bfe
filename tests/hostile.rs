//! Hostile clients and registries against the real binary, on raw sockets: each test asserts
//! what the client got *and* what the backend received (usually: nothing).

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::http::{raw, status_of};
use support::zk::Zk;
use support::{Backend, Gateway, Toml};

fn web(b: &Backend) -> Toml {
    Toml::new().backends("web", &[b]).route_all("web")
}

#[test]
fn targets_that_are_not_origin_form_never_reach_an_instance() {
    let b = Backend::start("b");
    // A listener on the instance's host at port 80 would have taken the asterisk-form request
    // (the port failed to parse); nothing may reach anything but the configured instance.
    let gw = Gateway::with(web(&b)).workers(1).start();
    let r = raw(gw.port, b"GET * HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert_eq!(status_of(&r), 400, "{r}");
    let r = raw(gw.port, b"OPTIONS * HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.to_ascii_lowercase().contains("allow: get"), "{r}");
    let r = raw(gw.port, b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nhost: 127.0.0.1:22\r\n\r\n");
    assert_eq!(status_of(&r), 405, "{r}");
    assert_eq!(b.hits.load(Ordering::Relaxed), 0, "the backend received nothing");
    // Absolute-form is a request for a path: the path goes to the configured instance.
    let r = raw(
        gw.port,
        b"GET http://evil.example:81/p HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.contains("\"path\":\"/p\"") && r.contains("\"backend\":\"b\""), "{r}");
}

#[test]
fn a_transfer_coding_other_than_chunked_is_501_and_never_forwarded() {
    let b = Backend::start("b");
    let gw = Gateway::with(web(&b)).workers(1).start();
    let body = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let r = raw(gw.port, body);
    assert_eq!(status_of(&r), 501, "{r}");
    assert_eq!(b.hits.load(Ordering::Relaxed), 0, "the backend received nothing");
}

#[test]
fn forwarded_headers_join_every_line_and_underscored_names_are_dropped() {
    let b = Backend::start("b");
    let trusted = web(&b).proxy("trusted_proxies = [\"127.0.0.0/8\"]");
    let gw = Gateway::with(trusted).workers(1).start();
    let r = raw(
        gw.port,
        b"GET / HTTP/1.1\r\nhost: x\r\nx-forwarded-for: 203.0.113.1\r\nx-forwarded-for: 198.51.100.2\r\nx_forwarded_for: 6.6.6.6\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 200, "{r}");
    // The backend echoes what it received: a trusted peer's list, then this hop.
    assert!(r.contains("\"x-forwarded-for\":\"203.0.113.1, 198.51.100.2, 127.0.0.1\""), "{r}");
    assert!(!r.contains("6.6.6.6"), "underscored copy dropped: {r}");
    // The seed's header routing keeps working: its underscored headers are allowed.
    let r = raw(
        gw.port,
        b"GET /services HTTP/1.1\r\nhost: x\r\nservice_name: web\r\napi_name: /via-headers\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.contains("\"path\":\"/via-headers\""), "{r}");
}

/// Every way a request reaches the engine or hyper: the client's own forwarding headers never
/// reach the instance as sent, HTTP/1.0 without `Host` included (password-reset links are
/// built from X-Forwarded-Host).
#[test]
fn a_clients_own_forwarding_headers_never_reach_an_instance() {
    let b = Backend::start("b");
    let gw = Gateway::with(web(&b)).workers(1).start();
    let spoofed = "x-forwarded-for: 6.6.6.6\r\nx-forwarded-host: evil.example\r\nx-forwarded-proto: https\r\nx-forwarded-port: 1\r\nforwarded: for=6.6.6.6;host=evil.example\r\n";
    for (how, head) in [
        ("HTTP/1.0 without Host", format!("GET /a HTTP/1.0\r\n{spoofed}\r\n")),
        ("bodiless", format!("GET /a HTTP/1.1\r\nhost: x\r\n{spoofed}connection: close\r\n\r\n")),
        (
            "Content-Length",
            format!("POST /a HTTP/1.1\r\nhost: x\r\n{spoofed}content-length: 2\r\nconnection: close\r\n\r\nhi"),
        ),
        (
            "named by Connection",
            format!("GET /a HTTP/1.1\r\nhost: x\r\n{spoofed}connection: close, x-forwarded-for, x-request-id\r\nx-request-id: mine\r\n\r\n"),
        ),
    ] {
        let r = raw(gw.port, head.as_bytes());
        assert_eq!(status_of(&r), 200, "{how}: {r}");
        assert!(!r.contains("6.6.6.6") && !r.contains("evil.example"), "{how}: {r}");
        assert!(r.contains("\"x-forwarded-for\":\"127.0.0.1\""), "{how}: {r}");
        assert!(r.contains("\"x-forwarded-proto\":\"http\""), "{how}: {r}");
        assert!(!r.contains("\"forwarded\""), "{how}: {r}");
        assert!(r.contains("\"x-request-id\":\"") && !r.contains("\"mine\""), "{how}: {r}");
    }
}

/// A TCP relay, as a misconfigured load balancer or NAT in front of the gateway would be.
fn relay_to(port: u16) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(50) {
            let Ok(client) = conn else { continue };
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", port)) else { continue };
            let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            let (mut c, mut u) = (client, upstream);
            std::thread::spawn(move || std::io::copy(&mut c2, &mut u2));
            std::thread::spawn(move || std::io::copy(&mut u, &mut c));
        }
    });
    addr.to_string()
}

#[test]
fn a_request_that_comes_back_to_the_gateway_is_508_not_a_storm() {
    let port = support::free_port();
    let relay = relay_to(port);
    let body = Toml::new().service("loop", &[relay], "").route_all("loop");
    let gw = Gateway::with(body).port(port).workers(1).admin().start();
    let r = raw(gw.port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert_eq!(status_of(&r), 508, "{r}");
    // One request in, one 508 out of the second hop: 2 requests, not thousands.
    assert_eventually!(5, gw.metric("zkgate_worker_requests_total", "") == 2, "requests counted");
}

#[test]
fn the_gateways_own_address_in_the_registry_is_skipped_with_a_warning() {
    let zk = Zk::standalone();
    let b = Backend::start("b");
    let port = support::free_port();
    let c = zk.client();
    c.register("web", &format!("127.0.0.1:{port}"));
    c.register("web", &b.address());
    // Unusable registry entries, each skipped with its warning.
    c.register("web", "0.0.0.0:80");
    c.register("web", "10.0.0.1:0");
    let body = Toml::new().zookeeper(&zk, "").route_all("web");
    let gw = Gateway::with(body).port(port).workers(1).start();
    assert_eventually!(10, gw.log().contains("own address (a request loop)"), "{}", gw.log());
    assert!(gw.log().contains("skipping /services/web/0.0.0.0:80"), "{}", gw.log());
    assert!(gw.log().contains("skipping /services/web/10.0.0.1:0"), "{}", gw.log());
    for _ in 0..10 {
        assert_eq!(gw.get("/").unwrap().backend(), "b");
    }
}

fn read_head(s: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn open_tunnel(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let head = read_head(&mut s).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Whether the gateway closed `s` within `within` (EOF or reset on read).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn tunnels_keep_their_connection_permit_and_close_when_idle() {
    let b = Backend::start("b");
    let body = web(&b).proxy("max_connections = 3\nidle_timeout = \"1s\"");
    let gw = Gateway::with(body).workers(1).start();
    let mut tunnels: Vec<TcpStream> = (0..3).map(|_| open_tunnel(gw.port)).collect();
    // Three tunnels hold the three permits: a fourth connection waits in the kernel queue.
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut byte = [0u8; 1];
    let waited = s.read(&mut byte);
    assert!(
        matches!(&waited, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a 4th connection was served while 3 tunnels held the limit: {waited:?}"
    );
    // Idle tunnels close after idle_timeout, and the waiting client is served.
    for t in &mut tunnels {
        assert!(closed_within(t, Duration::from_secs(5)), "an idle tunnel stayed open");
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let r = String::from_utf8_lossy(&rest);
    // The read above timed out: nothing of the answer was taken before.
    assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
}

#[test]
fn slow_clients_cannot_hold_a_worker() {
    let b = Backend::start("b");
    let body =
        web(&b).proxy("max_connections = 4\nheader_read_timeout = \"1s\"\nidle_timeout = \"1s\"");
    let gw = Gateway::with(body).workers(1).start();
    // Silent connections and an HTTP/2 preface dripped a byte at a time: all closed within the
    // header timeout, counted from the accept.
    let mut silent: Vec<TcpStream> =
        (0..2).map(|_| TcpStream::connect(("127.0.0.1", gw.port)).unwrap()).collect();
    let mut drip = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let dripper = {
        let mut d = drip.try_clone().unwrap();
        std::thread::spawn(move || {
            for byte in preface.iter().cycle().take(40) {
                if d.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    for s in &mut silent {
        assert!(closed_within(s, Duration::from_secs(4)), "a silent connection stayed open");
    }
    assert!(closed_within(&mut drip, Duration::from_secs(4)), "a dripping connection stayed open");
    let _ = dripper.join();
    // The worker serves again at once.
    assert_eq!(
        status_of(&raw(gw.port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")),
        200
    );
    // A client that never reads a large answer is cut after idle_timeout without progress.
    let mut lazy = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    lazy.write_all(b"GET /bytes/200000000 HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    lazy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = lazy.read(&mut buf) {
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(total < 200_000_000, "the whole answer went through to a client that did not read");
}

#[test]
fn failures_the_client_causes_never_eject_an_instance() {
    let b = Backend::start("b");
    let body = web(&b)
        .proxy("request_timeout = \"1s\"")
        .section("[proxy.outlier]", "consecutive_failures = 1");
    let gw = Gateway::with(body).workers(1).admin().start();
    // A slow upload (2 s, request_timeout 1 s) is not the instance's delay: 200, no ejection.
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\n")
        .unwrap();
    for byte in b"hello" {
        std::thread::sleep(Duration::from_millis(400));
        s.write_all(&[*byte]).unwrap();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert_eq!(status_of(&out), 200, "{out}");
    assert!(out.contains("\"received\":5"), "{out}");
    // Clients that leave mid-body, bad targets, CONNECT: none counts against the instance.
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\npartial").unwrap();
        drop(s);
        raw(gw.port, b"GET * HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        raw(gw.port, b"CONNECT a:1 HTTP/1.1\r\nhost: a:1\r\n\r\n");
    }
    assert_eq!(
        status_of(&raw(gw.port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")),
        200
    );
    assert_eq!(gw.metric("zkgate_ejections_total", ""), 0, "a client's fault ejected the instance");
}

#[test]
fn one_http2_connection_cannot_open_more_upstream_connections_than_allowed() {
    use http_body_util::{BodyExt, Empty};
    let b = Backend::start("b");
    let body = web(&b).proxy("max_connections_per_instance = 5\nmax_streams_per_connection = 64");
    let gw = Gateway::with(body).workers(1).start();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<bytes::Bytes>>();
    let statuses: Vec<u16> = rt.block_on(async {
        let requests = (0..60).map(|_| {
            let client = client.clone();
            let uri: hyper::Uri = format!("http://127.0.0.1:{}/slow/300", gw.port).parse().unwrap();
            async move {
                let resp = client.get(uri).await.expect("h2 request");
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                status
            }
        });
        futures::future::join_all(requests).await
    });
    let peak = b.peak.load(Ordering::SeqCst);
    assert!(peak <= 5, "the instance saw {peak} requests at once, limit 5");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
    assert!(statuses.contains(&503), "the overflow is refused at once: {statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 200).count() >= 5, "{statuses:?}");
}

#[test]
fn an_http2_connection_with_no_open_stream_is_closed_even_while_it_pings() {
    let b = Backend::start("b");
    let gw = Gateway::with(web(&b).proxy("idle_timeout = \"1s\"")).workers(1).start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let closed_after = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
        let (mut client, mut conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let mut pings = conn.ping_pong().expect("ping handle");
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(format!("http://127.0.0.1:{}/", gw.port)).body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let mut body = resp.await.expect("answer").into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        // No stream open from now on, but bytes keep moving: a ping every 200 ms.
        let idle_since = std::time::Instant::now();
        let pinger = tokio::spawn(async move {
            loop {
                if pings.ping(h2::Ping::opaque()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let closed = tokio::time::timeout(Duration::from_secs(6), conn).await;
        pinger.abort();
        drop(client);
        closed.map(|_| idle_since.elapsed())
    });
    let after = closed_after.expect("the gateway kept an HTTP/2 connection with no stream open");
    assert!(after >= Duration::from_millis(900), "closed after {after:?}, before idle_timeout");
}
