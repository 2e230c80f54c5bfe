//! Compression of answers (`compress` on a route), as clients meet it: every coding (br, zstd,
//! gzip) over HTTP/1.1, TLS and h2, on answers the instance frames every way (a length,
//! chunked in odd pieces with pauses between them, until it closes); each decompresses to the
//! instance's bytes exactly. Answers that must not be compressed are not (already encoded,
//! `no-transform`, small, a range, a type the route does not list, a client that takes no
//! coding), and every answer of the route says `Vary: Accept-Encoding`.

mod support;

use std::io::Read as _;

use support::backend::{Scripted, PAUSE};
use support::http::Response;
use support::sides::{Sides, WAYS};
use support::Toml;

/// The instance's JSON: ~60 KB, deterministic.
fn document() -> Vec<u8> {
    let items: Vec<String> = (0..900)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"name\":\"item-{i}\",\"tags\":[\"a{}\",\"b{}\"]}}",
                i % 7,
                i % 13
            )
        })
        .collect();
    format!("[{}]\n", items.join(",")).into_bytes()
}

/// `document()` as chunks of odd sizes, with pauses between some (what a streaming instance
/// sends), then the last chunk.
fn chunked(doc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    for (i, size) in [1usize, 17, 4096, 3, 65_000].iter().cycle().enumerate() {
        if at >= doc.len() {
            break;
        }
        let end = (at + size).min(doc.len());
        out.extend_from_slice(format!("{:x}\r\n", end - at).as_bytes());
        out.extend_from_slice(&doc[at..end]);
        out.extend_from_slice(b"\r\n");
        if i % 3 == 1 {
            out.extend_from_slice(PAUSE);
        }
        at = end;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn script(path: &str) -> (Vec<u8>, bool) {
    let doc = document();
    let head = |extra: &str| {
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\n{extra}")
    };
    let with_length = |extra: &str| {
        let mut a = format!("{}content-length: {}\r\n\r\n", head(extra), doc.len()).into_bytes();
        a.extend_from_slice(&doc);
        (a, false)
    };
    match path {
        "/c/length" => with_length(""),
        "/c/chunked" => {
            let mut a = format!("{}transfer-encoding: chunked\r\n\r\n", head("")).into_bytes();
            a.extend_from_slice(&chunked(&doc));
            (a, false)
        }
        "/c/close" => {
            let mut a = format!("{}\r\n", head("")).into_bytes();
            a.extend_from_slice(&doc);
            (a, true)
        }
        "/c/encoded" => with_length("content-encoding: identity-ish\r\n"),
        "/c/identity" => with_length("content-encoding: identity\r\n"),
        "/c/notransform" => with_length("cache-control: public, no-transform\r\n"),
        "/c/png" => {
            let mut a = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {}\r\n\r\n",
                doc.len()
            )
            .into_bytes();
            a.extend_from_slice(&doc);
            (a, false)
        }
        "/c/range" => {
            let part = &doc[..2000];
            let mut a = format!("HTTP/1.1 206 Partial Content\r\ncontent-type: application/json\r\ncontent-range: bytes 0-1999/{}\r\ncontent-length: 2000\r\n\r\n", doc.len()).into_bytes();
            a.extend_from_slice(part);
            (a, false)
        }
        _ => {
            let small = b"{\"ok\":true}\n";
            let mut a = format!("{}content-length: {}\r\n\r\n", head(""), small.len()).into_bytes();
            a.extend_from_slice(small);
            (a, false)
        }
    }
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body).read_to_end(&mut out).unwrap();
        }
        "br" => {
            brotli::Decompressor::new(body, 4096).read_to_end(&mut out).unwrap();
        }
        "zstd" => out = zstd::decode_all(body).unwrap(),
        other => panic!("no coding {other}"),
    }
    out
}

fn gateway(instance: &Scripted) -> Sides {
    let toml = Toml::new()
        .service("web", &[instance.addr.to_string()], "")
        .section(
            "[[route]]",
            "path_prefix = \"/c\"\nservice = \"web\"\ncompress = { types = [\"application/json\", \"text/*\"], min_bytes = 1024, level = 5 }",
        );
    Sides::start(toml, "")
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.header(name)
}

#[test]
fn every_coding_on_every_side_decompresses_to_the_instances_bytes() {
    let instance = Scripted::start(script);
    let sides = gateway(&instance);
    let doc = document();
    for way in WAYS {
        for path in ["/c/length", "/c/chunked", "/c/close", "/c/identity"] {
            for coding in ["gzip", "br", "zstd"] {
                let accept = format!("{coding}, identity;q=0.5");
                let r = sides.send(way, "GET", path, &[("accept-encoding", &accept)]);
                assert_eq!(r.status, 200, "{way} {path} {coding}");
                assert_eq!(header(&r, "content-encoding"), Some(coding), "{way} {path}");
                // One coding said, never the instance's `identity` beside the gateway's.
                let codings = r.headers.iter().filter(|(n, _)| n == "content-encoding").count();
                assert_eq!(codings, 1, "{way} {path} {coding}: {:?}", r.headers);
                assert_eq!(header(&r, "content-length"), None, "{way} {path} {coding}");
                assert_eq!(header(&r, "vary"), Some("accept-encoding"), "{way} {path}");
                assert!(r.body.len() < doc.len() / 3, "{way} {path} {coding}: {}", r.body.len());
                assert!(
                    decode(coding, &r.body) == doc,
                    "{way} {path} {coding}: not the same bytes"
                );
            }
        }
    }
}

#[test]
fn the_clients_weights_choose_the_coding_and_q0_refuses_one() {
    let instance = Scripted::start(script);
    let sides = gateway(&instance);
    for way in WAYS {
        let coding = |accept: &str| {
            let r = sides.send(way, "GET", "/c/length", &[("accept-encoding", accept)]);
            header(&r, "content-encoding").map(str::to_string)
        };
        assert_eq!(coding("gzip;q=0.5, zstd;q=0.8, br;q=0.1").as_deref(), Some("zstd"), "{way}");
        assert_eq!(coding("gzip, br, zstd").as_deref(), Some("br"), "{way}: ties go to br");
        assert_eq!(coding("*;q=0.3, br;q=0").as_deref(), Some("zstd"), "{way}");
        assert_eq!(coding("identity").as_deref(), None, "{way}");
        assert_eq!(coding("gzip;q=0, br;q=0, zstd;q=0").as_deref(), None, "{way}");
    }
}

#[test]
fn answers_that_must_stay_as_they_are_are_not_compressed() {
    let instance = Scripted::start(script);
    let sides = gateway(&instance);
    let doc = document();
    for way in WAYS {
        for path in ["/c/encoded", "/c/notransform", "/c/png", "/c/small", "/c/range"] {
            let r = sides.send(way, "GET", path, &[("accept-encoding", "gzip, br, zstd")]);
            let encoding = header(&r, "content-encoding");
            assert!(
                encoding.is_none() || encoding == Some("identity-ish"),
                "{way} {path}: {encoding:?}"
            );
            assert!(
                doc.starts_with(&r.body) || r.body == b"{\"ok\":true}\n",
                "{way} {path}: as sent"
            );
            assert_eq!(header(&r, "vary"), Some("accept-encoding"), "{way} {path}: caches told");
        }
        let r = sides.send(way, "GET", "/c/length", &[]);
        assert_eq!(
            (header(&r, "content-encoding"), r.body == doc),
            (None, true),
            "{way}: no Accept-Encoding"
        );
    }
}
