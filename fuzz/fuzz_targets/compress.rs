//! Compression as an instance's answer exercises it: any body, split into pieces at any
//! boundaries, through each coding and level, decodes to exactly the bytes that went in, and
//! every piece's bytes are out before the next one (flushed).
#![no_main]

use std::io::Read as _;

use libfuzzer_sys::fuzz_target;
use worker::http::compress::{Coding, Encoder};

fuzz_target!(|input: &[u8]| {
    let Some((&shape, input)) = input.split_first() else { return };
    let coding = [Coding::Gzip, Coding::Brotli, Coding::Zstd][usize::from(shape % 3)];
    let level = u32::from(shape / 3 % 12);
    // The body, and where it is cut: the first bytes give the piece sizes.
    let (cuts, body) = input.split_at(input.len().min(8));
    let mut encoder = Encoder::new(coding, level).expect("an encoder at any level");
    let (mut out, mut at) = (Vec::new(), 0);
    for cut in cuts.iter().cycle() {
        if at >= body.len() {
            break;
        }
        let end = (at + usize::from(*cut).max(1) * 17).min(body.len());
        let before = out.len();
        encoder.push(&body[at..end], &mut out).expect("compressing into memory");
        assert!(out.len() > before, "a piece's bytes are flushed");
        at = end;
    }
    encoder.finish(&mut out).expect("finishing into memory");
    let mut back = Vec::new();
    match coding {
        Coding::Gzip => {
            flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut back).expect("gzip");
        }
        Coding::Brotli => {
            brotli::Decompressor::new(&out[..], 4096).read_to_end(&mut back).expect("br");
        }
        Coding::Zstd => back = zstd::decode_all(&out[..]).expect("zstd"),
    }
    assert!(back == body, "{coding:?} at {level}: not the same bytes");
});
