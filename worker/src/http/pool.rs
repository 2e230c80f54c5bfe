//! The worker's own pool of HTTP/1.1 connections to instances, on hyper's connection API.
//!
//! Each worker is one thread, so the pool is a plain map of idle senders per instance address
//! behind an uncontended lock — no hashing of URI keys byte by byte, no per-request re-insertion
//! (hyper-util's legacy pool cost ~11 000 instructions per request). A connection goes back to
//! the pool only once its response body was read to the end; a connection the instance closed
//! is dropped at checkout; idle ones expire after `idle_timeout`, swept in the background.
//! A request that found its pooled connection closed before a byte was written is sent again on
//! a fresh connection (whatever its method: the instance never saw it).

use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http::Body;

/// Idle connections by instance address.
pub struct Pool {
    idle: Mutex<FxHashMap<String, Vec<Idle>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_instance: usize,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// Why a connection could not be had.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP connect failed or timed out.
    Connect(std::io::Error),
    /// The HTTP/1.1 handshake failed.
    Handshake(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Connect(e) => write!(f, "{e}"),
            ConnectError::Handshake(e) => write!(f, "handshake: {e}"),
        }
    }
}

/// A connection lent to one request: back to the pool when [`Lease::reusable`] was called
/// (the response was read to its end), closed otherwise.
pub struct Lease {
    pool: Arc<Pool>,
    address: String,
    sender: Option<SendRequest<Body>>,
    reusable: bool,
}

impl Lease {
    /// The response was read completely: the connection may serve another request.
    pub fn reusable(&mut self) {
        self.reusable = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (true, Some(sender)) = (self.reusable, self.sender.take()) {
            self.pool.checkin(std::mem::take(&mut self.address), sender);
        }
    }
}

impl Pool {
    /// An empty pool; its sweeper runs on the current runtime for as long as the pool lives.
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            idle: Mutex::new(FxHashMap::default()),
            connect_timeout,
            idle_timeout,
            max_idle_per_instance: max_idle.max(1),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Sends `req` (origin-form URI, Host set) to `address` on a pooled or new connection.
    pub async fn send(
        self: &Arc<Self>,
        address: &str,
        req: Request<Body>,
    ) -> Result<(http::Response<Incoming>, Lease), SendError> {
        let mut req = req;
        let mut pooled = self.take_idle(address);
        loop {
            let (mut sender, reused) = match pooled.take() {
                Some(s) => (s, true),
                None => (self.connect(address).await.map_err(SendError::Connect)?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        pool: self.clone(),
                        address: address.to_string(),
                        sender: Some(sender),
                        reusable: false,
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Unsent on a reused connection the instance had closed: once more, on
                    // another pooled connection or a fresh one.
                    Some(unsent) if reused => {
                        req = unsent;
                        pooled = self.take_idle(address);
                    }
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    fn take_idle(&self, address: &str) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(address)?;
        while let Some(entry) = list.pop() {
            if !entry.sender.is_closed()
                && entry.sender.is_ready()
                && entry.since.elapsed() < self.idle_timeout
            {
                return Some(entry.sender);
            }
        }
        None
    }

    fn checkin(&self, address: String, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else { return };
        let list = idle.entry(address).or_default();
        if list.len() < self.max_idle_per_instance {
            list.push(Idle { sender, since: Instant::now() });
        }
    }

    async fn connect(&self, address: &str) -> Result<SendRequest<Body>, ConnectError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| ConnectError::Connect(std::io::ErrorKind::TimedOut.into()))?
            .map_err(ConnectError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) =
            http1::handshake(TokioIo::new(stream)).await.map_err(ConnectError::Handshake)?;
        // with_upgrades: a 101 answer hands the connection to a tunnel.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                log::debug!("upstream connection closed: {e}");
            }
        });
        Ok(sender)
    }
}

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection (nothing was sent).
    Connect(ConnectError),
    /// The exchange failed.
    Http(hyper::Error),
}

/// Drops idle connections older than `idle_timeout`, every half of it, while the pool lives.
async fn sweep(pool: Weak<Pool>) {
    let period = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 2).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        let Ok(mut idle) = pool.idle.lock() else { return };
        let limit = pool.idle_timeout;
        idle.retain(|_, list| {
            list.retain(|e| !e.sender.is_closed() && e.since.elapsed() < limit);
            !list.is_empty()
        });
    }
}
