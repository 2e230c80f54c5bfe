//! HTTP/2 and gRPC end to end, and TLS toward instances, on the real binary with a real gRPC
//! server and client (Python grpcio, from Debian's python3-grpcio; `tests/grpc/echo.py`):
//! unary, server streaming, bidirectional streaming, an error status, a deadline, the
//! gateway's own UNAVAILABLE; gRPC clients over TLS (ALPN h2); `protocol = "h2"` to a TLS gRPC
//! server; `upstream_tls` to an HTTP/1.1 instance behind TLS.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::pki::Pki;
use support::{free_port, Backend, Gateway, Toml};

/// The Python with grpcio (Debian's; `scripts/test` installs python3-grpcio).
const PYTHON: &str = "/usr/bin/python3";

fn script() -> String {
    format!("{}/tests/grpc/echo.py", env!("CARGO_MANIFEST_DIR"))
}

/// A gRPC server process, stopped by its saved pid when dropped.
struct GrpcServer {
    child: Child,
    port: u16,
}

impl GrpcServer {
    fn start(tls: Option<(&std::path::Path, &std::path::Path)>) -> GrpcServer {
        let port = free_port();
        let mut cmd = Command::new(PYTHON);
        cmd.arg(script()).arg("server").arg(port.to_string());
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let child =
            cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("python3 with grpcio");
        assert_eventually!(
            10,
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "gRPC server did not start"
        );
        GrpcServer { child, port }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the Python client against `port`; its JSON outcomes.
fn client(port: u16, tls: Option<(&std::path::Path, &str)>) -> serde_json::Value {
    let mut cmd = Command::new(PYTHON);
    cmd.arg(script()).arg("client").arg(port.to_string());
    if let Some((ca, name)) = tls {
        cmd.arg(ca).arg(name);
    }
    let out = cmd.output().expect("python3 with grpcio");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn grpc_routes(instance: &str, extra: &str) -> Toml {
    Toml::new()
        .section("[services.grpc]", &format!("instances = [\"{instance}\"]\n{extra}"))
        .section("[services.down]", "instances = [\"127.0.0.1:1\"]")
        .section("[[route]]", "path_prefix = \"/test.Echo\"\nservice = \"grpc\"")
        .section("[[route]]", "path_prefix = \"/down.Svc\"\nservice = \"down\"")
}

fn assert_every_call(results: &serde_json::Value) {
    assert_eq!(results["unary"]["ok"], "hello", "{results}");
    assert_eq!(
        results["server_stream"]["ok"],
        serde_json::json!(["msg0", "msg1", "msg2"]),
        "{results}"
    );
    assert_eq!(results["bidi"]["ok"], serde_json::json!(["A", "B", "C"]), "{results}");
    // The instance's own status and message, carried in trailers.
    assert_eq!(results["error"]["code"], "NOT_FOUND", "{results}");
    assert_eq!(results["error"]["details"], "nope", "{results}");
    // The gateway's own answer to a gRPC client: a gRPC status, not a JSON body.
    assert_eq!(results["no_instance"]["code"], "UNAVAILABLE", "{results}");
    assert!(
        results["no_instance"]["details"].as_str().unwrap().starts_with("zkgate: service down"),
        "{results}"
    );
}

#[test]
fn grpc_over_h2c_and_tls_passes_end_to_end() {
    let server = GrpcServer::start(None);
    let pki = Pki::new();
    let leaf = pki.leaf("gw", &["grpc.example"]);
    let tls_port = free_port();
    let toml = grpc_routes(&format!("127.0.0.1:{}", server.port), "protocol = \"h2c\"")
        .section("[[tls]]", &format!("cert = {:?}\nkey = {:?}", leaf.cert, leaf.key));
    let gw = Gateway::with(toml)
        .workers(1)
        .server_extra(&format!("listen_tls = [\"127.0.0.1:{tls_port}\"]"))
        .start();
    // h2c with prior knowledge, then TLS with ALPN h2.
    assert_every_call(&client(gw.port, None));
    assert_every_call(&client(tls_port, Some((&pki.ca_file(), "grpc.example"))));
}

#[test]
fn grpc_timeout_is_honoured_with_deadline_exceeded() {
    let server = GrpcServer::start(None);
    let gw =
        Gateway::with(grpc_routes(&format!("127.0.0.1:{}", server.port), "protocol = \"h2c\""))
            .workers(1)
            .start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
        let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        // The Slow method answers after 3 s; the client allows 300 ms and does not cancel.
        let req = hyper::Request::post("http://localhost/test.Echo/Slow")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "300m")
            .body(())
            .unwrap();
        let started = Instant::now();
        let (resp, mut body) = h2.send_request(req, false).unwrap();
        body.send_data(bytes::Bytes::from_static(b"\0\0\0\0\x01x"), true).unwrap();
        let resp = resp.await.unwrap();
        let took = started.elapsed();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED: {:?}", resp.headers());
        assert!(took < Duration::from_secs(2), "answered after {took:?}, not at the deadline");
        assert!(took >= Duration::from_millis(300), "answered before the deadline: {took:?}");
    });
}

#[test]
fn h2_over_tls_reaches_a_tls_grpc_server() {
    let pki = Pki::new();
    let leaf = pki.leaf("instance", &["localhost", "127.0.0.1"]);
    let server = GrpcServer::start(Some((&leaf.cert, &leaf.key)));
    let extra = format!("protocol = \"h2\"\nupstream_ca = {:?}", pki.ca_file());
    let gw = Gateway::with(grpc_routes(&format!("127.0.0.1:{}", server.port), &extra))
        .workers(1)
        .start();
    assert_every_call(&client(gw.port, None));
}

#[test]
fn upstream_tls_reaches_an_http1_instance_behind_tls_and_verifies_it() {
    let pki = Pki::new();
    let leaf = pki.leaf("inner", &["inner.example"]);
    let backend = Backend::start("b");
    // The instance: another gateway terminating TLS in front of a plain backend.
    let inner_tls = free_port();
    let _inner = Gateway::with(
        Toml::new()
            .backends("web", &[&backend])
            .route_all("web")
            .section("[[tls]]", &format!("cert = {:?}\nkey = {:?}", leaf.cert, leaf.key)),
    )
    .workers(1)
    .server_extra(&format!("listen_tls = [\"127.0.0.1:{inner_tls}\"]"))
    .start();
    let service = |sni: &str| {
        Toml::new()
            .section(
                "[services.web]",
                &format!(
                    "instances = [\"127.0.0.1:{inner_tls}\"]\nupstream_tls = true\nupstream_ca = {:?}\nupstream_sni = \"{sni}\"",
                    pki.ca_file()
                ),
            )
            .route_all("web")
    };
    let outer = Gateway::with(service("inner.example")).workers(1).start();
    let r = outer.get("/through").unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.json()["path"], "/through");
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https", "the inner gateway saw TLS");
    // A name the certificate does not carry: the handshake fails, the answer is 502.
    let wrong = Gateway::with(service("other.example")).workers(1).start();
    assert_eq!(wrong.get("/through").unwrap().status, 502);
    assert!(wrong.log().contains("TLS"), "{}", wrong.log());
}
