//! What a route (or a service) answers at the edge before a request is forwarded, or adds to
//! what the instance answers: CORS, redirects, a fixed answer. (`allow`/`deny` take
//! [`AddressBlocks`](super::AddressBlocks).)

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::duration;

/// `cors = { origins, methods, headers, expose, credentials, max_age }`: browsers on these
/// origins may call the route. Preflights (`OPTIONS` with `Access-Control-Request-Method`) are
/// answered by the gateway, never forwarded; other requests from an allowed origin get the
/// `Access-Control-Allow-*` lines added to the instance's answer (the instance's own replaced).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins allowed, each matched exactly (`"https://app.example"`, case-insensitively); a
    /// `*` as the first label of the host (`"https://*.example.com"`) matches any one or more
    /// labels there, never the bare domain; `"*"` alone matches any origin (refused with
    /// `credentials`).
    pub origins: Vec<String>,
    /// Methods a preflight may ask for; default GET, HEAD, POST.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Request headers a preflight may ask for (beyond the CORS-safelisted ones); default none.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Answer headers the page's script may read (`Access-Control-Expose-Headers`).
    #[serde(default)]
    pub expose: Vec<String>,
    /// Cookies and credentials go along (`Access-Control-Allow-Credentials: true`).
    #[serde(default)]
    pub credentials: bool,
    /// How long a browser keeps a preflight's answer (`Access-Control-Max-Age`); default 5m.
    #[serde(
        default = "default_max_age",
        serialize_with = "duration::serialize",
        deserialize_with = "duration::within::<_, 0, 86400000>"
    )]
    pub max_age: Duration,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

fn default_max_age() -> Duration {
    Duration::from_secs(300)
}

/// `redirect = { to, status }`: the route answers with a redirect. `to` may hold `{scheme}`
/// (`http` or `https`, as the client came), `{host}` (the host asked, without port), `{port}`
/// (the gateway's port the client came to) and `{path}` (the path and query as the client sent
/// them): `"https://{host}{path}"` moves a site to HTTPS.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// The location, placeholders filled per request.
    pub to: String,
    /// 301, 302, 303, 307 or 308; default 301.
    #[serde(default = "moved_permanently")]
    pub status: u16,
}

fn moved_permanently() -> u16 {
    301
}

/// `answer = { status, body_file, body, content_type }`: the route answers every request
/// itself (a maintenance page, a `return 200` health endpoint).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticAnswer {
    /// The status; default 200.
    #[serde(default = "ok")]
    pub status: u16,
    /// The body, read from this file when the configuration is loaded (relative to the
    /// configuration file's directory).
    #[serde(default)]
    pub body_file: Option<PathBuf>,
    /// The body, written inline (when there is no `body_file`).
    #[serde(default)]
    pub body: Option<String>,
    /// `Content-Type`; default `text/plain; charset=utf-8`.
    #[serde(default = "text_plain")]
    pub content_type: String,
}

fn ok() -> u16 {
    200
}

fn text_plain() -> String {
    "text/plain; charset=utf-8".into()
}

/// `compress = { types, min_bytes, level, codings }`: answers of these types are compressed
/// for clients that accept a coding (`Accept-Encoding`), as they stream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Compress {
    /// Media types compressed: exact (`application/json`) or a whole top-level type
    /// (`text/*`). Default: `text/*`, `application/json`, `application/javascript`,
    /// `application/xml`, `image/svg+xml`.
    #[serde(default = "default_types")]
    pub types: Vec<String>,
    /// Answers declaring a shorter `Content-Length` are sent as they are; default 1024.
    #[serde(default = "default_min_bytes")]
    pub min_bytes: u64,
    /// The codecs' level: gzip 1..9, brotli 0..11, zstd 1..19 (clamped to each); default 5.
    #[serde(default = "default_level")]
    pub level: u32,
    /// Codings offered, the gateway's preference first when the client weighs them alike;
    /// default `["br", "zstd", "gzip"]`.
    #[serde(default = "default_codings")]
    pub codings: Vec<String>,
}

fn default_types() -> Vec<String> {
    ["text/*", "application/json", "application/javascript", "application/xml", "image/svg+xml"]
        .map(String::from)
        .to_vec()
}

fn default_min_bytes() -> u64 {
    1024
}

fn default_level() -> u32 {
    5
}

fn default_codings() -> Vec<String> {
    ["br", "zstd", "gzip"].map(String::from).to_vec()
}
