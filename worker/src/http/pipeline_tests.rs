//! Both adapters, one set of decisions: each request is read once by the engine's parser (its
//! `View`) and once as hyper hands it over (`OnHyper`), and the pipeline's phases must decide
//! the same for both — same service and path, same verified subject, same hash key, or the
//! same refusal.

use std::net::SocketAddr;

use crate::http::h1::head::{parse_request, Parse, RequestHead};
use crate::http::h1::View;
use crate::http::hyper::request::OnHyper;
use crate::http::pipeline::{self, Exchange};
use crate::http::proxy::{Proxy, Trace};
use crate::http::router::{request_host, HyperRequest};

/// What the phases decided, as compared.
async fn decide(proxy: &Proxy, ex: &impl Exchange) -> String {
    match pipeline::server_itself(ex) {
        Ok(Some(own)) => return format!("own {}", own.status.as_u16()),
        Err(e) => return format!("refused {}", e.status().as_u16()),
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
            format!("{} {} {subject:?} {:?}", a.service.name, a.target.path, a.key)
        }
        Err(e) => format!("refused {}", e.status().as_u16()),
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
    ];
    let client: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    for (raw, want) in cases {
        let mut head = RequestHead::default();
        assert!(matches!(parse_request(raw.as_bytes(), &mut head), Parse::Complete), "{raw}");
        let engine = decide(&proxy, &View::of(raw.as_bytes(), &head, client)).await;
        let (method, uri, headers) = hyper_parts(raw.as_bytes());
        let host = request_host(&uri, &headers);
        let req = HyperRequest { uri: &uri, headers: &headers, host: host.as_deref() };
        let hyper = decide(&proxy, &OnHyper { req, method: &method, client }).await;
        assert_eq!(engine, hyper, "{raw}");
        assert!(engine.starts_with(want), "{raw}: {engine}, expected {want}");
    }
    let _ = std::fs::remove_file(&dir);
}
