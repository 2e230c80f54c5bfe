//! A request head the engine parsed, as the pipeline's phases read it (the engine's
//! `Exchange`): spans into the connection's buffer, nothing copied.

use std::net::SocketAddr;

use http::uri::PathAndQuery;
use http::HeaderName;

use crate::http::connections::Client;
use crate::http::h1::head::{lines, BodyFraming, RequestHead};
use crate::http::pipeline::Exchange;
use crate::http::policy::{self, upgrade_allowed};
use crate::http::router::{host_of, RequestView};

/// A parsed head as the phases read it: the engine's [`Exchange`].
pub(crate) struct View<'a> {
    /// The connection's buffer: the head, then whatever followed it.
    pub(super) buf: &'a [u8],
    pub(super) head: &'a RequestHead,
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    query: Option<&'a str>,
    target: &'a str,
    pub(super) host: Option<&'a str>,
    /// The authority of an absolute-form target (`GET http://a.example/p`): it replaces `Host`
    /// (RFC 9112 §3.2.2), as hyper reads it.
    authority: Option<&'a str>,
    client: SocketAddr,
    came_by: (&'static str, u16),
}

impl<'a> View<'a> {
    /// The head parsed into `head` from `buf`, sent by `client`.
    pub(crate) fn of(buf: &'a [u8], head: &'a RequestHead, from: &Client) -> Self {
        let (client, came_by) = (from.peer, (from.scheme.as_str(), from.port));
        let method = method_str(head.method.get(buf));
        let raw = std::str::from_utf8(head.target.get(buf)).unwrap_or("/");
        let (authority, target) = match raw.starts_with('/') {
            true => (None, raw),
            false => absolute_form(raw).unwrap_or((None, raw)),
        };
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let host_line = head.host.map(|i| head.lines[i].value.get(buf));
        let host = authority.map(str::as_bytes).or(host_line).and_then(host_of);
        View { buf, head, method, path, query, target, host, authority, client, came_by }
    }

    /// The host as sent, for `preserve_host`: an absolute-form target's authority, else the
    /// `Host` line's value.
    pub(super) fn host_line(&self) -> Option<&'a [u8]> {
        let line = self.head.host.map(|i| self.head.lines[i].value.get(self.buf));
        self.authority.map(str::as_bytes).or(line)
    }

    /// The upgrade asked again on this hop: only to a protocol the operator allows (never
    /// h2c); any other goes on as a plain request, its `Upgrade` line dropped with the
    /// hop-by-hop ones.
    pub(super) fn upgrade(&self, allowed: &[String]) -> Option<&'a [u8]> {
        let protocol = self.head.upgrade.map(|i| self.head.lines[i].value.get(self.buf));
        protocol.filter(|p| upgrade_allowed(p, allowed))
    }
}

/// A method as text: the common ones without a UTF-8 check (a call, on every request).
fn method_str(method: &[u8]) -> &str {
    match method {
        b"GET" => "GET",
        b"POST" => "POST",
        b"HEAD" => "HEAD",
        b"PUT" => "PUT",
        b"DELETE" => "DELETE",
        other => std::str::from_utf8(other).unwrap_or("-"),
    }
}

/// An absolute-form target (`http://authority/path?query`, the form proxies are sent) split
/// into its authority and its origin-form rest; `None` for any other form. A target whose
/// authority carries user information, or whose rest is not a path, gives a rest that is not
/// one (the pipeline refuses it, 400) rather than a guess.
fn absolute_form(target: &str) -> Option<(Option<&str>, &str)> {
    let scheme = target.find("://")?;
    let (name, rest) = (&target[..scheme], &target[scheme + 3..]);
    if !name.eq_ignore_ascii_case("http") && !name.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, origin) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') || origin.starts_with('?') {
        return Some((None, target));
    }
    Some((Some(authority), if origin.is_empty() { "/" } else { origin }))
}

impl RequestView for View<'_> {
    fn path(&self) -> &str {
        self.path
    }
    fn query(&self) -> Option<&str> {
        self.query
    }
    fn path_and_query(&self) -> PathAndQuery {
        PathAndQuery::try_from(self.target).unwrap_or_else(|_| PathAndQuery::from_static("/"))
    }
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        let want = name.as_str().as_bytes();
        let line = self.head.lines.iter().find(|l| l.name.get(self.buf).eq_ignore_ascii_case(want));
        line.map(|l| l.value.get(self.buf))
    }
    fn headers<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let want = name.as_str().as_bytes();
        self.head
            .lines
            .iter()
            .filter(move |l| l.name.get(self.buf).eq_ignore_ascii_case(want))
            .map(|l| l.value.get(self.buf))
    }
}

impl Exchange for View<'_> {
    fn lines(&self) -> impl Iterator<Item = policy::Line<'_>> + Clone {
        lines(self.buf, &self.head.lines)
    }
    fn declared_length(&self) -> Option<u64> {
        match self.head.body {
            BodyFraming::Length(n) => Some(n),
            _ => None,
        }
    }
    fn method(&self) -> &str {
        self.method
    }
    fn client(&self) -> SocketAddr {
        self.client
    }
    fn came_by(&self) -> (&'static str, u16) {
        self.came_by
    }
}
