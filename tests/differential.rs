//! One header policy, whichever way a request arrives: a table of requests (every header the
//! policy touches, hostile variants included) is sent each way a client can send it — bodiless,
//! with a Content-Length body, chunked, after a POST on the same keep-alive connection, over
//! TLS, over h2c and h2 — and the instance must receive the same header lines, and the client
//! the same answer lines, minus what the protocol itself dictates (framing, `Connection`,
//! `X-Forwarded-Proto`/`-Port` on TLS, a fresh `X-Request-Id`).

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rustls::pki_types::ServerName;
use support::http::{parse, KeepAlive};
use support::pki::Pki;
use support::{free_port, Backend, Gateway, Toml};

/// The requests of the table: a name and its header lines.
fn cases() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        ("plain", vec![("accept", "*/*"), ("x-custom", "1"), ("user-agent", "diff/1")]),
        (
            "spoofed forwarding",
            vec![
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-proto", "gopher"),
                ("x-forwarded-port", "1"),
                ("forwarded", "for=6.6.6.6"),
                ("x-real-ip", "6.6.6.6"),
                ("true-client-ip", "6.6.6.6"),
                ("x-client-ip", "6.6.6.6"),
            ],
        ),
        (
            "owned identity",
            vec![
                ("x-auth-subject", "admin"),
                ("x-client-cert-subject", "CN=root"),
                ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
            ],
        ),
        (
            "hop-by-hop",
            vec![
                ("connection", "x-secret, x-request-id"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "gzip"),
                ("proxy-authorization", "Basic eA=="),
            ],
        ),
        ("request id", vec![("x-request-id", "client-id-1")]),
        ("via", vec![("via", "1.1 some-other-proxy")]),
        ("underscores", vec![("x_user", "admin"), ("x-user", "ok")]),
        ("repeated", vec![("x-dup", "a"), ("x-dup", "b"), ("cookie", "a=1"), ("cookie", "b=2")]),
        ("route rules", vec![("x-strip", "secret"), ("x-set", "client")]),
        ("cors allowed", vec![("origin", "https://app.example")]),
        ("cors refused", vec![("origin", "https://other.example")]),
        ("compressed", vec![("accept-encoding", "gzip;q=0.5, zstd")]),
    ]
}

/// Ways a request reaches the gateway.
const WAYS: [&str; 7] = ["bodiless", "content-length", "chunked", "after-post", "tls", "h2c", "h2"];

/// Lines a protocol cannot carry (HTTP/2 forbids connection-specific fields) or dictates.
fn protocol_specific(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "te"
    )
}

/// The header lines the instance received for the request to `path`, minus what the protocol
/// dictates (cookies as one list: HTTP/2 may split or join them).
fn received(b: &Backend, path: &str) -> Vec<String> {
    let heads = b.heads.lock().unwrap();
    let head = heads
        .iter()
        .find(|h| h.split_whitespace().nth(1) == Some(path))
        .unwrap_or_else(|| panic!("the instance never received {path}"));
    let mut lines: Vec<String> = Vec::new();
    let mut cookies = Vec::new();
    for line in head.lines().skip(1).filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap();
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_string());
        match name.as_str() {
            "content-length" | "transfer-encoding" | "host" => {}
            "x-forwarded-proto" | "x-forwarded-port" => {
                lines.push(format!("{name}: <per listener>"))
            }
            "x-request-id" if value.len() == 32 => lines.push(format!("{name}: <fresh>")),
            "cookie" => cookies.extend(value.split("; ").map(str::to_string)),
            _ => lines.push(format!("{name}: {value}")),
        }
    }
    if !cookies.is_empty() {
        lines.push(format!("cookie: {}", cookies.join("; ")));
    }
    // Lines of one name keep their order (it is their meaning); names may come in any order
    // (hyper's map groups a name's lines together).
    lines.sort_by(|a, b| a.split(':').next().cmp(&b.split(':').next()));
    lines
}

/// The answer's header lines as the client received them, minus framing.
fn answer_lines(headers: &[(String, String)]) -> Vec<String> {
    let mut lines: Vec<String> = headers
        .iter()
        .filter(|(n, _)| {
            !matches!(n.as_str(), "content-length" | "transfer-encoding" | "connection" | "date")
        })
        .map(|(n, v)| format!("{n}: {v}"))
        .collect();
    lines.sort();
    lines
}

fn h1_request(method: &str, path: &str, lines: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: api.example\r\n");
    for (n, v) in lines {
        req += &format!("{n}: {v}\r\n");
    }
    match body {
        "" => {}
        "chunked" => req += "transfer-encoding: chunked\r\n",
        b => req += &format!("content-length: {}\r\n", b.len()),
    }
    req += "\r\n";
    match body {
        "" => {}
        "chunked" => req += "5\r\nhello\r\n0\r\n\r\n",
        b => req += b,
    }
    req.into_bytes()
}

fn h1_answer(r: &support::http::Response) -> Vec<(String, String)> {
    r.headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.clone())).collect()
}

/// Sends one request the given way; returns the answer's header lines.
fn send(
    way: &str,
    gw_port: u16,
    tls_port: u16,
    pki: &Pki,
    path: &str,
    lines: &[(&str, &str)],
) -> Vec<(String, String)> {
    // What an HTTP/2 client sends for the same request: no connection-specific lines, and so
    // no line a Connection header would have named either.
    let named: Vec<String> = lines
        .iter()
        .filter(|(n, _)| *n == "connection")
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    let h2_lines: Vec<(&str, &str)> = lines
        .iter()
        .copied()
        .filter(|(n, _)| !protocol_specific(n) && !named.iter().any(|t| t == n))
        .collect();
    match way {
        "bodiless" => {
            let mut c = KeepAlive::connect(gw_port);
            c.send(&h1_request("GET", path, lines, ""));
            h1_answer(&c.read(false).unwrap())
        }
        "content-length" => {
            let mut c = KeepAlive::connect(gw_port);
            c.send(&h1_request("POST", path, lines, "{\"a\":1}"));
            h1_answer(&c.read(false).unwrap())
        }
        "chunked" => {
            let mut c = KeepAlive::connect(gw_port);
            c.send(&h1_request("POST", path, lines, "chunked"));
            h1_answer(&c.read(false).unwrap())
        }
        "after-post" => {
            let mut c = KeepAlive::connect(gw_port);
            c.send(&h1_request("POST", "/warm-up", &[], "{\"a\":1}"));
            c.read(false).unwrap();
            c.send(&h1_request("GET", path, lines, ""));
            h1_answer(&c.read(false).unwrap())
        }
        "tls" => {
            let config = pki.client(&[b"http/1.1"]);
            let conn =
                rustls::ClientConnection::new(config, ServerName::try_from("api.example").unwrap())
                    .unwrap();
            let tcp = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut lines = lines.to_vec();
            lines.push(("connection", "close"));
            tls.write_all(&h1_request("GET", path, &lines, "")).unwrap();
            let mut raw = Vec::new();
            let _ = tls.read_to_end(&mut raw);
            h1_answer(&parse(&raw).unwrap())
        }
        "h2c" | "h2" => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let tcp = tokio::net::TcpStream::connect((
                    "127.0.0.1",
                    if way == "h2" { tls_port } else { gw_port },
                ))
                .await
                .unwrap();
                let mut req = hyper::Request::get(format!(
                    "{}://api.example{path}",
                    if way == "h2" { "https" } else { "http" }
                ));
                for (n, v) in &h2_lines {
                    req = req.header(*n, *v);
                }
                let req = req.body(()).unwrap();
                let resp = if way == "h2" {
                    let connector = tokio_rustls::TlsConnector::from(pki.client(&[b"h2"]));
                    let tls = connector
                        .connect(ServerName::try_from("api.example").unwrap(), tcp)
                        .await
                        .unwrap();
                    let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
                    tokio::spawn(conn);
                    h2.send_request(req, true).unwrap().0.await.unwrap()
                } else {
                    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
                    tokio::spawn(conn);
                    h2.send_request(req, true).unwrap().0.await.unwrap()
                };
                resp.headers()
                    .iter()
                    .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap().to_string()))
                    .collect()
            })
        }
        other => panic!("no way {other}"),
    }
}

#[test]
fn every_way_a_request_arrives_gets_the_same_header_policy() {
    let pki = Pki::new();
    let leaf = pki.leaf("api", &["api.example"]);
    let b = Backend::start("b");
    let tls_port = free_port();
    let toml = Toml::new()
        .backends("web", &[&b])
        .section(
            "[[route]]",
            "path_prefix = \"/\"\nservice = \"web\"\n\
             request_headers = { remove = [\"x-strip\"], set = { x-set = \"gateway\" }, add = { x-added = \"1\" } }\n\
             response_headers = { set = { x-answer = \"gw\" }, remove = [\"x-backend\"] }\n\
             cors = { origins = [\"https://app.example\"], credentials = true, expose = [\"x-request-id\"] }\n\
             compress = { min_bytes = 0 }",
        )
        .section("[[tls]]", &format!("cert = {:?}\nkey = {:?}\n", leaf.cert, leaf.key));
    let gw = Gateway::with(toml)
        .workers(1)
        .server_extra(&format!("listen_tls = [\"127.0.0.1:{tls_port}\"]"))
        .start();
    for (case, lines) in cases() {
        let mut seen: BTreeMap<&str, (Vec<String>, Vec<String>)> = BTreeMap::new();
        for way in WAYS {
            let path = format!("/diff/{}/{way}", case.replace(' ', "-"));
            let answer = send(way, gw.port, tls_port, &pki, &path, &lines);
            seen.insert(way, (received(&b, &path), answer_lines(&answer)));
        }
        let (want_request, want_answer) = seen["bodiless"].clone();
        // HTTP/2 cannot carry connection-specific lines; the policy drops them anyway, so the
        // instance must still see the same.
        for (way, (request, answer)) in &seen {
            assert_eq!(request, &want_request, "{case}: the instance received, via {way}");
            assert_eq!(answer, &want_answer, "{case}: the client received, via {way}");
        }
        // And what the policy promises, once per case.
        let joined = want_request.join("\n");
        for never in [
            "6.6.6.6",
            "evil.example",
            "gopher",
            "x-secret",
            "keep-alive",
            "x_user",
            "secret",
            "proxy-authorization",
            "forwarded:",
            "admin",
            "CN=root",
            "http2-settings",
        ] {
            assert!(!joined.contains(never), "{case}: {never} reached the instance:\n{joined}");
        }
        assert!(joined.contains("x-forwarded-for: 127.0.0.1"), "{case}:\n{joined}");
        assert!(
            joined.contains("x-set: gateway") && joined.contains("x-added: 1"),
            "{case}:\n{joined}"
        );
        assert!(want_answer.contains(&"x-answer: gw".to_string()), "{case}: {want_answer:?}");
        // CORS: the gateway's lines on an allowed origin's answer, `Vary: Origin` on every one.
        let has = |line: &str| want_answer.iter().any(|l| l == line);
        assert!(has("vary: origin"), "{case}: {want_answer:?}");
        let allowed = case == "cors allowed";
        assert_eq!(has("access-control-allow-origin: https://app.example"), allowed, "{case}");
        assert_eq!(has("access-control-allow-credentials: true"), allowed, "{case}");
        assert_eq!(has("access-control-expose-headers: x-request-id"), allowed, "{case}");
        // Compression: the coding the client weighs highest, only when it asks; caches told.
        assert!(has("vary: accept-encoding"), "{case}: {want_answer:?}");
        assert_eq!(has("content-encoding: zstd"), case == "compressed", "{case}: {want_answer:?}");
        assert!(!want_answer.iter().any(|l| l.starts_with("x-backend")), "{case}: {want_answer:?}");
    }
}
