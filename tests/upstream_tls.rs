//! Instances behind TLS (`upstream_tls`) are the engine's: HTTP/1.1 clients' requests to them
//! are never handed to hyper, their TLS sessions are pooled and reused like plain
//! connections, bodies (declared and chunked, with trailers) and upgrades go through, and a
//! session the instance ended is not reused.

mod support;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::http::KeepAlive;
use support::pki::Pki;
use support::tls_front::TlsFront;
use support::{Backend, Gateway, Toml};

fn behind_tls(b: &Backend, pki: &Pki) -> (TlsFront, Gateway) {
    let leaf = pki.leaf("instance", &["instance.example"]);
    let front = TlsFront::start(b.addr, &leaf.cert, &leaf.key);
    let service = format!(
        "instances = [\"127.0.0.1:{}\"]\nupstream_tls = true\nupstream_ca = {:?}\nupstream_sni = \"instance.example\"",
        front.port,
        pki.ca_file()
    );
    let toml = Toml::new().section("[services.web]", &service).route_all("web");
    // The engine says at debug level when it hands a request over to hyper.
    let gw = Gateway::with(toml).workers(1).env("RUST_LOG", "info,worker::http=debug").start();
    (front, gw)
}

#[test]
fn kept_alive_clients_reach_tls_instances_through_the_engine_on_one_pooled_session() {
    let (b, pki) = (Backend::start("b"), Pki::new());
    let (_front, gw) = behind_tls(&b, &pki);
    let mut c = KeepAlive::connect(gw.port);
    for i in 0..5 {
        let r = c.request("GET", &format!("/get/{i}"), &[]);
        assert_eq!((r.status, r.json()["path"].as_str()), (200, Some(&*format!("/get/{i}"))));
    }
    c.send(b"POST /declared HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5\r\n\r\nhello");
    assert_eq!(c.read(false).unwrap().status, 200);
    // A chunked body in two writes, with a trailer: streamed to the instance as it comes.
    c.send(b"POST /chunked HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n");
    c.send(b"0\r\ngrpc-status: 0\r\n\r\n");
    assert_eq!(c.read(false).unwrap().status, 200);
    // Another client later: the same session, taken from the pool.
    let mut other = KeepAlive::connect(gw.port);
    assert_eq!(other.request("GET", "/other", &[]).status, 200);
    let heads = b.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 8, "{heads:#?}");
    assert!(heads[5].contains("content-length: 5"), "{}", heads[5]);
    assert_eq!(*b.trailers.lock().unwrap(), ["grpc-status: 0"], "the trailer went through");
    assert_eq!(b.connections.load(Ordering::SeqCst), 1, "one TLS session carried every request");
    assert_eq!(gw.log_count("handed over to hyper"), 0, "{}", gw.log());
}

#[test]
fn a_session_the_instance_closed_is_not_reused_and_the_next_request_gets_a_new_one() {
    let (b, pki) = (Backend::start("b"), Pki::new());
    let (_front, gw) = behind_tls(&b, &pki);
    let mut c = KeepAlive::connect(gw.port);
    assert_eq!(c.request("GET", "/first", &[]).status, 200);
    // The instance closes its idle connection: the session ends with close_notify, then FIN.
    b.close_connections();
    for path in ["/second", "/third"] {
        assert_eq!(c.request("GET", path, &[]).status, 200, "{path}");
    }
    assert_eq!(b.connections.load(Ordering::SeqCst), 2, "a new session after the closed one");
    assert_eq!(b.heads.lock().unwrap().len(), 3, "each request reached the instance once");
}

#[test]
fn an_upgrade_to_a_tls_instance_is_tunnelled_by_the_engine() {
    let (b, pki) = (Backend::start("b"), Pki::new());
    let (_front, gw) = behind_tls(&b, &pki);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: localhost\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    // Bytes both ways through the gateway and the instance's TLS session.
    s.write_all(b"ping through tls").unwrap();
    let mut echoed = [0u8; 16];
    s.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping through tls");
    assert_eq!(gw.log_count("handed over to hyper"), 0, "{}", gw.log());
}
