//! Authentication at the edge: the `[auth.NAME]` sections a route names with `auth = "NAME"`.
//!
//! - [`jwt`]: a bearer token (or a cookie) signed with a key of a JWKS; issuer, audience,
//!   expiry and the accepted algorithms checked; the subject and chosen claims passed on.
//! - [`fetch`]: a `jwks_url` fetched and re-fetched as its `Cache-Control` says.
//! - [`basic`]: user and password against an htpasswd file of bcrypt entries, verified off the
//!   event loop, a bounded number at a time, with verified pairs remembered for a minute.
//! - [`key`]: API keys, from a header or a query parameter, against a file of SHA-256 digests
//!   by consumer (read again when it changes).
//!
//! A request either carries an [`Identity`] on (headers the instance can trust: the header
//! policy drops every client line of the same names) or is refused with the gateway's own
//! answer ([`Refusal`]: 401 with `WWW-Authenticate`, 403, or 503 when verification is
//! saturated). Files are read when a worker starts, so a HUP (new workers) re-reads them.

pub mod basic;
pub mod fetch;
pub mod jwt;
pub mod key;
pub mod remembered;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{AuthSettings, Config};

/// Every `[auth.NAME]` of the configuration, ready to check requests.
#[derive(Default)]
pub struct Auth {
    by_name: HashMap<String, Arc<Method>>,
}

/// One `[auth.NAME]`.
pub enum Method {
    /// `type = "jwt"`.
    Jwt(jwt::Jwt),
    /// `type = "basic"`.
    Basic(basic::Basic),
    /// `type = "key"`.
    Key(key::Keys),
}

/// Why an `[auth.NAME]` could not be loaded (named in the message).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The JWKS file or URL could not be used.
    #[error("auth.{0}: {1}")]
    Jwt(String, jwt::JwksError),
    /// The htpasswd file could not be used.
    #[error("auth.{0}: {1}")]
    Basic(String, basic::HtpasswdError),
    /// The keys file could not be used.
    #[error("auth.{0}: {1}")]
    Key(String, key::KeysError),
}

/// What a request presented: its `Authorization` value and, for a JWT read from a cookie, that
/// cookie's value.
#[derive(Debug, Default, Clone, Copy)]
pub struct Presented<'a> {
    /// The `Authorization` header's value.
    pub authorization: Option<&'a [u8]>,
    /// The value of the method's cookie ([`Method::cookie`]).
    pub cookie: Option<&'a [u8]>,
    /// An API key (`type = "key"`), from its header or query parameter.
    pub key: Option<&'a [u8]>,
}

/// Who the client proved to be: header lines for the instance (names lower-case).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `(name, value)` lines added to the forwarded request.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The credential to strip before forwarding (`hide_credentials`), when asked.
    pub hide: Option<Hide>,
}

/// A verified credential the instance does not get (`hide_credentials`): the `Authorization`
/// lines, and the token's cookie when it came in one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hide {
    /// The cookie the token is read from, removed from `Cookie` lines.
    pub cookie: Option<Arc<str>>,
    /// The header an API key is read from (`None`: the credential is in `Authorization`).
    pub header: Option<Arc<str>>,
}

/// A request the gateway answers itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    /// 401, 403 or 503.
    pub status: u16,
    /// Why, in words (the JSON answer's `error`).
    pub reason: String,
    /// The `WWW-Authenticate` value of a 401.
    pub challenge: Option<String>,
}

impl Refusal {
    /// 401: no credentials, or ones that do not verify.
    pub fn unauthorized(reason: impl Into<String>, challenge: String) -> Self {
        Refusal { status: 401, reason: reason.into(), challenge: Some(challenge) }
    }

    /// 403: valid credentials that this route does not accept.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Refusal { status: 403, reason: reason.into(), challenge: None }
    }
}

/// Whether a request header name is one the gateway sets from a verified identity: the
/// client's own lines of these names never reach an instance.
pub fn is_identity_header(name: &[u8]) -> bool {
    // Every header line of every message asks: most names fail on the first byte.
    match name.first() {
        Some(b'x' | b'X') if name.len() >= 7 => {
            name[..7].eq_ignore_ascii_case(b"x-auth-")
                || name.eq_ignore_ascii_case(CLIENT_CERT_SUBJECT)
        }
        _ => false,
    }
}

/// The header a verified client certificate's subject reaches the instance in.
pub const CLIENT_CERT_SUBJECT: &[u8] = b"x-client-cert-subject";

impl Auth {
    /// Loads every `[auth.NAME]` of `config` (reads the JWKS and htpasswd files). Err: the
    /// sections that loaded, and why the others did not (their routes must refuse requests).
    pub fn from_config(config: &Config) -> Result<Self, (Self, Vec<LoadError>)> {
        let mut by_name = HashMap::new();
        let mut errors = Vec::new();
        for (name, settings) in &config.auth {
            let method = match settings {
                AuthSettings::Jwt(s) => {
                    jwt::Jwt::load(s).map(Method::Jwt).map_err(|e| LoadError::Jwt(name.clone(), e))
                }
                AuthSettings::Basic(s) => basic::Basic::load(s)
                    .map(Method::Basic)
                    .map_err(|e| LoadError::Basic(name.clone(), e)),
                AuthSettings::Key(s) => {
                    key::Keys::load(s).map(Method::Key).map_err(|e| LoadError::Key(name.clone(), e))
                }
            };
            match method {
                Ok(m) => {
                    by_name.insert(name.clone(), Arc::new(m));
                }
                Err(e) => errors.push(e),
            }
        }
        match errors.is_empty() {
            true => Ok(Auth { by_name }),
            false => Err((Auth { by_name }, errors)),
        }
    }

    /// The method named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Method>> {
        self.by_name.get(name)
    }

    /// Starts what a method keeps fresh by itself (a `jwks_url` refresh), on the current runtime.
    pub fn start_refreshing(&self) {
        for method in self.by_name.values() {
            if let Method::Jwt(jwt) = method.as_ref() {
                jwt.start_refreshing();
            }
        }
    }
}

impl Method {
    /// What of the credential is stripped before forwarding (`hide_credentials`).
    pub fn hide(&self) -> Option<Hide> {
        match self {
            Method::Jwt(j) if j.hides() => {
                Some(Hide { cookie: j.cookie().map(Arc::from), header: None })
            }
            Method::Basic(b) if b.hides() => Some(Hide { cookie: None, header: None }),
            Method::Key(k) if k.hide() => {
                Some(Hide { cookie: None, header: Some(Arc::from(k.header.as_str())) })
            }
            _ => None,
        }
    }

    /// The cookie a token may come in (JWT with `cookie`).
    pub fn cookie(&self) -> Option<&str> {
        match self {
            Method::Jwt(j) => j.cookie(),
            Method::Basic(_) | Method::Key(_) => None,
        }
    }

    /// Checks what the request presented.
    pub async fn check(&self, presented: Presented<'_>) -> Result<Identity, Refusal> {
        match self {
            Method::Jwt(j) => j.check(presented),
            Method::Basic(b) => b.check(presented.authorization).await,
            Method::Key(k) => k.check(presented.key),
        }
    }
}
