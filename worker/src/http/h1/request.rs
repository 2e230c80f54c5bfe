//! One request on the engine, as the shared core's phases: loop check, route, service, limits,
//! the header policy, the body, forward with retries, the answer — and the gateway's own answer
//! when a phase refuses.

use std::time::Instant as StdInstant;

use bytes::Bytes;
use futures::FutureExt as _;
use http::uri::PathAndQuery;
use http::{HeaderName, Method, Response, StatusCode};
use http_body_util::BodyExt as _;

use crate::http::error::ProxyError;
use crate::http::forward::Replay;
use crate::http::h1::body::{self, Start, Upload};
use crate::http::h1::head::{lines, BodyFraming, RequestHead};
use crate::http::h1::io::{write_within, Io};
use crate::http::h1::respond::{self, respond, Responded, ToClient};
use crate::http::h1::upstream::Attempt;
use crate::http::h1::{Conn, Spare, Step};
use crate::http::mirror::MirrorCopy;
use crate::http::policy::{upgrade_allowed, HeadSink, Origin};
use crate::http::proxy::{hash_on, Proxy, RequestLine, Trace};
use crate::http::router::{host_of, RequestView};
use crate::http::upstream::UpstreamError;
use crate::http::Body;

/// `100 Continue`, sent before the body is read when the client asked for it.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl<S: Io> Conn<'_, S> {
    /// Answers the request whose head is in `buf`; sets `used` (and `carry`) to what it took.
    pub(super) async fn answer(&mut self, draining: bool) -> Step {
        let proxy = self.proxy;
        let _active = proxy.send.forwarder.active();
        let started = StdInstant::now();
        let head = &self.head;
        self.used = head.len;
        let req = &self.buf[..head.len];
        let method = std::str::from_utf8(head.method.get(req)).unwrap_or("-");
        let target = std::str::from_utf8(head.target.get(req)).unwrap_or("/");
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let host_value = head.host.map(|i| head.lines[i].value.get(req));
        let view = View { buf: req, head, path, query, target, host: host_value.and_then(host_of) };
        let line = RequestLine { method, path, client: self.client.peer, started };
        // A body the engine does not read (refused before it) leaves the connection unusable.
        let has_body = head.body != BodyFraming::None;
        let close = head.close || draining;
        let mut trace = Trace {
            span: proxy.observe.tracer.as_ref().map(|t| t.begin(|n| view.header(n))),
            bytes_in: match head.body {
                BodyFraming::Length(n) => n,
                _ => 0,
            },
            ..Trace::default()
        };
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
        if proxy.policy.looped(lines(req, &head.lines)) {
            let why = "request loop: it already passed through this gateway";
            refuse!(ProxyError::Refused(StatusCode::LOOP_DETECTED, why), close || has_body);
        }
        let routed = match proxy.routes.router.route_view(&view) {
            Ok(routed) => routed,
            Err(e) => refuse!(ProxyError::Route(e), close || has_body),
        };
        trace.rule = routed.rule;
        let service = match proxy.service(&routed.service) {
            Ok(service) => service,
            Err(e) => refuse!(e, close || has_body),
        };
        if proxy.send.transports.get(&service.name).is_some() {
            return Step::Handover;
        }
        trace.service = Some(service.clone());
        let max_body = proxy.settings.max_body_bytes;
        if let BodyFraming::Length(n) = head.body {
            if max_body != 0 && n > max_body {
                refuse!(ProxyError::BodyTooLarge(service.name.clone()), true);
            }
        }
        // Held until the answer is sent (max_requests counts it in flight until then).
        let _admitted = match proxy.gate.limits.admit(
            (&proxy.observe.metrics, &proxy.gate.admission),
            (&service, proxy.routes.router.primary(&routed)),
            &view,
            self.client.peer.ip(),
        ) {
            Ok(guard) => guard,
            Err(e) => refuse!(e, close || has_body),
        };
        let identity = match proxy.authenticate(&routed, &service.name, &view).await {
            Ok(identity) => identity,
            Err(e) => refuse!(e, close || has_body),
        };
        if let Err(e) = proxy.gate.limits.admit_identity(
            (&proxy.observe.metrics, &proxy.gate.admission),
            (&service, proxy.routes.router.primary(&routed)),
            identity.as_ref(),
        ) {
            refuse!(e, close || has_body);
        }
        let key = hash_on(&service, &view, self.client.peer);
        let actions = proxy.routes.router.header_actions(&routed);
        let (request_actions, response_actions) = match actions {
            Some((request, response)) => (Some(request), Some(response)),
            None => (None, None),
        };
        let traceparent = trace.traceparent();
        let origin = Origin {
            peer: self.client.peer.ip(),
            peer_text: &self.ip,
            scheme: self.client.scheme.as_str(),
            port: self.client.port,
            host: view.host,
            identity: identity.as_ref(),
            client_cert: self.client.cert_subject.as_deref().map(str::as_bytes),
            traceparent: traceparent.as_ref().map(|t| &t[..]),
        };
        // The request line and every line but Host (it depends on the instance picked).
        if self.out.capacity() == 0 {
            self.out = proxy.send.buffers.take();
        }
        let base = &mut self.out;
        base.clear();
        base.extend_from_slice(head.method.get(req));
        base.push(b' ');
        base.extend_from_slice(routed.path.as_str().as_bytes());
        base.extend_from_slice(b" HTTP/1.1\r\n");
        proxy.policy.request(lines(req, &head.lines), &origin, request_actions, base);
        if head.body == BodyFraming::Chunked {
            base.put(b"transfer-encoding", b"chunked");
        }
        // An upgrade is asked again on this hop (the policy drops hop-by-hop lines).
        // Only to a protocol the operator allows (never h2c): any other goes on as a plain
        // request, its Upgrade line dropped with the hop-by-hop ones.
        let upgrade = head
            .upgrade
            .map(|i| head.lines[i].value.get(req))
            .filter(|p| upgrade_allowed(p, &proxy.settings.upgrade_protocols));
        if let Some(protocol) = upgrade {
            base.put(b"connection", b"upgrade");
            base.put(b"upgrade", protocol);
        }
        // The body: whole with the head (sent again if a retry needs it), or its start.
        let mut body_start = Vec::new();
        let avail = &self.buf[head.len..];
        let mut upload = match body::start(head.body, avail, max_body, &mut body_start) {
            Ok(Start::Whole { used }) => {
                self.used += used;
                None
            }
            Ok(Start::Streamed(upload)) => {
                self.used = self.buf.len();
                Some(upload)
            }
            Err(e) => refuse!(ProxyError::Upstream(service.name.clone(), e.into()), true),
        };
        if upload.is_some() && head.expect_continue {
            // The client waits for this before it sends the body (nginx says it as it starts
            // reading the body, as here).
            if write_within(&mut self.stream, CONTINUE, proxy.settings.idle_timeout).await.is_err()
            {
                return Step::Close;
            }
        }
        let own_host = request_actions.is_none_or(|a| !a.drops(b"host"));
        let method_ = Method::from_bytes(method.as_bytes()).unwrap_or(Method::POST);
        let replay = Replay::for_request(&method_, upload.is_none() && upgrade.is_none());
        if upgrade.is_none() {
            proxy.mirror(&routed, |max_body| {
                let body = match head.body {
                    BodyFraming::None => Bytes::new(),
                    BodyFraming::Length(n) if upload.is_none() && n <= max_body as u64 => {
                        Bytes::copy_from_slice(&body_start)
                    }
                    _ => return None,
                };
                let mut headers = http::HeaderMap::new();
                proxy.policy.request(
                    lines(req, &head.lines),
                    &origin,
                    request_actions,
                    &mut headers,
                );
                let (method, path) = (method_.clone(), routed.path.clone());
                Some(MirrorCopy { method, path, headers, body })
            });
        }
        let settings = proxy.send.forwarder.settings();
        let preserved = host_value.filter(|_| settings.preserve_host);
        let mut spare = self.spare.take();
        let sent = upload.as_ref().map(|u| u.sent.clone());
        let mut streamed = upload.as_mut().map(|u| (u, &mut self.stream));
        let base: &[u8] = base;
        let attempt = |address| {
            let address: &str = address;
            let host: &[u8] = preserved.unwrap_or(address.as_bytes());
            let Spare { mut request, mut response, head } = spare.take().unwrap_or_default();
            for buf in [&mut request, &mut response] {
                if buf.capacity() == 0 {
                    *buf = proxy.send.buffers.take();
                }
            }
            request.clear();
            request.extend_from_slice(base);
            if own_host {
                request.put(b"host", host);
            }
            request.extend_from_slice(b"\r\n");
            request.extend_from_slice(&body_start);
            let attempt = Attempt {
                pool: proxy.send.forwarder.plain_pool(),
                dialer: proxy.send.forwarder.dialer(),
                idle_timeout: settings.idle_timeout,
                request,
                buf: response,
                head,
                head_request: method_ == Method::HEAD,
                replayable: replay == Replay::IfNoResponse,
                // A streamed body goes with the first attempt only (it is never replayed).
                upload: streamed.take().map(|(u, c)| (u, &mut *c)),
                upgrade: upgrade.is_some(),
            };
            (attempt.run(address), sent.clone())
        };
        let forwarded =
            proxy.send.forwarder.forward(&service, key, replay, attempt, &mut trace.attempts).await;
        let body_done = upload.as_ref().is_none_or(Upload::is_done);
        if let Some(upload) = upload.as_mut() {
            self.carry = std::mem::take(&mut upload.leftover);
        }
        let answered = match forwarded {
            Ok(answered) => answered,
            Err(e) => refuse!(e, close || !body_done),
        };
        let status =
            StatusCode::from_u16(answered.response.head.status).unwrap_or(StatusCode::BAD_GATEWAY);
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The connection becomes a tunnel: it stays this connection's (counted open, its
            // max_connections permit held) until either side closes or it idles out.
            proxy.log_request(&line, &trace, status, None);
            let pending = &self.buf[self.used..];
            respond::tunnel(proxy, &mut self.stream, (answered, response_actions), pending).await;
            return Step::Close;
        }
        let length = proxy.observe.access_log.then(|| respond::content_length(&answered.response));
        trace.bytes_out = respond::declared_length(&answered.response).unwrap_or(0);
        let close = close || !body_done;
        let http10 = head.http10;
        let (responded, spare) = respond(
            proxy,
            &mut self.stream,
            (answered, response_actions),
            ToClient { close, http10 },
            &mut self.out,
        )
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

    /// Answers a head whose framing is in doubt, then the connection closes.
    pub(super) async fn refuse_head(&mut self, status: u16, why: &'static str) {
        let line = RequestLine {
            method: "-",
            path: "-",
            client: self.client.peer,
            started: StdInstant::now(),
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        log::info!("connection from {}: request refused ({status}): {why}", self.client.peer);
        let e = ProxyError::Refused(status, why);
        own_answer(
            self.proxy,
            &mut self.stream,
            &mut self.out,
            e,
            (&line, &Trace::default()),
            true,
        )
        .await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.stream).await;
    }
}

/// Sends the gateway's own answer for `e`.
async fn own_answer<S: Io>(
    proxy: &Proxy,
    client: &mut S,
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
        out.put(name.as_str().as_bytes(), value.as_bytes());
    }
    out.put(b"content-length", body.len().to_string().as_bytes());
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    body.len()
}

/// Whether the target is made of the characters a URI path and query may hold unescaped (hyper
/// refuses the rest with 400; the engine hands them over).
pub(super) fn plain_target(buf: &[u8], head: &RequestHead) -> bool {
    head.target
        .get(buf)
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(b))
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
