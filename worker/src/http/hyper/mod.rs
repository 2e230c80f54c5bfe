//! hyper's side: HTTP/2 from clients (h2 by ALPN, h2c with prior knowledge) and whatever the
//! engine hands over (heads hyper refuses, services whose instances speak HTTP/2 or
//! TLS), served by hyper's connection ([`conn`]) and turned into the shared core's phases on
//! hyper's types ([`request`]).

pub mod conn;
mod outgoing;
pub mod request;
