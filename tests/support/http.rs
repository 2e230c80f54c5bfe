//! A minimal HTTP/1.1 client for tests: one request per connection, raw bytes on a real socket,
//! so a test sees exactly what the gateway sent back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body_text()))
    }

    /// The `backend` field the test backends answer with.
    pub fn backend(&self) -> String {
        self.json()["backend"].as_str().unwrap_or_default().to_string()
    }
}

/// `GET path` with `Connection: close` to `ip:port` (a gateway in a network namespace).
pub fn get_at(ip: &str, port: u16, path: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect((ip, port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse(&raw)
}

/// Sends one request with `Connection: close` and reads the whole response.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req += "host: localhost\r\n";
    }
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    if !body.is_empty() {
        req += &format!("content-length: {}\r\n", body.len());
    }
    req += "\r\n";
    // Head and body in one write, as a client sends a small request: written apart, the body
    // may reach the gateway in a later read, which makes it a streamed body (not mirrored, not
    // replayable) — a timing the tests did not choose.
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse(&raw)
}

/// Parses a complete response (content-length, chunked or until close).
pub fn parse(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad(&format!("no response head in {} bytes", raw.len())))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_vec() };
    Ok(Response { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&b[start..(start + n).min(b.len())]);
        b = &b[(start + n + 2).min(b.len())..];
    }
    out
}

/// A keep-alive client on one connection that reads each answer by its framing (never until
/// close), so a test sees whether the connection survives every answer.
pub struct KeepAlive {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl KeepAlive {
    pub fn connect(port: u16) -> KeepAlive {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        KeepAlive { stream, pending: Vec::new() }
    }

    /// Sends raw bytes (one or more requests).
    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).expect("send");
    }

    /// Sends one request (`Host` added) and reads its answer.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
        for (k, v) in headers {
            req += &format!("{k}: {v}\r\n");
        }
        req += "\r\n";
        self.send(req.as_bytes());
        self.read(method == "HEAD").expect("an answer on the kept-alive connection")
    }

    /// Reads one answer (`head_request`: it has no body whatever it declares).
    pub fn read(&mut self, head_request: bool) -> std::io::Result<Response> {
        let end = loop {
            if let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            self.fill()?;
        };
        let head = parse(&self.pending[..end])?;
        let header = |n: &str| head.header(n).map(str::to_string);
        let body_len = if head_request || head.status == 204 || head.status == 304 {
            Some(0)
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            None
        } else {
            Some(header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0))
        };
        let total = match body_len {
            Some(n) => {
                while self.pending.len() < end + n {
                    self.fill()?;
                }
                end + n
            }
            None => loop {
                if let Some(stop) = chunked_end(&self.pending, end) {
                    break stop;
                }
                self.fill()?;
            },
        };
        let raw: Vec<u8> = self.pending.drain(..total).collect();
        parse(&raw)
    }

    /// Whether the gateway closed the connection (EOF or reset within `within`).
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 1];
        match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => {
                !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
            }
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pending.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Where a chunked body starting at `at` ends (its trailer section included), once it is all
/// in `buf`.
fn chunked_end(buf: &[u8], mut at: usize) -> Option<usize> {
    let line_end =
        |from: usize| buf[from..].windows(2).position(|w| w == b"\r\n").map(|p| from + p);
    loop {
        let eol = line_end(at)?;
        let size_text = std::str::from_utf8(&buf[at..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = eol + 2;
        if size == 0 {
            // Trailer lines, then an empty line.
            loop {
                let eol = line_end(at)?;
                let empty = eol == at;
                at = eol + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}

/// Sends raw bytes on a new connection; returns what came back until the gateway closed it or
/// 3 s passed.
pub fn raw(port: u16, bytes: &[u8]) -> String {
    raw_within(port, bytes, Duration::from_secs(3))
}

/// As [`raw`], for a request that asks the gateway to close (`Connection: close`): waits up to
/// 20 s for the close, so a slow machine cannot cut the answer short.
pub fn raw_until_close(port: u16, bytes: &[u8]) -> String {
    raw_within(port, bytes, Duration::from_secs(20))
}

/// Sends raw bytes; what came back until the close or `limit` without a byte.
fn raw_within(port: u16, bytes: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw answer (0 when there is none).
pub fn status_of(response: &str) -> u16 {
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// One HTTP/2 request (h2c, prior knowledge) on a connection of its own. Returns the status,
/// the answer's headers and its body.
pub fn h2_send<B>(port: u16, req: hyper::Request<B>) -> (u16, http::HeaderMap, Vec<u8>)
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt as _;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(tcp);
        let (mut h2, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        let resp = h2.send_request(req).await.unwrap();
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, headers, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
    })
}

/// One HTTP/2 request whose body streams as `chunks` DATA frames with no `content-length`, as
/// an HTTP/2 client uploading a stream sends it. Returns the status and the answer's body.
pub fn h2_upload(port: u16, method: &str, path: &str, chunks: Vec<Vec<u8>>) -> (u16, Vec<u8>) {
    let frames = chunks.into_iter().map(|c| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(c)))
    });
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames.collect::<Vec<_>>()));
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .body(body)
        .unwrap();
    let (status, _, body) = h2_send(port, req);
    (status, body)
}
