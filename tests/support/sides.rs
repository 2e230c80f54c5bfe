//! One request, each way a client sends it: HTTP/1.1 on the plain listener, HTTP/1.1 over TLS
//! and HTTP/2 over TLS (ALPN), so a test asserts that every protocol side does the same.
//! Certificates come from a test CA for `api.example`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::http::{parse, Response};
use super::pki::Pki;
use super::{free_port, Gateway, Toml};

/// The ways a request arrives.
pub const WAYS: [&str; 3] = ["h1", "tls", "h2"];

/// A gateway with a plain and a TLS listener, and what it takes to reach both.
pub struct Sides {
    pub gw: Gateway,
    pub tls_port: u16,
    pki: Pki,
}

impl Sides {
    /// Starts one worker on `toml` with a TLS listener for `api.example` besides the plain one;
    /// `server` adds `[server]` keys.
    pub fn start(toml: Toml, server: &str) -> Sides {
        let pki = Pki::new();
        let leaf = pki.leaf("api", &["api.example"]);
        let tls_port = free_port();
        let toml =
            toml.section("[[tls]]", &format!("cert = {:?}\nkey = {:?}\n", leaf.cert, leaf.key));
        let gw = Gateway::with(toml)
            .workers(1)
            .admin()
            .server_extra(&format!("listen_tls = [\"127.0.0.1:{tls_port}\"]\n{server}"))
            .start();
        Sides { gw, tls_port, pki }
    }

    /// Sends `method path` with `headers` (and `Host: api.example`) the given way.
    pub fn send(&self, way: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nhost: api.example\r\nconnection: close\r\n");
        for (n, v) in headers {
            head += &format!("{n}: {v}\r\n");
        }
        head += "\r\n";
        match way {
            "h1" => {
                let mut s = TcpStream::connect(("127.0.0.1", self.gw.port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(head.as_bytes()).unwrap();
                let mut raw = Vec::new();
                let _ = s.read_to_end(&mut raw);
                parse(&raw).unwrap()
            }
            "tls" => {
                let config = self.pki.client(&[b"http/1.1"]);
                let name = ServerName::try_from("api.example").unwrap();
                let conn = rustls::ClientConnection::new(config, name).unwrap();
                let tcp = TcpStream::connect(("127.0.0.1", self.tls_port)).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                tls.write_all(head.as_bytes()).unwrap();
                let mut raw = Vec::new();
                let _ = tls.read_to_end(&mut raw);
                parse(&raw).unwrap()
            }
            "h2" => self.h2(method, path, headers),
            other => panic!("no way {other}"),
        }
    }

    fn h2(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.tls_port)).await.unwrap();
            let connector = tokio_rustls::TlsConnector::from(self.pki.client(&[b"h2"]));
            let name = ServerName::try_from("api.example").unwrap();
            let tls = connector.connect(name, tcp).await.unwrap();
            let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
            tokio::spawn(conn);
            let mut req =
                hyper::Request::builder().method(method).uri(format!("https://api.example{path}"));
            for (n, v) in headers {
                req = req.header(*n, *v);
            }
            let (resp, _) = h2.send_request(req.body(()).unwrap(), true).unwrap();
            let resp = resp.await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            let mut body = resp.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                body.flow_control().release_capacity(chunk.len()).unwrap();
                bytes.extend_from_slice(&chunk);
            }
            Response { status, headers, body: bytes }
        })
    }
}
