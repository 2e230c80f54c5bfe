//! `type = "key"`: API keys (Kong's key-auth). The keys file holds, per line, a consumer's name
//! and the SHA-256 digest of one of its keys (`partner-a 9f86d0…`): the key itself is never on
//! disk, so a copy of the file opens nothing. A presented key is hashed and looked up by its
//! digest, then compared in constant time; the consumer's name reaches the instance as
//! `X-Auth-Subject` (and `per = "identity"` limits count it). The file is read again when its
//! modification time or size changes (checked at most once a second per worker), so
//! `zkgate key add|revoke` take effect without a reload.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use super::{Identity, Refusal};
use crate::config::KeySettings;

/// How often a worker looks at the keys file for a change.
const RECHECK: Duration = Duration::from_secs(1);

/// Why a keys file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The file could not be read.
    #[error("cannot read keys file {0}: {1}")]
    Read(String, std::io::Error),
    /// A line is not `CONSUMER SHA256-HEX`.
    #[error("keys file {0} line {1}: expected \"CONSUMER SHA256-HEX\" (64 hex digits)")]
    Line(String, usize),
}

/// A loaded `type = "key"` section.
pub struct Keys {
    path: PathBuf,
    /// Digest → consumer.
    by_digest: ArcSwap<HashMap<[u8; 32], String>>,
    /// When the file was last looked at, and what it looked like (mtime, length).
    seen: Mutex<(Instant, Option<(SystemTime, u64)>)>,
    /// Where the key is presented.
    pub header: http::HeaderName,
    /// The query parameter the key may come in.
    pub query: Option<String>,
    hide: bool,
}

/// A consumer's line in the keys file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The consumer's name.
    pub consumer: String,
    /// The SHA-256 digest of the key.
    pub digest: [u8; 32],
}

/// Parses a keys file's text.
pub fn parse_keys(what: &str, text: &str) -> Result<Vec<Entry>, KeysError> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || KeysError::Line(what.to_string(), i + 1);
        let mut words = line.split_whitespace();
        let (Some(consumer), Some(hex), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad());
        };
        let digest = from_hex(hex).ok_or_else(bad)?;
        entries.push(Entry { consumer: consumer.to_string(), digest });
    }
    Ok(entries)
}

/// The SHA-256 digest of a key, as the file holds it.
pub fn digest_of(key: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, key).as_ref());
    out
}

/// A new key: 32 bytes from a CSPRNG the OS seeds (rand's `ThreadRng`), URL-safe base64 (43 characters, fit for a
/// header or a query parameter as it is).
pub fn new_key() -> String {
    use base64::Engine as _;
    let mut secret = [0u8; 32];
    rand::fill(&mut secret);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Equal, in time that does not depend on where the first difference is.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn read(path: &Path) -> Result<HashMap<[u8; 32], String>, KeysError> {
    let what = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| KeysError::Read(what.clone(), e))?;
    Ok(parse_keys(&what, &text)?.into_iter().map(|e| (e.digest, e.consumer)).collect())
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Keys {
    /// Loads the section (reads its keys file).
    pub fn load(s: &KeySettings) -> Result<Self, KeysError> {
        let header = http::HeaderName::from_bytes(s.header.as_bytes())
            .map_err(|_| KeysError::Line(format!("header {:?}", s.header), 0))?;
        Ok(Keys {
            by_digest: ArcSwap::from_pointee(read(&s.keys)?),
            seen: Mutex::new((Instant::now(), stamp(&s.keys))),
            path: s.keys.clone(),
            header,
            query: s.query.clone(),
            hide: s.hide_credentials,
        })
    }

    /// Strip the key's header before forwarding.
    pub fn hide(&self) -> bool {
        self.hide
    }

    /// Reads the file again when it changed since the last look (at most once a second); a
    /// file that cannot be read or parsed keeps the keys already loaded, and says so.
    fn refresh(&self) {
        let Ok(mut seen) = self.seen.lock() else { return };
        if seen.0.elapsed() < RECHECK {
            return;
        }
        seen.0 = Instant::now();
        let now = stamp(&self.path);
        if now == seen.1 {
            return;
        }
        seen.1 = now;
        match read(&self.path) {
            Ok(keys) => {
                log::info!("keys file {}: {} keys loaded", self.path.display(), keys.len());
                self.by_digest.store(std::sync::Arc::new(keys));
            }
            Err(e) => log::warn!("{e}; the keys loaded before stay"),
        }
    }

    /// The consumer of `key` (401 without a key or with one the file does not hold).
    pub fn check(&self, key: Option<&[u8]>) -> Result<Identity, Refusal> {
        self.refresh();
        let challenge = format!("ApiKey header=\"{}\"", self.header);
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return Err(Refusal::unauthorized("API key required", challenge));
        };
        let digest = digest_of(key);
        let keys = self.by_digest.load();
        let found = keys.get_key_value(&digest).filter(|(d, _)| same(d, &digest));
        let Some((_, consumer)) = found else {
            return Err(Refusal::unauthorized("unknown API key", challenge));
        };
        Ok(Identity {
            headers: vec![(b"x-auth-subject".to_vec(), consumer.as_bytes().to_vec())],
            hide: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_files_hold_digests_by_consumer() {
        let d = to_hex(&digest_of(b"secret-1"));
        let text = format!("# partners\npartner-a {d}\n\npartner-b {}\n", "ab".repeat(32));
        let entries = parse_keys("f", &text).unwrap();
        assert_eq!(
            entries[0],
            Entry { consumer: "partner-a".into(), digest: digest_of(b"secret-1") }
        );
        assert_eq!(entries.len(), 2);
        assert!(parse_keys("f", "partner-a secret-1\n").is_err(), "a key itself is refused");
        assert!(parse_keys("f", "partner-a\n").is_err());
        assert!(parse_keys("f", &format!("a {d} extra\n")).is_err());
    }

    #[test]
    fn a_key_is_checked_by_its_digest_and_a_changed_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("partner-a {}\n", to_hex(&digest_of(b"k1")))).unwrap();
        let settings = KeySettings {
            keys: path.clone(),
            header: "X-API-Key".into(),
            query: None,
            hide_credentials: false,
        };
        let keys = Keys::load(&settings).unwrap();
        let subject = |r: Result<Identity, Refusal>| r.map(|i| i.headers[0].1.clone());
        assert_eq!(subject(keys.check(Some(b"k1"))), Ok(b"partner-a".to_vec()));
        assert_eq!(keys.check(Some(b"k2")).unwrap_err().status, 401);
        assert_eq!(keys.check(None).unwrap_err().status, 401);
        // A second key, and the first revoked: read again once the recheck interval passed.
        std::fs::write(&path, format!("partner-b {}\n\n", to_hex(&digest_of(b"k2")))).unwrap();
        keys.seen.lock().unwrap().0 -= RECHECK;
        assert_eq!(subject(keys.check(Some(b"k2"))), Ok(b"partner-b".to_vec()));
        assert_eq!(keys.check(Some(b"k1")).unwrap_err().status, 401);
    }
}
