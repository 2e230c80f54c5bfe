//! One request on the engine: the engine's side of the pipeline (`pipeline.rs`). The parsed
//! head is shown to the phases as an [`Exchange`]; then the engine does what only it can — the
//! head it forwards, the body, the attempts on its own upstream client, the answer relay — and
//! writes the gateway's own answer, as bytes, when a phase refuses.

use std::time::Instant as StdInstant;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Method, StatusCode};
use tokio::time::Instant;

use crate::http::client::forward::{Answered, Replay};
use crate::http::client::h1::{Attempt, Reply};
use crate::http::client::upstream::UpstreamError;
use crate::http::compress::{Coding, CompressRule};
use crate::http::connections::Client;
use crate::http::error::{OwnAnswer, ProxyError};
use crate::http::h1::body::{self, Start, Upload};
use crate::http::h1::compressed;
use crate::http::h1::head::{BodyFraming, RequestHead};
use crate::http::h1::io::{write_within, Io};
use crate::http::h1::respond::{self, respond, Responded, ToClient};
use crate::http::h1::view::View;
use crate::http::h1::{Conn, Spare, Step};
use crate::http::mirror::MirrorCopy;
use crate::http::pipeline::{self, Admitted, Exchange};
use crate::http::policy::{HeadSink, Origin};
use crate::http::proxy::{Proxy, RequestLine, Trace};
use crate::http::router::{HeaderActions, RequestView, Target};
use crate::table::Service;

#[path = "bridge.rs"]
mod bridge;

/// `100 Continue`, sent before the body is read when the client asked for it.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// One request's side of the connection: the parts of [`Conn`] it writes, borrowed apart from
/// the buffer its head was parsed in (which the phases read meanwhile).
struct OnEngine<'c, S> {
    proxy: &'c Proxy,
    stream: &'c mut S,
    client: &'c Client,
    /// The client's address as `X-Forwarded-For` gets it.
    ip: &'c str,
    out: &'c mut Vec<u8>,
    spare: &'c mut Option<Spare>,
    carry: &'c mut Vec<u8>,
    used: &'c mut usize,
    /// The connection ends after this answer: the client asked, the worker drains, or the
    /// answer failed midway.
    close: bool,
    /// The client has body bytes the engine did not read: a refusal must close the connection.
    body_unread: bool,
}

/// The instance's side of a request: where its head is, what goes after it, what it asks.
struct Outgoing<'b> {
    /// The whole body (sent again when a retry needs it), or the start of a streamed one.
    body: &'b [u8],
    /// The rest of a streamed body.
    upload: Option<&'b mut Upload>,
    /// An upgrade is asked again on this hop.
    upgrade: bool,
    /// The gateway writes `Host` (no `request_headers` rule dropped it).
    own_host: bool,
}

impl<S: Io> Conn<'_, S> {
    /// Answers the request whose head is in `buf`; sets `used` (and `carry`) to what it took.
    pub(super) async fn answer(&mut self, draining: bool) -> Step {
        let Conn {
            proxy, stream, client, ip, buf, head, used, carry, out, spare, idle_since, ..
        } = self;
        let proxy: &Proxy = proxy;
        let _active = proxy.send.forwarder.active();
        *used = head.len;
        let view = View::of(buf, head, client);
        let started = StdInstant::now();
        let line =
            RequestLine { method: view.method, path: view.path, client: client.peer, started };
        let mut trace = Trace {
            span: proxy.observe.tracer.as_ref().map(|t| t.begin(|n| view.header(n))),
            bytes_in: view.declared_length().unwrap_or(0),
            ..Trace::default()
        };
        let mut ex = OnEngine {
            proxy,
            stream,
            client,
            ip,
            out,
            spare,
            carry,
            used,
            close: head.close || draining,
            body_unread: head.body != BodyFraming::None,
        };
        let answered = match pipeline::server_itself(proxy, &view) {
            Ok(None) => {
                ex.run(&view, &line, &mut trace).await.map_err(|e| proxy.refuse(e, &line, false))
            }
            Ok(Some(own)) => Err(own),
            Err(e) => Err(proxy.refuse(e, &line, false)),
        };
        let step = match answered {
            Ok(step) => step,
            Err(own) => {
                let close = ex.close || ex.body_unread;
                write_own(proxy, (ex.stream, ex.out), own, (&line, &trace), close).await
            }
        };
        // The keep-alive wait counts from the answer's end: the relay's clock reading if it
        // took one.
        *idle_since = trace.finished.map_or_else(Instant::now, Instant::from_std);
        step
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
        log::info!(
            "connection from {} closed: invalid HTTP request, answered {status}: {why}",
            self.client.peer
        );
        let own = self.proxy.refuse(ProxyError::Refused(status, why), &line, false);
        let to = (&mut self.stream, &mut self.out);
        write_own(self.proxy, to, own, (&line, &Trace::default()), true).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.stream).await;
    }
}

impl<S: Io> OnEngine<'_, S> {
    /// The pipeline's phases, then the engine's own: head, body, forward, relay.
    async fn run(
        &mut self,
        view: &View<'_>,
        line: &RequestLine<'_>,
        trace: &mut Trace,
    ) -> Result<Step, ProxyError> {
        let proxy = self.proxy;
        let routed = pipeline::route(proxy, view, trace)?;
        // HTTP/2 to the instances goes on hyper's client (`bridge.rs`); HTTP/1.1, over TCP or
        // TLS, on the engine's own.
        let h2 = proxy.send.transports.get(&routed.service.name).filter(|t| t.is_h2()).cloned();
        let admitted = pipeline::admit(proxy, view, routed).await?;
        // Held until the answer is sent (max_requests counts it in flight until then).
        let Admitted { target, service, identity, key, in_flight: _held, answer_actions, coding } =
            admitted;
        // A HEAD's answer has no body to compress.
        let squeeze = coding
            .filter(|_| view.method != "HEAD")
            .and_then(|c| proxy.routes.edge(&target)?.compress.as_ref().map(|rule| (rule, c)));
        let actions = proxy.routes.router.header_actions(&target);
        let request_actions = actions.map(|a| a.0);
        let response_actions = answer_actions.as_deref().or(actions.map(|a| a.1));
        let traceparent = trace.traceparent();
        let origin = Origin {
            peer: self.client.peer.ip(),
            peer_text: self.ip,
            scheme: self.client.scheme.as_str(),
            port: self.client.port,
            host: view.host,
            identity: identity.as_ref(),
            client_cert: self.client.cert_subject.as_deref().map(str::as_bytes),
            traceparent: traceparent.as_ref().map(|t| &t[..]),
        };
        if let Some(transport) = h2 {
            let to = (&service, key, &target, &*transport);
            let (asked, answering) = ((&origin, request_actions), (response_actions, squeeze));
            // Boxed: an HTTP/2 exchange's state (hyper's client, the body's channel) would
            // otherwise enlarge every request's.
            let bridged = self.bridge(view, to, asked, answering, (line, trace));
            return Box::pin(bridged).await;
        }
        let upgrade = view.upgrade(&proxy.settings.upgrade_protocols);
        self.request_head(view, &target.path, (&origin, request_actions), upgrade);
        let mut framed = Vec::new();
        let (mut upload, body) = self.body_start(view, &service, &mut framed)?;
        if upload.is_some() && view.head.expect_continue {
            // The client waits for this before it sends the body (nginx says it as it starts
            // reading the body, as here).
            let idle = proxy.settings.idle_timeout;
            if write_within(&mut *self.stream, CONTINUE, idle).await.is_err() {
                return Ok(Step::Close);
            }
        }
        if upgrade.is_none() {
            let whole = upload.is_none().then_some(body);
            mirror(proxy, view, &target, (&origin, request_actions), whole);
        }
        let own_host = request_actions.is_none_or(|a| !a.drops(b"host"));
        let outgoing =
            Outgoing { body, upload: upload.as_mut(), upgrade: upgrade.is_some(), own_host };
        let forwarded = self.forward(view, (&service, key), outgoing, trace).await;
        if let Some(upload) = upload.as_mut() {
            *self.carry = std::mem::take(&mut upload.leftover);
            self.body_unread = !upload.is_done();
        }
        let answering = (response_actions, squeeze);
        self.relay(view, (forwarded?, &service.name), answering, (line, trace)).await
    }

    /// The request line and every header line but `Host` (it depends on the instance picked),
    /// as the policy writes them, into `out`.
    fn request_head(
        &mut self,
        view: &View<'_>,
        path: &PathAndQuery,
        (origin, actions): (&Origin<'_>, Option<&HeaderActions>),
        upgrade: Option<&[u8]>,
    ) {
        // The head's buffer and the attempt's two, lent under one lock.
        let spare = self.spare.get_or_insert_default();
        let lent = [&mut *self.out, &mut spare.request, &mut spare.response];
        self.proxy.send.buffers.fill(lent);
        let (head, base) = (view.head, &mut *self.out);
        base.clear();
        base.extend_from_slice(head.method.get(view.buf));
        base.push(b' ');
        base.extend_from_slice(path.as_str().as_bytes());
        base.extend_from_slice(b" HTTP/1.1\r\n");
        self.proxy.policy.request(view.lines(), origin, actions, base);
        if head.body == BodyFraming::Chunked {
            base.put(b"transfer-encoding", b"chunked");
        }
        if let Some(protocol) = upgrade {
            base.put(b"connection", b"upgrade");
            base.put(b"upgrade", protocol);
        }
    }

    /// The body: whole with the head (`None`), or its start with the rest to stream; and the
    /// bytes that go with the head (where they came, or re-framed into `framed`).
    fn body_start<'b>(
        &mut self,
        view: &View<'b>,
        service: &Service,
        framed: &'b mut Vec<u8>,
    ) -> Result<(Option<Upload>, &'b [u8]), ProxyError> {
        let (head, max) = (view.head, self.proxy.settings.max_body_bytes);
        match body::start(head.body, &view.buf[head.len..], max, framed) {
            Ok((Start::Whole { used }, bytes)) => {
                *self.used += used;
                self.body_unread = false;
                Ok((None, bytes))
            }
            Ok((Start::Streamed(upload), bytes)) => {
                *self.used = view.buf.len();
                Ok((Some(upload), bytes))
            }
            Err(e) => Err(ProxyError::Upstream(service.name.clone(), e.into())),
        }
    }

    /// Sends the request to an instance of `service` with the engine's own client: each
    /// attempt writes the head (with the picked instance's `Host`) and the body in one write.
    async fn forward<'s>(
        &mut self,
        view: &View<'_>,
        (service, key): (&'s std::sync::Arc<Service>, Option<u64>),
        outgoing: Outgoing<'_>,
        trace: &mut Trace,
    ) -> Result<Answered<'s, Reply>, ProxyError> {
        let Outgoing { body, upload, upgrade, own_host } = outgoing;
        let forwarder = &self.proxy.send.forwarder;
        let tls = self.proxy.send.transports.get(&service.name).and_then(|t| t.tls.as_ref());
        let (settings, buffers) = (forwarder.settings(), &self.proxy.send.buffers);
        let preserved = view.host_line().filter(|_| settings.preserve_host);
        let method = Method::from_bytes(view.method.as_bytes()).unwrap_or(Method::POST);
        let replay = Replay::for_request(&method, upload.is_none() && !upgrade);
        let sent = upload.as_ref().map(|u| u.sent.clone());
        let mut streamed = upload.map(|u| (u, &mut *self.stream));
        let (base, spare) = (&self.out[..], &mut *self.spare);
        let attempt = |address: &'s str, now| {
            let host = preserved.unwrap_or(address.as_bytes());
            let Spare { mut request, mut response, head } = spare.take().unwrap_or_default();
            buffers.fill([&mut request, &mut response]);
            request.clear();
            request.extend_from_slice(base);
            if own_host {
                request.put(b"host", host);
            }
            request.extend_from_slice(b"\r\n");
            request.extend_from_slice(body);
            let attempt = Attempt {
                pool: forwarder.engine_pool(),
                dialer: forwarder.dialer(),
                tls,
                idle_timeout: settings.idle_timeout,
                request,
                buf: response,
                head,
                head_request: method == Method::HEAD,
                replayable: replay == Replay::IfNoResponse,
                // A streamed body goes with the first attempt only (it is never replayed).
                upload: streamed.take().map(|(u, c)| (u, &mut *c)),
                upgrade,
            };
            (attempt.run(address, now), sent.clone())
        };
        forwarder.forward(service, key, replay, attempt, &mut trace.attempts).await
    }

    /// Relays the instance's answer to the client (a 101 turns the connection into a tunnel).
    async fn relay(
        &mut self,
        view: &View<'_>,
        (answered, service): (Answered<'_, Reply>, &str),
        (actions, squeeze): (Option<&HeaderActions>, Option<(&CompressRule, Coding)>),
        (line, trace): (&RequestLine<'_>, &mut Trace),
    ) -> Result<Step, ProxyError> {
        let proxy = self.proxy;
        let status =
            StatusCode::from_u16(answered.response.head.status).unwrap_or(StatusCode::BAD_GATEWAY);
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The connection becomes a tunnel: it stays this connection's (counted open, its
            // max_connections permit held) until either side closes or it idles out.
            proxy.log_request(line, trace, status, None);
            let pending = &view.buf[*self.used..];
            Box::pin(respond::tunnel(proxy, &mut *self.stream, (answered, actions), pending)).await;
            return Ok(Step::Close);
        }
        let to = ToClient { close: self.close || self.body_unread, http10: view.head.http10 };
        let squeeze = squeeze
            .filter(|(rule, _)| rule.takes(&compressed::answer_head(&answered.response)))
            .and_then(|(rule, coding)| Some((rule.encoder(coding).ok()?, coding)));
        let mut length = None;
        let (responded, spare) = match squeeze {
            // Compressed: its length is known at its end only.
            Some((encoder, coding)) => {
                let answering = (answered, actions);
                let (to, client) = ((to, encoder, coding), &mut *self.stream);
                Box::pin(compressed::respond_compressed(proxy, client, answering, to, self.out))
                    .await
            }
            None => {
                length =
                    proxy.observe.access_log.then(|| respond::content_length(&answered.response));
                trace.bytes_out = respond::declared_length(&answered.response).unwrap_or(0);
                respond(proxy, &mut *self.stream, (answered, actions), to, self.out).await
            }
        };
        *self.spare = spare;
        match responded {
            Responded::Sent(step, at) => {
                trace.finished = Some(at);
                proxy.log_request(line, trace, status, length.flatten().as_deref());
                Ok(step)
            }
            Responded::Malformed(why) => {
                self.close = true;
                Err(ProxyError::Upstream(service.to_string(), UpstreamError::Failed(why)))
            }
        }
    }
}

/// Sends a copy of the request to the route's shadow service (with its body when the body is
/// whole and small enough; a streamed one is not copied).
fn mirror(
    proxy: &Proxy,
    view: &View<'_>,
    target: &Target,
    (origin, actions): (&Origin<'_>, Option<&HeaderActions>),
    whole: Option<&[u8]>,
) {
    proxy.mirror(target, |max_body| {
        let body = match (view.head.body, whole) {
            (BodyFraming::None, _) => Bytes::new(),
            (BodyFraming::Length(n), Some(body)) if n <= max_body as u64 => {
                Bytes::copy_from_slice(body)
            }
            _ => return None,
        };
        let mut headers = http::HeaderMap::new();
        proxy.policy.request(view.lines(), origin, actions, &mut headers);
        let method = Method::from_bytes(view.method.as_bytes()).unwrap_or(Method::POST);
        Some(MirrorCopy { method, path: target.path.clone(), headers, body })
    });
}

/// Writes the gateway's own answer (`OPTIONS *`, or the refusal [`Proxy::refuse`] built) as
/// bytes, and logs the request.
async fn write_own<S: Io>(
    proxy: &Proxy,
    (client, out): (&mut S, &mut Vec<u8>),
    answer: OwnAnswer,
    (line, trace): (&RequestLine<'_>, &Trace),
    close: bool,
) -> Step {
    answer.write_h1(close, out);
    proxy.log_request(line, trace, answer.status, Some(&answer.body.len().to_string()));
    match write_within(client, out, proxy.settings.idle_timeout).await {
        Ok(()) if !close => Step::KeepAlive,
        _ => Step::Close,
    }
}

/// Whether the engine serves the target: made of the characters a URI path and query may hold
/// unescaped (at once), or else one the `http` crate reads as a URI — the reading hyper would
/// make, which admits `"`, `{`, `}` and `|` that clients do send unescaped in queries. Any
/// other is refused (400) by the engine, as hyper would; never handed over.
pub(super) fn servable_target(buf: &[u8], head: &RequestHead) -> bool {
    let target = head.target.get(buf);
    super::scan::plain_target(target) || http::Uri::try_from(target).is_ok()
}
