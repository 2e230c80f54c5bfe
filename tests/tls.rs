//! TLS termination on the real binary, with certificates each test generates (a CA and a leaf
//! per name, rcgen): SNI picks the certificate and no SNI gets the first, HTTP/1.1 and h2 by
//! ALPN, `X-Forwarded-Proto: https`, session tickets resumed on any worker, certificates
//! re-read on HUP (a broken file keeps the old ones), `zkgate check`'s summary, and client
//! certificates: required, optional, another CA's and a revoked one refused, the verified
//! subject passed on as `X-Client-Cert-Subject` (a client's own such line dropped).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use rustls::pki_types::{CertificateDer, ServerName};
use support::pki::{Leaf, Pki};
use support::{free_port, Backend, Gateway, Toml};

fn tls_section(leaf: &Leaf) -> String {
    format!("cert = {:?}\nkey = {:?}\n", leaf.cert, leaf.key)
}

/// What one HTTPS exchange saw.
struct Seen {
    leaf: CertificateDer<'static>,
    resumed: bool,
    response: support::http::Response,
}

/// One `GET path` over TLS to the gateway, as `name` (an IP address sends no SNI).
fn get(config: &Arc<rustls::ClientConfig>, port: u16, name: &str, path: &str) -> Seen {
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), server_name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let req = format!("GET {path} HTTP/1.1\r\nhost: {name}\r\nconnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let leaf = tls.conn.peer_certificates().unwrap()[0].clone().into_owned();
    let resumed = tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let response = support::http::parse(&raw).unwrap();
    Seen { leaf, resumed, response }
}

fn https_gateway(b: &Backend, certs: &[&Leaf], workers: usize) -> (Gateway, u16) {
    let port = free_port();
    let mut toml = Toml::new().backends("web", &[b]).route_all("web").proxy("debug_headers = true");
    for leaf in certs {
        toml = toml.section("[[tls]]", &tls_section(leaf));
    }
    let gw = Gateway::with(toml)
        .workers(workers)
        .server_extra(&format!("listen_tls = [\"127.0.0.1:{port}\"]"))
        .start();
    (gw, port)
}

#[test]
fn sni_picks_the_certificate_and_requests_are_proxied_as_https() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.example", "127.0.0.1"]);
    let b = pki.leaf("b", &["b.example", "*.wild.example"]);
    let backend = Backend::start("b1");
    let (gw, port) = https_gateway(&backend, &[&a, &b], 1);
    let client = pki.client(&[]);

    let seen = get(&client, port, "a.example", "/x");
    assert_eq!(seen.leaf, a.der);
    assert_eq!(seen.response.status, 200);
    let echoed = seen.response.json();
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https", "{echoed}");
    assert_eq!(echoed["path"], "/x");

    assert_eq!(get(&client, port, "b.example", "/").leaf, b.der);
    assert_eq!(get(&client, port, "api.wild.example", "/").leaf, b.der, "wildcard");
    // No SNI (an IP address): the first certificate.
    assert_eq!(get(&client, port, "127.0.0.1", "/").leaf, a.der);
    // The plain listener still speaks plain HTTP, with X-Forwarded-Proto: http.
    let plain = gw.get("/p").unwrap();
    assert_eq!(plain.json()["headers"]["x-forwarded-proto"], "http");
}

#[test]
fn alpn_h2_clients_are_served_over_http2() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.example"]);
    let backend = Backend::start("b1");
    let (_gw, port) = https_gateway(&backend, &[&a], 1);
    let client = pki.client(&[b"h2", b"http/1.1"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = ServerName::try_from("a.example").unwrap();
        let tls = tokio_rustls::TlsConnector::from(client).connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("https://a.example/over-h2").body(()).unwrap();
        let (resp, _) = h2.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        let echoed: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(echoed["path"], "/over-h2");
        assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");
    });
}

#[test]
fn a_session_resumes_on_any_worker() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.example"]);
    let backend = Backend::start("b1");
    let (_gw, port) = https_gateway(&backend, &[&a], 2);
    // One client configuration: its session store carries the tickets from one connection to
    // the next.
    let client = pki.client(&[]);
    let first = get(&client, port, "a.example", "/");
    assert!(!first.resumed);
    let mut workers = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let seen = get(&client, port, "a.example", "/");
        assert!(seen.resumed, "a full handshake: the ticket was not accepted");
        workers.insert(seen.response.header("x-zkgate-worker").unwrap().to_string());
    }
    assert_eq!(workers.len(), 2, "resumed connections landed on one worker only: {workers:?}");
}

#[test]
fn a_ticket_issued_before_a_reload_resumes_on_the_new_workers() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.example"]);
    let backend = Backend::start("b1");
    let (gw, port) = https_gateway(&backend, &[&a], 2);
    let client = pki.client(&[]);
    assert!(!get(&client, port, "a.example", "/").resumed);
    let old = gw.workers();
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    assert_eventually!(
        15,
        gw.workers().len() == 2 && gw.workers().iter().all(|w| !old.contains(w)),
        "not reloaded"
    );
    // The new workers read the period's key from the host's region: no full handshake.
    let seen = get(&client, port, "a.example", "/");
    assert!(seen.resumed, "the ticket from before the reload was refused");
}

/// How many pipes a process holds open.
fn pipes(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("pipe:"))
        .count()
}

/// USR2 maps a new region in the new binary: the old one hands its ticket keys over (a pipe,
/// not the environment), so a session from before the upgrade resumes on the new workers.
#[test]
fn a_ticket_issued_before_an_upgrade_resumes_on_the_new_binary() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.example"]);
    let backend = Backend::start("b1");
    let (mut gw, port) = https_gateway(&backend, &[&a], 2);
    let client = pki.client(&[]);
    assert!(!get(&client, port, "a.example", "/").resumed);
    let pipes_before = pipes(gw.pid().as_raw());
    gw.signal(Signal::SIGUSR2);
    assert_eventually!(20, gw.successor().is_some(), "no take-over:\n{}", gw.log());
    // Only the new binary's workers are left to answer.
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0), "{}", gw.log());
    let seen = get(&client, port, "a.example", "/");
    assert_eq!(seen.response.status, 200);
    assert!(seen.resumed, "the ticket from before the upgrade was refused:\n{}", gw.log());
    // The hand-over pipe was read and closed, not left open in the new supervisor.
    assert_eq!(pipes(gw.successor().unwrap()), pipes_before);
}

fn write_over(dst: &Path, src: &Path) {
    // Written aside and renamed: the gateway never reads half a file.
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

#[test]
fn certificates_are_reread_on_hup_and_a_broken_file_keeps_the_old_ones() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.example"]);
    let renewed = pki.leaf("renewed", &["a.example"]);
    let backend = Backend::start("b1");
    let (gw, port) = https_gateway(&backend, &[&a], 1);
    // A fresh client each time: a resumed session shows the certificate it was first given.
    let served = || get(&pki.client(&[]), port, "a.example", "/").leaf;
    assert_eq!(served(), a.der);

    // A broken certificate: the reload fails, the old certificate keeps being served.
    std::fs::write(&a.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    gw.signal(Signal::SIGHUP);
    assert_eventually!(10, gw.log_count("reload failed") == 1, "{}", gw.log());
    assert!(gw.log().contains("[[tls]]"), "{}", gw.log());
    assert_eq!(served(), a.der);

    // A renewed certificate (new key too): served after the next HUP.
    write_over(&a.key, &renewed.key);
    write_over(&a.cert, &renewed.cert);
    let before = gw.readiness();
    gw.signal(Signal::SIGHUP);
    assert_eventually!(15, gw.reloaded(before), "{}", gw.log());
    assert_eq!(served(), renewed.der);
}

#[test]
fn check_validates_certificates_and_shows_their_expiry() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.example", "www.a.example"]);
    let other = pki.leaf("other", &["other.example"]);
    let dir = tempfile::tempdir().unwrap();
    let config = |cert: &Path, key: &Path| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\nlisten_tls = [\"127.0.0.1:2\"]\n[services.s]\ninstances = [\"127.0.0.1:9\"]\n[[tls]]\ncert = {cert:?}\nkey = {key:?}\n"
        )
    };
    let check = |text: String| {
        let path = support::write_file(dir.path(), "gateway.toml", &text);
        let out = std::process::Command::new(support::zkgate())
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = check(config(&a.cert, &a.key));
    assert!(ok, "{out}");
    assert!(out.contains("[a.example, www.a.example]") && out.contains("days left"), "{out}");
    let (ok, out) = check(config(&a.cert, &other.key));
    assert!(!ok && out.contains("does not match"), "a key of another certificate: {out}");
    let (ok, out) = check(config(&dir.path().join("missing.pem"), &a.key));
    assert!(!ok && out.contains("missing.pem"), "{out}");
    let (ok, out) = check(config(&a.cert, &a.key).replace("listen_tls = [\"127.0.0.1:2\"]\n", ""));
    assert!(!ok && out.contains("listen_tls"), "certificates without a TLS listener: {out}");
}

#[test]
fn tls12_clients_are_served_and_resume_with_tickets() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.example"]);
    let backend = Backend::start("b1");
    let (_gw, port) = https_gateway(&backend, &[&a], 2);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let first = get(&client, port, "a.example", "/");
    assert_eq!((first.response.status, first.resumed), (200, false));
    for _ in 0..6 {
        let seen = get(&client, port, "a.example", "/");
        assert!(seen.resumed, "TLS 1.2 session ticket not accepted");
    }
}

/// `header_read_timeout` counts once from the accept, the handshake included: a client that
/// takes most of it to shake hands gets the rest for its head, not a second allowance.
#[test]
fn the_handshake_and_the_first_head_share_one_header_read_timeout() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.example"]);
    let backend = Backend::start("b1");
    let port = free_port();
    let toml = Toml::new()
        .backends("web", &[&backend])
        .route_all("web")
        .proxy("header_read_timeout = \"2s\"")
        .section("[[tls]]", &tls_section(&a));
    let _gw = Gateway::with(toml)
        .workers(1)
        .server_extra(&format!("listen_tls = [\"127.0.0.1:{port}\"]"))
        .start();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let accepted = std::time::Instant::now();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let name = ServerName::try_from("a.example").unwrap();
    let conn = rustls::ClientConnection::new(pki.client(&[b"http/1.1"]), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("the handshake completes in time");
    }
    // Silent after the handshake: closed at the one deadline (2 s from the accept), not 2 s
    // after the handshake.
    let mut byte = [0u8; 1];
    let _ = tls.read(&mut byte);
    let closed = accepted.elapsed();
    assert!(closed < Duration::from_millis(3000), "closed {closed:?} after the accept");
    assert!(closed >= Duration::from_millis(1900), "closed early: {closed:?}");
}

/// One `GET path` over TLS; Err: the handshake or the exchange failed (a refused client
/// certificate shows as an alert on the first read under TLS 1.3).
fn try_get(
    config: &Arc<rustls::ClientConfig>,
    port: u16,
    headers: &str,
) -> Result<support::http::Response, String> {
    let name = ServerName::try_from("a.example").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let req = format!("GET /who HTTP/1.1\r\nhost: a.example\r\n{headers}connection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    support::http::parse(&raw).map_err(|e| e.to_string())
}

fn mtls_gateway(pki: &Pki, backend: &Backend, client_auth: &str) -> (Gateway, u16) {
    let server = pki.leaf("server", &["a.example"]);
    let port = free_port();
    let keys = format!("{}client_ca = {:?}\n{client_auth}", tls_section(&server), pki.ca_file());
    let toml = Toml::new().backends("web", &[backend]).route_all("web").section("[[tls]]", &keys);
    let gw = Gateway::with(toml)
        .workers(2)
        .admin()
        .server_extra(&format!("listen_tls = [\"127.0.0.1:{port}\"]"))
        .start();
    (gw, port)
}

#[test]
fn client_certificates_are_required_verified_and_their_subject_passed_on() {
    let pki = Pki::new();
    let backend = Backend::start("b1");
    let (gw, port) = mtls_gateway(&pki, &backend, "");
    let good = pki.client_leaf("client", "client-7");
    let other_ca = Pki::new();
    let stranger = other_ca.client_leaf("stranger", "client-7");
    let forged = "x-client-cert-subject: CN=admin\r\nx-auth-subject: admin\r\n";

    let r =
        try_get(&pki.client_with_cert(&good), port, forged).expect("a CA-signed client is served");
    assert_eq!(r.status, 200);
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-client-cert-subject"], "CN=client-7,O=zkgate tests", "{seen}");
    assert!(seen.get("x-auth-subject").is_none(), "{seen}");
    let head = backend.heads.lock().unwrap().last().cloned().unwrap();
    assert_eq!(head.to_ascii_lowercase().matches("x-client-cert-subject").count(), 1, "{head}");

    let hits = backend.hits.load(std::sync::atomic::Ordering::Relaxed);
    assert!(try_get(&pki.client(&[]), port, "").is_err(), "no certificate: no connection");
    assert!(
        try_get(&pki.client_with_cert(&stranger), port, "").is_err(),
        "a certificate of another CA: no connection"
    );
    assert_eq!(backend.hits.load(std::sync::atomic::Ordering::Relaxed), hits);
    assert_eventually!(
        5,
        gw.metric("zkgate_tls_handshakes_total", "result=\"failed\"") >= 2,
        "refused handshakes counted"
    );
    assert!(gw.metric("zkgate_tls_handshakes_total", "result=\"ok\"") >= 1);
    assert!(gw.metric("zkgate_tls_certificate_not_after_seconds", "a.example") > 0);
}

#[test]
fn optional_client_certificates_let_anonymous_clients_in_without_a_subject() {
    let pki = Pki::new();
    let backend = Backend::start("b1");
    let (_gw, port) = mtls_gateway(&pki, &backend, "client_auth = \"optional\"\n");
    let r = try_get(&pki.client(&[]), port, "x-client-cert-subject: CN=forged\r\n").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("x-client-cert-subject").is_none(), "{}", r.body_text());
    let good = pki.client_leaf("client", "client-8");
    let r = try_get(&pki.client_with_cert(&good), port, "").unwrap();
    assert_eq!(r.json()["headers"]["x-client-cert-subject"], "CN=client-8,O=zkgate tests");
    // A presented certificate must still verify.
    let other_ca = Pki::new();
    let stranger = other_ca.client_leaf("stranger", "client-9");
    assert!(try_get(&pki.client_with_cert(&stranger), port, "").is_err());
}

#[test]
fn a_revoked_client_certificate_is_refused() {
    let pki = Pki::new();
    let backend = Backend::start("b1");
    let (revoked, kept) =
        (pki.client_leaf("revoked", "client-r"), pki.client_leaf("kept", "client-k"));
    let crl = format!("client_crl = {:?}\n", pki.crl(&[&revoked]));
    let (_gw, port) = mtls_gateway(&pki, &backend, &crl);
    assert!(try_get(&pki.client_with_cert(&revoked), port, "").is_err(), "revoked: no connection");
    let r = try_get(&pki.client_with_cert(&kept), port, "").unwrap();
    assert_eq!(r.json()["headers"]["x-client-cert-subject"], "CN=client-k,O=zkgate tests");
}

#[test]
fn a_session_resumed_after_the_client_checks_tighten_is_verified_anew() {
    let pki = Pki::new();
    let backend = Backend::start("b1");
    let (gw, port) = mtls_gateway(&pki, &backend, "client_auth = \"optional\"\n");
    let leaf = pki.client_leaf("later-revoked", "client-l");
    // Each client keeps its session (rustls's client cache) and resumes with its ticket.
    let (anonymous, revoked) = (pki.client(&[]), pki.client_with_cert(&leaf));
    assert_eq!(try_get(&anonymous, port, "").unwrap().status, 200);
    assert_eq!(try_get(&revoked, port, "").unwrap().status, 200);
    // The operator tightens: certificates required, this one revoked; a reload.
    let tightened = gw.config_text().replace(
        "client_auth = \"optional\"",
        &format!("client_auth = \"required\"\nclient_crl = {:?}", pki.crl(&[&leaf])),
    );
    gw.rewrite_config(&tightened);
    let before = gw.readiness();
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    assert_eventually!(15, gw.reloaded(before), "not reloaded:\n{}", gw.log());
    let hits = backend.hits.load(std::sync::atomic::Ordering::Relaxed);
    // The old tickets open nothing now: full handshakes, judged by the new settings.
    assert!(try_get(&anonymous, port, "").is_err(), "resumed without a certificate");
    assert!(try_get(&revoked, port, "").is_err(), "resumed with a revoked certificate");
    assert_eq!(backend.hits.load(std::sync::atomic::Ordering::Relaxed), hits);
    let good = pki.client_leaf("good", "client-g");
    assert_eq!(try_get(&pki.client_with_cert(&good), port, "").unwrap().status, 200);
}

#[test]
fn spellings_of_a_protected_path_over_tls_never_reach_the_instance_unauthenticated() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.example"]);
    let backend = Backend::start("b1");
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let htpasswd = support::write_file(dir.path(), "htpasswd", &format!("ops:{hash}\n"));
    let port = free_port();
    let toml = Toml::new()
        .backends("web", &[&backend])
        .section("[[route]]", "path_prefix = \"/admin\"\nservice = \"web\"\nauth = \"ops\"")
        .route_all("web")
        .section("[auth.ops]", &format!("type = \"basic\"\nhtpasswd = {htpasswd:?}"))
        .section("[[tls]]", &tls_section(&a));
    let _gw = Gateway::with(toml)
        .workers(1)
        .server_extra(&format!("listen_tls = [\"127.0.0.1:{port}\"]"))
        .start();
    let spellings = ["/admin/x", "/%61dmin/x", "/y/../admin/x", "//admin/x", "/admin;j=1/x"];
    // HTTP/1.1 over TLS.
    let h1 = pki.client(&[b"http/1.1"]);
    for path in spellings {
        let status = get(&h1, port, "a.example", path).response.status;
        assert!(matches!(status, 400 | 401), "TLS HTTP/1.1 {path}: {status}");
    }
    // HTTP/2 over TLS (ALPN h2).
    let h2_client = pki.client(&[b"h2"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = ServerName::try_from("a.example").unwrap();
        let tls = tokio_rustls::TlsConnector::from(h2_client).connect(name, tcp).await.unwrap();
        let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        for path in spellings {
            let req = hyper::Request::get(format!("https://a.example{path}")).body(()).unwrap();
            let (resp, _) = h2.send_request(req, true).unwrap();
            let status = resp.await.unwrap().status().as_u16();
            assert!(matches!(status, 400 | 401), "TLS HTTP/2 {path}: {status}");
        }
    });
    let heads = backend.heads.lock().unwrap().clone();
    assert!(heads.is_empty(), "the instance received:\n{heads:#?}");
}
