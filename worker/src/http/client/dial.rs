//! Connecting to an instance: an IP literal at once; a host name (Spring Cloud registers host
//! names unless `prefer-ip-address` is set, Kubernetes pods register DNS names) resolved off the
//! event loop (tokio's blocking pool runs `getaddrinfo`), cached for [`TTL`] (getaddrinfo gives
//! no TTL; the system's resolver caches below), its addresses tried in turn, and resolved again
//! at once after a connect failure. An address that cannot be an instance is refused after
//! resolution as before it: unspecified, multicast, broadcast, or one of the gateway's own
//! listeners (a request loop), in every spelling (IPv4-mapped IPv6 included).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

pub use crate::instance::{unusable, OwnAddresses};

/// How long a name's addresses are reused before it is resolved again.
pub const TTL: Duration = Duration::from_secs(30);

/// A name's addresses and when they were resolved.
struct Resolved {
    addrs: Vec<SocketAddr>,
    at: Instant,
    next: AtomicUsize,
}

/// Opens connections to instances for one worker.
pub struct Dialer {
    timeout: Duration,
    own: OwnAddresses,
    names: Mutex<HashMap<String, Arc<Resolved>>>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dialer({:?})", self.timeout)
    }
}

impl Dialer {
    /// Connections within `timeout`, never to `own`.
    pub fn new(timeout: Duration, own: OwnAddresses) -> Self {
        Dialer { timeout, own, names: Mutex::new(HashMap::new()) }
    }

    /// The connect timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Opens a TCP connection to `address` (`ip:port` or `name:port`) within the timeout, with
    /// `TCP_NODELAY`.
    pub async fn connect(&self, address: &str) -> std::io::Result<TcpStream> {
        let stream = match address.parse::<SocketAddr>() {
            Ok(addr) => self.connect_to(addr).await?,
            Err(_) => self.connect_name(address).await?,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect_to(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        tokio::time::timeout(self.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }

    /// A host name: its cached addresses (resolved again when stale), each tried in turn from
    /// the next one in rotation; every address failing drops the cache entry, so the next
    /// attempt resolves again.
    async fn connect_name(&self, address: &str) -> std::io::Result<TcpStream> {
        let resolved = self.resolve(address).await?;
        let n = resolved.addrs.len();
        let start = resolved.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for k in 0..n {
            match self.connect_to(resolved.addrs[(start + k) % n]).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        if let Ok(mut names) = self.names.lock() {
            names.remove(address);
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
    }

    async fn resolve(&self, address: &str) -> std::io::Result<Arc<Resolved>> {
        let cached = self.names.lock().ok().and_then(|n| n.get(address).cloned());
        if let Some(r) = cached.filter(|r| r.at.elapsed() < TTL) {
            return Ok(r);
        }
        let name = address.to_string();
        let lookup = tokio::net::lookup_host(name);
        let found: Vec<SocketAddr> = tokio::time::timeout(self.timeout, lookup)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "name lookup timed out")
            })??
            .collect();
        let usable: Vec<SocketAddr> = found
            .iter()
            .copied()
            .filter(|a| unusable(a.ip()).is_none() && !self.own.contains(*a))
            .collect();
        if usable.is_empty() {
            let why = match found.first() {
                None => format!("{address} resolves to no address"),
                Some(a) => match unusable(a.ip()) {
                    Some(why) => format!("{address} resolves to {a}, {why}"),
                    None => format!("{address} resolves to {a}, the gateway's own address"),
                },
            };
            return Err(std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, why));
        }
        let r = Arc::new(Resolved { addrs: usable, at: Instant::now(), next: AtomicUsize::new(0) });
        if let Ok(mut names) = self.names.lock() {
            names.insert(address.to_string(), r.clone());
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_addresses_match_in_every_spelling() {
        let own =
            OwnAddresses::new(["0.0.0.0:8080".parse().unwrap(), "127.0.0.1:9901".parse().unwrap()]);
        for a in [
            "127.0.0.1:8080",
            "[::ffff:127.0.0.1]:8080",
            "127.0.0.2:8080",
            "[::ffff:127.0.0.1]:9901",
        ] {
            assert!(own.contains(a.parse().unwrap()), "{a}");
        }
        assert!(!own.contains("127.0.0.1:8081".parse().unwrap()));
        assert!(!own.contains("10.0.0.1:9901".parse().unwrap()));
        assert_eq!(unusable("::ffff:0.0.0.0".parse().unwrap()), Some("an unspecified address"));
        assert_eq!(unusable("::ffff:224.0.0.1".parse().unwrap()), Some("a multicast address"));
    }

    #[tokio::test]
    async fn a_host_name_is_resolved_and_connected_and_its_own_address_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dialer = Dialer::new(Duration::from_secs(2), OwnAddresses::default());
        assert!(dialer.connect(&format!("localhost:{port}")).await.is_ok());
        let own = OwnAddresses::new([format!("127.0.0.1:{port}").parse().unwrap()]);
        let guarded = Dialer::new(Duration::from_secs(2), own);
        // Whatever else localhost resolves to (::1, where nothing listens), never our socket.
        assert!(guarded.connect(&format!("localhost:{port}")).await.is_err());
    }
}
