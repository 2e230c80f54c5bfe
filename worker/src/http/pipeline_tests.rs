//! Both adapters, one set of decisions: each request is read once by the engine's parser (its
//! `View`) and once as hyper hands it over (`OnHyper`), and the pipeline's phases must decide
//! the same for both — same service and path, same verified subject, same hash key, or the
//! same refusal.

use std::net::SocketAddr;

use crate::http::connections::{Client, Scheme};
use crate::http::h1::head::{parse_request, Parse, RequestHead};
use crate::http::h1::View;
use crate::http::hyper::request::OnHyper;
use crate::http::pipeline::{self, Exchange};
use crate::http::proxy::{Proxy, Trace};
use crate::http::router::{request_host, HyperRequest};

/// What the phases decided, as compared.
async fn decide(proxy: &Proxy, ex: &impl Exchange) -> String {
    match pipeline::server_itself(proxy, ex) {
        Ok(Some(own)) => return format!("own {}", own.status.as_u16()),
        Err(e) => return refused(e),
        Ok(None) => {}
    }
    let admitted = match pipeline::route(proxy, ex, &mut Trace::default()) {
        Ok(routed) => pipeline::admit(proxy, ex, routed).await,
        Err(e) => Err(e),
    };
    match admitted {
        Ok(a) => {
            let subject = a.identity.map(|i| {
                let line = i.headers.iter().find(|(n, _)| n == b"x-auth-subject");
                String::from_utf8_lossy(&line.unwrap().1).into_owned()
            });
            let cors = a.answer_actions.is_some();
            format!("{} {} {subject:?} {:?} cors={cors}", a.service.name, a.target.path, a.key)
        }
        Err(e) => refused(e),
    }
}

/// A refusal as compared; a route's own answer with its status and `Location`.
fn refused(e: crate::http::error::ProxyError) -> String {
    match e {
        crate::http::error::ProxyError::Answered(own) => {
            let location = own.headers.get(http::header::LOCATION);
            format!("own {} {:?}", own.status.as_u16(), location.map(|l| l.to_str().unwrap()))
        }
        e => format!("refused {}", e.status().as_u16()),
    }
}

/// The request `raw` as hyper's side reads it: method, target and header lines.
fn hyper_parts(raw: &[u8]) -> (http::Method, http::Uri, http::HeaderMap) {
    let mut lines = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut lines);
    assert!(req.parse(raw).unwrap().is_complete());
    let method: http::Method = req.method.unwrap().parse().unwrap();
    let uri: http::Uri = req.path.unwrap().parse().unwrap();
    let mut headers = http::HeaderMap::new();
    for h in req.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).unwrap();
        headers.append(name, http::HeaderValue::from_bytes(h.value).unwrap());
    }
    (method, uri, headers)
}

#[tokio::test]
async fn both_adapters_see_the_same_decisions() {
    let dir = std::env::temp_dir().join(format!("zkgate-pipeline-{}", std::process::id()));
    std::fs::write(&dir, format!("alice:{}\n", bcrypt::hash("s3cret", 4).unwrap())).unwrap();
    let proxy = crate::http::testing::proxy(&format!(
        r#"
        [proxy]
        max_body_bytes = 1000
        [services.web]
        instances = ["127.0.0.1:1"]
        load_balance = "consistent_hash"
        hash_on = "header:X-User"
        [services.api]
        instances = ["127.0.0.1:2"]
        [services.admin]
        instances = ["127.0.0.1:3"]
        [auth.users]
        type = "basic"
        htpasswd = "{}"
        [[route]]
        path_prefix = "/api"
        service = "api"
        strip_prefix = true
        auth = "users"
        [[route]]
        host = "admin.example"
        path_prefix = "/"
        service = "admin"
        [[route]]
        path_prefix = "/web"
        service = "web"
        [[route]]
        path_prefix = "/old"
        service = "web"
        redirect = {{ to = "https://{{host}}{{path}}", status = 308 }}
        [[route]]
        path_prefix = "/maint"
        service = "web"
        answer = {{ status = 503, body = "down" }}
        [[route]]
        path_prefix = "/inner"
        service = "web"
        allow = ["10.0.0.0/8"]
        [[route]]
        path_prefix = "/cors"
        service = "web"
        cors = {{ origins = ["https://app.example"], credentials = true }}
        "#,
        dir.display()
    ));
    let alice = "Authorization: Basic YWxpY2U6czNjcmV0\r\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("GET /api/x?q=1 HTTP/1.1\r\nHost: a\r\n{alice}\r\n"),
            "api /x?q=1 Some(\"alice\") None",
        ),
        ("GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n".into(), "refused 401"),
        (format!("GET /api/x HTTP/1.1\r\nHost: a\r\n{alice}{alice}\r\n"), "refused 400"),
        ("GET /web/a HTTP/1.1\r\nHost: a\r\nX-User: u1\r\n\r\n".into(), "web /web/a None Some("),
        ("GET /x HTTP/1.1\r\nHost: ADMIN.example:8080\r\n\r\n".into(), "admin /x None None"),
        ("GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n".into(), "refused 404"),
        (
            "GET /web/a HTTP/1.1\r\nHost: a\r\nVia: 1.0 x, 1.1 zkgate-test\r\n\r\n".into(),
            "refused 508",
        ),
        ("POST /web/a HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n".into(), "refused 413"),
        (
            "POST /web/a HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\n\r\n".into(),
            "web /web/a None None",
        ),
        ("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n".into(), "own 200"),
        ("GET * HTTP/1.1\r\nHost: a\r\n\r\n".into(), "refused 400"),
        ("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n".into(), "refused 405"),
        // Absolute-form: the authority is the host (RFC 9112 §3.2.2), the path is routed.
        ("GET http://ADMIN.example/x?y HTTP/1.1\r\nHost: www\r\n\r\n".into(), "admin /x?y None None"),
        ("GET HTTP://w/web/a HTTP/1.1\r\nHost: admin.example\r\n\r\n".into(), "web /web/a None None"),
        ("GET http://admin.example HTTP/1.1\r\n\r\n".into(), "admin / None None"),
        ("GET /old/x?y=1 HTTP/1.1\r\nHost: a:8080\r\n\r\n".into(), "own 308 Some(\"https://a/old/x?y=1\")"),
        ("GET /maint/x HTTP/1.1\r\nHost: a\r\n\r\n".into(), "own 503 None"),
        ("GET /inner/x HTTP/1.1\r\nHost: a\r\n\r\n".into(), "refused 403"),
        // The peer is not a trusted proxy: its X-Forwarded-For is not believed.
        ("GET /inner/x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.1.1.1\r\n\r\n".into(), "refused 403"),
        ("OPTIONS /cors HTTP/1.1\r\nHost: a\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: GET\r\n\r\n".into(), "own 204"),
        ("OPTIONS /cors HTTP/1.1\r\nHost: a\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: GET\r\n\r\n".into(), "own 403"),
        ("GET /cors HTTP/1.1\r\nHost: a\r\nOrigin: https://app.example\r\n\r\n".into(), "web /cors None None cors=true"),
        ("GET /web/a HTTP/1.1\r\nHost: a\r\nOrigin: https://app.example\r\n\r\n".into(), "web /web/a None None cors=false"),
    ];
    let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let client = Client {
        peer,
        port: 8080,
        scheme: Scheme::Http,
        accepted: tokio::time::Instant::now(),
        cert_subject: None,
    };
    for (raw, want) in cases {
        let mut head = RequestHead::default();
        assert!(matches!(parse_request(raw.as_bytes(), &mut head), Parse::Complete), "{raw}");
        let engine = decide(&proxy, &View::of(raw.as_bytes(), &head, &client)).await;
        let (method, uri, headers) = hyper_parts(raw.as_bytes());
        let host = request_host(&uri, &headers);
        let req = HyperRequest { uri: &uri, headers: &headers, host: host.as_deref() };
        let hyper = decide(
            &proxy,
            &OnHyper { req, method: &method, client: peer, came_by: ("http", 8080) },
        )
        .await;
        assert_eq!(engine, hyper, "{raw}");
        assert!(engine.starts_with(want), "{raw}: {engine}, expected {want}");
    }
    let _ = std::fs::remove_file(&dir);
}
