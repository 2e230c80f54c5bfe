//! The gateway's own HTTP requests — a JWKS fetched for `[auth]`, spans posted to an OTLP
//! collector — one exchange on a fresh connection, over HTTP or HTTPS (the system's roots),
//! within a deadline, with a bounded answer. Nothing here is on a client request's path.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;

/// An answer: status, headers, body.
pub type Answer = (http::StatusCode, http::HeaderMap, Bytes);

/// Sends `method url` with `headers` and `body`; the answer's body is refused beyond
/// `max_answer` bytes. Err: why, in words.
pub async fn request(
    method: http::Method,
    url: &str,
    headers: &[(http::HeaderName, http::HeaderValue)],
    body: Bytes,
    (timeout, max_answer): (Duration, usize),
) -> Result<Answer, String> {
    tokio::time::timeout(timeout, exchange(method, url, headers, body, max_answer))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

async fn exchange(
    method: http::Method,
    url: &str,
    headers: &[(http::HeaderName, http::HeaderValue)],
    body: Bytes,
    max_answer: usize,
) -> Result<Answer, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url}: the URL must be http:// or https://")),
    };
    let host = uri.host().ok_or("the URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, uri.authority().map_or(host.as_str(), |a| a.as_str()));
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let resp = if https {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let config =
            rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        send(TokioIo::new(tls), req).await?
    } else {
        send(TokioIo::new(tcp), req).await?
    };
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, max_answer)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((parts.status, parts.headers, body))
}

async fn send<T>(
    io: T,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}
