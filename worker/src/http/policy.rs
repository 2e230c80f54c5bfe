//! The one header policy, whichever protocol a message arrived on (HTTP/1.1 on the own engine,
//! HTTP/2 or h2c on hyper): hop-by-hop and `Connection`-named headers out, `X-Forwarded-*`,
//! `Forwarded`, `Via`, `X-Request-Id`, route header rules, and the same for answers.
//!
//! Each side turns its message into [`Line`]s (name, value and [`Kind`], classified once) and
//! hands them to [`Policy::request`] or [`Policy::response`] with a [`HeadSink`] to write to: the
//! engine's sink is the outgoing HTTP/1.1 head itself, hyper's a fresh `HeaderMap`. So there is
//! one list of rules, written once, that both sides follow (HAProxy's HTX and Sozu's kawa do the
//! same with a neutral representation).
//!
//! What a client may not choose: any `X-Forwarded-*` or `Forwarded` line reaches an instance
//! only when the client's address is in `trusted_proxies` (nginx's `set_real_ip_from`, Envoy's
//! `xff_num_trusted_hops`); otherwise the gateway's own values replace them. Headers a
//! `Connection` line names are dropped before the gateway adds its own, so naming
//! `X-Request-Id` or `X-Forwarded-For` changes nothing the instance relies on.

use std::net::IpAddr;

use http::header::HeaderValue;

use crate::auth::{Hide, Identity, CLIENT_CERT_SUBJECT};
use crate::config::TrustedProxies;
use crate::http::headers::{request_id_bytes, via_lists, Underscores};
pub use crate::http::lines::{kind_of, map_lines, HeadSink, Kind, Line};
use crate::http::router::HeaderActions;
pub use crate::http::trailers::{
    filter_request_trailers, request_trailer_allowed, response_trailer_allowed,
};

/// `X-Forwarded-For`: a trusted peer's list (`hops`, every line, joined: RFC 9110 §5.3), then
/// this hop (`peer`); with no list, this hop alone — no buffer to build, the common case.
fn forwarded_for<'l>(
    mut hops: impl Iterator<Item = Line<'l>>,
    peer: &str,
    out: &mut impl HeadSink,
) {
    let Some(first) = hops.next() else {
        return out.put(b"x-forwarded-for", peer.as_bytes());
    };
    let mut xff = Vec::with_capacity(64);
    for hop in std::iter::once(first).chain(hops) {
        xff.extend_from_slice(hop.value);
        xff.extend_from_slice(b", ");
    }
    xff.extend_from_slice(peer.as_bytes());
    out.put(b"x-forwarded-for", &xff);
}

/// Whether a comma-separated header value lists `token` (without regard to case).
pub fn lists(value: &[u8], token: &[u8]) -> bool {
    value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether a `Connection` value names any header beyond `close` and `keep-alive` (`Keep-Alive`
/// is hop-by-hop anyway): only then is every line checked against it.
pub fn names_headers(value: &[u8]) -> bool {
    // The values nearly every message carries, told at once.
    if value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close") {
        return false;
    }
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii).any(|t| {
        !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
    })
}

/// The names a message's `Connection` lines list, checked per line only when there are any.
struct Named<'l, I> {
    lines: Option<I>,
    _l: std::marker::PhantomData<&'l ()>,
}

impl<'l, I: Iterator<Item = Line<'l>> + Clone> Named<'l, I> {
    fn of(lines: &I) -> Self {
        let any = lines.clone().any(|l| l.kind == Kind::Connection && names_headers(l.value));
        Named { lines: any.then(|| lines.clone()), _l: std::marker::PhantomData }
    }

    fn contains(&self, name: &[u8]) -> bool {
        let Some(lines) = &self.lines else { return false };
        lines.clone().any(|l| l.kind == Kind::Connection && lists(l.value, name))
    }
}

/// Where a request came from and how, as the instance is told.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The client's address.
    pub peer: IpAddr,
    /// The same, formatted (the engine formats it once per connection).
    pub peer_text: &'a str,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The port the client connected to.
    pub port: u16,
    /// The host the client addressed (absolute-form target or `Host`), without port.
    pub host: Option<&'a str>,
    /// What a route's `auth` verified about the client (`X-Auth-*` lines).
    pub identity: Option<&'a Identity>,
    /// The subject of the client's verified certificate (`X-Client-Cert-Subject`).
    pub client_cert: Option<&'a [u8]>,
    /// The `traceparent` the instance gets, when the gateway traces the request.
    pub traceparent: Option<&'a [u8]>,
}

/// The gateway's header policy, built once per worker.
#[derive(Debug, Clone)]
pub struct Policy {
    via: HeaderValue,
    keep_underscored: Underscores,
    trusted: TrustedProxies,
    debug: Option<Vec<u8>>,
    /// With debug headers: the fleet release this worker serves (`x-zkgate-release`).
    release: Option<Vec<u8>>,
}

impl Policy {
    /// `via`: this gateway's `Via` entry; `debug`: this worker's id when responses carry
    /// `x-zkgate-instance` and `x-zkgate-worker`.
    pub fn new(
        via: HeaderValue,
        keep_underscored: Underscores,
        trusted: TrustedProxies,
        debug: Option<Vec<u8>>,
    ) -> Self {
        Policy { via, keep_underscored, trusted, debug, release: None }
    }

    /// The same policy; with debug headers, answers name the fleet release that routed them.
    pub fn with_release(mut self, release: Option<&str>) -> Self {
        self.release = release.map(|r| r.as_bytes().to_vec());
        self
    }

    /// This gateway's `Via` entry.
    pub fn via(&self) -> &HeaderValue {
        &self.via
    }

    /// The client's address as `allow`/`deny` judge it: the peer, or — when the peer is in
    /// `trusted_proxies` — the last address in `X-Forwarded-For` that is not (nginx's
    /// `real_ip_recursive`); a value that is not an address ends the walk at what was known.
    pub fn client_ip<'l>(&self, peer: IpAddr, lines: impl Iterator<Item = Line<'l>>) -> IpAddr {
        if !self.trusted.contains(peer) {
            return peer;
        }
        let hops: Vec<&[u8]> = lines
            .filter(|l| l.kind == Kind::ForwardedFor)
            .flat_map(|l| l.value.split(|b| *b == b','))
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = std::str::from_utf8(hop.trim_ascii()).ok().and_then(|s| s.parse().ok())
            else {
                break;
            };
            client = ip;
            if !self.trusted.contains(ip) {
                break;
            }
        }
        client
    }

    /// Whether the request already passed through this gateway (it is answered 508).
    pub fn looped<'l>(&self, mut lines: impl Iterator<Item = Line<'l>>) -> bool {
        lines.any(|l| l.kind == Kind::Via && via_lists(l.value, &self.via))
    }

    /// Writes the request's header lines as the instance receives them, all but `Host` (it
    /// depends on the instance picked) and the framing the sending side adds itself
    /// (`Transfer-Encoding`; a `Content-Length` line is kept as sent).
    pub fn request<'l, I>(
        &self,
        lines: I,
        origin: &Origin<'_>,
        actions: Option<&HeaderActions>,
        out: &mut impl HeadSink,
    ) where
        I: Iterator<Item = Line<'l>> + Clone,
    {
        let trusted = self.trusted.contains(origin.peer);
        let named = Named::of(&lines);
        let ours = |name: &[u8]| actions.is_none_or(|a| !a.drops(name));
        let mut has_request_id = false;
        let mut sent = SentForwarded::default();
        let hide = origin.identity.and_then(|i| i.hide.as_ref());
        for line in lines.clone() {
            if !ours(line.name) || named.contains(line.name) {
                continue;
            }
            if let Some(hide) = hide {
                if hidden(hide, line, out) {
                    continue;
                }
            }
            let keep = match line.kind {
                Kind::Plain | Kind::Via | Kind::ContentLength => true,
                Kind::RequestId => {
                    has_request_id = true;
                    true
                }
                Kind::Underscored => self.keep_underscored.allows(line.name),
                Kind::ForwardedOther if trusted => {
                    sent.note(line.name);
                    true
                }
                // Joined below, before this hop.
                Kind::ForwardedFor => false,
                Kind::TraceParent => origin.traceparent.is_none(),
                Kind::ForwardedOther
                | Kind::Host
                | Kind::Connection
                | Kind::HopByHop
                | Kind::TransferEncoding
                | Kind::Identity => false,
            };
            if keep {
                out.put_line(&line);
            }
        }
        forwarding(&lines, &named, (origin, trusted, &sent), ours, out);
        out.put(b"via", self.via.as_bytes());
        if !has_request_id && ours(b"x-request-id") {
            out.put(b"x-request-id", &request_id_bytes());
        }
        for (name, value) in origin.identity.iter().flat_map(|i| &i.headers) {
            out.put(name, value);
        }
        if let Some(subject) = origin.client_cert {
            out.put(CLIENT_CERT_SUBJECT, subject);
        }
        if let Some(tp) = origin.traceparent {
            out.put(b"traceparent", tp);
        }
        if let Some(actions) = actions {
            put_actions(out, actions);
        }
    }

    /// Writes the answer's header lines as the client receives them, all but the framing the
    /// sending side adds (`Transfer-Encoding`, and `Content-Length` when `keep_length` is false:
    /// the body is re-framed, or the status has none).
    pub fn response<'l, I>(
        &self,
        lines: I,
        keep_length: bool,
        (actions, address): (Option<&HeaderActions>, &str),
        out: &mut impl HeadSink,
    ) where
        I: Iterator<Item = Line<'l>> + Clone,
    {
        let named = Named::of(&lines);
        for line in lines {
            let keep = match line.kind {
                Kind::Connection | Kind::HopByHop | Kind::TransferEncoding => false,
                Kind::ContentLength => keep_length,
                _ => actions.is_none_or(|a| !a.drops(line.name)),
            };
            if keep && !named.contains(line.name) {
                out.put_line(&line);
            }
        }
        out.put(b"via", self.via.as_bytes());
        if let Some(worker) = &self.debug {
            out.put(b"x-zkgate-instance", address.as_bytes());
            out.put(b"x-zkgate-worker", worker);
            if let Some(release) = &self.release {
                out.put(b"x-zkgate-release", release);
            }
        }
        if let Some(actions) = actions {
            put_actions(out, actions);
        }
    }
}

/// This hop's forwarding lines: `X-Forwarded-For` (a trusted peer's hops before its address),
/// then `-Proto`, `-Host` and `-Port` unless a trusted peer sent its own; each unless a route
/// rule drops it (`ours`).
fn forwarding<'l, I: Iterator<Item = Line<'l>> + Clone>(
    lines: &I,
    named: &Named<'l, I>,
    (origin, trusted, sent): (&Origin<'_>, bool, &SentForwarded),
    ours: impl Fn(&[u8]) -> bool,
    out: &mut impl HeadSink,
) {
    if ours(b"x-forwarded-for") {
        // An untrusted peer's hops are not read at all (its lines are not walked again).
        let walked = lines.clone().take(if trusted { usize::MAX } else { 0 });
        let hops = walked.filter(|l| l.kind == Kind::ForwardedFor);
        let hops = hops.filter(|l| !l.value.is_empty() && !named.contains(l.name));
        forwarded_for(hops, origin.peer_text, out);
    }
    if !sent.proto && ours(b"x-forwarded-proto") {
        out.put(b"x-forwarded-proto", origin.scheme.as_bytes());
    }
    if let Some(host) = origin.host.filter(|_| !sent.host && ours(b"x-forwarded-host")) {
        out.put(b"x-forwarded-host", host.as_bytes());
    }
    if !sent.port && ours(b"x-forwarded-port") {
        let mut digits = [0u8; 5];
        out.put(b"x-forwarded-port", decimal(origin.port, &mut digits));
    }
}

/// Which forwarding headers a trusted peer sent (its own are kept, not replaced).
#[derive(Default)]
struct SentForwarded {
    proto: bool,
    host: bool,
    port: bool,
}

impl SentForwarded {
    fn note(&mut self, name: &[u8]) {
        self.proto |= name.eq_ignore_ascii_case(b"x-forwarded-proto");
        self.host |= name.eq_ignore_ascii_case(b"x-forwarded-host");
        self.port |= name.eq_ignore_ascii_case(b"x-forwarded-port");
    }
}

/// `n` in decimal, in `buf`.
fn decimal(mut n: u16, buf: &mut [u8; 5]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// A route's `set` and `add` lines.
fn put_actions(out: &mut impl HeadSink, actions: &HeaderActions) {
    for (name, value) in actions.set.iter().chain(&actions.add) {
        out.put(name.as_str().as_bytes(), value.as_bytes());
    }
}

/// Whether an answer with this status may carry `Content-Length` (RFC 9110 §8.6: never on
/// 1xx or 204).
pub fn status_allows_length(status: u16) -> bool {
    status >= 200 && status != 204
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;

/// With `hide_credentials`: whether `line` carries the verified credential — an
/// `Authorization` line or an API key's header (dropped), or a `Cookie` line with the token's cookie (written here
/// without it, or dropped when nothing else is left).
fn hidden(hide: &Hide, line: Line<'_>, out: &mut impl HeadSink) -> bool {
    match hide.header.as_deref() {
        Some(key) if line.name.eq_ignore_ascii_case(key.as_bytes()) => return true,
        Some(_) => {}
        None if line.name.eq_ignore_ascii_case(b"authorization") => return true,
        None => {}
    }
    let Some(name) = hide.cookie.as_deref() else { return false };
    if !line.name.eq_ignore_ascii_case(b"cookie") {
        return false;
    }
    let is_token =
        |kv: &[u8]| kv.trim_ascii().split(|b| *b == b'=').next() == Some(name.as_bytes());
    if !line.value.split(|b| *b == b';').any(is_token) {
        return false;
    }
    let kept: Vec<&[u8]> = line
        .value
        .split(|b| *b == b';')
        .filter(|kv| !is_token(kv))
        .map(<[u8]>::trim_ascii)
        .collect();
    if !kept.is_empty() {
        out.put(line.name, &kept.join(&b"; "[..]));
    }
    true
}

/// Whether an `Upgrade` value asks only for protocols the operator allows
/// (`proxy.upgrade_protocols`, compared without regard to case or version). `h2c` never
/// passes: an instance that switched would leave the client speaking HTTP/2 straight to it,
/// past every per-request check (h2c smuggling).
pub fn upgrade_allowed(value: &[u8], allowed: &[String]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else { return false };
    let mut protocols = value.split(',').map(|p| p.trim()).filter(|p| !p.is_empty()).peekable();
    protocols.peek().is_some()
        && protocols.all(|p| {
            let name = p.split('/').next().unwrap_or(p).trim();
            !name.eq_ignore_ascii_case("h2c")
                && allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
        })
}
