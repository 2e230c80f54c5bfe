//! Compression of answers (`compress = { types, min_bytes, level, codings }` on a route): the
//! coding is negotiated from the request's `Accept-Encoding` (q-values; `br`, `zstd`, `gzip`),
//! the answer judged by its own head (a type the route lists, not already encoded, no
//! `Cache-Control: no-transform`, not a range, not known to be smaller than `min_bytes`), and
//! the body compressed as it streams — a piece at a time, flushed after each, never held whole.
//! The codecs are the well-kept crates' (flate2, brotli, zstd); both protocol sides drive the
//! same [`Encoder`].

use std::io::Write as _;

use crate::config::Compress;

/// A content coding the gateway can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `br` (RFC 7932).
    Brotli,
    /// `zstd` (RFC 8878).
    Zstd,
    /// `gzip` (RFC 1952).
    Gzip,
}

impl Coding {
    /// The token in `Accept-Encoding` and `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    /// The coding a token names.
    pub fn of(token: &str) -> Option<Coding> {
        match token.to_ascii_lowercase().as_str() {
            "br" => Some(Coding::Brotli),
            "zstd" => Some(Coding::Zstd),
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            _ => None,
        }
    }
}

/// A route's `compress`, compiled.
#[derive(Debug, Clone)]
pub struct CompressRule {
    /// Media types, lower-case: `text/*` as the prefix `text/`.
    types: Vec<String>,
    min_bytes: u64,
    level: u32,
    /// The codings offered, in the gateway's order of preference.
    codings: Vec<Coding>,
}

impl CompressRule {
    /// The rule of a route's `compress`.
    pub fn of(c: &Compress) -> Self {
        let types = c
            .types
            .iter()
            .map(|t| t.trim().to_ascii_lowercase())
            .map(|t| t.strip_suffix('*').map_or(t.clone(), str::to_string))
            .collect();
        let codings = c.codings.iter().filter_map(|t| Coding::of(t)).collect();
        CompressRule { types, min_bytes: c.min_bytes, level: c.level, codings }
    }

    /// The coding to answer a request with, from its `Accept-Encoding` values: the offered
    /// coding the client weighs highest (`q=0` refuses one; `*` stands for the ones it does not
    /// name); ties go to the gateway's order. `None`: the client takes none of them.
    pub fn negotiate<'a>(&self, accept: impl Iterator<Item = &'a [u8]>) -> Option<Coding> {
        let mut named: Vec<(String, f32)> = Vec::new();
        for value in accept {
            let Ok(value) = std::str::from_utf8(value) else { continue };
            for item in value.split(',') {
                let mut parts = item.split(';');
                let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
                if token.is_empty() {
                    continue;
                }
                let q = parts
                    .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                    .find_map(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                named.push((token, q.clamp(0.0, 1.0)));
            }
        }
        let star = named.iter().find(|(t, _)| t == "*").map(|(_, q)| *q);
        let weight = |c: Coding| {
            let own = named.iter().find(|(t, _)| Coding::of(t) == Some(c)).map(|(_, q)| *q);
            own.or(star).unwrap_or(0.0)
        };
        let mut best: Option<(Coding, f32)> = None;
        for &c in &self.codings {
            let q = weight(c);
            if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((c, q));
            }
        }
        best.map(|(c, _)| c)
    }

    /// Whether an answer may be compressed, judged by its head: a 200 (not a range, not a
    /// bodiless status), a listed type, no coding already, no `no-transform`, and not known to
    /// be shorter than `min_bytes`.
    pub fn takes(&self, answer: &AnswerHead<'_>) -> bool {
        if answer.status != 200 || answer.bodiless {
            return false;
        }
        let encoded = answer
            .content_encoding
            .is_some_and(|e| !e.trim_ascii().eq_ignore_ascii_case(b"identity"));
        let no_transform = answer
            .cache_control
            .iter()
            .any(|v| String::from_utf8_lossy(v).to_ascii_lowercase().contains("no-transform"));
        let small = answer.content_length.is_some_and(|n| n < self.min_bytes);
        if encoded || no_transform || small || answer.content_range {
            return false;
        }
        let Some(kind) = answer.content_type else { return false };
        let kind = String::from_utf8_lossy(kind);
        let media = kind.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        self.types.iter().any(|t| match t.ends_with('/') {
            true => media.starts_with(t.as_str()),
            false => media == *t,
        })
    }

    /// A fresh encoder of `coding` at the route's level (`Err`: the codec could not start —
    /// the answer then goes as it came).
    pub fn encoder(&self, coding: Coding) -> std::io::Result<Encoder> {
        Encoder::new(coding, self.level)
    }
}

/// What [`CompressRule::takes`] reads of an answer's head.
#[derive(Debug, Default)]
pub struct AnswerHead<'a> {
    /// The status.
    pub status: u16,
    /// A HEAD request's answer, or a status without a body.
    pub bodiless: bool,
    /// `Content-Type`.
    pub content_type: Option<&'a [u8]>,
    /// `Content-Encoding`.
    pub content_encoding: Option<&'a [u8]>,
    /// `Content-Length`, when declared.
    pub content_length: Option<u64>,
    /// Every `Cache-Control` value.
    pub cache_control: Vec<&'a [u8]>,
    /// It carries `Content-Range`.
    pub content_range: bool,
}

/// One answer's compressor. Each [`Encoder::push`] compresses a piece and flushes, so what the
/// instance sent so far reaches the client now (a stream of events stays one).
pub enum Encoder {
    /// gzip, at level 1..9.
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    /// Brotli, at quality 0..11 (a 22-bit window).
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    /// Zstandard, at level 1..19.
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// An encoder of `coding` at `level` (clamped to what the coding takes).
    pub fn new(coding: Coding, level: u32) -> std::io::Result<Self> {
        Ok(match coding {
            Coding::Gzip => {
                let level = flate2::Compression::new(level.clamp(1, 9));
                Encoder::Gzip(flate2::write::GzEncoder::new(Vec::new(), level))
            }
            Coding::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                level.min(11),
                22,
            ))),
            Coding::Zstd => {
                let level = i32::try_from(level.clamp(1, 19)).unwrap_or(3);
                Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), level)?)
            }
        })
    }

    /// Compresses `data` and appends what is ready (flushed) to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                e.flush()?;
                out.append(e.get_mut());
            }
            Encoder::Brotli(e) => {
                e.write_all(data)?;
                e.flush()?;
                out.append(e.get_mut());
            }
            Encoder::Zstd(e) => {
                e.write_all(data)?;
                e.flush()?;
                out.append(e.get_mut());
            }
        }
        Ok(())
    }

    /// Ends the stream: appends the coding's last bytes to `out`.
    pub fn finish(self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let rest = match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Brotli(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        };
        out.extend_from_slice(&rest);
        Ok(())
    }
}

/// The head of an answer on hyper's side, as [`CompressRule::takes`] reads it.
pub fn answer_head(status: http::StatusCode, headers: &http::HeaderMap) -> AnswerHead<'_> {
    let get = |name| headers.get(name).map(http::HeaderValue::as_bytes);
    AnswerHead {
        status: status.as_u16(),
        bodiless: false,
        content_type: get(http::header::CONTENT_TYPE),
        content_encoding: get(http::header::CONTENT_ENCODING),
        content_length: get(http::header::CONTENT_LENGTH)
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok()),
        cache_control: headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .map(http::HeaderValue::as_bytes)
            .collect(),
        content_range: headers.contains_key(http::header::CONTENT_RANGE),
    }
}

/// A body compressed as it streams (hyper's side): each data frame compressed and flushed,
/// the coding's end written when the body ends (before its trailers, which pass on).
pub struct Compressed<B> {
    inner: B,
    encoder: Option<Encoder>,
    trailers: Option<http::HeaderMap>,
}

impl<B> Compressed<B> {
    /// `inner`, compressed with `encoder`.
    pub fn new(inner: B, encoder: Encoder) -> Self {
        Compressed { inner, encoder: Some(encoder), trailers: None }
    }
}

impl<B> http_body::Body for Compressed<B>
where
    B: http_body::Body<Data = bytes::Bytes, Error = crate::http::BoxError> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = crate::http::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(
                    this.trailers.take().map(|t| Ok(http_body::Frame::trailers(t))),
                );
            };
            let frame = match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(None) => {
                    let mut out = Vec::new();
                    if let Some(encoder) = this.encoder.take() {
                        encoder.finish(&mut out)?;
                    }
                    return Poll::Ready(Some(Ok(http_body::Frame::data(out.into()))));
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let mut out = Vec::new();
                    encoder.push(&data, &mut out)?;
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(http_body::Frame::data(out.into()))));
                    }
                }
                Err(frame) => {
                    // Trailers end the data: the coding ends first, then they follow.
                    this.trailers = frame.into_trailers().ok();
                    let mut out = Vec::new();
                    if let Some(encoder) = this.encoder.take() {
                        encoder.finish(&mut out)?;
                    }
                    return Poll::Ready(Some(Ok(http_body::Frame::data(out.into()))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn rule() -> CompressRule {
        CompressRule::of(&Compress {
            types: vec!["application/json".into(), "text/*".into()],
            min_bytes: 100,
            level: 5,
            codings: vec!["br".into(), "zstd".into(), "gzip".into()],
        })
    }

    #[test]
    fn the_highest_weight_wins_ties_go_to_the_gateways_order_and_q0_refuses() {
        let r = rule();
        let pick = |v: &str| r.negotiate(std::iter::once(v.as_bytes()));
        assert_eq!(pick("gzip"), Some(Coding::Gzip));
        assert_eq!(pick("gzip, deflate, br"), Some(Coding::Brotli));
        assert_eq!(pick("gzip;q=1.0, br;q=0.5"), Some(Coding::Gzip));
        assert_eq!(pick("*"), Some(Coding::Brotli));
        assert_eq!(pick("*;q=0.1, gzip;q=0.2, br;q=0"), Some(Coding::Gzip));
        assert_eq!(pick("br;q=0, zstd;q=0, gzip;q=0"), None);
        assert_eq!(pick("identity, deflate"), None);
        assert_eq!(
            r.negotiate(["gzip;q=0.1".as_bytes(), "zstd".as_bytes()].into_iter()),
            Some(Coding::Zstd)
        );
    }

    #[test]
    fn only_a_whole_listed_answer_without_a_coding_is_taken() {
        let r = rule();
        let json = AnswerHead {
            status: 200,
            content_type: Some(b"application/json; charset=utf-8"),
            ..Default::default()
        };
        assert!(r.takes(&json));
        assert!(r.takes(&AnswerHead { content_type: Some(b"Text/HTML"), ..json_like() }));
        assert!(!r.takes(&AnswerHead { content_type: Some(b"image/png"), ..json_like() }));
        assert!(!r.takes(&AnswerHead { status: 206, ..json_like() }));
        assert!(!r.takes(&AnswerHead { content_range: true, ..json_like() }));
        assert!(!r.takes(&AnswerHead { content_length: Some(99), ..json_like() }));
        assert!(r.takes(&AnswerHead { content_length: Some(100), ..json_like() }));
        assert!(!r.takes(&AnswerHead { content_encoding: Some(b"gzip"), ..json_like() }));
        assert!(r.takes(&AnswerHead { content_encoding: Some(b"identity"), ..json_like() }));
        let no_transform = vec![&b"public, No-Transform"[..]];
        assert!(!r.takes(&AnswerHead { cache_control: no_transform, ..json_like() }));
        assert!(!r.takes(&AnswerHead { content_type: None, ..json_like() }));
    }

    fn json_like() -> AnswerHead<'static> {
        AnswerHead { status: 200, content_type: Some(b"application/json"), ..Default::default() }
    }

    fn decode(coding: Coding, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match coding {
            Coding::Gzip => {
                flate2::read::GzDecoder::new(body).read_to_end(&mut out).unwrap();
            }
            Coding::Brotli => {
                brotli::Decompressor::new(body, 4096).read_to_end(&mut out).unwrap();
            }
            Coding::Zstd => out = zstd::decode_all(body).unwrap(),
        }
        out
    }

    /// Whatever the pieces an answer arrives in, the stream decodes to exactly its bytes, and
    /// each piece's compressed bytes are out before the next arrives (flushed).
    #[test]
    fn any_split_of_a_body_decodes_to_the_same_bytes_for_every_coding() {
        use rand::Rng as _;
        let mut rng = rand::rng();
        for round in 0..60 {
            let len = rng.random_range(0..200_000);
            let body: Vec<u8> =
                (0..len).map(|i| b"abcdefgh{}\":,0123"[(i * 7 + round) % 17]).collect();
            for coding in [Coding::Gzip, Coding::Brotli, Coding::Zstd] {
                let mut encoder = Encoder::new(coding, 1 + (round as u32 % 9)).unwrap();
                let (mut out, mut at) = (Vec::new(), 0);
                while at < body.len() {
                    let end = (at + rng.random_range(1..70_000)).min(body.len());
                    let before = out.len();
                    encoder.push(&body[at..end], &mut out).unwrap();
                    assert!(out.len() > before, "{coding:?}: a piece's bytes are flushed");
                    at = end;
                }
                encoder.finish(&mut out).unwrap();
                assert!(decode(coding, &out) == body, "{coding:?}, round {round}, {len} bytes");
            }
        }
    }
}
