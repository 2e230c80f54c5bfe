//! `[auth.NAME]` sections: how the clients of a route (`auth = "NAME"`) prove who they are.
//! Files named here are read when a worker starts, so a HUP (new workers) re-reads them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::duration;

/// One `[auth.NAME]`, by its `type`. Read through [`RawAuth`] (every key of every type, each
/// with its own position), not as an internally tagged enum: serde buffers such an enum's
/// table, and a wrong value inside it was reported at the section's first line without its key.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum AuthSettings {
    /// `type = "jwt"`: a signed JSON Web Token, checked against a JWKS.
    Jwt(JwtSettings),
    /// `type = "basic"`: user and password against an htpasswd file of bcrypt entries.
    Basic(BasicSettings),
    /// `type = "key"`: an API key, checked against a file of SHA-256 digests by consumer.
    Key(KeySettings),
}

/// `type = "jwt"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The JWKS file (`{"keys": [...]}`): RSA, EC (P-256) and Ed25519 public keys. Symmetric
    /// (`oct`) keys are refused: a gateway holding the signing secret could mint tokens.
    #[serde(default)]
    pub jwks: Option<PathBuf>,
    /// A JWKS fetched over HTTPS and cached for its `Cache-Control: max-age` (at least 1 min,
    /// at most a day; 5 min without one); the last good set is kept while it cannot be fetched.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Accept a `jwks_url` over plain HTTP (anyone on the path could then mint tokens: a
    /// loopback or test key server only).
    #[serde(default)]
    pub insecure_jwks_url: bool,
    /// Required `iss`: a token without one is refused (401), another one 403.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values, a string or a list (one of them must be in the token; a token
    /// without `aud` is refused); none: `aud` is not checked.
    #[serde(default, deserialize_with = "super::values::string_or_list")]
    pub audience: Vec<String>,
    /// Accepted algorithms: any of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384,
    /// EdDSA. HMAC (`HS*`) and `none` are never accepted.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
    /// Read the token from this cookie when there is no `Authorization: Bearer`.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Claims passed to the instance as headers: claim name → header name (a string claim as
    /// it is, others as JSON). The subject always goes as `X-Auth-Subject`.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Strip the verified credential (the `Authorization` line, or the token's cookie) before
    /// forwarding (Kong's `hide_credentials`): the instance gets the gateway's `X-Auth-*`.
    #[serde(default)]
    pub hide_credentials: bool,
}

/// `type = "basic"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicSettings {
    /// An htpasswd file of bcrypt entries (`htpasswd -B`).
    pub htpasswd: PathBuf,
    /// The realm in `WWW-Authenticate`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Strip the verified `Authorization` line before forwarding (Kong's `hide_credentials`).
    #[serde(default)]
    pub hide_credentials: bool,
}

/// `type = "key"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// The keys file: lines `CONSUMER SHA256-HEX-OF-THE-KEY` (`#` comments, blank lines);
    /// never a key itself. `zkgate key add|list|revoke` edit it; a worker reads it again when
    /// it changes, and on HUP.
    pub keys: PathBuf,
    /// The request header the key is read from.
    #[serde(default = "default_key_header")]
    pub header: String,
    /// A query parameter the key may come in instead (removed before forwarding); none: the
    /// header only.
    #[serde(default)]
    pub query: Option<String>,
    /// Strip the key's header before forwarding.
    #[serde(default)]
    pub hide_credentials: bool,
}

fn default_key_header() -> String {
    "X-API-Key".into()
}

fn default_algorithms() -> Vec<String> {
    ["RS256", "ES256", "EdDSA"].map(String::from).to_vec()
}

fn default_leeway() -> Duration {
    super::DEFAULT_AUTH_LEEWAY
}

fn default_realm() -> String {
    "zkgate".into()
}

/// An `[auth.NAME]` table as written: every key any type takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(rename = "type")]
    kind: Kind,
    jwks: Option<PathBuf>,
    jwks_url: Option<String>,
    insecure_jwks_url: Option<bool>,
    issuer: Option<String>,
    #[serde(default, deserialize_with = "some_string_or_list")]
    audience: Option<Vec<String>>,
    algorithms: Option<Vec<String>>,
    #[serde(default, deserialize_with = "some_duration")]
    leeway: Option<Duration>,
    cookie: Option<String>,
    claims_to_headers: Option<BTreeMap<String, String>>,
    hide_credentials: Option<bool>,
    htpasswd: Option<PathBuf>,
    realm: Option<String>,
    keys: Option<PathBuf>,
    header: Option<String>,
    query: Option<String>,
}

/// `type`.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Jwt,
    Basic,
    Key,
}

fn some_string_or_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    super::values::string_or_list(d).map(Some)
}

fn some_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration::deserialize(d).map(Some)
}

impl<'de> Deserialize<'de> for AuthSettings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawAuth::deserialize(d)?;
        raw.settings().map_err(serde::de::Error::custom)
    }
}

impl RawAuth {
    /// The settings of its `type`; a key of another type is refused by name.
    fn settings(self) -> Result<AuthSettings, String> {
        let kind = match self.kind {
            Kind::Jwt => "jwt",
            Kind::Basic => "basic",
            Kind::Key => "key",
        };
        if let Some(key) = self.foreign_key() {
            return Err(format!("{key} is not a key of type = \"{kind}\""));
        }
        Ok(match self.kind {
            Kind::Jwt => AuthSettings::Jwt(JwtSettings {
                jwks: self.jwks,
                jwks_url: self.jwks_url,
                insecure_jwks_url: self.insecure_jwks_url.unwrap_or(false),
                issuer: self.issuer,
                audience: self.audience.unwrap_or_default(),
                algorithms: self.algorithms.unwrap_or_else(default_algorithms),
                leeway: self.leeway.unwrap_or_else(default_leeway),
                cookie: self.cookie,
                claims_to_headers: self.claims_to_headers.unwrap_or_default(),
                hide_credentials: self.hide_credentials.unwrap_or(false),
            }),
            Kind::Basic => AuthSettings::Basic(BasicSettings {
                htpasswd: self.htpasswd.ok_or("type = \"basic\" needs htpasswd")?,
                realm: self.realm.unwrap_or_else(default_realm),
                hide_credentials: self.hide_credentials.unwrap_or(false),
            }),
            Kind::Key => AuthSettings::Key(KeySettings {
                keys: self.keys.ok_or("type = \"key\" needs keys (a file of digests)")?,
                header: self.header.unwrap_or_else(default_key_header),
                query: self.query,
                hide_credentials: self.hide_credentials.unwrap_or(false),
            }),
        })
    }

    /// The first key set that another type takes and this one does not.
    fn foreign_key(&self) -> Option<&'static str> {
        let jwt = [
            ("jwks", self.jwks.is_some()),
            ("jwks_url", self.jwks_url.is_some()),
            ("insecure_jwks_url", self.insecure_jwks_url.is_some()),
            ("issuer", self.issuer.is_some()),
            ("audience", self.audience.is_some()),
            ("algorithms", self.algorithms.is_some()),
            ("leeway", self.leeway.is_some()),
            ("cookie", self.cookie.is_some()),
            ("claims_to_headers", self.claims_to_headers.is_some()),
        ];
        let basic = [("htpasswd", self.htpasswd.is_some()), ("realm", self.realm.is_some())];
        let key = [
            ("keys", self.keys.is_some()),
            ("header", self.header.is_some()),
            ("query", self.query.is_some()),
        ];
        let others: Vec<&[(&'static str, bool)]> = match self.kind {
            Kind::Jwt => vec![&basic, &key],
            Kind::Basic => vec![&jwt, &key],
            Kind::Key => vec![&jwt, &basic],
        };
        others.into_iter().flatten().find(|(_, set)| *set).map(|(name, _)| *name)
    }
}
