//! The HTTP/1.1 fast path, end to end on the real binary: what every framing an instance may
//! send becomes for a keep-alive client, pipelining, the hand-over to the full path in the
//! middle of a connection, and pooled connections an instance closed under the gateway.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::backend::Scripted;
use support::http::KeepAlive;
use support::{Backend, Gateway, Toml};

fn answers(path: &str) -> (Vec<u8>, bool) {
    let (raw, close): (&str, bool) = match path {
        "/len" => ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
        "/chunked" => (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n\
             5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        ),
        "/early" => (
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/none" => ("HTTP/1.1 204 No Content\r\n\r\n", false),
        "/head" => ("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", false),
        "/hop" => (
            "HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Authenticate: Basic\r\nX-Kept: 1\r\nContent-Length: 0\r\n\r\n",
            false,
        ),
        "/eof" => ("HTTP/1.1 200 OK\r\n\r\nuntil the instance closes", true),
        "/extra" => {
            ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n", false)
        }
        "/badchunk" => {
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n", true)
        }
        other => {
            return (
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{other}", other.len())
                    .into_bytes(),
                false,
            )
        }
    };
    (raw.as_bytes().to_vec(), close)
}

#[test]
fn every_instance_framing_reaches_a_keep_alive_client_framed_by_the_gateway() {
    let instance = Scripted::start(answers);
    let gw = Gateway::with(Toml::new().service("web", &[instance.address()], "").route_all("web"))
        .workers(1)
        .start();
    let mut c = KeepAlive::connect(gw.port);

    let r = c.request("GET", "/len", &[]);
    assert_eq!((r.status, r.body_text().as_str()), (200, "hello"));
    assert!(r.header("via").is_some_and(|v| v.starts_with("1.1 ")), "{:?}", r.headers);

    // Chunked (with an extension, a trailer and a Content-Length it overrides): decoded and
    // encoded again; the stray Content-Length never reaches the client.
    let r = c.request("GET", "/chunked", &[]);
    assert_eq!((r.status, r.body_text().as_str()), (200, "hello world"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("content-length"), None);

    // Interim answers are not forwarded; the final one is.
    let r = c.request("GET", "/early", &[]);
    assert_eq!((r.status, r.body_text().as_str()), (200, "ok"));

    assert_eq!(c.request("GET", "/none", &[]).status, 204);
    let r = c.request("HEAD", "/head", &[]);
    assert_eq!((r.status, r.header("content-length")), (200, Some("100")), "HEAD keeps its length");

    // Hop-by-hop headers, and those the instance's Connection names, stay on its hop.
    let r = c.request("GET", "/hop", &[]);
    for gone in ["x-secret", "keep-alive", "proxy-authenticate", "connection"] {
        assert_eq!(r.header(gone), None, "{gone} forwarded: {:?}", r.headers);
    }
    assert_eq!(r.header("x-kept"), Some("1"));
    assert_eq!(instance.connections.load(Ordering::Relaxed), 1, "one upstream connection so far");

    // A body delimited by the instance closing reaches the client chunked: its own connection
    // survives.
    let r = c.request("GET", "/eof", &[]);
    assert_eq!((r.status, r.body_text().as_str()), (200, "until the instance closes"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));

    // Bytes after a Content-Length body are not the client's, and the connection that carried
    // them is never reused.
    let r = c.request("GET", "/extra", &[]);
    assert_eq!((r.status, r.body_text().as_str()), (200, "ok"));
    let r = c.request("GET", "/len", &[]);
    assert_eq!((r.status, r.body_text().as_str()), (200, "hello"));
    assert_eq!(
        instance.connections.load(Ordering::Relaxed),
        3,
        "a new upstream connection after the closing instance, and after the extra bytes"
    );

    // A malformed chunked body from the start: 502, and the connection ends.
    let r = c.request("GET", "/badchunk", &[]);
    assert_eq!(r.status, 502);
    assert!(c.closed_within(Duration::from_secs(5)));

    // Every request reached the instance once, with this hop's headers.
    let heads = instance.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 10, "{heads:#?}");
    for head in &heads {
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"), "{head}");
        assert!(lower.contains("\r\nx-forwarded-proto: http\r\n"), "{head}");
        // preserve_host (the default): the client's Host, and the same in X-Forwarded-Host.
        assert!(lower.contains("\r\nhost: localhost\r\n"), "{head}");
        assert!(lower.contains("\r\nx-forwarded-host: localhost\r\n"), "{head}");
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let instance = Scripted::start(answers);
    let gw = Gateway::with(Toml::new().service("web", &[instance.address()], "").route_all("web"))
        .workers(1)
        .start();
    let mut c = KeepAlive::connect(gw.port);
    let mut burst = String::new();
    for i in 0..5 {
        burst += &format!("GET /p{i} HTTP/1.1\r\nhost: x\r\n\r\n");
    }
    c.send(burst.as_bytes());
    for i in 0..5 {
        let r = c.read(false).expect("pipelined answer");
        assert_eq!(r.body_text(), format!("/p{i}"));
    }
}

#[test]
fn a_keep_alive_connection_moves_to_the_full_path_for_a_body_and_keeps_working() {
    let b = Backend::start("b");
    let gw = Gateway::with(Toml::new().backends("web", &[&b]).route_all("web")).workers(1).start();
    let mut c = KeepAlive::connect(gw.port);
    let r = c.request("GET", "/first", &[]);
    assert_eq!((r.status, r.json()["path"].as_str()), (200, Some("/first")));
    // A body: hyper serves the connection from here on, starting with the bytes already read.
    c.send(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\nhello world");
    let r = c.read(false).unwrap();
    assert_eq!((r.status, r.json()["path"].as_str()), (200, Some("/upload")));
    assert_eq!(r.json()["received"].as_u64(), Some(11), "{}", r.body_text());
    let r = c.request("GET", "/after", &[]);
    assert_eq!((r.status, r.json()["path"].as_str()), (200, Some("/after")));
    assert_eq!(b.hits.load(Ordering::Relaxed), 3);
}

fn close_after_each(path: &str) -> (Vec<u8>, bool) {
    // Keep-alive in words, a close in deeds: what an instance with a tiny keepalive_timeout
    // looks like from the pool.
    (format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}", path.len()).into_bytes(), true)
}

#[test]
fn pooled_connections_the_instance_closed_cost_no_request() {
    let instance = Scripted::start(close_after_each);
    let gw = Gateway::with(Toml::new().service("web", &[instance.address()], "").route_all("web"))
        .workers(1)
        .start();
    let mut c = KeepAlive::connect(gw.port);
    for i in 0..200u64 {
        let path = format!("/r{i}");
        let r = c.request("GET", &path, &[]);
        assert_eq!((r.status, r.body_text()), (200, path));
        // Now and then give the close time to arrive before the next request, now and then not.
        std::thread::sleep(Duration::from_micros(i * 300 % 2000));
    }
    assert_eq!(instance.heads.lock().unwrap().len(), 200, "each request sent once");
}
