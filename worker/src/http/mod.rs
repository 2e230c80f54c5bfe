//! The request path: a shared core beside two protocol sides.
//!
//! ```text
//! server::Server::accept_loop ─┬▶ h1::serve        the engine: every HTTP/1.1 request, plain and TLS
//!                              └▶ h2::conn::serve  hyper: h2, h2c, and what the engine hands over
//!   both ─▶ core: route (router) ─▶ service (proxy) ─▶ limits ─▶ policy ─▶ forward ─▶ answer
//! ```
//! The shared core:
//! - [`proxy`]: what a worker proxies with, the service a request goes to, its hash key, the
//!   gateway's own answers (rendered by [`error`]); `logging`: metrics and the access log.
//! - [`router`]: request → service and upstream path.
//! - [`limits`]: `[[rate_limit]]` and `max_requests`, exact across the host's workers.
//! - [`policy`]: the one header policy both sides follow, requests and answers; [`headers`]:
//!   its values (this gateway's `Via` entry, underscored names, request ids).
//! - [`forward`]: picking an instance, sending, retrying what is safe to retry, outlier records;
//!   [`inflight`]: a request counted against its instance until its answer's body ends.
//! - [`error`]: the gateway's own answers (JSON, or `grpc-status` for gRPC clients); [`grpc`]:
//!   which requests are gRPC, and their `grpc-timeout`.
//! - [`mirror`]: copies of a route's requests to a shadow service, never waited for.
//! - [`tunnel`]: upgraded connections (WebSocket) copied both ways, for both sides.
//!
//! The protocol sides:
//! - [`h1`]: the engine — every HTTP/1.1 request, plain and TLS, bodies streamed both ways,
//!   upgrades into tunnels, HTTP/1.0 clients; it hands h2c and heads hyper refuses to [`h2`].
//! - [`h2`]: hyper's side — one connection (`conn`: h2, h2c or handed over; idle timeout,
//!   graceful end) and the phases of a request on hyper's types (`request`).
//!
//! Around them:
//! - [`server`]: accept loops on the slot's sockets, `max_connections`, the queue drain.
//! - [`connections`]: open client connections and tunnels, counted so a drain can wait for them.
//! - [`buffers`]: buffers lent to the engine's connections while they work.
//! - [`upstream`], [`transport`], [`pool`]: the client to instances (HTTP/1.1 pool, HTTP/2,
//!   TLS), its error classes and timeouts; [`dial`]: connecting, host names resolved and cached.
//! - [`health_check`]: active HTTP probes of instances.

pub mod buffers;
pub mod connections;
pub mod dial;
pub mod eos;
pub mod error;
pub mod forward;
pub mod grpc;
pub mod h1;
pub mod h2;
pub mod headers;
pub mod health_check;
pub mod host;
pub mod inflight;
pub mod limits;
mod logging;
pub mod mirror;
pub mod pipeline;
#[cfg(test)]
mod pipeline_tests;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod router;
pub mod server;
pub mod target;
pub mod tee;
pub mod trailers;
pub mod transport;
pub mod tunnel;
pub mod upstream;

#[cfg(test)]
mod testing;

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
    eos::Watched::new(body, eos::Holding(Some(held))).boxed()
}
