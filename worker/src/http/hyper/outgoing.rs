//! The request as an instance receives it from hyper's side: where it came from (`From`),
//! what it asks of this hop (`Asks`), and the head the one policy writes for it.

use std::net::SocketAddr;

use http::header::{self, HeaderValue};
use http::Request;

use crate::auth::Identity;
use crate::http::connections::{ClientCert, LocalPort, Scheme};
use crate::http::policy::{map_lines, Origin};
use crate::http::proxy::Proxy;
use crate::http::router::Target;
use crate::http::Body;

/// Where a request came from, as the instance is told.
pub(super) struct From<'a> {
    client: SocketAddr,
    /// The host it was sent to (`X-Forwarded-Host`).
    host: Option<&'a str>,
    /// It asks for an upgrade.
    upgrade: bool,
    /// How it reached the gateway (`X-Forwarded-Proto`, `X-Forwarded-Port`).
    scheme: Scheme,
    port: u16,
    /// Forward `TE: trailers` (gRPC to an HTTP/2 instance).
    te_trailers: bool,
    /// What the route's auth verified.
    identity: Option<&'a Identity>,
    /// The verified client certificate's subject.
    client_cert: Option<&'a [u8]>,
    /// The instance's `traceparent`, when the gateway traces.
    traceparent: Option<&'a [u8]>,
}

/// What a request asks of its hop beyond its headers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Asks {
    /// It asks for an upgrade (one the operator allows), asked again on this hop.
    pub(super) upgrade: bool,
    /// `TE: trailers` is passed on (gRPC to an HTTP/2 instance).
    pub(super) te_trailers: bool,
}

/// An admitted request on hyper's side, ready to be sent: its head, where it goes, and what
/// the phases learned of it.
pub(super) struct Outgoing<'a> {
    pub(super) parts: &'a http::request::Parts,
    pub(super) client: SocketAddr,
    /// The host it was sent to, from the URI's authority or `Host`.
    pub(super) host: Option<&'a str>,
    pub(super) target: &'a Target,
    pub(super) identity: Option<&'a Identity>,
    pub(super) traceparent: Option<[u8; 55]>,
}

impl Outgoing<'_> {
    /// Where the request came from, and what it asks of this hop.
    pub(super) fn from(&self, Asks { upgrade, te_trailers }: Asks) -> From<'_> {
        let parts = self.parts;
        From {
            client: self.client,
            host: self.host,
            upgrade,
            scheme: parts.extensions.get::<Scheme>().copied().unwrap_or(Scheme::Http),
            port: parts.extensions.get::<LocalPort>().map_or(0, |p| p.0),
            te_trailers,
            identity: self.identity,
            client_cert: parts.extensions.get::<ClientCert>().map(|c| c.0.as_bytes()),
            traceparent: self.traceparent.as_ref().map(|t| &t[..]),
        }
    }
}

impl Proxy {
    /// The request as the instance receives it. Its URI is the origin-form path alone: the
    /// connection it goes out on is the picked instance's (see `pool.rs`), so nothing a client
    /// sends can choose another host or port.
    pub(super) fn upstream_request(
        &self,
        parts: &http::request::Parts,
        body: Body,
        target: &Target,
        address: &str,
        from: From<'_>,
    ) -> Request<Body> {
        let From {
            client,
            host: original_host,
            upgrade,
            scheme,
            port,
            te_trailers,
            identity,
            client_cert,
            traceparent,
        } = from;
        let old = &parts.headers;
        // The authority that was routed on (absolute-form or :authority before Host).
        let routed_authority = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| old.get(header::HOST).cloned());
        let ip = client.ip().to_canonical().to_string();
        let origin = Origin {
            peer: client.ip(),
            peer_text: &ip,
            scheme: scheme.as_str(),
            port,
            host: original_host,
            identity,
            client_cert,
            traceparent,
        };
        let actions = self.routes.router.header_actions(target).map(|(request, _)| request);
        let mut headers = http::HeaderMap::with_capacity(old.len() + 6);
        self.policy.request(map_lines(old).into_iter(), &origin, actions, &mut headers);
        // What the protocol itself dictates: an upgrade asked for again on this hop, and
        // `TE: trailers` to a gRPC server.
        if let (true, Some(proto)) = (upgrade, old.get(header::UPGRADE)) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto.clone());
        }
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let own_host = actions.is_none_or(|a| !a.drops(b"host"));
        let host = match routed_authority {
            Some(h) if self.settings.preserve_host => Some(h),
            _ => HeaderValue::from_str(address).ok(),
        };
        if let Some(h) = host.filter(|_| own_host) {
            headers.insert(header::HOST, h);
        }
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = http::Uri::from(target.path.clone());
        *req.headers_mut() = headers;
        req
    }
}
