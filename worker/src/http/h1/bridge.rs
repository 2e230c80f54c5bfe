//! An HTTP/1.1 request on the engine to a service whose instances speak HTTP/2 (`protocol =
//! "h2"` or `"h2c"`): it goes out on hyper's HTTP/2 client — the one client the gateway has
//! for HTTP/2 — and its answer comes back through the engine as HTTP/1.1 bytes, so the
//! client's connection stays the engine's for its whole life (it used to be handed to
//! hyper's server for the rest of it).
//!
//! The head is the one policy's (written into a `HeaderMap`); the body goes as data: one that
//! came whole with its head as one frame (sent again if a retry needs it), a longer one decoded
//! from the client as it comes and streamed through a small channel, backpressure both ways.
//! The answer is relayed frame by frame: with its length when it declares one, else chunked
//! (the trailers the policy allows in the last chunk), or until the close to an HTTP/1.0
//! client. HTTP/2 has no `Upgrade`: an upgrade is not asked of the instance, the request goes
//! as a plain one (as for a protocol the operator does not allow).

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;

use super::{mirror, OnEngine, CONTINUE};
use crate::http::client::forward::{Answered, Replay};
use crate::http::client::pool::Lease;
use crate::http::client::transport::Transport;
use crate::http::client::upstream::{sent_body, BodySent, UpstreamError};
use crate::http::compress::{answer_head, Coding, CompressRule, Compressed};
use crate::http::error::ProxyError;
use crate::http::h1::body::Upload;
use crate::http::h1::io::{timeout, write_within, Io};
use crate::http::h1::relay::frame;
use crate::http::h1::view::View;
use crate::http::h1::Step;
use crate::http::pipeline::Exchange as _;
use crate::http::policy::{self, map_lines, status_allows_length, HeadSink, Origin};
use crate::http::proxy::{Proxy, RequestLine, Trace};
use crate::http::router::{HeaderActions, Target};
use crate::http::{Body, BoxError};
use crate::table::Service;

/// Frames of a streamed body waiting for hyper to take them.
const QUEUED_FRAMES: usize = 4;

/// Largest read of a streamed body at once.
const READ: usize = 64 * 1024;

/// The answer's edits: the route's (or CORS's) header actions, and its compression.
pub(super) type Answering<'a> = (Option<&'a HeaderActions>, Option<(&'a CompressRule, Coding)>);

/// A frame on its way into a streamed body.
type Queued = Result<Frame<Bytes>, BoxError>;

/// The request body as it goes to the instance.
enum Sending {
    /// None, or all of it (with a chunked body's allowed trailers): sent again on a retry.
    Whole(Option<(Bytes, Option<HeaderMap>)>),
    /// The rest comes from the client: the first attempt takes the channel's end.
    Streamed(Option<Body>),
}

impl<S: Io> OnEngine<'_, S> {
    /// Sends the request to an HTTP/2 instance of `service` and relays its answer.
    pub(super) async fn bridge<'s>(
        &mut self,
        view: &View<'_>,
        (service, key, target, transport): (&'s Arc<Service>, Option<u64>, &Target, &Transport),
        (origin, request_actions): (&Origin<'_>, Option<&HeaderActions>),
        answering: Answering<'_>,
        (line, trace): (&RequestLine<'_>, &mut Trace),
    ) -> Result<Step, ProxyError> {
        let proxy = self.proxy;
        let method = Method::from_bytes(view.method.as_bytes()).unwrap_or(Method::POST);
        let head = head_for_h2(proxy, view, origin, request_actions);
        let (whole, upload) = self.body_for_h2(view, &service.name)?;
        let idle = proxy.settings.idle_timeout;
        if upload.is_some() && view.head.expect_continue {
            // The client waits for this before it sends the rest.
            if write_within(&mut *self.stream, CONTINUE, idle).await.is_err() {
                return Ok(Step::Close);
            }
        }
        if upload.is_none() {
            let body = whole.as_ref().map_or(&[][..], |(data, _)| &data[..]);
            mirror(proxy, view, target, (origin, request_actions), Some(body));
        }
        let replay = Replay::for_request(&method, upload.is_none());
        let (tx, mut sending) = match upload.is_some() {
            true => {
                let (tx, rx) = mpsc::channel(QUEUED_FRAMES);
                (Some(tx), Sending::Streamed(Some(channel_body(rx))))
            }
            false => (None, Sending::Whole(whole)),
        };
        let upstream = proxy.send.forwarder.upstream();
        let attempt = |address: &'s str, _| {
            let body = match &mut sending {
                Sending::Streamed(body) => body.take().unwrap_or_else(empty),
                Sending::Whole(Some((data, trailers))) => {
                    whole_body(data.clone(), trailers.clone())
                }
                Sending::Whole(None) => empty(),
            };
            let sent = (!body.is_end_stream()).then(|| Arc::new(BodySent::default()));
            let body = match &sent {
                Some(sent) => sent_body(body, sent.clone()).boxed(),
                None => body,
            };
            let mut req = Request::new(body);
            *req.method_mut() = method.clone();
            *req.uri_mut() = http::Uri::from(target.path.clone());
            *req.headers_mut() = head.clone();
            if let Some(host) = host_for_h2(proxy, view, request_actions, address) {
                req.headers_mut().insert(header::HOST, host);
            }
            (upstream.request(Some(transport), address, req), sent)
        };
        let forward =
            proxy.send.forwarder.forward(service, key, replay, attempt, &mut trace.attempts);
        let answered = match (upload, tx) {
            (Some((mut upload, first)), Some(tx)) => {
                let pumped = pump(&mut *self.stream, (&mut upload, first), tx, idle);
                let answered = race(forward, pumped, &service.name).await;
                *self.carry = std::mem::take(&mut upload.leftover);
                self.body_unread = !upload.is_done();
                answered?
            }
            _ => forward.await?,
        };
        self.answer_h2(view, answered, answering, (line, trace)).await
    }

    /// The body as data: whole when it came with its head (or none), else the data that came
    /// and the rest to read ([`Upload`]).
    #[allow(clippy::type_complexity)]
    fn body_for_h2(
        &mut self,
        view: &View<'_>,
        service: &str,
    ) -> Result<(Option<(Bytes, Option<HeaderMap>)>, Option<(Upload, Bytes)>), ProxyError> {
        let (head, max) = (view.head, self.proxy.settings.max_body_bytes);
        let Some(mut upload) = Upload::of(head.body, max) else {
            return Ok((None, None));
        };
        let mut data = Vec::new();
        let avail = &view.buf[head.len..];
        let decoded = upload.decode(avail, |d| data.extend_from_slice(d));
        decoded.map_err(|e| ProxyError::Upstream(service.to_string(), e.into()))?;
        if upload.is_done() {
            *self.used += avail.len() - upload.leftover.len();
            self.body_unread = false;
            return Ok((Some((data.into(), upload.trailers())), None));
        }
        *self.used = view.buf.len();
        Ok((None, Some((upload, data.into()))))
    }

    /// Relays the instance's answer to the client as HTTP/1.1.
    async fn answer_h2(
        &mut self,
        view: &View<'_>,
        answered: Answered<'_, (Response<Incoming>, Lease)>,
        (actions, squeeze): Answering<'_>,
        (line, trace): (&RequestLine<'_>, &mut Trace),
    ) -> Result<Step, ProxyError> {
        let proxy = self.proxy;
        let Answered { response: (response, lease), address, mut inflight } = answered;
        // Counted in flight, its stream held, until the answer's body is done.
        inflight.hold(lease);
        let (parts, body) = response.into_parts();
        let status = parts.status;
        let encoder = squeeze
            .filter(|(rule, _)| rule.takes(&answer_head(status, &parts.headers)))
            .and_then(|(rule, coding)| Some((rule.encoder(coding).ok()?, coding)));
        let keep_length = status_allows_length(status.as_u16()) && encoder.is_none();
        let length = parts.headers.get(header::CONTENT_LENGTH).filter(|_| keep_length);
        let length = length.and_then(|v| v.to_str().ok()).map(str::to_string);
        let bodiless =
            view.method == "HEAD" || status.as_u16() < 200 || status == 204 || status == 304;
        let http10 = view.head.http10;
        let known = bodiless || length.is_some();
        let close = self.close || self.body_unread || (http10 && !known);
        let rechunk = !known && !http10;
        let out = &mut *self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let lines = map_lines(&parts.headers).into_iter();
        proxy.policy.response(lines, keep_length, (actions, address), out);
        if let Some((_, coding)) = &encoder {
            out.put(b"content-encoding", coding.token().as_bytes());
        }
        if rechunk {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        } else if http10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let mut body = body.map_err(BoxError::from).boxed();
        if let Some((encoder, _)) = encoder {
            body = Compressed::new(body, encoder).boxed();
        }
        let idle = proxy.settings.idle_timeout;
        let whole = match bodiless {
            true => write_within(&mut *self.stream, out, idle).await.is_ok(),
            false => relay_frames(&mut *self.stream, body, (out, rechunk), idle).await,
        };
        drop(inflight);
        trace.finished = Some(std::time::Instant::now());
        proxy.log_request(line, trace, status, length.as_deref());
        Ok(match whole && !close {
            true => Step::KeepAlive,
            false => Step::Close,
        })
    }
}

/// The head the instance gets, but `Host` (the picked instance's, set per attempt).
fn head_for_h2(
    proxy: &Proxy,
    view: &View<'_>,
    origin: &Origin<'_>,
    actions: Option<&HeaderActions>,
) -> HeaderMap {
    let mut head = HeaderMap::new();
    proxy.policy.request(view.lines(), origin, actions, &mut head);
    // `TE: trailers` is how a gRPC client says it reads trailers; a gRPC server is told.
    let mut te = view.lines().filter(|l| l.name.eq_ignore_ascii_case(b"te"));
    if te.any(|l| policy::lists(l.value, b"trailers")) {
        head.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    head
}

/// The `Host` the instance at `address` gets (none when a rule drops it).
fn host_for_h2(
    proxy: &Proxy,
    view: &View<'_>,
    actions: Option<&HeaderActions>,
    address: &str,
) -> Option<HeaderValue> {
    if actions.is_some_and(|a| a.drops(b"host")) {
        return None;
    }
    let preserved = view.host_line().filter(|_| proxy.settings.preserve_host);
    HeaderValue::from_bytes(preserved.unwrap_or(address.as_bytes())).ok()
}

/// Copies the rest of the body from the client into the channel, decoded, each read within
/// `idle`; then its allowed trailers. A channel hyper closed (the instance answered, or the
/// attempt failed) ends the pump: the answer tells the rest.
async fn pump<C: Io>(
    client: &mut C,
    (upload, first): (&mut Upload, Bytes),
    tx: mpsc::Sender<Queued>,
    idle: std::time::Duration,
) -> Result<(), UpstreamError> {
    let cut = |why: &str| UpstreamError::ClientBody(why.to_string());
    if !first.is_empty() && tx.send(Ok(Frame::data(first))).await.is_err() {
        return Ok(());
    }
    let mut buf = Vec::with_capacity(READ);
    while !upload.is_done() {
        buf.clear();
        match timeout(idle, client.read_buf(&mut buf)).await {
            Ok(0) => return Err(cut("the client closed before its body ended")),
            Err(()) => return Err(cut("the client stopped sending its body")),
            Ok(_) => {}
        }
        let mut data = Vec::new();
        upload.decode(&buf, |d| data.extend_from_slice(d)).map_err(UpstreamError::from)?;
        if !data.is_empty() && tx.send(Ok(Frame::data(data.into()))).await.is_err() {
            return Ok(());
        }
    }
    if let Some(trailers) = upload.trailers() {
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    }
    Ok(())
}

/// The forward, while the body is pumped into it: the answer (an instance may answer before
/// the body's end), or the client's fault with its body.
async fn race<A>(
    forward: impl Future<Output = Result<A, ProxyError>>,
    pumped: impl Future<Output = Result<(), UpstreamError>>,
    service: &str,
) -> Result<A, ProxyError> {
    let (mut forward, mut pumped) = (std::pin::pin!(forward), std::pin::pin!(pumped));
    let mut pumping = true;
    loop {
        tokio::select! {
            answered = &mut forward => return answered,
            r = &mut pumped, if pumping => match r {
                Ok(()) => pumping = false,
                Err(e) => return Err(ProxyError::Upstream(service.to_string(), e)),
            },
        }
    }
}

/// Writes the answer's head (in `out`), then its body frame by frame: as it comes, or as
/// chunks ending with the allowed trailers (`rechunk`). Whether it went whole.
async fn relay_frames<S: Io>(
    client: &mut S,
    mut body: Body,
    (out, rechunk): (&mut Vec<u8>, bool),
    idle: std::time::Duration,
) -> bool {
    if write_within(client, out, idle).await.is_err() {
        return false;
    }
    let mut trailers = None;
    loop {
        out.clear();
        let next = tokio::time::timeout(idle, body.frame()).await;
        let next = match next {
            Ok(Some(Ok(next))) => next,
            Ok(None) => break,
            // The instance failed or went silent midway: the client's connection is cut.
            Ok(Some(Err(_))) | Err(_) => return false,
        };
        match next.into_data() {
            Ok(data) => frame(&data, !rechunk, out),
            Err(next) => trailers = next.into_trailers().ok(),
        }
        if !out.is_empty() && write_within(client, out, idle).await.is_err() {
            return false;
        }
    }
    if rechunk {
        last_chunk(trailers.as_ref(), out);
        return write_within(client, out, idle).await.is_ok();
    }
    true
}

/// The last chunk, with the trailer fields the policy lets through.
fn last_chunk(trailers: Option<&HeaderMap>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        if policy::response_trailer_allowed(name.as_str().as_bytes()) {
            out.put(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A body fed frame by frame through a channel.
fn channel_body(mut rx: mpsc::Receiver<Queued>) -> Body {
    StreamBody::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx))).boxed()
}

fn empty() -> Body {
    http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

/// A whole body, and its trailers.
fn whole_body(data: Bytes, trailers: Option<HeaderMap>) -> Body {
    match trailers {
        None => Full::new(data).map_err(|never| match never {}).boxed(),
        Some(t) => {
            let frames = [Frame::data(data), Frame::trailers(t)].map(Ok::<_, BoxError>);
            StreamBody::new(futures::stream::iter(frames)).boxed()
        }
    }
}

#[cfg(test)]
#[path = "bridge_tests.rs"]
mod tests;
