//! The request path, in the order a request meets it:
//!
//! ```text
//! server::Server::accept_loop ─▶ h1::serve (the engine: HTTP/1.1, plain and TLS)
//!                            └▶ conn::serve (hyper: h2, h2c; what the engine hands over)
//!   conn::serve (limits, idle, drain) ─▶ proxy::Proxy::handle
//!   handle ─▶ proxy ─▶ answer_error ─▶ log_request
//!   proxy  ─▶ route (router) ─▶ service (table) ─▶ forward (pick, upstream_request, retry) ─▶ respond
//! ```
//! - [`buffers`]: buffers lent to the engine's connections while they work.
//! - [`connections`]: open client connections and tunnels, counted so a drain can wait for them.
//! - [`server`]: accept loops on the slot's sockets, `max_connections`, the queue drain.
//! - [`h1`]: the engine — every HTTP/1.1 request, plain and TLS, bodies streamed both ways,
//!   upgrades into tunnels; it hands HTTP/1.0, h2c and heads hyper refuses (and their
//!   connection) to [`conn`].
//! - [`policy`]: the one header policy both protocol sides follow, requests and answers.
//! - [`conn`]: one client connection on hyper (HTTP/1.1 or h2c), its idle timeout and graceful
//!   end.
//! - [`proxy`]: the request path as named phases.
//! - [`forward`]: picking an instance, sending, retrying what is safe to retry, outlier records.
//! - [`limits`]: `[[rate_limit]]` and `max_requests`, exact across the host's workers.
//! - [`router`]: request → service and upstream path.
//! - [`headers`]: the policy's values: this gateway's `Via` entry, underscored names, request ids.
//! - [`upstream`]: the client to instances, its error classes and timeouts.
//! - [`transport`]: per service, HTTP/1.1 or HTTP/2 (h2c, h2) and TLS toward instances.
//! - [`pool`]: the worker's own pool of HTTP/1.1 connections to instances.
//! - [`tunnel`]: upgraded connections (WebSocket) copied both ways, for both sides.
//! - [`error`]: the gateway's own answers (JSON, or `grpc-status` for gRPC clients).
//! - [`grpc`]: which requests are gRPC, and their `grpc-timeout`.
//! - [`health_check`]: active HTTP probes of instances.

pub mod buffers;
pub mod conn;
pub mod connections;
pub mod error;
pub mod forward;
pub mod grpc;
pub mod h1;
pub mod headers;
pub mod health_check;
pub mod limits;
mod logging;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod router;
pub mod server;
pub mod transport;
pub mod tunnel;
pub mod upstream;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

/// Error type of bodies passing through the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of requests to instances and of responses to clients.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body that holds `T` (a guard: a request counted open, in flight) until the body is done
/// or dropped.
pub fn hold<T: Send + Sync + Unpin + 'static>(body: Body, held: T) -> Body {
    use http_body_util::BodyExt;
    Held { inner: body, _held: held }.boxed()
}

struct Held<T> {
    inner: Body,
    _held: T,
}

impl<T: Unpin> hyper::body::Body for Held<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
