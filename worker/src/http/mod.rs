//! The request path: one pipeline of phases, two protocol sides as its adapters, one client
//! to instances.
//!
//! ```text
//! server::Server::accept_loop ─┬▶ h1::serve           the engine: every HTTP/1.1 request, plain and TLS
//!                              └▶ hyper::conn::serve  hyper: h2 (ALPN) and h2c (prior knowledge)
//!   both ─▶ pipeline: server_itself ─▶ route (router, edge rules, service) ─▶ admit (allow/deny,
//!           limits, auth) ─▶ their own head, body, forward (client) and answer relay ─▶ logging
//! ```
//! The core:
//! - [`pipeline`]: the phases every request goes through, written once over an `Exchange` both
//!   sides implement; a phase's error becomes the gateway's own answer ([`error`]) in one place.
//! - [`proxy`]: what a worker proxies with (`Proxy`, its parts: routes, gate, send, observe),
//!   the service a request goes to, its hash key, auth; `logging`: metrics and the access log.
//! - [`router`]: request → service and upstream path; [`limits`]: `[[rate_limit]]` and
//!   `max_requests`, exact across the host's workers.
//! - [`policy`]: the one header policy both sides follow, requests, answers and trailers;
//!   [`headers`]: its values (this gateway's `Via` entry, underscored names, request ids).
//! - [`lines`]: header lines as the policy reads and writes them (each line's kind decided
//!   once by its name; the sink the engine's head or hyper's map is).
//! - [`error`]: the gateway's own answers (JSON, or `grpc-status` for gRPC clients); [`grpc`]:
//!   which requests are gRPC, and their `grpc-timeout`.
//! - [`mirror`]: copies of a route's requests to a shadow service, never waited for;
//!   [`tunnel`]: upgraded connections (WebSocket) copied both ways, for both sides.
//! - [`eos`]: the one body wrapper that acts at a body's end ([`tee`], [`trailers`] build on it).
//! - [`edge`]: a route's edge rules — `allow`/`deny`, CORS, its redirect or fixed answer,
//!   compression — compiled once; [`own`]: the answers the gateway writes itself;
//!   [`compress`]: the coding a client takes, whether an answer is compressed, the encoder
//!   both sides drive.
//!
//! The protocol sides (adapters of the pipeline):
//! - [`h1`]: the engine — every HTTP/1.1 request, plain and TLS, bodies streamed both ways,
//!   upgrades into tunnels, HTTP/1.0 clients, requests to HTTP/2 instances (its bridge onto
//!   hyper's client); it hands [`hyper`](mod@hyper) only a connection that opens with h2c's
//!   preface, before anything was read as HTTP/1.1.
//! - [`hyper`](mod@hyper): hyper's side — one connection (`conn`: h2 or h2c; idle timeout,
//!   graceful end) and a request on hyper's types (`request`).
//!
//! The client to instances, [`client`]: picking and retrying (`forward`), the engine's own
//! HTTP/1.1 attempt (`h1`) over plain TCP or TLS (`wire`), hyper's client for HTTP/2 instances
//! and hyper's side (`upstream`, `transport`), the idle pool (`pool`), dialing with host names resolved and cached (`dial`),
//! a request counted in flight at its instance until its answer ends (`inflight`).
//!
//! Around them:
//! - [`server`]: accept loops on the slot's sockets, `max_connections`, the queue drain.
//! - [`connections`]: open client connections and tunnels, counted so a drain can wait for them.
//! - [`buffers`]: buffers lent to the engine's connections while they work.
//! - [`health_check`]: active HTTP probes of instances.

pub mod buffers;
pub mod client;
pub mod compress;
pub mod connections;
pub mod edge;
pub mod eos;
pub mod error;
pub mod grpc;
pub mod h1;
pub mod headers;
pub mod health_check;
pub mod host;
pub mod hyper;
pub mod limits;
pub mod lines;
mod logging;
pub mod mirror;
pub mod own;
pub mod pipeline;
#[cfg(test)]
mod pipeline_tests;
pub mod policy;
pub mod proxy;
pub mod router;
pub mod server;
pub mod target;
pub mod tee;
pub mod trailers;
pub mod tunnel;

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
