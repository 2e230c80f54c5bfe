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
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id = rand::random::<u128>().to_be_bytes();
    let mut buf = [0u8; 32];
    // Two digits a byte: half the steps of one a nibble (every request without an id pays it).
    for (pair, byte) in buf.chunks_exact_mut(2).zip(id) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    buf
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
}
