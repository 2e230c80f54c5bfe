//! An instance's answer on its way to the client: the head rewritten by the one policy, the body
//! copied with the gateway's own framing — a `Content-Length` body to the byte (anything after
//! it means the instance's connection is not reused), a chunked one decoded strictly
//! ([`chunked`]) and encoded again, one delimited by the instance closing sent chunked so the
//! client's connection survives it. The instance's connection goes back to the pool only when
//! its answer ended exactly where its framing said.

use std::time::Instant;

use http::StatusCode;
use tokio::io::AsyncWriteExt;

use crate::http::buffers::KEPT_CAPACITY;
use crate::http::client::forward::Answered;
use crate::http::client::h1::Reply;
use crate::http::client::inflight::InFlight;
use crate::http::client::wire::pool_key;
use crate::http::h1::head::{lines, Framing};
use crate::http::h1::io::{timeout, write_within, Io};
use crate::http::h1::relay::{relay, Relayed, Source};
use crate::http::h1::{Spare, Step};
use crate::http::policy::{self, status_allows_length, HeadSink, Kind};
use crate::http::proxy::Proxy;
use crate::http::router::HeaderActions;
use crate::http::tunnel::pipe;

/// What became of an instance's answer.
pub(super) enum Responded {
    /// Sent (whole, or cut when either side failed midway), at the instant given: one clock
    /// reading stamps the pooled connection, the request's duration and the client's idle
    /// start.
    Sent(Step, Instant),
    /// Its body was malformed from the start: nothing was sent to the client.
    Malformed(String),
}

/// The answer's `Content-Length`, for the access log.
pub(super) fn content_length(ex: &Reply) -> Option<String> {
    let line = ex.head.lines.iter().find(|l| l.kind == Kind::ContentLength)?;
    Some(String::from_utf8_lossy(line.value.get(&ex.buf)).into_owned())
}

/// The answer's body length as its framing declares it (bytes out, for the metrics): read once
/// with the head, not parsed again.
pub(super) fn declared_length(ex: &Reply) -> Option<u64> {
    match ex.head.framing {
        Some(Framing::Length(n)) => Some(n),
        _ => None,
    }
}

/// What the client's side of the exchange asks of the answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct ToClient {
    /// The connection ends after this answer (the client asked, the worker drains, or the
    /// request body was not read whole).
    pub(super) close: bool,
    /// An HTTP/1.0 client: no chunked framing toward it.
    pub(super) http10: bool,
}

/// How the head sent to the client frames its body.
#[derive(Debug, Clone, Copy)]
pub(super) struct HeadFraming {
    /// The body is re-framed as chunked (its length is unknown).
    pub(super) rechunk: bool,
    /// `Connection: close` is added.
    pub(super) close: bool,
    /// The instance's `Content-Length` goes on (the body is sent as it came).
    pub(super) length: bool,
    /// The gateway encodes the body: the instance's own `Content-Encoding` (an `identity`
    /// compression takes) does not go on beside the gateway's.
    pub(super) recoded: bool,
}

/// Sends the instance's answer to the client.
///
/// To an HTTP/1.0 client (`http10`) a body of unknown length (chunked or until-close) is sent
/// as it comes and ends with the connection; one with a length keeps the connection if the
/// client asked for keep-alive.
pub(super) async fn respond<S: Io>(
    proxy: &Proxy,
    client: &mut S,
    (answered, actions): (Answered<'_, Reply>, Option<&HeaderActions>),
    to: ToClient,
    out: &mut Vec<u8>,
) -> (Responded, Option<Spare>) {
    let ToClient { close, http10 } = to;
    let Answered { response: mut ex, address, inflight } = answered;
    let framing = ex.head.framing.unwrap_or(Framing::UntilClose);
    let unknown_length = matches!(framing, Framing::Chunked | Framing::UntilClose);
    let close = close || (http10 && unknown_length);
    let rechunk = unknown_length && !http10;
    let framed = HeadFraming { rechunk, close, length: !rechunk, recoded: false };
    response_head(proxy, (&ex, actions), address, framed, out);
    if http10 && !close {
        out.truncate(out.len() - 2);
        out.extend_from_slice(b"connection: keep-alive\r\n\r\n");
    }
    let idle = proxy.settings.idle_timeout;
    let mut source = Source::new(framing, ex.head.reusable);
    let done = match relay((&mut ex, &mut source), client, rechunk, out, idle).await {
        Relayed::Whole => true,
        Relayed::Cut => false,
        // Nothing sent yet: the client gets a 502 instead of a cut connection.
        Relayed::Malformed(why) => return (Responded::Malformed(why), None),
    };
    let reusable = source.reusable();
    sent(proxy, (ex, address, inflight), (done, reusable), close)
}

/// After an answer was sent (`done`: whole): the instance's connection back to the pool when its
/// answer ended where its framing said (`reusable`), the request no longer in flight, the
/// exchange's buffers kept for the client connection's next one (unless a body grew them).
pub(super) fn sent(
    proxy: &Proxy,
    (ex, address, inflight): (Reply, &str, InFlight),
    (done, reusable): (bool, bool),
    close: bool,
) -> (Responded, Option<Spare>) {
    let Reply { conn, head, buf, request } = ex;
    let now = Instant::now();
    if done && reusable {
        let key = pool_key(address, conn.is_tls());
        proxy.send.forwarder.engine_pool().put(&key, conn, now);
    }
    drop(inflight);
    let step = match done && !close {
        true => Step::KeepAlive,
        false => Step::Close,
    };
    let spare = (buf.capacity() <= KEPT_CAPACITY).then_some(Spare { request, response: buf, head });
    (Responded::Sent(step, now), spare)
}

/// Answers 101 and turns the connection into a tunnel to the instance: the answer's head
/// (the policy's lines, then the protocol switched to), whatever either side sent past its
/// head, then bytes both ways until either closes or nothing moves for `idle_timeout`.
pub(super) async fn tunnel<S: Io>(
    proxy: &Proxy,
    client: &mut S,
    (answered, actions): (Answered<'_, Reply>, Option<&HeaderActions>),
    pending: &[u8],
) {
    let Answered { response: mut ex, address, inflight } = answered;
    let mut out = Vec::new();
    let as_sent = HeadFraming { rechunk: false, close: false, length: true, recoded: false };
    response_head(proxy, (&ex, actions), address, as_sent, &mut out);
    out.truncate(out.len() - 2);
    let protocol =
        ex.head.lines.iter().find(|l| l.name.get(&ex.buf).eq_ignore_ascii_case(b"upgrade"));
    out.extend_from_slice(b"connection: upgrade\r\n");
    if let Some(line) = protocol {
        out.put(b"upgrade", line.value.get(&ex.buf));
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&ex.buf[ex.head.len..]);
    let idle = proxy.settings.idle_timeout;
    if write_within(client, &out, idle).await.is_err() {
        return;
    }
    if !pending.is_empty() && timeout(idle, ex.conn.write_all(pending)).await.is_err() {
        return;
    }
    // The instance's connection is the tunnel's now: it never goes back to the pool.
    drop(inflight);
    pipe(client, &mut ex.conn, address, idle).await;
}

/// The response head as the client receives it.
pub(super) fn response_head(
    proxy: &Proxy,
    (ex, actions): (&Reply, Option<&HeaderActions>),
    address: &str,
    HeadFraming { rechunk, close, length, recoded }: HeadFraming,
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
    let keep_length = length && status_allows_length(head.status);
    let coding = |l: &policy::Line<'_>| recoded && l.name.eq_ignore_ascii_case(b"content-encoding");
    let passed = lines(buf, &head.lines).filter(move |l| !coding(l));
    proxy.policy.response(passed, keep_length, (actions, address), out);
    if rechunk {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}
