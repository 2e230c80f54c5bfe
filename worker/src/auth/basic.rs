//! `type = "basic"`: user and password against an htpasswd file of bcrypt entries.
//!
//! bcrypt is slow on purpose (~50–250 ms a check at the usual costs), so a check never runs on
//! the event loop: it goes to tokio's blocking pool, at most [`CHECKS_AT_ONCE`] at a time per
//! worker, and a request that would wait behind more than [`MAX_WAITING`] others is answered
//! 503 at once. A flood of wrong passwords therefore costs at most those threads, never the
//! loop that serves everyone else. Pairs that verified are remembered (by a SHA-256 of user and
//! password, never the password) for [`REMEMBER`], so a client sending the right password on
//! every request pays bcrypt once a minute. An unknown user is checked against a dummy hash, so
//! timing does not tell which users exist.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::sync::Semaphore;

use super::remembered::{digest, Remembered};
use super::{Identity, Refusal};
use crate::config::BasicSettings;

/// bcrypt checks one worker runs at once.
pub const CHECKS_AT_ONCE: usize = 2;
/// Requests that may wait for a check; beyond it, 503.
pub const MAX_WAITING: usize = 64;
/// How long a verified pair is remembered.
pub const REMEMBER: Duration = Duration::from_secs(60);
/// Verified pairs remembered at most (the memory is cleared when full).
const REMEMBERED: usize = 4096;

/// Why an htpasswd file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    /// The file could not be read.
    #[error("cannot read htpasswd {0}: {1}")]
    Read(String, std::io::Error),
    /// A line is not `user:bcrypt-hash`.
    #[error("htpasswd {0} line {1}: {2}")]
    Line(String, usize, String),
}

/// A loaded `type = "basic"` section.
pub struct Basic {
    users: HashMap<String, String>,
    challenge: String,
    checks: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    verified: Arc<Remembered<(), Instant>>,
    dummy: String,
    /// `hide_credentials`.
    hide: bool,
}

/// Parses htpasswd text: `user:hash` lines of bcrypt hashes (`$2y$`, `$2b$`, `$2a$`); blank
/// lines and `#` comments skipped.
pub fn parse_htpasswd(what: &str, text: &str) -> Result<HashMap<String, String>, HtpasswdError> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| HtpasswdError::Line(what.to_string(), i + 1, why.to_string());
        let (user, hash) = line.split_once(':').ok_or_else(|| bad("not user:hash"))?;
        if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
            return Err(bad("not a bcrypt hash (write the file with htpasswd -B)"));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(bad("malformed bcrypt hash"));
        }
        users.insert(user.to_string(), hash.to_string());
    }
    Ok(users)
}

impl Basic {
    /// Reads the htpasswd file.
    pub fn load(s: &BasicSettings) -> Result<Self, HtpasswdError> {
        let what = s.htpasswd.display().to_string();
        let text = std::fs::read_to_string(&s.htpasswd)
            .map_err(|e| HtpasswdError::Read(what.clone(), e))?;
        let users = parse_htpasswd(&what, &text)?;
        // The dummy costs what the real entries cost, so an unknown user takes as long.
        let cost = users.values().find_map(|h| h.get(4..6)?.parse().ok()).unwrap_or(10);
        let dummy = bcrypt::hash("zkgate: no such user", cost).unwrap_or_default();
        Ok(Basic {
            users,
            challenge: format!("Basic realm=\"{}\", charset=\"UTF-8\"", s.realm.replace('"', "")),
            checks: Arc::new(Semaphore::new(CHECKS_AT_ONCE)),
            waiting: Arc::new(AtomicUsize::new(0)),
            verified: Arc::new(Remembered::new(REMEMBERED)),
            dummy,
            hide: s.hide_credentials,
        })
    }

    /// Whether the verified `Authorization` line is stripped before forwarding.
    pub fn hides(&self) -> bool {
        self.hide
    }

    /// Checks `Authorization: Basic …`; the user becomes `X-Auth-Subject`.
    pub async fn check(&self, authorization: Option<&[u8]>) -> Result<Identity, Refusal> {
        let refuse = |why: &str| Refusal::unauthorized(why, self.challenge.clone());
        let Some((user, password)) = authorization.and_then(credentials) else {
            return Err(refuse("credentials required"));
        };
        if user.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return Err(refuse("wrong user or password"));
        }
        let identity = Identity {
            headers: vec![(b"x-auth-subject".to_vec(), user.clone().into_bytes())],
            hide: None,
        };
        let pair = digest(&[user.as_bytes(), password.as_bytes()]);
        let now = Instant::now();
        if self.verified.get(&pair, now).is_some() {
            return Ok(identity);
        }
        let hash = self.users.get(&user).cloned();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.clone());
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal {
                status: 503,
                reason: "authentication busy".into(),
                challenge: None,
            });
        }
        let permit = self.checks.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let Ok(permit) = permit else { return Err(refuse("wrong user or password")) };
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bcrypt::verify(password, &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if !(ok && known) {
            return Err(refuse("wrong user or password"));
        }
        self.verified.insert(pair, (), now + REMEMBER);
        Ok(identity)
    }
}

/// User and password of a `Basic` credential.
fn credentials(value: &[u8]) -> Option<(String, String)> {
    let value = value.trim_ascii();
    if value.len() < 6 || !value[..6].eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(value[6..].trim_ascii()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_takes_bcrypt_only() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let users = parse_htpasswd("f", &format!("# users\nalice:{hash}\n\n")).unwrap();
        assert_eq!(users.len(), 1);
        let e = parse_htpasswd("f", "bob:$apr1$xyz$abc").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("htpasswd -B"), "{e}");
        assert!(parse_htpasswd("f", "carol").is_err());
    }

    #[test]
    fn credentials_are_decoded() {
        assert_eq!(credentials(b"Basic YWxpY2U6czNjcjp0"), Some(("alice".into(), "s3cr:t".into())));
        assert_eq!(credentials(b"Bearer abc"), None);
        assert_eq!(credentials(b"Basic !!!"), None);
    }

    #[tokio::test]
    async fn right_and_wrong_passwords() {
        let dir = std::env::temp_dir().join(format!("zkgate-basic-{}", std::process::id()));
        std::fs::write(&dir, format!("alice:{}\n", bcrypt::hash("s3cret", 4).unwrap())).unwrap();
        let basic = Basic::load(&BasicSettings {
            htpasswd: dir.clone(),
            realm: "r".into(),
            hide_credentials: false,
        })
        .unwrap();
        let _ = std::fs::remove_file(&dir);
        let auth = |u: &str, p: &str| {
            let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            format!("Basic {v}").into_bytes()
        };
        let ok = basic.check(Some(&auth("alice", "s3cret"))).await.unwrap();
        assert_eq!(ok.headers, vec![(b"x-auth-subject".to_vec(), b"alice".to_vec())]);
        // Remembered: a second check needs no bcrypt, and still only for the right password.
        assert!(basic.check(Some(&auth("alice", "s3cret"))).await.is_ok());
        let wrong = basic.check(Some(&auth("alice", "nope"))).await.unwrap_err();
        assert_eq!(wrong.status, 401);
        assert_eq!(wrong.challenge.as_deref(), Some("Basic realm=\"r\", charset=\"UTF-8\""));
        assert_eq!(basic.check(Some(&auth("mallory", "s3cret"))).await.unwrap_err().status, 401);
        assert_eq!(basic.check(None).await.unwrap_err().status, 401);
    }
}
