//! A request head the engine parsed, as the pipeline's phases read it (the engine's
//! `Exchange`): spans into the connection's buffer, nothing copied.

use std::net::SocketAddr;

use http::uri::PathAndQuery;
use http::HeaderName;

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
    client: SocketAddr,
}

impl<'a> View<'a> {
    /// The head parsed into `head` from `buf`, sent by `client`.
    pub(crate) fn of(buf: &'a [u8], head: &'a RequestHead, client: SocketAddr) -> Self {
        let method = std::str::from_utf8(head.method.get(buf)).unwrap_or("-");
        let target = std::str::from_utf8(head.target.get(buf)).unwrap_or("/");
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let host = head.host.map(|i| head.lines[i].value.get(buf)).and_then(host_of);
        View { buf, head, method, path, query, target, host, client }
    }

    /// The `Host` line's value as sent (`preserve_host` forwards it as it came).
    pub(super) fn host_line(&self) -> Option<&'a [u8]> {
        self.head.host.map(|i| self.head.lines[i].value.get(self.buf))
    }

    /// The upgrade asked again on this hop: only to a protocol the operator allows (never
    /// h2c); any other goes on as a plain request, its `Upgrade` line dropped with the
    /// hop-by-hop ones.
    pub(super) fn upgrade(&self, allowed: &[String]) -> Option<&'a [u8]> {
        let protocol = self.head.upgrade.map(|i| self.head.lines[i].value.get(self.buf));
        protocol.filter(|p| upgrade_allowed(p, allowed))
    }
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
    fn client(&self) -> SocketAddr {
        self.client
    }
}
