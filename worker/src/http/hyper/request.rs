//! hyper's side of the pipeline (`pipeline.rs`): a request that arrived over HTTP/2 (h2, h2c)
//! or was handed over by the engine, on hyper's types. The phases (loop check, route, limits,
//! auth) are the pipeline's; what is hyper's is below.
//!
//! ```text
//! handle ─▶ proxy ─┬─ request_filter     CONNECT, OPTIONS *, non-path targets, codings
//!                  ├─ pipeline::route, pipeline::admit
//!                  ├─ upgrade            the tunnel's permit
//!                  ├─ request_body       the body, capped at max_body_bytes; mirror
//!                  ├─ forward            upstream_request (Policy::request), send, retry
//!                  └─ respond            Policy::response; 101 → tunnel
//!        ─▶ Proxy::refuse              the gateway's own answer when a phase failed
//!        ─▶ log_request                metrics and the access log
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::http::client::forward::{Answered, Replay};
use crate::http::client::inflight::in_flight_body;
use crate::http::client::pool::Lease;
use crate::http::client::upstream::{sent_body, BodySent, ClientBodyError, UpstreamError};
use crate::http::compress::{answer_head, Coding, CompressRule, Compressed};
use crate::http::connections::{ConnGuard, ConnPermit, LocalPort, Scheme};
use crate::http::error::ProxyError;
use crate::http::grpc;
use crate::http::hyper::outgoing::{Asks, Outgoing};
use crate::http::mirror::MirrorCopy;
use crate::http::pipeline::{self, Admitted, Exchange};
use crate::http::policy::{map_lines, status_allows_length, Line};
use crate::http::proxy::{Proxy, RequestLine, Trace};
use crate::http::router::{request_host, HeaderActions, HyperRequest, RequestView};
use crate::http::tunnel::{is_upgrade, tunnel};
use crate::http::{Body, BoxError};
use crate::table::Service;

/// A requested upgrade: the client's side, and the permit its tunnel will hold (taken from
/// the connection, which gets it back if the instance refuses).
struct Upgrade {
    client_side: hyper::upgrade::OnUpgrade,
    permit: OwnedSemaphorePermit,
    conn: Option<ConnPermit>,
}

/// A request's head as the phases read it: hyper's [`Exchange`].
pub(crate) struct OnHyper<'a> {
    pub(crate) req: HyperRequest<'a>,
    pub(crate) method: &'a Method,
    pub(crate) client: SocketAddr,
    /// `http` or `https`, and the gateway's port.
    pub(crate) came_by: (&'static str, u16),
}

impl RequestView for OnHyper<'_> {
    fn path(&self) -> &str {
        self.req.path()
    }
    fn query(&self) -> Option<&str> {
        self.req.query()
    }
    fn path_and_query(&self) -> http::uri::PathAndQuery {
        self.req.path_and_query()
    }
    fn host(&self) -> Option<&str> {
        self.req.host()
    }
    fn header(&self, name: &http::HeaderName) -> Option<&[u8]> {
        self.req.header(name)
    }
    fn headers<'a>(&'a self, name: &'a http::HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.req.headers(name)
    }
}

impl Exchange for OnHyper<'_> {
    fn lines(&self) -> impl Iterator<Item = Line<'_>> + Clone {
        map_lines(self.req.headers).into_iter()
    }
    fn declared_length(&self) -> Option<u64> {
        let length = self.req.headers.get(header::CONTENT_LENGTH)?;
        length.to_str().ok()?.trim().parse().ok()
    }
    fn method(&self) -> &str {
        self.method.as_str()
    }
    fn client(&self) -> SocketAddr {
        self.client
    }
    fn came_by(&self) -> (&'static str, u16) {
        self.came_by
    }
}

impl Proxy {
    /// Answers one client request; never fails (errors are answered with their status).
    pub async fn handle(&self, req: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        let _active = self.send.forwarder.active();
        let (method, path, started) =
            (req.method().clone(), req.uri().path().to_string(), Instant::now());
        let line = RequestLine { method: method.as_str(), path: &path, client, started };
        let mut trace = Trace {
            span: self
                .observe
                .tracer
                .as_ref()
                .map(|t| t.begin(|n| req.headers().get(n).map(|v| v.as_bytes()))),
            bytes_in: req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.trim().parse().ok())
                .unwrap_or(0),
            ..Trace::default()
        };
        let grpc = grpc::is_grpc(req.headers());
        let resp = match self.proxy(req, client, &mut trace).await {
            Ok(resp) => resp,
            Err(e) => self.refuse(e, &line, grpc).into_response(),
        };
        // The length: declared, or known from the body (the gateway's own answers).
        let exact = resp.body().size_hint().exact().map(|n| n.to_string());
        let bytes = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
        self.log_request(&line, &trace, resp.status(), bytes.or(exact.as_deref()));
        resp
    }

    /// The pipeline's phases, then hyper's side: body, mirror, forward, respond.
    async fn proxy(
        &self,
        mut req: Request<Incoming>,
        client: SocketAddr,
        trace: &mut Trace,
    ) -> Result<Response<Body>, ProxyError> {
        self.request_filter(&req)?;
        let host = request_host(req.uri(), req.headers());
        let view = HyperRequest { uri: req.uri(), headers: req.headers(), host: host.as_deref() };
        let scheme = req.extensions().get::<Scheme>().copied().unwrap_or(Scheme::Http);
        let port = req.extensions().get::<LocalPort>().map_or(0, |p| p.0);
        let came_by = (scheme.as_str(), port);
        let view = OnHyper { req: view, method: req.method(), client, came_by };
        if let Some(answer) = pipeline::server_itself(self, &view)? {
            return Ok(answer.into_response());
        }
        let routed = pipeline::route(self, &view, trace)?;
        let admitted = pipeline::admit(self, &view, routed).await?;
        let Admitted { target, service, identity, key, in_flight, answer_actions, coding } =
            admitted;
        let upgrade = self.upgrade(&mut req)?;
        let (parts, body) = req.into_parts();
        let bodiless = body_is_empty(&parts.headers, &body);
        let outgoing = Outgoing {
            parts: &parts,
            client,
            host: host.as_deref(),
            target: &target,
            identity: identity.as_ref(),
            traceparent: trace.traceparent(),
        };
        // The copy's head: what the primary gets, but Host (set per shadow instance).
        let copy_head = || {
            let from = outgoing.from(Asks { upgrade: false, te_trailers: false });
            let mut req = self.upstream_request(&parts, empty(), &target, "", from);
            req.headers_mut().remove(header::HOST);
            let (method, path) = (parts.method.clone(), target.path.clone());
            MirrorCopy {
                method,
                path,
                headers: std::mem::take(req.headers_mut()),
                body: Bytes::new(),
            }
        };
        if upgrade.is_none() && bodiless {
            self.mirror(&target, |_| Some(copy_head()));
        }
        let mut body = self.request_body(body);
        if upgrade.is_none() && !bodiless {
            // A body streams: the copy leaves once the primary has had all of it.
            body = self.mirror_streamed(&target, body, copy_head);
        }
        // A request without a body can be sent again; one with a body cannot (it streams).
        let replay = Replay::for_request(&parts.method, bodiless && upgrade.is_none());
        let sent = (&outgoing, body, upgrade.is_some());
        let answered = self.forward(sent, (&service, key), replay, trace).await?;
        let route = self.routes.router.header_actions(&target).map(|(_, response)| response);
        // A HEAD's answer has no body to compress.
        let squeeze = coding
            .filter(|_| parts.method != Method::HEAD)
            .and_then(|c| self.routes.edge(&target)?.compress.as_ref().map(|rule| (rule, c)));
        let answering = (answer_actions.as_deref().or(route), squeeze);
        let resp = self.respond(answered, parts.version, upgrade, answering);
        // Counted in flight (max_requests) until the answer's body is done.
        Ok(match in_flight {
            Some(guard) => resp.map(|b| crate::http::hold(b, guard)),
            None => resp,
        })
    }

    /// The upgrade a request asks for, when the operator allows its protocol. A tunnel outlives
    /// this HTTP exchange: it takes over the connection's max_connections permit, so upgraded
    /// connections never exceed the limit.
    fn upgrade(&self, req: &mut Request<Incoming>) -> Result<Option<Upgrade>, ProxyError> {
        let allowed = req.headers().get(header::UPGRADE).is_some_and(|v| {
            crate::http::policy::upgrade_allowed(v.as_bytes(), &self.settings.upgrade_protocols)
        });
        if !(is_upgrade(req) && allowed) {
            return Ok(None);
        }
        let conn = req.extensions().get::<ConnPermit>().cloned();
        let own = conn.as_ref().and_then(ConnPermit::take);
        let permit = own.or_else(|| self.send.connections.try_permit()).ok_or(
            ProxyError::Refused(StatusCode::SERVICE_UNAVAILABLE, "connection limit reached"),
        )?;
        Ok(Some(Upgrade { client_side: hyper::upgrade::on(req), permit, conn }))
    }

    /// Sends the request to an instance of `service` with hyper's client (its transport: plain
    /// HTTP/1.1, TLS, HTTP/2), retrying what `replay` allows; a gRPC client's deadline bounds
    /// the wait for the answer (the instance sees the same grpc-timeout and enforces it too).
    async fn forward<'s>(
        &self,
        (outgoing, body, upgrade): (&Outgoing<'_>, Body, bool),
        (service, key): (&'s Arc<Service>, Option<u64>),
        replay: Replay,
        trace: &mut Trace,
    ) -> Result<Answered<'s, (Response<Incoming>, Lease)>, ProxyError> {
        let parts = outgoing.parts;
        let transport = self.send.transports.get(&service.name);
        // `TE: trailers` is how a gRPC client says it reads trailers; an HTTP/2 instance (a gRPC
        // server) is told the same. Any other TE value stays on its hop.
        let te_trailers = transport.is_some_and(|t| t.is_h2())
            && parts.headers.get(header::TE).is_some_and(|v| {
                v.to_str()
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
            });
        let mut body = Some(body);
        let upstream = self.send.forwarder.upstream();
        let attempt = |address, _| {
            let b = body.take().unwrap_or_else(empty);
            let from = outgoing.from(Asks { upgrade, te_trailers });
            let req = self.upstream_request(parts, b, outgoing.target, address, from);
            // A request with a body is watched for its end; one without is complete already.
            let sent = (!req.body().is_end_stream()).then(|| Arc::new(BodySent::default()));
            let req = match &sent {
                Some(sent) => req.map(|b| sent_body(b, sent.clone()).boxed()),
                None => req,
            };
            (upstream.request(transport.map(|t| &**t), address, req), sent)
        };
        let forward =
            self.send.forwarder.forward(service, key, replay, attempt, &mut trace.attempts);
        match grpc::timeout(&parts.headers) {
            Some(limit) => tokio::time::timeout(limit, forward).await.map_err(|_| {
                ProxyError::Upstream(service.name.clone(), UpstreamError::Timeout(limit))
            })?,
            None => forward.await,
        }
    }

    /// What hyper's side refuses before the pipeline (the engine refuses it as it parses).
    fn request_filter(&self, req: &Request<Incoming>) -> Result<(), ProxyError> {
        if let Some(te) = req.headers().get(header::TRANSFER_ENCODING) {
            // Only chunked may be de-framed and re-framed; forwarding "gzip, chunked" as chunked
            // would hand the instance a body in a coding it was never told about.
            if !te.to_str().is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked")) {
                return Err(ProxyError::Refused(
                    StatusCode::NOT_IMPLEMENTED,
                    "transfer codings other than chunked are not supported",
                ));
            }
        }
        Ok(())
    }

    /// The client's body, capped at `max_body_bytes` (a declared length over it was refused
    /// by the pipeline before this).
    fn request_body(&self, body: Incoming) -> Body {
        // Tag the client's own body errors, so a malformed upload is the client's 400, not the
        // instance's 502 (and does not count against the instance).
        let body = body.map_err(|e| BoxError::from(ClientBodyError(e)));
        match usize::try_from(self.settings.max_body_bytes).unwrap_or(usize::MAX) {
            0 => body.boxed(),
            limit => http_body_util::Limited::new(body, limit).boxed(),
        }
    }

    /// The response as the client receives it.
    fn respond(
        &self,
        answered: Answered<'_, (Response<Incoming>, Lease)>,
        version: http::Version,
        upgrade: Option<Upgrade>,
        (actions, squeeze): (Option<&HeaderActions>, Option<(&CompressRule, Coding)>),
    ) -> Response<Body> {
        let Answered { response: (response, lease), address, mut inflight } = answered;
        inflight.hold(lease);
        let (mut parts, body) = response.into_parts();
        // The client speaks its own HTTP version with us, whatever the instance spoke.
        parts.version = version;
        let upgraded = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        if upgraded {
            inflight.detach_connection();
            if let Some(Upgrade { client_side, permit, .. }) = upgrade {
                let mut up = Response::from_parts(parts.clone(), ());
                let upstream_side = hyper::upgrade::on(&mut up);
                let open =
                    (ConnGuard::new(self.send.connections.clone(), self.observe.metrics), permit);
                let idle = self.settings.idle_timeout;
                let address = address.to_string();
                tokio::spawn(tunnel(client_side, upstream_side, address, open, idle));
            }
        } else if let Some(Upgrade { permit, conn: Some(conn), .. }) = upgrade {
            // No tunnel after all: the connection goes on and keeps its permit.
            conn.put_back(permit);
        }
        let old = std::mem::take(&mut parts.headers);
        let encoder = squeeze
            .filter(|(rule, _)| rule.takes(&answer_head(parts.status, &old)))
            .and_then(|(rule, coding)| Some((rule.encoder(coding).ok()?, coding)));
        // A length beside chunked framing is the instance's contradiction; hyper read the
        // body as chunked (RFC 9112 §6.3), so the length would cut it short. A compressed
        // body's length is another.
        let keep_length = status_allows_length(parts.status.as_u16())
            && !old.contains_key(header::TRANSFER_ENCODING)
            && encoder.is_none();
        let lines = map_lines(&old);
        self.policy.response(
            lines.into_iter(),
            keep_length,
            (actions, address),
            &mut parts.headers,
        );
        if upgraded {
            // 101 names the protocol switched to on this hop too.
            for name in [header::CONNECTION, header::UPGRADE] {
                if let Some(v) = old.get(&name) {
                    parts.headers.insert(name, v.clone());
                }
            }
        }
        let mut body = in_flight_body(body, inflight).map_err(BoxError::from).boxed();
        if let Some((encoder, coding)) = encoder {
            parts
                .headers
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
            body = Compressed::new(body, encoder).boxed();
        }
        Response::from_parts(parts, body)
    }
}

fn empty() -> Body {
    http_body_util::Empty::<bytes::Bytes>::new().map_err(|never| match never {}).boxed()
}

/// Whether a request has no body: its stream ended with its headers (HTTP/2), it came with no
/// framing (HTTP/1.1), or it declares a length of 0. The headers alone cannot tell: an HTTP/2
/// body needs no `content-length`, and a streamed upload taken for bodiless would be retried
/// without its body, or mirrored without it.
fn body_is_empty(headers: &http::HeaderMap, body: &Incoming) -> bool {
    use hyper::body::Body as _;
    body.is_end_stream()
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) == Some(0))
}
