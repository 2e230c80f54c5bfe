//! Trace context on the wire: W3C `traceparent` (version 00), and B3 (single `b3` and the
//! `X-B3-*` lines) accepted on input. A request's context is its parent's trace id and
//! sampled flag; the gateway's own span gets a new id, which the instance receives as its
//! parent.

/// The `X-B3-TraceId`, `X-B3-SpanId` and `X-B3-Sampled` values.
pub type B3Lines<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, Option<&'a [u8]>);

/// A trace id and span id pair, and whether the trace is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes, never all zero.
    pub span_id: [u8; 8],
    /// The sampled flag.
    pub sampled: bool,
}

fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in text.chunks(2).enumerate() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    out.iter().any(|b| *b != 0).then_some(())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

impl Context {
    /// Parses a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`); anything else (another
    /// version, upper-case hex, zero ids) is no context, as the W3C spec asks.
    pub fn from_traceparent(value: &[u8]) -> Option<Self> {
        let value = value.trim_ascii();
        if value.len() != 55 || &value[..3] != b"00-" || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut c = Context { trace_id: [0; 16], span_id: [0; 8], sampled: false };
        hex_into(&value[3..35], &mut c.trace_id)?;
        hex_into(&value[36..52], &mut c.span_id)?;
        let mut flags = [0u8; 1];
        let f = &value[53..55];
        if f == b"00" {
            flags[0] = 0;
        } else {
            hex_into(f, &mut flags)?;
        }
        c.sampled = flags[0] & 1 == 1;
        Some(c)
    }

    /// Parses B3: the single `b3` header (`<trace>-<span>[-<sampled>[-<parent>]]`), or the
    /// `X-B3-TraceId` / `X-B3-SpanId` / `X-B3-Sampled` values. A 64-bit trace id is
    /// left-padded to 128 bits.
    pub fn from_b3(single: Option<&[u8]>, multi: B3Lines<'_>) -> Option<Self> {
        let (trace, span, sampled) = match single {
            Some(v) => {
                let mut parts = v.trim_ascii().split(|b| *b == b'-');
                (parts.next()?, parts.next()?, parts.next())
            }
            None => (multi.0?.trim_ascii(), multi.1?.trim_ascii(), multi.2.map(<[u8]>::trim_ascii)),
        };
        let mut c = Context { trace_id: [0; 16], span_id: [0; 8], sampled: false };
        let lower = |v: &[u8]| v.to_ascii_lowercase();
        match trace.len() {
            32 => hex_into(&lower(trace), &mut c.trace_id)?,
            16 => hex_into(&lower(trace), &mut c.trace_id[8..])?,
            _ => return None,
        }
        hex_into(&lower(span), &mut c.span_id)?;
        c.sampled = matches!(sampled, Some(b"1") | Some(b"d") | Some(b"true"));
        Some(c)
    }

    /// A new trace (no parent), sampled as decided.
    pub fn root(sampled: bool) -> Self {
        use rand::Rng as _;
        let mut rng = rand::rng();
        let (trace, span): (u128, u64) = (rng.random(), rng.random());
        let mut c = Context { trace_id: trace.to_le_bytes(), span_id: span.to_le_bytes(), sampled };
        // All-zero ids are invalid; the odds are nil, but the rule is absolute.
        c.trace_id[0] |= u8::from(c.trace_id.iter().all(|b| *b == 0));
        c.span_id[0] |= u8::from(c.span_id.iter().all(|b| *b == 0));
        c
    }

    /// A new span of the same trace (the gateway's own).
    pub fn child(&self) -> Self {
        let mut span_id: [u8; 8] = rand::random();
        span_id[0] |= u8::from(span_id.iter().all(|b| *b == 0));
        Context { span_id, ..*self }
    }

    /// This context as a `traceparent` value, written without allocating (every request of a
    /// traced gateway carries one, sampled or not).
    pub fn traceparent(&self) -> [u8; 55] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for (i, b) in self.trace_id.iter().enumerate() {
            out[3 + 2 * i] = DIGITS[usize::from(b >> 4)];
            out[4 + 2 * i] = DIGITS[usize::from(b & 15)];
        }
        for (i, b) in self.span_id.iter().enumerate() {
            out[36 + 2 * i] = DIGITS[usize::from(b >> 4)];
            out[37 + 2 * i] = DIGITS[usize::from(b & 15)];
        }
        out[54] = b'0' + u8::from(self.sampled);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_refuses_what_the_spec_refuses() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = Context::from_traceparent(tp).unwrap();
        assert!(c.sampled);
        assert_eq!(&c.traceparent(), tp);
        let child = c.child();
        assert_eq!(child.trace_id, c.trace_id);
        assert_ne!(child.span_id, c.span_id);
        for bad in [
            &b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"garbage",
        ] {
            assert_eq!(Context::from_traceparent(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let unsampled =
            Context::from_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!unsampled.unwrap().sampled);
    }

    #[test]
    fn b3_single_and_multi() {
        let c = Context::from_b3(
            Some(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            (None, None, None),
        )
        .unwrap();
        assert_eq!(hex(&c.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
        assert!(c.sampled);
        let c = Context::from_b3(
            None,
            (Some(b"463ac35c9f6413ad"), Some(b"A2FB4A1D1A96D312"), Some(b"0")),
        )
        .unwrap();
        assert_eq!(hex(&c.trace_id), "0000000000000000463ac35c9f6413ad");
        assert_eq!(hex(&c.span_id), "a2fb4a1d1a96d312");
        assert!(!c.sampled);
        assert_eq!(Context::from_b3(Some(b"0"), (None, None, None)), None);
    }
}
