//! The bridge on scripted bytes: an HTTP/1.1 client on one end of an in-memory stream, a proxy
//! built from a configuration whose service speaks h2c, and a real HTTP/2 instance on loopback
//! (hyper's server) that records what it received. The connection must stay the engine's to
//! its end (never handed over), and both what the client read and what the instance got are
//! asserted.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::http::h1::tests::exchange;
use crate::http::proxy::Proxy;
use crate::http::BoxError;

/// One request as the instance got it.
#[derive(Debug, Clone)]
struct Got {
    version: http::Version,
    method: String,
    path: String,
    head: http::HeaderMap,
    body: Vec<u8>,
    trailers: Option<http::HeaderMap>,
}

/// The instance's answer to `path`: `/len` has a length; any other streams two frames and
/// trailers (one the policy lets through, one RFC 9110 forbids there).
fn answer(path: &str) -> http::Response<http_body_util::combinators::BoxBody<Bytes, BoxError>> {
    let mut resp = match path {
        "/len" => {
            let body = Full::new(Bytes::from_static(b"hello")).map_err(BoxError::from).boxed();
            let mut resp = http::Response::new(body);
            resp.headers_mut().insert("content-length", "5".parse().unwrap());
            resp
        }
        _ => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("content-length", "99".parse().unwrap());
            let frames = [
                Frame::data(Bytes::from_static(b"he")),
                Frame::data(Bytes::from_static(b"llo")),
                Frame::trailers(trailers),
            ];
            let stream = futures::stream::iter(frames.map(Ok::<_, BoxError>));
            http::Response::new(StreamBody::new(stream).boxed())
        }
    };
    resp.headers_mut().insert("x-from", "h2".parse().unwrap());
    resp
}

/// An h2c instance that answers with [`answer`] and keeps what it got.
async fn h2_instance() -> (String, Arc<Mutex<Vec<Got>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let log = log.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let collected = body.collect().await.unwrap();
                    let trailers = collected.trailers().cloned();
                    let path = parts.uri.path().to_string();
                    log.lock().unwrap().push(Got {
                        version: parts.version,
                        method: parts.method.to_string(),
                        path: path.clone(),
                        head: parts.headers,
                        body: collected.to_bytes().to_vec(),
                        trailers,
                    });
                    Ok::<_, Infallible>(answer(&path))
                }
            });
            tokio::spawn(async move {
                let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let _ = http2.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (address, seen)
}

fn h2c_proxy(address: &str) -> Proxy {
    crate::http::testing::proxy(&format!(
        "[services.web]\ninstances = [\"{address}\"]\nprotocol = \"h2c\"\n\n[[route]]\npath_prefix = \"/\"\nservice = \"web\"\n"
    ))
}

#[tokio::test]
async fn requests_to_an_http2_instance_are_bridged_and_the_connection_stays_the_engines() {
    let (address, seen) = h2_instance().await;
    let proxy = h2c_proxy(&address);
    let script = b"POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
5\r\nhello\r\n0\r\ngrpc-x: 1\r\nx-auth-user: mallory\r\n\r\n\
GET /len HTTP/1.1\r\nhost: a\r\n\r\n\
GET /last HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    let (out, closed) = exchange(&proxy, script).await;
    let text = String::from_utf8_lossy(&out);
    assert!(closed, "the engine served the connection to its end, never handed it over");
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 3, "{text}");
    assert!(answers[0].starts_with("200 OK\r\n") && answers[0].contains("x-from: h2\r\n"));
    assert!(answers[0].contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(
        answers[0].ends_with("\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\ngrpc-status: 0\r\n\r\n"),
        "chunks as they came, the allowed trailer only: {text:?}"
    );
    assert!(answers[1].contains("content-length: 5\r\n") && answers[1].ends_with("\r\n\r\nhello"));
    assert!(!answers[1].contains("transfer-encoding"), "{text}");
    assert!(answers[2].contains("connection: close\r\n"), "{text}");
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|g| g.version == http::Version::HTTP_2));
    let paths: Vec<(&str, &str)> = got.iter().map(|g| (&g.method[..], &g.path[..])).collect();
    assert_eq!(paths, [("POST", "/up"), ("GET", "/len"), ("GET", "/last")]);
    assert_eq!(got[0].body, b"hello", "the chunked body decoded");
    let trailers = got[0].trailers.clone().unwrap_or_default();
    assert_eq!(trailers.get("grpc-x").map(|v| v.as_bytes()), Some(&b"1"[..]));
    assert!(!trailers.contains_key("x-auth-user"), "request trailers by the allow-list");
    let head = &got[0].head;
    assert_eq!(head.get("x-forwarded-for").unwrap(), "192.0.2.7");
    assert!(!head.contains_key("transfer-encoding") && !head.contains_key("connection"));
}

#[tokio::test]
async fn a_body_longer_than_what_came_with_its_head_streams_and_the_next_request_follows() {
    let (address, seen) = h2_instance().await;
    let proxy = h2c_proxy(&address);
    let body = vec![b'x'; 200_000];
    let mut script = b"PUT /big HTTP/1.1\r\nhost: a\r\ncontent-length: 200000\r\n\r\n".to_vec();
    script.extend_from_slice(&body);
    script.extend_from_slice(b"GET /len HTTP/1.0\r\nhost: a\r\n\r\n");
    let (out, closed) = exchange(&proxy, &script).await;
    let text = String::from_utf8_lossy(&out);
    assert!(closed);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "the pipelined request answered after: {text}");
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body.len(), 200_000, "every byte of the streamed body");
    assert_eq!(got[1].path, "/len", "the bytes after the body were the next request's");
}

#[tokio::test]
async fn an_http10_client_gets_an_answer_of_unknown_length_unframed_until_the_close() {
    let (address, _) = h2_instance().await;
    let proxy = h2c_proxy(&address);
    let (out, closed) = exchange(&proxy, b"GET /s HTTP/1.0\r\nhost: a\r\n\r\n").await;
    let text = String::from_utf8_lossy(&out);
    assert!(closed);
    assert!(!text.to_ascii_lowercase().contains("transfer-encoding"), "{text}");
    assert!(text.contains("connection: close\r\n") && text.ends_with("\r\n\r\nhello"), "{text:?}");
}
