//! `type = "jwt"`: a bearer token signed with a key of a JWKS.
//!
//! The checks, in the order a verifier must make them: the token's `alg` is one the section
//! accepts (never `none`, never HMAC: a JWKS holds public keys, and an HMAC check keyed with a
//! public key is the classic forgery); the key is picked by `kid` (or each key of the
//! algorithm's family is tried); the signature verifies; then `exp` (required), `nbf`, `iss`
//! and `aud`, with `leeway`. Signature and expiry failures are 401, a valid token for another
//! issuer or audience 403 (Envoy's jwt_authn answers the same).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::remembered::{digest, Remembered};
use super::{Identity, Presented, Refusal};
use crate::config::JwtSettings;

/// Why a JWKS could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The file could not be read.
    #[error("cannot read JWKS {0}: {1}")]
    Read(String, std::io::Error),
    /// Not a JWKS.
    #[error("JWKS {0} is not a JSON Web Key Set: {1}")]
    Parse(String, serde_json::Error),
    /// A key the gateway refuses to verify with.
    #[error("JWKS {0}: key {1}: {2}")]
    Key(String, String, String),
    /// No usable key.
    #[error("JWKS {0} has no signature-verification key")]
    Empty(String),
    /// An algorithm the section may not accept.
    #[error("algorithm {0:?} is not accepted: write any of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA")]
    Algorithm(String),
    /// Fetching `jwks_url` failed.
    #[error("cannot fetch JWKS {0}: {1}")]
    Fetch(String, String),
    /// Neither `jwks` nor `jwks_url`.
    #[error("set jwks (a file) or jwks_url")]
    NoSource,
    /// A `jwks_url` that is not `https://`.
    #[error("jwks_url {0:?} is not https:// (anyone on the path could mint tokens); set insecure_jwks_url = true for a loopback or test key server")]
    InsecureUrl(String),
}

/// One verification key of the set.
struct Key {
    kid: Option<String>,
    /// The key's own `alg`, when it names one: only that algorithm may use it.
    alg: Option<Algorithm>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

/// A loaded `type = "jwt"` section.
pub struct Jwt {
    keys: Arc<ArcSwap<Vec<Key>>>,
    allowed: Vec<Algorithm>,
    issuer: Option<String>,
    audience: Vec<String>,
    leeway: Duration,
    cookie: Option<String>,
    /// Claim name → header name (lower-case).
    claims: Vec<(String, Vec<u8>)>,
    url: Option<String>,
    /// Tokens that verified, by SHA-256: their identity and until when (Unix seconds) the
    /// answer holds — their `exp` plus leeway, at most [`REMEMBER`] from the check. A client
    /// sends the same token on every request; the signature check (tens of microseconds for
    /// RSA) runs once. Cleared when the key set changes.
    verified: Arc<Remembered<Identity, u64>>,
    /// `hide_credentials`.
    hide: bool,
}

/// How long a verified token is taken on trust (within its `exp`).
pub const REMEMBER: Duration = Duration::from_secs(300);
/// Verified tokens remembered at most per section and worker (the memory is cleared when full).
const REMEMBERED: usize = 10_000;

/// The algorithms a JWKS of public keys can verify; `HS*` and `none` are not among them.
pub fn algorithm(name: &str) -> Option<Algorithm> {
    let alg = match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    };
    Some(alg)
}

/// Parses a JWKS document (`what` names it in errors): every signature key, symmetric keys
/// refused.
fn parse_jwks(what: &str, text: &str) -> Result<Vec<Key>, JwksError> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| JwksError::Parse(what.to_string(), e))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
        let refuse = |why: &str| JwksError::Key(what.to_string(), name.clone(), why.to_string());
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
            AlgorithmParameters::OctetKey(_) => return Err(refuse(
                "a symmetric (oct) key: whoever holds it can mint tokens; publish public keys only",
            )),
            _ => return Err(refuse("unsupported key type")),
        };
        let alg = match jwk.common.key_algorithm {
            Some(a) => {
                let a = a.to_string();
                Some(
                    algorithm(&a)
                        .ok_or_else(|| refuse(&format!("algorithm {a} is not accepted")))?,
                )
            }
            None => None,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| refuse(&e.to_string()))?;
        keys.push(Key { kid: jwk.common.key_id.clone(), alg, family, key });
    }
    if keys.is_empty() {
        return Err(JwksError::Empty(what.to_string()));
    }
    Ok(keys)
}

impl Jwt {
    /// Loads the section: the JWKS file now; a `jwks_url` is fetched by
    /// [`Jwt::start_refreshing`] (until then, and with no file, requests are answered 503).
    pub fn load(s: &JwtSettings) -> Result<Self, JwksError> {
        let allowed = s
            .algorithms
            .iter()
            .map(|a| algorithm(a).ok_or_else(|| JwksError::Algorithm(a.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(url) = s.jwks_url.as_deref() {
            let https = url.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("https://"));
            if !https && !s.insecure_jwks_url {
                return Err(JwksError::InsecureUrl(url.to_string()));
            }
        }
        let keys = match &s.jwks {
            Some(path) => {
                let what = path.display().to_string();
                let text =
                    std::fs::read_to_string(path).map_err(|e| JwksError::Read(what.clone(), e))?;
                parse_jwks(&what, &text)?
            }
            None if s.jwks_url.is_some() => Vec::new(),
            None => return Err(JwksError::NoSource),
        };
        Ok(Jwt {
            keys: Arc::new(ArcSwap::from_pointee(keys)),
            allowed,
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
            leeway: s.leeway,
            cookie: s.cookie.clone(),
            claims: s
                .claims_to_headers
                .iter()
                .map(|(c, h)| (c.clone(), h.to_ascii_lowercase().into_bytes()))
                .collect(),
            url: s.jwks_url.clone(),
            verified: Arc::new(Remembered::new(REMEMBERED)),
            hide: s.hide_credentials,
        })
    }

    /// Whether the verified credential is stripped before forwarding.
    pub fn hides(&self) -> bool {
        self.hide
    }

    /// The cookie a token may come in.
    pub fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// Fetches `jwks_url` now and again when its `Cache-Control: max-age` runs out, on the
    /// current runtime; a failed fetch keeps the last good set and is retried in 30 s.
    pub fn start_refreshing(&self) {
        let Some(url) = self.url.clone() else { return };
        let (keys, verified) = (self.keys.clone(), self.verified.clone());
        tokio::spawn(async move {
            loop {
                let wait = match super::fetch::jwks(&url).await {
                    Ok((text, max_age)) => match parse_jwks(&url, &text) {
                        Ok(set) => {
                            log::info!(
                                "auth: JWKS {url}: {} keys, next fetch in {max_age:?}",
                                set.len()
                            );
                            keys.store(Arc::new(set));
                            verified.clear();
                            max_age
                        }
                        Err(e) => {
                            log::warn!("auth: {e}; keeping the last good keys");
                            super::fetch::RETRY
                        }
                    },
                    Err(e) => {
                        log::warn!(
                            "auth: cannot fetch JWKS {url} ({e}); keeping the last good keys"
                        );
                        super::fetch::RETRY
                    }
                };
                tokio::time::sleep(wait).await;
            }
        });
    }

    fn challenge(&self, error: Option<&str>) -> String {
        match error {
            Some(e) => format!(
                "Bearer realm=\"zkgate\", error=\"invalid_token\", error_description=\"{e}\""
            ),
            None => "Bearer realm=\"zkgate\"".to_string(),
        }
    }

    /// Verifies the request's token; its subject and chosen claims become the identity.
    pub fn check(&self, presented: Presented<'_>) -> Result<Identity, Refusal> {
        let bearer = presented.authorization.and_then(|v| {
            let v = v.trim_ascii();
            (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| v[7..].trim_ascii())
        });
        let Some(token) = bearer.or(presented.cookie) else {
            return Err(Refusal::unauthorized("bearer token required", self.challenge(None)));
        };
        let invalid = |why: &str| Refusal::unauthorized(why.to_string(), self.challenge(Some(why)));
        let digest = digest(&[token]);
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(identity) = self.verified.get(&digest, now) {
            return Ok(identity);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        if !self.allowed.contains(&header.alg) {
            return Err(invalid("token algorithm not accepted"));
        }
        let keys = self.keys.load();
        if keys.is_empty() {
            return Err(Refusal {
                status: 503,
                reason: "signing keys not loaded yet".into(),
                challenge: None,
            });
        }
        let family = header.alg.family();
        let candidates = keys.iter().filter(|k| {
            k.family == family
                && k.alg.is_none_or(|a| a == header.alg)
                && header.kid.as_ref().is_none_or(|kid| k.kid.as_ref() == Some(kid))
        });
        let validation = self.validation(header.alg);
        let mut last = invalid("no key for this token");
        for key in candidates {
            use jsonwebtoken::errors::ErrorKind as K;
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => {
                    let identity =
                        self.identity(&data.claims).ok_or_else(|| invalid("malformed subject"))?;
                    let exp = data.claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
                    let until = (exp + self.leeway.as_secs()).min(now + REMEMBER.as_secs());
                    self.verified.insert(digest, identity.clone(), until);
                    return Ok(identity);
                }
                Err(e) => {
                    last = match e.kind() {
                        K::InvalidSignature
                        | K::InvalidEcdsaKey
                        | K::InvalidRsaKey(_)
                        | K::InvalidEddsaKey => invalid("bad signature"),
                        K::ExpiredSignature => return Err(invalid("token expired")),
                        K::ImmatureSignature => return Err(invalid("token not valid yet")),
                        K::MissingRequiredClaim(c) => {
                            return Err(invalid(&format!("claim {c} missing")))
                        }
                        K::InvalidAudience => {
                            return Err(Refusal::forbidden("token audience not accepted"))
                        }
                        K::InvalidIssuer => {
                            return Err(Refusal::forbidden("token issuer not accepted"))
                        }
                        _ => return Err(invalid("invalid token")),
                    }
                }
            }
        }
        Err(last)
    }

    /// What a token signed with `alg` is checked for: `exp` always, and — what the section
    /// configures, the token must carry — `iss` and `aud` (absent is no match).
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        // What the section checks, the token must carry: an absent `iss` or `aud` is no
        // match for a configured one.
        let mut required = vec!["exp"];
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match self.audience.is_empty() {
            true => validation.validate_aud = false,
            false => {
                validation.set_audience(&self.audience);
                required.push("aud");
            }
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// `X-Auth-Subject` and the chosen claims. `None`: a subject that cannot be a header value.
    /// A chosen claim that cannot be one is left out (a claim is data, never a header line).
    fn identity(&self, claims: &Map<String, Value>) -> Option<Identity> {
        let mut headers = Vec::new();
        if let Some(sub) = claims.get("sub") {
            let sub = claim_text(sub);
            if !header_safe(&sub) {
                return None;
            }
            headers.push((b"x-auth-subject".to_vec(), sub.into_bytes()));
        }
        for (claim, header) in &self.claims {
            let Some(value) = claims.get(claim) else { continue };
            let value = claim_text(value);
            if header_safe(&value) {
                headers.push((header.clone(), value.into_bytes()));
            }
        }
        Some(Identity { headers, hide: None })
    }
}

/// A claim as a header value: a string as it is, anything else as JSON.
fn claim_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether `v` can be a header value as it is: visible ASCII, spaces and tabs, at most 4 KiB.
fn header_safe(v: &str) -> bool {
    v.len() <= 4096 && v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> JwtSettings {
        let text = format!("jwks_url = \"http://127.0.0.1:1/jwks\"\naudience = \"api\"\n{extra}");
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn a_plain_http_jwks_url_is_refused_unless_asked_for_and_audience_takes_a_string() {
        let s = settings("");
        assert_eq!(s.audience, ["api"], "the single-string form");
        assert!(matches!(Jwt::load(&s), Err(JwksError::InsecureUrl(_))));
        assert!(Jwt::load(&settings("insecure_jwks_url = true")).is_ok());
        let list: JwtSettings =
            toml::from_str("jwks_url = \"https://x/\"\naudience = [\"a\", \"b\"]").unwrap();
        assert_eq!(list.audience, ["a", "b"]);
        assert!(toml::from_str::<JwtSettings>("jwks_url = \"https://x/\"\naudience = 3").is_err());
    }
}
