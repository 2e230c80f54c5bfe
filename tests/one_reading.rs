//! One reading of every request: what the gateway judges is what the instance reads. A route's
//! `auth` protects `/admin` and a host beside an open catch-all to the same instance; every
//! spelling of the protected path or host that Tomcat, Go or Python would read as the
//! protected one is sent raw (HTTP/1.1 on a socket, HTTP/2 with a real client) and must be
//! refused (401 or 400) — the instance receives none of them — while the same request with
//! credentials reaches the instance at the canonical path.

mod support;

use base64::Engine as _;
use support::http::{h2_send, raw, status_of};
use support::{write_file, Backend, Gateway, Toml};

/// `/admin` and the host `admin.example` behind basic auth, everything else open, one service.
fn gateway(backend: &Backend) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let htpasswd = write_file(dir.path(), "htpasswd", &format!("ops:{hash}\n"));
    let toml = Toml::new()
        .backends("web", &[backend])
        .section(
            "[[route]]",
            "host = \"admin.example\"\npath_prefix = \"/\"\nservice = \"web\"\nauth = \"ops\"",
        )
        .section("[[route]]", "path_prefix = \"/admin\"\nservice = \"web\"\nauth = \"ops\"")
        .route_all("web")
        .section("[auth.ops]", &format!("type = \"basic\"\nhtpasswd = {htpasswd:?}"));
    (Gateway::with(toml).workers(1).start(), dir)
}

fn h1(gw: &Gateway, target: &str, host: &str, extra: &str) -> u16 {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    status_of(&raw(gw.port, req.as_bytes()))
}

fn h2(gw: &Gateway, target: &str, host: &str) -> u16 {
    let req = hyper::Request::builder()
        .uri(format!("http://{host}{target}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    h2_send(gw.port, req).0
}

/// Paths Tomcat, Go's net/http or Python read as `/admin/secret`.
const SPELLINGS: [&str; 14] = [
    "/admin/secret",
    "/%61dmin/secret",
    "/%61%64%6d%69%6e/secret",
    "/x/../admin/secret",
    "/./admin/secret",
    "//admin/secret",
    "/%2e/admin/secret",
    "/x/%2E%2E/admin/secret",
    "/x/.%2e/admin/secret",
    "/admin;jsessionid=1/secret",
    "/public/..;x=1/admin/secret",
    "/public%2f..%2fadmin/secret",
    "/admin%2Fsecret",
    "/public/%2e%2e;/admin/secret",
];

#[test]
fn no_spelling_of_a_protected_path_or_host_reaches_the_instance_unauthenticated() {
    let backend = Backend::start("web");
    let (gw, _dir) = gateway(&backend);
    for target in SPELLINGS {
        let status = h1(&gw, target, "www.example", "");
        assert!(matches!(status, 400 | 401), "HTTP/1.1 {target}: {status}");
        // The HTTP/2 client refuses nothing of these (all valid URI characters).
        let status = h2(&gw, target, "www.example");
        assert!(matches!(status, 400 | 401), "HTTP/2 {target}: {status}");
    }
    // Backslashes: not URI characters (hyper's client will not send them), raw on HTTP/1.1.
    for target in ["/public\\..\\admin\\secret", "/public/..%5Cadmin/secret"] {
        let status = h1(&gw, target, "www.example", "");
        assert!(matches!(status, 400 | 401), "HTTP/1.1 {target}: {status}");
    }
    for host in ["admin.example", "ADMIN.Example", "admin.example.", "admin.example:80"] {
        assert_eq!(h1(&gw, "/x", host, ""), 401, "HTTP/1.1 Host: {host}");
        assert_eq!(h2(&gw, "/x", host), 401, "HTTP/2 :authority {host}");
    }
    let heads = backend.heads.lock().unwrap().clone();
    assert!(heads.is_empty(), "the instance received requests it should not:\n{heads:#?}");
    // The open part still serves, at the canonical path.
    assert_eq!(h1(&gw, "/public/%7euser/./x?q=%61", "www.example", ""), 200);
    assert_eq!(h2(&gw, "/public//a/../b", "www.example"), 200);
    // With credentials, the protected spelling reaches the instance as the instance reads it.
    let basic = base64::engine::general_purpose::STANDARD.encode("ops:s3cret");
    let auth = format!("Authorization: Basic {basic}\r\n");
    assert_eq!(h1(&gw, "/%61dmin/./secret", "www.example", &auth), 200);
    let heads = backend.heads.lock().unwrap().clone();
    let lines: Vec<&str> = heads.iter().filter_map(|h| h.lines().next()).collect();
    assert_eq!(
        lines,
        [
            "GET /public/~user/x?q=%61 HTTP/1.1",
            "GET /public/b HTTP/1.1",
            "GET /admin/secret HTTP/1.1"
        ]
    );
}

#[test]
fn a_target_with_no_one_reading_is_400_with_the_reason() {
    let backend = Backend::start("web");
    let (gw, _dir) = gateway(&backend);
    for target in ["/a%zz", "/a%00b", "/public%2Fx", "/public\\x"] {
        let answer = raw(
            gw.port,
            format!("GET {target} HTTP/1.1\r\nHost: www.example\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(status_of(&answer), 400, "{target}: {answer}");
        assert!(answer.contains("path"), "{target}: the reason names the path: {answer}");
    }
    assert!(backend.heads.lock().unwrap().is_empty());
}

#[test]
fn identity_never_passes_from_a_client_in_headers_or_trailers_and_h2c_is_never_forwarded() {
    let backend = Backend::start("web");
    let (gw, _dir) = gateway(&backend);
    let owned = "X-Real-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\nX-Client-IP: 6.6.6.6\r\n";
    let req = format!(
        "POST /public/t HTTP/1.1\r\nHost: www.example\r\n{owned}Transfer-Encoding: chunked\r\nTrailer: X-Auth-Subject\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nX-Auth-Subject: admin\r\nX-Client-Cert-Subject: CN=root\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\ngrpc-status: 0\r\n\r\n"
    );
    assert_eq!(status_of(&raw(gw.port, req.as_bytes())), 200);
    let head = backend.heads.lock().unwrap().last().cloned().unwrap();
    assert!(!head.contains("6.6.6.6"), "a client-address header passed: {head}");
    assert_eq!(*backend.trailers.lock().unwrap(), ["grpc-status: 0"], "request trailers");
    // The same over HTTP/2: owned names neither in the head nor in a trailers frame.
    let frames = vec![
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from("abc"))),
        Ok(hyper::body::Frame::trailers({
            let mut t = http::HeaderMap::new();
            t.insert("x-auth-subject", "admin".parse().unwrap());
            t.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
            t
        })),
    ];
    let req = hyper::Request::builder()
        .method("POST")
        .uri("http://www.example/public/h2")
        .header("x-real-ip", "6.6.6.6")
        .header("true-client-ip", "6.6.6.6")
        .body(http_body_util::StreamBody::new(futures::stream::iter(frames)))
        .unwrap();
    assert_eq!(h2_send(gw.port, req).0, 200);
    let head = backend.heads.lock().unwrap().last().cloned().unwrap();
    assert!(head.starts_with("POST /public/h2 "), "{head}");
    assert!(!head.contains("6.6.6.6"), "a client-address header passed over HTTP/2: {head}");
    let trailers = backend.trailers.lock().unwrap().clone();
    assert!(!trailers.iter().any(|t| t.contains("admin") || t.contains("6.6.6.6")), "{trailers:?}");
    // h2c smuggling: the upgrade is not asked of the instance, which answers a plain request.
    let smuggle = "GET /public/u HTTP/1.1\r\nHost: www.example\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\r\n";
    let answer = raw(gw.port, smuggle.as_bytes());
    assert_eq!(status_of(&answer), 200, "{answer}");
    let head = backend.heads.lock().unwrap().last().cloned().unwrap().to_ascii_lowercase();
    assert!(head.starts_with("get /public/u "), "{head}");
    assert!(!head.contains("upgrade") && !head.contains("http2-settings"), "h2c forwarded: {head}");
}

#[test]
fn one_registry_source_never_takes_over_another_sources_service_names() {
    let zk = support::zk::Zk::standalone();
    let c = zk.client();
    let (real, hijack) = (Backend::start("billing"), Backend::start("hijack"));
    // The prefixed source lists billing; the unprefixed one holds a node named as if it were
    // that source's (dubbo.billing), first in the file.
    c.create(&format!("/b/billing/{}", real.address()), b"", false);
    c.create(&format!("/a/dubbo.billing/{}", hijack.address()), b"", false);
    let toml = format!(
        "{}\n[[zookeeper]]\nname = \"plain\"\nhosts = \"{hosts}\"\nroot = \"/a\"\nsession_timeout = \"4s\"\n\n[[zookeeper]]\nname = \"dubbo\"\nhosts = \"{hosts}\"\nroot = \"/b\"\nprefix = \"dubbo.\"\nsession_timeout = \"4s\"\n\n[[route]]\npath_prefix = \"/\"\nservice = \"dubbo.billing\"\n",
        Toml::new(),
        hosts = zk.hosts()
    );
    let gw = Gateway::with(toml).workers(1).admin().start();
    assert_eventually!(10, h1(&gw, "/x", "www.example", "") == 200, "not routed:\n{}", gw.log());
    for _ in 0..20 {
        assert_eq!(h1(&gw, "/x", "www.example", ""), 200);
    }
    assert_eq!(hijack.hits.load(std::sync::atomic::Ordering::Relaxed), 0, "the hijack was routed");
    assert_eq!(real.hits.load(std::sync::atomic::Ordering::Relaxed), 21);
    // /registry says why the plain source's node is not taken.
    let registry = gw.admin_get("/registry").body_text();
    assert!(registry.contains("in source dubbo's namespace"), "{registry}");
}
