//! The engine's framing rules as a hostile client or a broken instance exercises them:
//! - a request head the engine takes is complete (any target form: the pipeline refuses what
//!   is not a path, or answers it, before routing), framed by at most one
//!   Content-Length of digits or one `Transfer-Encoding: chunked`, never both, and parses the
//!   same whatever way its bytes were split across reads;
//! - a response head's framing is one of the RFC 9112 cases, never a body of two lengths, and
//!   the engine's scanner reads it as httparse does (complete with the same lines, incomplete,
//!   or refused);
//! - a chunked body decodes to the same data whatever the read boundaries, never reads past
//!   its end, and what the gateway re-encodes decodes back to exactly that data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use worker::http::h1::chunked::{encode, Decoder, LAST_CHUNK};
use worker::http::h1::head::{
    parse_length, parse_request, parse_response, BodyFraming, Framing, HeadError, Parse,
    RequestHead, ResponseHead, MAX_HEADERS,
};
use worker::http::policy::Kind;

fn decode(input: &[u8], step: usize) -> (Result<usize, ()>, Vec<u8>, bool) {
    let mut d = Decoder::default();
    let mut data = Vec::new();
    let mut used = 0;
    for piece in input.chunks(step.max(1)) {
        match d.decode(piece, |b| data.extend_from_slice(b)) {
            Ok(n) => used += n,
            Err(_) => return (Err(()), data, false),
        }
        if d.is_done() {
            break;
        }
    }
    (Ok(used), data, d.is_done())
}

/// Why the engine refuses an answer head httparse may read whole: its framing.
const FRAMING: [&str; 3] =
    ["transfer coding other than chunked", "bad content-length", "conflicting content-length"];

fuzz_target!(|input: &[u8]| {
    let Some((&split, input)) = input.split_first() else { return };
    let split = usize::from(split);

    // Request heads: read as httparse reads them (framing judged on a whole head only).
    let mut head = RequestHead::default();
    let whole = parse_request(input, &mut head);
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut theirs = httparse::Request::new(&mut storage);
    match (&whole, theirs.parse(input)) {
        (Parse::Complete, Ok(httparse::Status::Complete(len))) => assert_eq!(head.len, len),
        (Parse::Refuse(..), Ok(httparse::Status::Complete(_))) => {}
        (Parse::Partial, Ok(httparse::Status::Partial)) => {}
        (Parse::Refuse(..) | Parse::Handover, Err(_)) => {}
        (ours, theirs) => panic!("engine {ours:?}, httparse {theirs:?}"),
    }
    if whole == Parse::Complete {
        assert!(head.len <= input.len());
        assert!(!head.target.get(input).is_empty());
        let te: Vec<_> = head.lines.iter().filter(|l| l.kind == Kind::TransferEncoding).collect();
        let cl: Vec<_> = head.lines.iter().filter(|l| l.kind == Kind::ContentLength).collect();
        assert!(te.len() <= 1 && cl.len() <= 1 && (te.is_empty() || cl.is_empty()));
        match head.body {
            BodyFraming::Chunked => {
                assert!(te[0].value.get(input).eq_ignore_ascii_case(b"chunked"))
            }
            BodyFraming::Length(n) => {
                assert!(n > 0 && parse_length(cl[0].value.get(input)) == Some(n))
            }
            BodyFraming::None => {
                assert!(
                    te.is_empty() && cl.iter().all(|l| parse_length(l.value.get(input)) == Some(0))
                )
            }
        }
        // A prefix of a complete head is never taken as complete with another length.
        let mut again = RequestHead::default();
        let cut = split.min(input.len());
        match parse_request(&input[..cut], &mut again) {
            Parse::Complete => assert_eq!(again.len, head.len),
            Parse::Partial | Parse::Handover | Parse::Refuse(..) => {}
        }
    }

    // Response heads.
    let mut resp = ResponseHead::default();
    let ours = parse_response(input, split % 2 == 0, &mut resp);
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut theirs = httparse::Response::new(&mut storage);
    match (&ours, theirs.parse(input)) {
        (Ok(Some(())), Ok(httparse::Status::Complete(len))) => {
            assert_eq!((resp.len, resp.status), (len, theirs.code.unwrap()));
            assert_eq!(resp.lines.len(), theirs.headers.len());
            for (line, h) in resp.lines.iter().zip(theirs.headers.iter()) {
                assert_eq!(line.name.get(input), h.name.as_bytes());
                assert_eq!(line.value.get(input), h.value.trim_ascii());
            }
        }
        (Ok(None), Ok(httparse::Status::Partial)) => {}
        (Err(HeadError::Malformed("too many headers")), Err(httparse::Error::TooManyHeaders)) => {}
        // Framing in doubt is refused at its line, whatever follows it.
        (Err(HeadError::Malformed(why)), _) if FRAMING.contains(why) => {}
        (Err(HeadError::Malformed(_)), Err(e)) => assert_ne!(e, httparse::Error::TooManyHeaders),
        (ours, theirs) => panic!("engine {ours:?}, httparse {theirs:?}"),
    }
    if let Ok(Some(())) = ours {
        let lengths = resp.lines.iter().filter(|l| l.kind == Kind::ContentLength).count();
        let chunked = resp.lines.iter().any(|l| l.kind == Kind::TransferEncoding);
        match resp.framing {
            Some(Framing::Length(_)) => assert!(lengths >= 1 && !chunked),
            Some(Framing::Chunked) => assert!(chunked),
            Some(Framing::UntilClose) => assert!(!resp.reusable && lengths == 0),
            Some(Framing::Empty) => {}
            None => panic!("complete head without framing"),
        }
    }

    // Chunked bodies.
    let (one, data, done) = decode(input, input.len());
    let (split_result, split_data, split_done) = decode(input, split);
    assert_eq!(one.is_ok(), split_result.is_ok(), "read boundaries changed the verdict");
    if let (Ok(used), Ok(split_used)) = (one, split_result) {
        assert_eq!((&data, done), (&split_data, split_done));
        if done {
            assert_eq!(used, split_used);
            assert!(used <= input.len());
            let mut out = Vec::new();
            encode(&data, &mut out);
            out.extend_from_slice(LAST_CHUNK);
            let (again, redata, redone) = decode(&out, 7);
            assert!(again.is_ok() && redone && redata == data);
        }
    }
});
