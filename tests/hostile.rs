//! Hostile clients and registries against the real binary, on raw sockets: each test asserts
//! what the client got *and* what the backend received (usually: nothing).

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::zk::Zk;
use support::{Backend, Gateway, Toml};

/// Sends raw bytes, returns what came back until the gateway closed or 3 s passed.
fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

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
    let gw = Gateway::with(web(&b)).workers(1).start();
    let r = raw(
        gw.port,
        b"GET / HTTP/1.1\r\nhost: x\r\nx-forwarded-for: 203.0.113.1\r\nx-forwarded-for: 198.51.100.2\r\nx_forwarded_for: 6.6.6.6\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 200, "{r}");
    // The backend echoes what it received.
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
