//! Tests of the engine's head parsing (`head.rs`).

use super::*;

fn parse(raw: &str) -> (Parse, RequestHead) {
    let mut head = RequestHead::default();
    (parse_request(raw.as_bytes(), &mut head), head)
}

#[test]
fn a_plain_get_is_taken_and_its_lines_classified() {
    let raw = "GET /a?b=1 HTTP/1.1\r\nHost: x:80\r\nConnection: close\r\nX_Y: 1\r\nVia: 1.0 p\r\n\r\nNEXT";
    let (p, head) = parse(raw);
    assert_eq!(p, Parse::Complete);
    assert_eq!(head.len, raw.len() - 4);
    assert_eq!(head.target.get(raw.as_bytes()), b"/a?b=1");
    assert!(head.close && head.host == Some(0));
    let kinds: Vec<Kind> = head.lines.iter().map(|l| l.kind).collect();
    assert_eq!(kinds, [Kind::Host, Kind::Connection, Kind::Underscored, Kind::Via]);
}

#[test]
fn only_http2_is_handed_over_every_other_form_is_the_engines() {
    assert_eq!(parse("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").0, Parse::Handover);
    assert_eq!(
        parse("GET / HTTP/2.0\r\nhost: a\r\n\r\n").0,
        Parse::Refuse(505, "HTTP version not supported")
    );
    assert_eq!(parse("GET / HTTP/9.9\r\n\r\n").0, Parse::Refuse(505, "HTTP version not supported"));
    assert_eq!(parse("GET / HTTZ/1.1\r\n\r\n").0, Parse::Refuse(400, "invalid request line"));
    assert!(matches!(parse("GET / HTTP/1.10\r\n\r\n").0, Parse::Refuse(400, _)));
    for raw in [
        "GET http://a/ HTTP/1.1\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\n\r\n",
        "CONNECT a:443 HTTP/1.1\r\n\r\n",
        "GET /chat HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nContent-Length: 1\r\n\r\nx",
    ] {
        assert_eq!(parse(raw).0, Parse::Complete, "{raw:?}");
    }
    for (raw, status) in [
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400),
    ] {
        assert!(matches!(parse(raw).0, Parse::Refuse(s, _) if s == status), "{raw:?}");
    }
    assert_eq!(parse("GET / HTTP/1.1\r\nHost: a").0, Parse::Partial);
}

#[test]
fn bodies_are_framed_by_one_length_or_chunked_alone() {
    let framing = |raw: &str| {
        let (p, head) = parse(raw);
        assert_eq!(p, Parse::Complete, "{raw:?}");
        (head.body, head.expect_continue)
    };
    let post = "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
    assert_eq!(framing(post), (BodyFraming::Length(3), false));
    let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding:\tChunked \r\n\r\n";
    assert_eq!(framing(chunked), (BodyFraming::Chunked, false));
    let zero = "GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(framing(zero), (BodyFraming::None, false));
    let expect = "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n";
    assert_eq!(framing(expect), (BodyFraming::Length(9), true));
}

#[test]
fn framing_in_doubt_is_refused_before_anything_is_forwarded() {
    let status = |raw: &str| match parse(raw).0 {
        Parse::Refuse(status, _) => status,
        other => panic!("{raw:?}: {other:?}"),
    };
    for raw in [
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    ] {
        assert_eq!(status(raw), 400, "{raw:?}");
    }
    assert_eq!(status("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 501);
    assert_eq!(status("POST / HTTP/1.1\r\nExpect: teapot\r\n\r\n"), 417);
}

#[test]
fn response_framing_follows_rfc_9112() {
    let frame = |raw: &str, head_req: bool| {
        let mut h = ResponseHead::default();
        parse_response(raw.as_bytes(), head_req, &mut h).map(|_| (h.framing, h.reusable))
    };
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    assert_eq!(frame(ok, false), Ok((Some(Framing::Length(5)), true)));
    assert_eq!(frame(ok, true), Ok((Some(Framing::Empty), true)));
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
    assert_eq!(frame(chunked, false), Ok((Some(Framing::Chunked), true)));
    let eof = "HTTP/1.1 200 OK\r\n\r\n";
    assert_eq!(frame(eof, false), Ok((Some(Framing::UntilClose), false)));
    let old = "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n";
    assert_eq!(frame(old, false), Ok((Some(Framing::Length(1)), false)));
    let closing = "HTTP/1.1 204 No\r\nConnection: close\r\n\r\n";
    assert_eq!(frame(closing, false), Ok((Some(Framing::Empty), false)));
    for bad in [
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "HTTP/2 200\r\n\r\n",
    ] {
        assert!(frame(bad, false).is_err(), "{bad:?}");
    }
    assert_eq!(frame("HTTP/1.1 200 OK\r\n", false), Ok((None, false)));
}
