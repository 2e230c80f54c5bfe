//! The fast path: HTTP/1.1 keep-alive clients sending bodiless requests — nearly all API
//! traffic — proxied by the connection's own task with no `HeaderMap`, no hyper dispatcher and
//! no connection task on either side (as Pingora and Sozu built their own).
//!
//! ```text
//! serve ─▶ next_head (httparse into the connection's buffer, idle / head / drain deadlines)
//!       ─▶ answer ─┬─ route, service, hash key          (the router, on the parsed head)
//!                  ├─ request_head                        (hop-by-hop out, X-Forwarded-*, Via)
//!                  ├─ Forwarder::forward (upstream.rs)    (pick, retry, outlier records, timers)
//!                  └─ respond                             (head rewritten, body re-framed)
//! ```
//!
//! What it does not take it hands over, before anything reached an instance: hyper serves the
//! connection from that request on, starting with the bytes already read ([`End::Handover`]).
//! That is any request with a body, an upgrade, `Expect`, HTTP/1.0, HTTP/2 (h2c), a target that
//! is not a plain path, and every head hyper would refuse (400, 431) — so refusals and limits
//! keep the one implementation they always had. Routing, retries, outlier detection, metrics
//! and the access log are the proxy's own, shared with the hyper path.
//!
//! Framing toward the client is always the gateway's: a `Content-Length` body is copied to the
//! byte (anything after it means the connection is not reused), a chunked body is decoded
//! strictly ([`chunked`]) and encoded again, a body delimited by the instance closing is sent
//! chunked so the client's connection survives it.

pub mod chunked;
pub mod head;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt as _;
use http::uri::PathAndQuery;
use http::{HeaderName, Method, Response, StatusCode};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Sleep;

use crate::http::conn::DRAIN_IDLE_GRACE;
use crate::http::connections::stopped;
use crate::http::error::ProxyError;
use crate::http::forward::{Answered, Replay};
use crate::http::h1::chunked::{Decoder, LAST_CHUNK};
use crate::http::h1::head::{
    named_by_connection, names_headers, parse_request, Framing, Kind, Parse, RequestHead,
    ResponseHead,
};
use crate::http::h1::upstream::{Attempt, Exchange};
use crate::http::headers;
use crate::http::proxy::{hash_on, Proxy, RequestLine, Trace};
use crate::http::router::{host_of, HeaderActions, RequestView};
use crate::http::upstream::UpstreamError;
use crate::http::Body;

/// How a connection left the fast path.
pub enum End {
    /// Closed (by either side, a timeout, or the drain).
    Closed,
    /// To be served by hyper, starting with these bytes already read from it.
    Handover(TcpStream, Vec<u8>),
}

/// The buffers of an exchange with an instance, reused by the connection's next one.
#[derive(Default)]
struct Spare {
    request: Vec<u8>,
    response: Vec<u8>,
    head: ResponseHead,
}

/// Largest response buffer kept between requests (a large body grew it; an idle keep-alive
/// connection should not hold that).
const SPARE_CAPACITY: usize = 16 * 1024;

/// What became of one request.
enum Step {
    /// Answered; the connection carries the next request.
    KeepAlive,
    /// Answered (or failed midway); the connection ends.
    Close,
    /// Not for the fast path after all (the service's instances speak HTTP/2 or TLS): nothing
    /// was sent; hyper serves the connection from this request on.
    Handover,
}

enum Next {
    Head,
    Handover,
    Closed,
}

/// One client connection on the fast path.
struct Conn<'p> {
    proxy: &'p Proxy,
    stream: TcpStream,
    peer: SocketAddr,
    /// The client's address as it goes into `X-Forwarded-For`, formatted once.
    ip: String,
    /// Bytes read from the client and not consumed yet.
    buf: Vec<u8>,
    head: RequestHead,
    /// The outgoing request head, then the response head.
    out: Vec<u8>,
    /// Buffers of the last exchange with an instance, for the next one.
    spare: Option<Spare>,
    accepted: Instant,
    /// When the last answer was sent (the keep-alive idle deadline counts from there).
    idle_since: Instant,
    requests: u64,
    draining: bool,
}

/// Serves a client connection until it closes, or until a request the fast path does not take.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: &Proxy,
    shutdown: &mut watch::Receiver<bool>,
) -> End {
    let accepted = Instant::now();
    let mut conn = Conn {
        proxy,
        stream,
        peer,
        ip: peer.ip().to_string(),
        buf: Vec::with_capacity(4096),
        head: RequestHead::default(),
        out: Vec::with_capacity(1024),
        spare: None,
        accepted,
        idle_since: accepted,
        requests: 0,
        draining: *shutdown.borrow(),
    };
    // One timer and one drain watch for the connection's life, not one per request: the timer
    // is moved earlier when a deadline comes sooner, and when it fires late it is checked
    // against the real deadline (a keep-alive connection costs no timer work per request).
    let timer = tokio::time::sleep_until((accepted + proxy.settings.header_read_timeout).into());
    tokio::pin!(timer);
    let mut drain = shutdown.clone();
    let stop = stopped(&mut drain);
    tokio::pin!(stop);
    loop {
        match conn.next_head(timer.as_mut(), stop.as_mut()).await {
            Next::Head => {}
            Next::Handover => {
                log::debug!("connection from {peer}: request handed over to hyper");
                return End::Handover(conn.stream, conn.buf);
            }
            Next::Closed => return End::Closed,
        }
        conn.requests += 1;
        let draining = conn.draining || *shutdown.borrow();
        let step = conn.answer(draining).await;
        if matches!(step, Step::Handover) {
            log::debug!("connection from {peer}: request handed over to hyper (service transport)");
            return End::Handover(conn.stream, conn.buf);
        }
        let used = conn.head.len;
        conn.buf.drain(..used);
        if matches!(step, Step::Close) {
            let _ = conn.stream.shutdown().await;
            return End::Closed;
        }
        conn.idle_since = Instant::now();
    }
}

impl Conn<'_> {
    /// Waits for a complete request head in `buf`. Deadlines: the first head within
    /// `header_read_timeout` of the accept; a later one within `idle_timeout` of the previous
    /// answer and `header_read_timeout` of its first byte; once draining, an idle connection
    /// gets [`DRAIN_IDLE_GRACE`] to send its next request (answered with `Connection: close`).
    async fn next_head(
        &mut self,
        mut timer: Pin<&mut Sleep>,
        mut stop: Pin<&mut impl Future<Output = ()>>,
    ) -> Next {
        let settings = &self.proxy.settings;
        let max_head = settings.max_header_bytes.max(8192);
        let mut head_started: Option<Instant> = None;
        loop {
            if !self.buf.is_empty() {
                match parse_request(&self.buf, &mut self.head) {
                    Parse::Complete
                        if self.head.len <= max_head && plain_target(&self.buf, &self.head) =>
                    {
                        return Next::Head
                    }
                    Parse::Complete | Parse::Handover => return Next::Handover,
                    // hyper answers 431 for what does not fit.
                    Parse::Partial if self.buf.len() > max_head => return Next::Handover,
                    Parse::Partial => {}
                }
            }
            let deadline = if self.requests == 0 {
                self.accepted + settings.header_read_timeout
            } else if let Some(started) = head_started {
                started + settings.header_read_timeout
            } else if self.draining {
                self.idle_since.max(Instant::now()) + DRAIN_IDLE_GRACE
            } else {
                self.idle_since + settings.idle_timeout
            };
            if deadline < timer.deadline().into_std() {
                timer.as_mut().reset(deadline.into());
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(4096);
            }
            let draining = self.draining;
            tokio::select! {
                biased;
                r = self.stream.read_buf(&mut self.buf) => match r {
                    Ok(0) | Err(_) => return Next::Closed,
                    Ok(_) => {
                        head_started.get_or_insert_with(Instant::now);
                    }
                },
                _ = timer.as_mut() => {
                    if Instant::now() < deadline {
                        // Fired for an earlier deadline that has since moved on.
                        timer.as_mut().reset(deadline.into());
                        continue;
                    }
                    if self.requests == 0 || head_started.is_some() {
                        let limit = settings.header_read_timeout;
                        log::info!("connection from {} closed: no request head within {limit:?}", self.peer);
                    }
                    return Next::Closed;
                }
                _ = stop.as_mut(), if !draining => self.draining = true,
            }
        }
    }

    /// Answers the request whose head is in `buf`.
    async fn answer(&mut self, draining: bool) -> Step {
        let proxy = self.proxy;
        let _active = proxy.forwarder.active();
        let started = Instant::now();
        let head = &self.head;
        let req = &self.buf[..head.len];
        let method = std::str::from_utf8(head.method.get(req)).unwrap_or("-");
        let target = std::str::from_utf8(head.target.get(req)).unwrap_or("/");
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let host_value = head.host.map(|i| head.lines[i].value.get(req));
        let view = View { buf: req, head, path, query, target, host: host_value.and_then(host_of) };
        let line = RequestLine { method, path, client: self.peer, started };
        let close = head.close || draining;
        let mut trace = Trace::default();
        macro_rules! refuse {
            ($e:expr, $close:expr) => {
                return own_answer(
                    proxy,
                    &mut self.stream,
                    &mut self.out,
                    $e,
                    (&line, &trace),
                    $close,
                )
                .await
            };
        }
        let looped = head
            .lines
            .iter()
            .any(|l| l.kind == Kind::Via && headers::via_lists(l.value.get(req), &proxy.via));
        if looped {
            let why = "request loop: it already passed through this gateway";
            refuse!(ProxyError::Refused(StatusCode::LOOP_DETECTED, why), close);
        }
        let routed = match proxy.router.route_view(&view) {
            Ok(routed) => routed,
            Err(e) => refuse!(ProxyError::Route(e), close),
        };
        let service = match proxy.service(&routed.service) {
            Ok(service) => service,
            Err(e) => refuse!(e, close),
        };
        if proxy.transports.get(&service.name).is_some() {
            return Step::Handover;
        }
        trace.service = Some(service.clone());
        // Held until the answer is sent (max_requests counts it in flight until then).
        let _admitted = match proxy.limits.admit(&proxy.metrics, &service, &view, self.peer.ip()) {
            Ok(guard) => guard,
            Err(e) => refuse!(e, close),
        };
        let key = hash_on(&service, &view, self.peer);
        let actions = proxy.router.header_actions(&routed);
        let (request_actions, response_actions) = match actions {
            Some((request, response)) => (Some(request), Some(response)),
            None => (None, None),
        };
        let base = request_head(
            proxy,
            &view,
            (routed.path.as_str(), request_actions),
            &self.ip,
            &mut self.out,
        );
        let own_host = request_actions.is_none_or(|a| !a.drops(b"host"));
        let method_ = Method::from_bytes(method.as_bytes()).unwrap_or(Method::POST);
        let replay = Replay::for_request(&method_, true);
        let idempotent = replay == Replay::IfNoResponse;
        let settings = proxy.forwarder.settings();
        let preserved = host_value.filter(|_| settings.preserve_host);
        let mut spare = self.spare.take();
        let attempt = |address| {
            let address: &str = address;
            let host: &[u8] = preserved.unwrap_or(address.as_bytes());
            let Spare { mut request, response, head } = spare.take().unwrap_or_default();
            request.clear();
            request.extend_from_slice(base);
            if own_host {
                put(&mut request, b"host", host);
            }
            request.extend_from_slice(b"\r\n");
            let attempt = Attempt {
                pool: proxy.forwarder.plain_pool(),
                connect_timeout: settings.connect_timeout,
                request,
                buf: response,
                head,
                head_request: method_ == Method::HEAD,
                idempotent,
            };
            (attempt.run(address), None)
        };
        let answered = match proxy
            .forwarder
            .forward(&service, key, replay, attempt, &mut trace.attempts)
            .await
        {
            Ok(answered) => answered,
            Err(e) => refuse!(e, close),
        };
        let status =
            StatusCode::from_u16(answered.response.head.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let length = proxy.access_log.then(|| content_length(&answered.response));
        let (responded, spare) =
            respond(proxy, &mut self.stream, (answered, response_actions), close, &mut self.out)
                .await;
        self.spare = spare;
        match responded {
            Responded::Sent(step) => {
                proxy.log_request(&line, &trace, status, length.flatten().as_deref());
                step
            }
            Responded::Malformed(why) => {
                let e = ProxyError::Upstream(service.name.clone(), UpstreamError::Failed(why));
                refuse!(e, true)
            }
        }
    }
}

/// Sends the gateway's own answer for `e`.
async fn own_answer(
    proxy: &Proxy,
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    e: ProxyError,
    (line, trace): (&RequestLine<'_>, &Trace),
    close: bool,
) -> Step {
    let resp = proxy.answer_error(e, line);
    let status = resp.status();
    let length = serialise(resp, close, out);
    proxy.log_request(line, trace, status, Some(&length.to_string()));
    match write_within(client, out, proxy.settings.idle_timeout).await {
        Ok(()) if !close => Step::KeepAlive,
        _ => Step::Close,
    }
}

/// Whether the target is made of the characters a URI path and query may hold unescaped (the
/// hyper path refuses the rest with 400; the fast path hands them over).
fn plain_target(buf: &[u8], head: &RequestHead) -> bool {
    head.target
        .get(buf)
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(b))
}

/// The request as the instance receives it, but its `Host` line and the empty line (they
/// depend on the instance picked): request line, the client's lines minus hop-by-hop ones,
/// then `X-Forwarded-*`, `Via` and `X-Request-Id`. Same rules as `Proxy::upstream_request`.
fn request_head<'o>(
    proxy: &Proxy,
    req: &View<'_>,
    (path, actions): (&str, Option<&HeaderActions>),
    ip: &str,
    out: &'o mut Vec<u8>,
) -> &'o [u8] {
    let ours = |name: &[u8]| actions.is_none_or(|a| !a.drops(name));
    let (buf, head) = (req.buf, req.head);
    out.clear();
    out.extend_from_slice(head.method.get(buf));
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_request_id = false;
    let mut forwarded_for = false;
    for line in &head.lines {
        let name = line.name.get(buf);
        let keep = match line.kind {
            Kind::Plain | Kind::Via | Kind::ContentLength => true,
            Kind::RequestId => {
                has_request_id = true;
                true
            }
            Kind::Underscored => proxy.keep_underscored.allows(name),
            Kind::ForwardedFor => {
                forwarded_for = true;
                false
            }
            _ => false,
        };
        let kept = keep && ours(name);
        if kept && !(head.connection_lists && named_by_connection(buf, &head.lines, name)) {
            put(out, name, line.value.get(buf));
        }
    }
    // Every X-Forwarded-For line the client sent, joined, then this hop.
    if ours(b"x-forwarded-for") {
        out.extend_from_slice(b"x-forwarded-for: ");
        if forwarded_for {
            let sent = head.lines.iter().filter(|l| l.kind == Kind::ForwardedFor);
            for hop in sent.map(|l| l.value.get(buf)).filter(|v| !v.is_empty()) {
                out.extend_from_slice(hop);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(ip.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if ours(b"x-forwarded-proto") {
        put(out, b"x-forwarded-proto", b"http");
    }
    if let Some(host) = req.host.filter(|_| ours(b"x-forwarded-host")) {
        put(out, b"x-forwarded-host", host.as_bytes());
    }
    put(out, b"via", proxy.via.as_bytes());
    if !has_request_id && ours(b"x-request-id") {
        put(out, b"x-request-id", &headers::request_id_bytes());
    }
    if let Some(actions) = actions {
        put_actions(out, actions);
    }
    out
}

/// A route's `set` and `add` lines.
fn put_actions(out: &mut Vec<u8>, actions: &HeaderActions) {
    for (name, value) in actions.set.iter().chain(&actions.add) {
        put(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

fn put(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The answer's `Content-Length`, for the access log.
fn content_length(ex: &Exchange) -> Option<String> {
    let line = ex.head.lines.iter().find(|l| l.kind == Kind::ContentLength)?;
    Some(String::from_utf8_lossy(line.value.get(&ex.buf)).into_owned())
}

/// Sends the instance's answer to the client: the head rewritten (hop-by-hop out, `Via` in),
/// the body copied with the gateway's framing. The instance's connection goes back to the pool
/// when its answer was read exactly to its end.
async fn respond(
    proxy: &Proxy,
    client: &mut TcpStream,
    (answered, actions): (Answered<'_, Exchange>, Option<&HeaderActions>),
    close: bool,
    out: &mut Vec<u8>,
) -> (Responded, Option<Spare>) {
    let Answered { response: mut ex, address, inflight } = answered;
    let framing = ex.head.framing.unwrap_or(Framing::UntilClose);
    let rechunk = matches!(framing, Framing::Chunked | Framing::UntilClose);
    response_head(proxy, (&ex, actions), address, (rechunk, close), out);
    let idle = proxy.settings.idle_timeout;
    let body_start = ex.head.len;
    let mut reusable = ex.head.reusable;
    let done = match framing {
        Framing::Empty => {
            reusable &= ex.buf.len() == body_start;
            write_within(client, out, idle).await.is_ok()
        }
        Framing::Length(n) => {
            let have = (ex.buf.len() - body_start) as u64;
            let first = usize::try_from(have.min(n)).unwrap_or(usize::MAX);
            out.extend_from_slice(&ex.buf[body_start..body_start + first]);
            reusable &= have <= n;
            write_within(client, out, idle).await.is_ok()
                && (have >= n || copy_length(&mut ex, client, n - have, idle, &mut reusable).await)
        }
        Framing::Chunked => {
            let mut decoder = Decoder::default();
            match decoder.decode(&ex.buf[body_start..], |data| chunked::encode(data, out)) {
                Ok(used) => {
                    reusable &= used == ex.buf.len() - body_start || !decoder.is_done();
                    if decoder.is_done() {
                        out.extend_from_slice(LAST_CHUNK);
                    }
                    write_within(client, out, idle).await.is_ok()
                        && (decoder.is_done()
                            || copy_chunked(&mut ex, client, decoder, idle, &mut reusable, out)
                                .await)
                }
                // Nothing sent yet: the client gets a 502 instead of a cut connection.
                Err(e) => return (Responded::Malformed(e.to_string()), None),
            }
        }
        Framing::UntilClose => {
            reusable = false;
            chunked::encode(&ex.buf[body_start..], out);
            write_within(client, out, idle).await.is_ok()
                && copy_until_close(&mut ex, client, idle, out).await
        }
    };
    let Exchange { conn, head, buf, request } = ex;
    if done && reusable {
        proxy.forwarder.plain_pool().put(address, conn);
    }
    drop(inflight);
    let step = match done && !close {
        true => Step::KeepAlive,
        false => Step::Close,
    };
    let spare =
        (buf.capacity() <= SPARE_CAPACITY).then_some(Spare { request, response: buf, head });
    (Responded::Sent(step), spare)
}

/// What became of an instance's answer.
enum Responded {
    /// Sent (whole, or cut when either side failed midway).
    Sent(Step),
    /// Its body was malformed from the start: nothing was sent to the client.
    Malformed(String),
}

/// The response head as the client receives it.
fn response_head(
    proxy: &Proxy,
    (ex, actions): (&Exchange, Option<&HeaderActions>),
    address: &str,
    (rechunk, close): (bool, bool),
    out: &mut Vec<u8>,
) {
    let (buf, head) = (&ex.buf, &ex.head);
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    let status = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    match status.canonical_reason() {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(head.reason.get(buf)),
    }
    out.extend_from_slice(b"\r\n");
    let lists =
        head.lines.iter().any(|l| l.kind == Kind::Connection && names_headers(l.value.get(buf)));
    for line in &head.lines {
        let name = line.name.get(buf);
        let keep = match line.kind {
            Kind::Connection | Kind::HopByHop | Kind::TransferEncoding => false,
            Kind::ContentLength => !rechunk,
            _ => actions.is_none_or(|a| !a.drops(name)),
        };
        if keep && !(lists && named_by_connection(buf, &head.lines, name)) {
            put(out, name, line.value.get(buf));
        }
    }
    put(out, b"via", proxy.via.as_bytes());
    if proxy.settings.debug_headers {
        put(out, b"x-zkgate-instance", address.as_bytes());
        put(out, b"x-zkgate-worker", proxy.worker.as_bytes());
    }
    if let Some(actions) = actions {
        put_actions(out, actions);
    }
    if rechunk {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Copies the rest of a `Content-Length` body (`left` bytes).
async fn copy_length(
    ex: &mut Exchange,
    client: &mut TcpStream,
    mut left: u64,
    idle: Duration,
    reusable: &mut bool,
) -> bool {
    let buf = &mut ex.buf;
    while left > 0 {
        buf.clear();
        buf.reserve(64 * 1024);
        let n = match timeout(idle, ex.conn.read_buf(buf)).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n as u64,
        };
        let take = usize::try_from(n.min(left)).unwrap_or(usize::MAX);
        *reusable &= n <= left;
        if write_within(client, &buf[..take], idle).await.is_err() {
            return false;
        }
        left -= take as u64;
    }
    true
}

/// Decodes the rest of a chunked body and sends it chunked again.
async fn copy_chunked(
    ex: &mut Exchange,
    client: &mut TcpStream,
    mut decoder: Decoder,
    idle: Duration,
    reusable: &mut bool,
    out: &mut Vec<u8>,
) -> bool {
    let buf = &mut ex.buf;
    while !decoder.is_done() {
        buf.clear();
        buf.reserve(64 * 1024);
        match timeout(idle, ex.conn.read_buf(buf)).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        out.clear();
        match decoder.decode(buf, |data| chunked::encode(data, out)) {
            Ok(used) => *reusable &= used == buf.len(),
            Err(e) => {
                log::warn!("instance answer: {e}");
                return false;
            }
        }
        if decoder.is_done() {
            out.extend_from_slice(LAST_CHUNK);
        }
        if write_within(client, out, idle).await.is_err() {
            return false;
        }
    }
    true
}

/// Sends a body delimited by the instance closing, chunked.
async fn copy_until_close(
    ex: &mut Exchange,
    client: &mut TcpStream,
    idle: Duration,
    out: &mut Vec<u8>,
) -> bool {
    let buf = &mut ex.buf;
    loop {
        buf.clear();
        buf.reserve(64 * 1024);
        out.clear();
        match timeout(idle, ex.conn.read_buf(buf)).await {
            Err(_) => return false,
            Ok(0) => out.extend_from_slice(LAST_CHUNK),
            Ok(_) => chunked::encode(buf, out),
        }
        if write_within(client, out, idle).await.is_err() {
            return false;
        }
        if buf.is_empty() {
            return true;
        }
    }
}

/// The gateway's own answer, serialised; returns the body's length.
fn serialise(resp: Response<Body>, close: bool, out: &mut Vec<u8>) -> usize {
    let (parts, body) = resp.into_parts();
    // The gateway's answers are whole in memory (`error::json_response`).
    let body = match body.collect().now_or_never() {
        Some(Ok(collected)) => collected.to_bytes(),
        _ => Bytes::new(),
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        put(out, name.as_str().as_bytes(), value.as_bytes());
    }
    put(out, b"content-length", body.len().to_string().as_bytes());
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    body.len()
}

/// Writes all of `buf`, within `limit` once the socket is full: a write that goes through at
/// once (the common case) needs no timer.
async fn write_within(stream: &mut TcpStream, mut buf: &[u8], limit: Duration) -> Result<(), ()> {
    while !buf.is_empty() {
        match stream.try_write(buf) {
            Ok(0) => return Err(()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return timeout(limit, stream.write_all(buf)).await;
            }
            Err(_) => return Err(()),
        }
    }
    Ok(())
}

/// `io` within `limit`; an error or the deadline are both a failure.
async fn timeout<T>(
    limit: Duration,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, ()> {
    match tokio::time::timeout(limit, io).await {
        Ok(Ok(v)) => Ok(v),
        _ => Err(()),
    }
}

/// A parsed head as the router and the hash key read it.
struct View<'a> {
    buf: &'a [u8],
    head: &'a RequestHead,
    path: &'a str,
    query: Option<&'a str>,
    target: &'a str,
    host: Option<&'a str>,
}

impl RequestView for View<'_> {
    fn path(&self) -> &str {
        self.path
    }
    fn query(&self) -> Option<&str> {
        self.query
    }
    fn path_and_query(&self) -> PathAndQuery {
        PathAndQuery::try_from(self.target).unwrap_or_else(|_| PathAndQuery::from_static("/"))
    }
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        let want = name.as_str().as_bytes();
        let line = self.head.lines.iter().find(|l| l.name.get(self.buf).eq_ignore_ascii_case(want));
        line.map(|l| l.value.get(self.buf))
    }
    fn headers<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let want = name.as_str().as_bytes();
        self.head
            .lines
            .iter()
            .filter(move |l| l.name.get(self.buf).eq_ignore_ascii_case(want))
            .map(|l| l.value.get(self.buf))
    }
}
