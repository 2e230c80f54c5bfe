//! The HTTP/1.1 engine with bodies, end to end on the real binary and raw sockets: bodies of
//! every framing streamed both ways on one keep-alive connection, `Expect: 100-continue`,
//! `max_body_bytes`, framing a smuggler would try — each asserting what the client got *and*
//! what the instance received — and the attacks found in the engine's seams: retry
//! amplification, answers swapped between clients, header routing around route rules.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::backend::{Scripted, PAUSE};
use support::http::{parse, raw, status_of, KeepAlive};
use support::{Backend, Gateway, Toml};

fn web(b: &Backend) -> Toml {
    Toml::new().backends("web", &[b]).route_all("web")
}

fn chunked(body: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(piece) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn bodies_of_every_framing_stream_on_one_keep_alive_connection() {
    let b = Backend::start("b");
    let gw = Gateway::with(web(&b)).workers(1).start();
    let mut c = KeepAlive::connect(gw.port);
    let json = vec![b'j'; 1024];
    let big = vec![b'x'; 3 * 1024 * 1024 + 17];
    let cases: Vec<(&str, Vec<u8>, usize)> = vec![
        ("content-length: 1024\r\n", json.clone(), 1024),
        ("transfer-encoding: chunked\r\n", chunked(&json, 100), 1024),
        ("content-length: 3145745\r\n", big.clone(), big.len()),
        ("transfer-encoding: chunked\r\n", chunked(&big, 70_000), big.len()),
        ("content-length: 0\r\n", Vec::new(), 0),
    ];
    for (i, (framing, body, expect)) in cases.iter().enumerate() {
        let mut req = format!("POST /up/{i} HTTP/1.1\r\nhost: x\r\n{framing}\r\n").into_bytes();
        req.extend_from_slice(body);
        c.send(&req);
        let r = c.read(false).expect("an answer on the same connection");
        assert_eq!(r.status, 200, "case {i}");
        assert_eq!(r.json()["received"], *expect as u64, "case {i}: what the instance received");
        assert_eq!(r.json()["path"], format!("/up/{i}"));
    }
    // Bodiless after bodies, then a body and a GET pipelined in one write.
    assert_eq!(c.request("GET", "/after", &[]).json()["path"], "/after");
    c.send(b"PUT /p1 HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhelloGET /p2 HTTP/1.1\r\nhost: x\r\n\r\n");
    let first = c.read(false).unwrap();
    let second = c.read(false).unwrap();
    assert_eq!(
        (first.json()["path"].as_str(), first.json()["received"].as_u64()),
        (Some("/p1"), Some(5))
    );
    assert_eq!(second.json()["path"], "/p2");
    assert!(!c.closed_within(Duration::from_millis(100)), "the connection stays open");
    assert!(b.connections.load(Ordering::Relaxed) <= 3, "instance connections were reused");
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let b = Backend::start("b");
    let gw = Gateway::with(web(&b)).workers(1).start();
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PUT /e HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n")
        .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"body").unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"}\n\r\n" || w.ends_with(b"}\n")) {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&chunk[..n]);
        if parse(&got).is_ok_and(|r| r.json()["received"].is_u64()) {
            break;
        }
    }
    let r = parse(&got).unwrap();
    assert_eq!((r.status, r.json()["received"].as_u64()), (200, Some(4)));
    assert!(r.json()["headers"].get("expect").is_none(), "the gateway answered the expectation");
}

#[test]
fn bodies_over_max_body_bytes_are_413_and_never_reach_the_instance() {
    let b = Backend::start("b");
    let gw = Gateway::with(web(&b).proxy("max_body_bytes = 100")).workers(1).start();
    let declared = raw(gw.port, b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 101\r\n\r\n");
    assert_eq!(status_of(&declared), 413, "{declared}");
    let mut over = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    over.extend_from_slice(&chunked(&[b'a'; 150], 50));
    let streamed = raw(gw.port, &over);
    assert_eq!(status_of(&streamed), 413, "{streamed}");
    assert_eq!(b.hits.load(Ordering::Relaxed), 0, "the instance received no request");
    let mut fits =
        b"POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 100\r\n\r\n".to_vec();
    fits.extend_from_slice(&[b'a'; 100]);
    let fits = raw(gw.port, &fits);
    assert_eq!(status_of(&fits), 200, "{fits}");
}

/// Every framing two parsers could read differently is refused before anything is forwarded;
/// bodies shorter or longer than declared reach the instance only as declared.
#[test]
fn framing_a_smuggler_would_try_never_reaches_an_instance() {
    let b = Backend::start("b");
    let gw = Gateway::with(web(&b)).workers(1).start();
    let refused: &[(&str, u16)] = &[
        ("content-length: 3\r\ntransfer-encoding: chunked\r\n", 400),
        ("transfer-encoding: chunked\r\ncontent-length: 3\r\n", 400),
        ("transfer-encoding: chunked, identity\r\n", 400),
        ("transfer-encoding: xchunked\r\n", 400),
        ("transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n", 400),
        ("transfer-encoding: identity\r\ntransfer-encoding: chunked\r\n", 400),
        ("transfer-encoding: gzip, chunked\r\n", 501),
        ("content-length: 3\r\ncontent-length: 3\r\n", 400),
        ("content-length: +3\r\n", 400),
        ("content-length: 3 3\r\n", 400),
        ("content-length: 0x3\r\n", 400),
    ];
    for (framing, status) in refused {
        let req = format!("POST /s HTTP/1.1\r\nhost: x\r\n{framing}\r\n3\r\nabc\r\n0\r\n\r\n");
        let r = raw(gw.port, req.as_bytes());
        assert_eq!(status_of(&r), *status, "{framing:?}: {r}");
        assert!(r.to_ascii_lowercase().contains("connection: close"), "{framing:?}: {r}");
    }
    let malformed_chunks: &[&[u8]] = &[
        b"3\nabc\r\n0\r\n\r\n",                    // bare LF after a size
        b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n", // a size that overflows
        b"3;ext=\x01\r\nabc\r\n0\r\n\r\n",         // a control character in an extension
        b"3\r\nabcdef\r\n0\r\n\r\n",               // data longer than its size
    ];
    for body in malformed_chunks {
        let mut req = b"POST /s HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        req.extend_from_slice(body);
        let r = raw(gw.port, &req);
        assert_eq!(status_of(&r), 400, "{:?}: {r}", String::from_utf8_lossy(body));
    }
    let mut long_ext =
        b"POST /s HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3;".to_vec();
    long_ext.extend_from_slice(&[b'e'; 5000]);
    long_ext.extend_from_slice(b"\r\nabc\r\n0\r\n\r\n");
    assert_eq!(status_of(&raw(gw.port, &long_ext)), 400, "a long chunk extension");
    let obs_fold = raw(gw.port, b"POST /s HTTP/1.1\r\nhost: x\r\ncontent-length:\r\n 3\r\n\r\nabc");
    assert_eq!(status_of(&obs_fold), 400, "obs-fold: {obs_fold}");
    assert_eq!(b.hits.load(Ordering::Relaxed), 0, "the instance received no request");

    // Longer than declared: the rest is the next request (here garbage: 400), the instance
    // gets exactly the declared body.
    let r =
        raw(gw.port, b"POST /l HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabcGARBAGE\r\n\r\n");
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.contains("\"received\":3"), "{r}");
    assert!(r.contains("HTTP/1.1 400"), "the bytes after the body were read as a request: {r}");
    // Shorter than declared, then the client leaves: the instance never sees a whole request.
    let hits = b.hits.load(Ordering::Relaxed);
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.write_all(b"POST /short HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(s);
    let r = raw(gw.port, b"GET /next HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert_eq!(status_of(&r), 200);
    assert_eq!(b.hits.load(Ordering::Relaxed), hits + 1, "only /next was answered");
}

/// An instance that closes without answering: one pooled connection and one fresh one at most
/// per attempt, never one execution per pooled connection.
#[test]
fn a_request_is_resent_at_most_once_when_its_pooled_connection_drops() {
    fn script(path: &str) -> (Vec<u8>, bool) {
        if path == "/drop" {
            return (Vec::new(), true);
        }
        std::thread::sleep(Duration::from_millis(200));
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(), false)
    }
    let instance = Scripted::start(script);
    let gw = Gateway::with(Toml::new().service("web", &[instance.address()], "").route_all("web"))
        .workers(1)
        .start();
    // Eight slow requests at once leave eight pooled connections to the instance.
    let warm: Vec<_> = (0..8)
        .map(|_| {
            let port = gw.port;
            std::thread::spawn(move || KeepAlive::connect(port).request("GET", "/slow", &[]).status)
        })
        .collect();
    for t in warm {
        assert_eq!(t.join().unwrap(), 200);
    }
    assert_eq!(instance.connections.load(Ordering::Relaxed), 8);
    let r = KeepAlive::connect(gw.port).request("GET", "/drop", &[]);
    assert_eq!(r.status, 502);
    let drops = instance.heads.lock().unwrap().iter().filter(|h| h.contains("/drop")).count();
    assert!(drops <= 2, "GET /drop executed {drops} times");
}

/// An instance that writes after a bodiless answer: those bytes are never another client's
/// answer, and the next clients get their own.
#[test]
fn bytes_after_a_bodiless_answer_never_reach_another_client() {
    fn script(path: &str) -> (Vec<u8>, bool) {
        let mut answer: Vec<u8> = match path {
            "/pwn" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            other => format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{other}", other.len())
                .into_bytes(),
        };
        if path == "/pwn" {
            answer.extend_from_slice(PAUSE);
            answer.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPWNED!");
        }
        (answer, false)
    }
    let instance = Scripted::start(script);
    let gw = Gateway::with(Toml::new().service("web", &[instance.address()], "").route_all("web"))
        .workers(1)
        .start();
    let mut a = KeepAlive::connect(gw.port);
    assert_eq!(a.request("GET", "/pwn", &[]).status, 204);
    // Once the instance's extra bytes have arrived on the pooled connection.
    std::thread::sleep(Duration::from_millis(300));
    for path in ["/b", "/c", "/d"] {
        let r = KeepAlive::connect(gw.port).request("GET", path, &[]);
        assert_eq!(r.body_text(), path, "{path} got someone else's answer");
    }
    assert_eq!(a.request("GET", "/a", &[]).body_text(), "/a");
}

/// Header routing reaches a service with the same protections as its `[[route]]`: the route's
/// header rules apply, and a canary (or a listed service) cannot be named.
#[test]
fn header_routing_cannot_skip_a_routes_protections() {
    let (user, canary, internal) =
        (Backend::start("user"), Backend::start("canary"), Backend::start("internal"));
    let body = Toml::new()
        .backends("user", &[&user])
        .backends("user-canary", &[&canary])
        .backends("internal", &[&internal])
        .section("[header_routing]", "deny_services = [\"internal\"]")
        .section(
            "[[route]]",
            "path_prefix = \"/users\"\nservice = \"user\"\n\
             canary = { service = \"user-canary\", percent = 0 }\n\
             request_headers = { remove = [\"x-user-id\"], set = { x-tier = \"edge\" } }",
        );
    let gw = Gateway::with(body).workers(1).start();
    let mut c = KeepAlive::connect(gw.port);
    for body in [None, Some("hi")] {
        let mut headers =
            vec![("service_name", "user"), ("api_name", "/me"), ("x-user-id", "admin")];
        if let Some(b) = body {
            headers.push(("content-length", "2"));
            c.send(
                format!(
                    "POST /services HTTP/1.1\r\nhost: x\r\n{}\r\n{b}",
                    headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect::<String>()
                )
                .as_bytes(),
            );
        } else {
            c.send(
                format!(
                    "GET /services HTTP/1.1\r\nhost: x\r\n{}\r\n",
                    headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect::<String>()
                )
                .as_bytes(),
            );
        }
        let r = c.read(false).unwrap();
        assert_eq!(r.backend(), "user");
        let seen = &r.json()["headers"];
        assert!(seen.get("x-user-id").is_none(), "the route strips it: {seen}");
        assert_eq!(seen["x-tier"], "edge");
    }
    for hidden in ["user-canary", "internal"] {
        let r = c.request("GET", "/services", &[("service_name", hidden), ("api_name", "/")]);
        assert_eq!(r.status, 404, "{hidden}");
    }
    assert_eq!(canary.hits.load(Ordering::Relaxed), 0);
    assert_eq!(internal.hits.load(Ordering::Relaxed), 0);
}

/// Contradictory answer framing (chunked and a Content-Length) is read as chunked and reaches
/// the client whole whichever side served it: the engine (HTTP/1.1) or hyper (h2c).
#[test]
fn a_chunked_answer_with_a_length_reaches_every_client_whole() {
    fn script(_: &str) -> (Vec<u8>, bool) {
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n\
                   5\r\nHELLO\r\n6\r\n WORLD\r\n0\r\n\r\n";
        (raw.as_bytes().to_vec(), false)
    }
    let instance = Scripted::start(script);
    let gw = Gateway::with(Toml::new().service("web", &[instance.address()], "").route_all("web"))
        .workers(1)
        .start();
    let r = KeepAlive::connect(gw.port).request("GET", "/h1", &[]);
    assert_eq!((r.body_text().as_str(), r.header("content-length")), ("HELLO WORLD", None));
    let req = hyper::Request::get(format!("http://127.0.0.1:{}/h2", gw.port))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let (_, headers, body) = support::http::h2_send(gw.port, req);
    let length = headers.get("content-length").map(|v| v.to_str().unwrap().to_string());
    assert_eq!((length, &body[..]), (None, &b"HELLO WORLD"[..]));
}

/// A WebSocket upgrade on the engine: the instance gets the upgrade asked again on its hop with
/// the policy's headers, bytes the client sent right behind its request reach the instance,
/// and the connection is a tunnel from the 101 on.
#[test]
fn an_upgrade_becomes_a_tunnel_on_the_engine() {
    let b = Backend::start("b");
    let gw = Gateway::with(web(&b)).workers(1).start();
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Forwarded-For: 6.6.6.6\r\n\r\nearly bytes").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("connection: upgrade\r\n") && head.contains("upgrade: websocket\r\n"));
    assert!(head.contains("via: 1.1 zkgate-"), "{head}");
    let mut echoed = [0u8; 11];
    s.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"early bytes", "bytes behind the request went through the tunnel");
    s.write_all(b"later").unwrap();
    let mut later = [0u8; 5];
    s.read_exact(&mut later).unwrap();
    assert_eq!(&later, b"later");
    let sent = b.heads.lock().unwrap().iter().find(|h| h.starts_with("GET /ws")).cloned().unwrap();
    let sent = sent.to_ascii_lowercase();
    assert!(sent.contains("connection: upgrade\r\n") && sent.contains("upgrade: websocket\r\n"));
    assert!(sent.contains("x-forwarded-for: 127.0.0.1\r\n") && !sent.contains("6.6.6.6"), "{sent}");
}

/// Trailers of a chunked answer reach the client after the gateway's last chunk, except the
/// fields a trailer may not carry (framing, routing, authentication …).
#[test]
fn allowed_trailers_are_forwarded_and_forbidden_ones_dropped() {
    fn script(_: &str) -> (Vec<u8>, bool) {
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
                   2\r\nok\r\n0\r\nX-Checksum: abc\r\nContent-Length: 99\r\nHost: evil.example\r\n\r\n";
        (raw.as_bytes().to_vec(), false)
    }
    let instance = Scripted::start(script);
    let gw = Gateway::with(Toml::new().service("web", &[instance.address()], "").route_all("web"))
        .workers(1)
        .start();
    let req = b"GET /t HTTP/1.1\r\nhost: x\r\nte: trailers\r\nconnection: close\r\n\r\n";
    let r = support::http::raw_until_close(gw.port, req);
    assert!(r.ends_with("2\r\nok\r\n0\r\nX-Checksum: abc\r\n\r\n"), "{r:?}");
    assert!(!r.contains("evil.example") && !r.contains("99"), "{r:?}");
}

/// HTTP/1.0 clients on the engine: keep-alive only when asked (and said back), a body of
/// unknown length sent as it comes and ended by the close (never chunked: a 1.0 client cannot
/// read it), a transfer coding refused.
#[test]
fn http10_clients_get_answers_they_can_read() {
    fn script(path: &str) -> (Vec<u8>, bool) {
        let raw = match path {
            "/chunked" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nHELLO\r\n6\r\n WORLD\r\n0\r\n\r\n".to_string(),
            other => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{other}", other.len()),
        };
        (raw.into_bytes(), false)
    }
    let instance = Scripted::start(script);
    let gw = Gateway::with(Toml::new().service("web", &[instance.address()], "").route_all("web"))
        .workers(1)
        .start();
    let mut c = KeepAlive::connect(gw.port);
    c.send(b"GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let first = c.read(false).unwrap();
    assert_eq!(
        (first.body_text().as_str(), first.header("connection")),
        ("/one", Some("keep-alive"))
    );
    c.send(b"GET /two HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read(false).unwrap().body_text(), "/two");
    let r = raw(gw.port, b"GET /chunked HTTP/1.0\r\n\r\n");
    assert!(r.ends_with("\r\n\r\nHELLO WORLD"), "{r:?}");
    assert!(!r.to_ascii_lowercase().contains("transfer-encoding"), "{r:?}");
    let r = raw(gw.port, b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(status_of(&r), 400, "{r:?}");
}
