//! The engine's connection loop on scripted bytes: a client scripted on one end of an
//! in-memory stream, a real proxy built from a configuration, and an instance on loopback that
//! records what it received and answers what the test says. What the engine writes back and
//! what the instance got are both asserted, byte for byte where it matters.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{serve, End};
use crate::http::connections::{Client, Scheme};
use crate::http::proxy::Proxy;

/// An instance that answers each request it reads with `answer`, and keeps what it read.
async fn instance(answer: &'static [u8]) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut pending = Vec::new();
                loop {
                    let Ok(n) = s.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                    // One answer per complete head (the tests send bodiless requests).
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (address, seen)
}

/// A proxy routing `prefix` to `address`, as a worker builds it.
fn proxy_for(address: &str, prefix: &str) -> Proxy {
    crate::http::testing::proxy(&format!(
        "[services.web]\ninstances = [\"{address}\"]\n\n[[route]]\npath_prefix = \"{prefix}\"\nservice = \"web\"\n"
    ))
}

/// A proxy routing everything to `address`.
fn proxy(address: &str) -> Proxy {
    proxy_for(address, "/")
}

fn client() -> Client {
    Client {
        peer: "192.0.2.7:40000".parse().unwrap(),
        port: 8080,
        scheme: Scheme::Http,
        accepted: tokio::time::Instant::now(),
        cert_subject: None,
    }
}

/// Runs the engine on one connection: writes `script`, reads until the engine closes it.
pub(super) async fn exchange(proxy: &Proxy, script: &[u8]) -> (Vec<u8>, bool) {
    exchange_draining(proxy, script, false).await
}

/// As [`exchange`], with the worker already draining when `draining`.
async fn exchange_draining(proxy: &Proxy, script: &[u8], draining: bool) -> (Vec<u8>, bool) {
    let (mut near, far) = tokio::io::duplex(1 << 16);
    let (trigger, mut shutdown) = crate::shutdown::channel();
    if draining {
        trigger.fire();
    }
    let engine = async {
        let end = serve((far, Vec::new()), client(), proxy, &mut shutdown).await;
        matches!(end, End::Closed)
    };
    let talk = async {
        near.write_all(script).await.unwrap();
        let mut out = Vec::new();
        near.read_to_end(&mut out).await.unwrap();
        out
    };
    let (closed, out) = tokio::join!(engine, talk);
    (out, closed)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-from: instance\r\n\r\nhello";

#[tokio::test]
async fn pipelined_keep_alive_requests_are_answered_in_order_then_close_ends_the_connection() {
    let (address, seen) = instance(OK).await;
    let proxy = proxy(&address);
    let script = b"GET /one HTTP/1.1\r\nhost: api.example\r\n\r\n\
GET /two HTTP/1.1\r\nhost: api.example\r\nx-request-id: abc\r\n\r\n\
GET /three HTTP/1.1\r\nhost: api.example\r\nconnection: close\r\n\r\n";
    let (out, closed) = exchange(&proxy, script).await;
    assert!(closed, "the engine served the connection to its end");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{text}");
    assert_eq!(text.matches("hello").count(), 3, "{text}");
    assert!(text.ends_with("hello"), "the last answer is whole: {text}");
    assert_eq!(text.matches("connection: close").count(), 1, "only the last says close: {text}");
    let upstream = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
    let order: Vec<&str> = upstream.lines().filter(|l| l.starts_with("GET ")).collect();
    assert_eq!(order, ["GET /one HTTP/1.1", "GET /two HTTP/1.1", "GET /three HTTP/1.1"]);
    assert_eq!(upstream.matches("x-forwarded-for: 192.0.2.7\r\n").count(), 3, "{upstream}");
    assert!(upstream.contains("x-request-id: abc\r\n"), "{upstream}");
    assert_eq!(upstream.matches("x-request-id: ").count(), 3, "one each, the client's kept");
    assert!(!upstream.to_ascii_lowercase().contains("connection: close"), "hop-by-hop: {upstream}");
}

#[tokio::test]
async fn a_head_with_two_lengths_is_refused_and_nothing_reaches_the_instance() {
    let (address, seen) = instance(OK).await;
    let proxy = proxy(&address);
    let script =
        b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd";
    let (out, closed) = exchange(&proxy, script).await;
    let text = String::from_utf8_lossy(&out);
    assert!(closed);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(seen.lock().unwrap().is_empty(), "a request in doubt never reaches an instance");
}

#[tokio::test]
async fn a_request_no_route_takes_gets_the_gateways_own_404_and_the_connection_goes_on() {
    let (address, seen) = instance(OK).await;
    let proxy = proxy_for(&address, "/api");
    let script = b"GET /elsewhere HTTP/1.1\r\nhost: a\r\n\r\nGET /api/x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    let (out, _) = exchange(&proxy, script).await;
    let text = String::from_utf8_lossy(&out);
    let first = text.find("HTTP/1.1 404 ").expect(&text);
    let second = text.find("HTTP/1.1 200 OK").expect(&text);
    assert!(first < second, "answered in order: {text}");
    let upstream = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
    assert!(upstream.starts_with("GET /api/x HTTP/1.1\r\n"), "only the routed one: {upstream}");
}

#[tokio::test]
async fn a_draining_worker_answers_then_closes_a_keep_alive_connection() {
    let (address, seen) = instance(OK).await;
    let proxy = proxy(&address);
    let script = b"GET /one HTTP/1.1\r\nhost: a\r\n\r\nGET /two HTTP/1.1\r\nhost: a\r\n\r\n";
    let (out, closed) = exchange_draining(&proxy, script, true).await;
    let text = String::from_utf8_lossy(&out);
    assert!(closed);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 1, "one answer, then close: {text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    let upstream = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
    assert_eq!(upstream.matches("GET ").count(), 1, "{upstream}");
}

const CHUNKED: &[u8] =
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
2\r\nok\r\n3\r\n!!!\r\n0\r\nx-checksum: abc\r\ncontent-length: 99\r\nhost: evil.example\r\n\r\n";

#[tokio::test]
async fn a_chunked_answer_is_relayed_chunk_by_chunk_with_only_the_trailers_allowed() {
    let (address, _) = instance(CHUNKED).await;
    let proxy = proxy(&address);
    let script = b"GET /t HTTP/1.1\r\nhost: a\r\nte: trailers\r\nconnection: close\r\n\r\n";
    let (out, _) = exchange(&proxy, script).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n2\r\nok\r\n3\r\n!!!\r\n0\r\nx-checksum: abc\r\n\r\n"),
        "{text:?}"
    );
    assert!(!text.contains("evil.example") && !text.contains("99"), "{text:?}");
}

#[tokio::test]
async fn an_http10_client_gets_a_body_of_unknown_length_unframed_until_the_close() {
    let (address, seen) = instance(CHUNKED).await;
    let proxy = proxy(&address);
    let (out, closed) = exchange(&proxy, b"GET /old HTTP/1.0\r\nhost: a\r\n\r\n").await;
    let text = String::from_utf8_lossy(&out);
    assert!(closed);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "never chunked to 1.0: {text}"
    );
    assert!(text.ends_with("\r\n\r\nok!!!"), "the body as it came, ended by the close: {text:?}");
    let upstream = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
    assert!(upstream.starts_with("GET /old HTTP/1.1\r\n"), "spoken in 1.1 upstream: {upstream}");
}

#[tokio::test]
async fn every_form_of_an_http11_target_is_the_engines_never_handed_over() {
    let (address, seen) = instance(OK).await;
    let proxy = proxy(&address);
    let script = b"GET http://www.example/abs?q=1 HTTP/1.1\r\nhost: other.example\r\n\r\n\
OPTIONS * HTTP/1.1\r\nhost: a\r\n\r\n\
CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n\
GET * HTTP/1.1\r\nhost: a\r\n\r\n\
GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n";
    let (out, closed) = exchange(&proxy, script).await;
    assert!(closed, "the engine served the connection to its end");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(statuses(&text), ["200", "200", "405", "400", "400"], "{text}");
    assert!(text.contains("allow: GET, HEAD"), "OPTIONS * says what may be asked: {text}");
    assert!(text.ends_with("\"error\":\"several Host lines\"}\n"), "{text}");
    let upstream = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
    assert!(upstream.starts_with("GET /abs?q=1 HTTP/1.1\r\n"), "origin-form out: {upstream}");
    assert!(upstream.contains("x-forwarded-host: www.example\r\n"), "{upstream}");
    assert_eq!(upstream.matches(" HTTP/1.1\r\n").count(), 1, "only the first went: {upstream}");
}

#[tokio::test]
async fn a_head_over_max_header_bytes_is_431_from_the_engine() {
    let (address, seen) = instance(OK).await;
    let proxy = proxy(&address);
    let big = format!("GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n", "y".repeat(70_000));
    let (out, closed) = exchange(&proxy, big.as_bytes()).await;
    assert!(closed);
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431 "));
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_upgrade_carrying_a_body_sends_the_body_then_becomes_a_tunnel() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let instance = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"\r\n\r\nbody") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the head and the body arrive first");
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        let mut ping = [0u8; 4];
        s.read_exact(&mut ping).await.unwrap();
        s.write_all(b"PONG").await.unwrap();
        (got, ping)
    });
    let proxy = proxy(&address);
    let script = b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\ncontent-length: 4\r\n\r\nbodyPING";
    let (mut near, far) = tokio::io::duplex(1 << 16);
    let (_trigger, mut shutdown) = crate::shutdown::channel();
    let engine = async {
        matches!(serve((far, Vec::new()), client(), &proxy, &mut shutdown).await, End::Closed)
    };
    let talk = async {
        near.write_all(script).await.unwrap();
        let mut out = Vec::new();
        while !out.ends_with(b"PONG") {
            let mut buf = [0u8; 4096];
            let n = near.read(&mut buf).await.unwrap();
            assert!(n > 0, "{:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        // The client ends its side of the tunnel; the instance has ended its own.
        near.shutdown().await.unwrap();
        out
    };
    let (closed, out) = tokio::join!(engine, talk);
    assert!(closed, "the engine kept the connection, as a tunnel");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    assert!(text.ends_with("\r\n\r\nPONG"), "{text:?}");
    let (got, ping) = instance.await.unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("GET /ws HTTP/1.1\r\n") && got.contains("upgrade: websocket"), "{got}");
    assert_eq!(&ping, b"PING", "what followed the body went through the tunnel");
}

#[tokio::test]
async fn targets_with_characters_clients_leave_unescaped_are_served_and_the_rest_refused() {
    let (address, seen) = instance(OK).await;
    let proxy = proxy(&address);
    let script = b"GET /q?filter={a:1}|b HTTP/1.1\r\nhost: a\r\n\r\n\
GET /q?a=\"b\" HTTP/1.1\r\nhost: a\r\n\r\n";
    let (out, closed) = exchange(&proxy, script).await;
    assert!(closed, "the engine served the connection to its end, never handed it over");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(statuses(&text), ["200", "400"], "{text}");
    assert!(text.ends_with("\"error\":\"invalid request target\"}\n"), "{text}");
    let upstream = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
    assert!(upstream.starts_with("GET /q?filter={a:1}|b HTTP/1.1\r\n"), "as sent: {upstream}");
    assert_eq!(upstream.matches(" HTTP/1.1\r\n").count(), 1, "{upstream}");
}

#[tokio::test]
async fn only_http2s_preface_at_the_start_goes_to_hyper_and_other_versions_are_505() {
    let (address, seen) = instance(OK).await;
    let proxy = proxy(&address);
    let (out, _) =
        exchange(&proxy, b"GET / HTTP/1.1\r\nhost: a\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("HTTP/1.1 200 ") && text.contains("HTTP/1.1 400 "), "{text}");
    let (out, closed) = exchange(&proxy, b"GET / HTTP/3.0\r\nhost: a\r\n\r\n").await;
    assert!(closed && String::from_utf8_lossy(&out).starts_with("HTTP/1.1 505 "));
    assert_eq!(String::from_utf8_lossy(&seen.lock().unwrap()).matches("GET ").count(), 1);
}

/// The status codes of the answers in `text`, in order.
fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ").map(|(at, _)| &text[at + 9..at + 12]).collect()
}

#[test]
fn a_client_address_is_written_as_display_writes_it() {
    let addresses = ["0.0.0.0", "255.255.255.255", "10.0.100.9", "192.0.2.7", "1.20.3.40"]
        .into_iter()
        .chain(["::1", "2001:db8::17", "::ffff:198.51.100.250"]);
    for text in addresses {
        let ip: std::net::IpAddr = text.parse().unwrap();
        assert_eq!(super::ip_text(ip), ip.to_canonical().to_string(), "{text}");
    }
    for octet in 0..=255u8 {
        let ip = std::net::IpAddr::from([octet, octet / 3, 255 - octet, octet / 7]);
        assert_eq!(super::ip_text(ip), ip.to_string());
    }
}
