//! An instance's answer compressed on its way to the client (the route's `compress`, see
//! `http/compress.rs`): the head as the policy writes it, without `Content-Length` and with
//! `Content-Encoding`; the body read by its own framing (a length, chunked, or until the
//! instance closes), compressed a read at a time and sent chunked — to an HTTP/1.0 client as it
//! comes, ended by the close. The instance's connection goes back to the pool only when its
//! answer ended exactly where its framing said, as uncompressed.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::http::client::forward::Answered;
use crate::http::client::h1::Reply;
use crate::http::compress::{AnswerHead, Coding, Encoder};
use crate::http::h1::chunked::LAST_CHUNK;
use crate::http::h1::head::{parse_length, Framing};
use crate::http::h1::io::{timeout, write_within, Io};
use crate::http::h1::relay::{frame, Source};
use crate::http::h1::respond::{response_head, sent, HeadFraming, Responded, ToClient};
use crate::http::h1::Spare;
use crate::http::policy::{HeadSink, Kind};
use crate::http::proxy::Proxy;
use crate::http::router::HeaderActions;

/// The head of an instance's answer, as the route's `compress` judges it.
pub(super) fn answer_head(ex: &Reply) -> AnswerHead<'_> {
    let value = |name: &[u8]| {
        let line = ex.head.lines.iter().find(|l| l.name.get(&ex.buf).eq_ignore_ascii_case(name));
        line.map(|l| l.value.get(&ex.buf))
    };
    let length = ex.head.lines.iter().find(|l| l.kind == Kind::ContentLength);
    AnswerHead {
        status: ex.head.status,
        bodiless: ex.head.framing == Some(Framing::Empty),
        content_type: value(b"content-type"),
        content_encoding: value(b"content-encoding"),
        content_length: length.and_then(|l| parse_length(l.value.get(&ex.buf))),
        cache_control: ex
            .head
            .lines
            .iter()
            .filter(|l| l.name.get(&ex.buf).eq_ignore_ascii_case(b"cache-control"))
            .map(|l| l.value.get(&ex.buf))
            .collect(),
        content_range: value(b"content-range").is_some(),
    }
}

/// Sends the instance's answer compressed with `encoder` (named `coding` in the head).
pub(super) async fn respond_compressed<S: Io>(
    proxy: &Proxy,
    client: &mut S,
    (answered, actions): (Answered<'_, Reply>, Option<&HeaderActions>),
    (to, encoder, coding): (ToClient, Encoder, Coding),
    out: &mut Vec<u8>,
) -> (Responded, Option<Spare>) {
    let ToClient { close, http10 } = to;
    let Answered { response: mut ex, address, inflight } = answered;
    let framing = ex.head.framing.unwrap_or(Framing::UntilClose);
    // The compressed length is not known before the end: chunked, or until the close.
    let close = close || http10;
    let head = HeadFraming { rechunk: !http10, close, length: false, recoded: true };
    response_head(proxy, (&ex, actions), address, head, out);
    out.truncate(out.len() - 2);
    out.put(b"content-encoding", coding.token().as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut source = Source::new(framing, ex.head.reusable);
    let mut data = Vec::new();
    let first = &ex.buf[ex.head.len..];
    match source.take(first, |d| data.extend_from_slice(d)) {
        Ok(direct) => data.extend_from_slice(direct),
        Err(why) => return (Responded::Malformed(why), None),
    }
    let idle = proxy.settings.idle_timeout;
    let relayed = squeeze(client, (&mut ex, &mut source), (encoder, http10), (data, out), idle);
    let done = relayed.await.is_ok_and(|()| source.is_done());
    let reusable = source.reusable();
    sent(proxy, (ex, address, inflight), (done, reusable), close)
}

/// The body loop: compress what was taken, send it, read more, until the body's end.
async fn squeeze<S: Io>(
    client: &mut S,
    (ex, source): (&mut Reply, &mut Source),
    (encoder, raw): (Encoder, bool),
    (mut data, out): (Vec<u8>, &mut Vec<u8>),
    idle: Duration,
) -> Result<(), ()> {
    let mut encoder = Some(encoder);
    let mut packed = Vec::new();
    loop {
        packed.clear();
        if let Some(e) = encoder.as_mut().filter(|_| !data.is_empty()) {
            e.push(&data, &mut packed).map_err(|_| ())?;
        }
        data.clear();
        if source.is_done() {
            if let Some(e) = encoder.take() {
                e.finish(&mut packed).map_err(|_| ())?;
            }
        }
        if !packed.is_empty() {
            frame(&packed, raw, out);
        }
        if source.is_done() && !raw {
            out.extend_from_slice(LAST_CHUNK);
        }
        if !out.is_empty() {
            write_within(client, out, idle).await.map_err(|_| ())?;
            out.clear();
        }
        if source.is_done() {
            return Ok(());
        }
        ex.buf.clear();
        ex.buf.reserve(64 * 1024);
        match timeout(idle, ex.conn.read_buf(&mut ex.buf)).await {
            Ok(0) if source.closed() => {}
            Ok(0) | Err(_) => return Err(()),
            Ok(_) => match source.take(&ex.buf, |d| data.extend_from_slice(d)) {
                Ok(direct) => data.extend_from_slice(direct),
                Err(why) => {
                    log::warn!("instance answer: {why}");
                    return Err(());
                }
            },
        }
    }
}
