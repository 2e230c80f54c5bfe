//! The client to instances, the one every side's requests leave by: [`forward`] picks an
//! instance, makes attempts and retries what is safe to retry (outlier records, budgets);
//! an attempt is the engine's own HTTP/1.1 exchange ([`h1`]) for instances over plain TCP or
//! TLS ([`wire`]), and hyper's client ([`upstream`]) for HTTP/2 instances ([`transport`]) and
//! the requests of hyper's side.
//! Connections come from [`dial`] (host names resolved and cached, `connect_timeout`) and go
//! back to [`pool`] when their answer ended where its framing said; [`inflight`] counts a
//! request against its instance until its answer's body ends.

pub mod dial;
pub mod forward;
pub mod h1;
pub mod inflight;
pub mod pool;
pub mod transport;
pub mod upstream;
pub mod wire;
