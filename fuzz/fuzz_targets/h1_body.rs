//! Request bodies as a hostile client sends them, through the engine's body state machine
//! (`h1::body`): whatever way the bytes are split between the read that brought the head and
//! the reads after it, the instance receives the same data (a length body: the same bytes; a
//! chunked one: chunks framed per read, decoding to the same data), the same verdict, and the
//! same leftover (the next pipelined request); a chunked body re-encoded by the gateway decodes
//! to the data the client sent, and a length body is forwarded to the byte. Read as the bridge
//! to HTTP/2 instances reads it (decoded, no framing), the data, leftover and end are the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use worker::http::h1::body::{start, Start, Upload};
use worker::http::h1::chunked::Decoder;
use worker::http::h1::head::BodyFraming;

/// The data a framed body carries (itself for a length body).
fn data_of(framing: BodyFraming, sent: &[u8]) -> Vec<u8> {
    if framing != BodyFraming::Chunked {
        return sent.to_vec();
    }
    let (mut d, mut data) = (Decoder::default(), Vec::new());
    d.decode(sent, |x| data.extend_from_slice(x)).expect("the gateway's framing decodes");
    data
}

/// The framed bytes sent on, the leftover, and whether the body ended; `None` when refused.
fn forward(
    framing: BodyFraming,
    input: &[u8],
    cut: usize,
    step: usize,
) -> Option<(Vec<u8>, Vec<u8>, bool)> {
    let cut = cut.min(input.len());
    let mut framed = Vec::new();
    let (started, first) = start(framing, &input[..cut], 1 << 20, &mut framed).ok()?;
    let mut sent = first.to_vec();
    match started {
        Start::Whole { used } => Some((sent, input[used..].to_vec(), true)),
        Start::Streamed(mut upload) => {
            for piece in input[cut..].chunks(step.max(1)) {
                if upload.is_done() {
                    upload.leftover.extend_from_slice(piece);
                    continue;
                }
                let mut out = Vec::new();
                let framed = upload.feed(piece, &mut out).ok()?.to_vec();
                sent.extend_from_slice(&framed);
            }
            Some((sent, std::mem::take(&mut upload.leftover), upload.is_done()))
        }
    }
}

/// The body's data as the bridge to HTTP/2 instances reads it (decoded from the first byte,
/// in pieces of `step`), the leftover, and whether it ended; `None` when refused.
fn decoded(framing: BodyFraming, input: &[u8], step: usize) -> Option<(Vec<u8>, Vec<u8>, bool)> {
    let Some(mut upload) = Upload::of(framing, 1 << 20) else {
        return Some((Vec::new(), input.to_vec(), true));
    };
    let mut data = Vec::new();
    for piece in input.chunks(step.max(1)) {
        if upload.is_done() {
            upload.leftover.extend_from_slice(piece);
            continue;
        }
        upload.decode(piece, |d| data.extend_from_slice(d)).ok()?;
    }
    Some((data, std::mem::take(&mut upload.leftover), upload.is_done()))
}

fuzz_target!(|input: &[u8]| {
    let Some((&a, input)) = input.split_first() else { return };
    let Some((&b, input)) = input.split_first() else { return };
    let framing = match a % 3 {
        0 => BodyFraming::Chunked,
        _ => BodyFraming::Length(u64::from(b) * u64::from(a / 3 + 1)),
    };
    let whole = forward(framing, input, input.len(), input.len());
    let split = forward(framing, input, usize::from(b), usize::from(a % 17) + 1);
    match (&whole, &split) {
        (Some((w, wl, wd)), Some((s, sl, sd))) => {
            if *wd {
                assert!(*sd, "read boundaries changed where the body ends");
                assert_eq!(wl, sl, "read boundaries changed where the next request starts");
                let (w, s) = (data_of(framing, w), data_of(framing, s));
                assert_eq!(w, s, "read boundaries changed what was sent");
            }
        }
        // A refusal seen in all the bytes is seen whatever their split once the body is read
        // through the bad part; a split that stops before it may not have seen it yet.
        (None, Some((_, _, done))) => assert!(!done, "a refused body was forwarded whole"),
        _ => {}
    }
    // Decoded for HTTP/2, in any pieces: the same data, leftover and end as framed for 1.1.
    if let (Some((w, wl, true)), Some((d, dl, dd))) =
        (&whole, decoded(framing, input, usize::from(b) % 23 + 1))
    {
        assert!(dd, "decoding in pieces changed where the body ends");
        assert_eq!(&dl, wl, "decoding changed where the next request starts");
        assert_eq!(d, data_of(framing, w), "decoding changed the data");
    }
    if let Some((sent, _, true)) = whole {
        match framing {
            BodyFraming::Length(n) => assert_eq!(sent.len() as u64, n),
            _ => {
                let (mut d, mut data) = (Decoder::default(), Vec::new());
                d.decode(&sent, |x| data.extend_from_slice(x)).expect("re-encoded body decodes");
                assert!(d.is_done());
                let (mut d2, mut original) = (Decoder::default(), Vec::new());
                let _ = d2.decode(input, |x| original.extend_from_slice(x));
                assert_eq!(data, original);
            }
        }
    }
});
