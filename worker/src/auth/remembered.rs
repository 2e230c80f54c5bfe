//! Credentials that verified, remembered for a while: a client sends the same token or the same
//! password on every request, and the costly check (a signature, bcrypt) runs once per period.
//! Kept by a SHA-256 of what was presented, never the secret itself; bounded (the memory is
//! cleared when full, so a flood of distinct credentials costs checks, not memory).

use std::collections::HashMap;
use std::sync::Mutex;

/// SHA-256 digests of presented credentials, each with what it proved and until when.
#[derive(Debug)]
pub struct Remembered<T, U> {
    entries: Mutex<HashMap<[u8; 32], (T, U)>>,
    most: usize,
}

impl<T: Clone, U: PartialOrd + Copy> Remembered<T, U> {
    /// At most `most` entries.
    pub fn new(most: usize) -> Self {
        Remembered { entries: Mutex::new(HashMap::new()), most }
    }

    /// What `digest` proved, while it holds at `now`.
    pub fn get(&self, digest: &[u8; 32], now: U) -> Option<T> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(digest).filter(|(_, until)| *until > now).map(|(v, _)| v.clone())
    }

    /// Remembers `digest` as proving `value` until `until`.
    pub fn insert(&self, digest: [u8; 32], value: T, until: U) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.most {
            entries.clear();
        }
        entries.insert(digest, (value, until));
    }

    /// Forgets everything (the keys that verified them changed).
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// SHA-256 of the presented parts, each followed by a 0 byte (so `a`+`bc` and `ab`+`c` differ).
pub fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part);
        ctx.update(&[0]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_holds_until_its_deadline_and_a_full_memory_starts_over() {
        let r = Remembered::new(2);
        r.insert(digest(&[b"a"]), "alice", 10);
        assert_eq!(r.get(&digest(&[b"a"]), 9), Some("alice"));
        assert_eq!(r.get(&digest(&[b"a"]), 10), None, "expired");
        r.insert(digest(&[b"b"]), "bob", 10);
        r.insert(digest(&[b"c"]), "carol", 10);
        assert_eq!(r.get(&digest(&[b"b"]), 0), None, "cleared when full");
        assert_eq!(r.get(&digest(&[b"c"]), 0), Some("carol"));
        assert_ne!(digest(&[b"a", b"bc"]), digest(&[b"ab", b"c"]));
    }
}
