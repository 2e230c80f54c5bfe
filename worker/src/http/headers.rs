//! The pieces of header policy that are values rather than rules: this gateway's `Via` entry
//! and how to recognise it, which underscored names pass, fresh request ids. The rules
//! themselves are in the `policy` module.

use http::header::{HeaderName, HeaderValue};

/// The `Via` entry of a gateway: `1.1 <pseudonym>`, unique per running gateway so that a
/// request coming back to the same gateway is recognised (508) while a chain of distinct
/// gateways is not mistaken for a loop (RFC 9110 §7.6.3).
pub fn via_entry(pseudonym: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("1.1 {pseudonym}"))
        .unwrap_or_else(|_| HeaderValue::from_static("1.1 zkgate"))
}

/// Whether one `Via` value lists this gateway's entry (protocol and pseudonym, comments and
/// spacing aside).
pub fn via_lists(value: &[u8], entry: &HeaderValue) -> bool {
    let mine = entry.as_bytes();
    value.split(|b| *b == b',').any(|hop| {
        let mut words = hop.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty());
        let (Some(proto), Some(name)) = (words.next(), words.next()) else { return false };
        mine.len() == proto.len() + 1 + name.len()
            && mine.starts_with(proto)
            && mine[proto.len()] == b' '
            && mine.ends_with(name)
    })
}

/// Which header names with `_` are forwarded. nginx drops them by default
/// (`underscores_in_headers off`): CGI-style backends fold `X_Forwarded_For` and
/// `X-Forwarded-For` into one variable, so an underscored copy could override ours.
#[derive(Debug, Clone)]
pub enum Underscores {
    /// Forward them all (`proxy.underscores_in_headers = true`).
    All,
    /// Drop all but these (the header-routing headers, which the seed's clients send).
    Only(Vec<HeaderName>),
}

impl Underscores {
    /// Whether an underscored name is forwarded.
    pub fn allows(&self, name: &[u8]) -> bool {
        match self {
            Underscores::All => true,
            Underscores::Only(names) => {
                names.iter().any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
            }
        }
    }
}

/// A random 128-bit id as 32 hex digits.
pub fn request_id_bytes() -> [u8; 32] {
    hex32(rand::random::<u128>())
}

/// `id` as 32 lowercase hex digits, eight at a time (every request without an id pays it).
fn hex32(id: u128) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, shift) in out.chunks_exact_mut(8).zip([96u32, 64, 32, 0]) {
        chunk.copy_from_slice(&hex8((id >> shift) as u32).to_be_bytes());
    }
    out
}

/// The eight hex digits of `x`, most significant first in big-endian byte order: the nibbles
/// spread one a byte, then each turned into its digit without a branch.
fn hex8(x: u32) -> u64 {
    let x = u64::from(x);
    let x = (x & 0xffff_0000) << 16 | (x & 0x0000_ffff);
    let x = (x & 0x0000_ff00_0000_ff00) << 8 | (x & 0x0000_00ff_0000_00ff);
    let nibbles = (x & 0x00f0_00f0_00f0_00f0) << 4 | (x & 0x000f_000f_000f_000f);
    // 1 in each byte whose nibble is 10 or more: those digits are letters, 39 further on.
    let letters = ((nibbles + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    nibbles + 0x3030_3030_3030_3030 + letters * 39
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscored_names_are_dropped_but_the_allowed_ones() {
        let only = Underscores::Only(vec![HeaderName::from_static("service_name")]);
        assert!(only.allows(b"Service_Name") && !only.allows(b"x_forwarded_for"));
        assert!(Underscores::All.allows(b"x_forwarded_for"));
    }

    #[test]
    fn via_entries_are_matched_whole() {
        let via = via_entry("zkgate-test");
        assert!(via_lists(b"1.0 a, 1.1  zkgate-test (comment)", &via));
        assert!(!via_lists(b"1.1 zkgate-other", &via) && !via_lists(b"1.1 zkgate-tes", &via));
        assert_eq!(request_id_bytes().len(), 32);
    }

    #[test]
    fn ids_are_the_hex_of_their_bits() {
        let ids = [0, 1, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, 0xa5 << 120];
        for id in ids.into_iter().chain((0..64).map(|_| rand::random::<u128>())) {
            assert_eq!(hex32(id).as_slice(), format!("{id:032x}").as_bytes());
        }
    }
}
