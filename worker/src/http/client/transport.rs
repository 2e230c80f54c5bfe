//! How a service's instances are reached: HTTP/1.1 or HTTP/2, over plain TCP or TLS
//! (`protocol`, `upstream_tls`, `upstream_ca`, `upstream_sni` of `[services.NAME]`).
//!
//! Built once per worker from the configuration; only services that are not plain HTTP/1.1
//! have an entry, so the common path pays one failed map lookup. HTTP/1.1 over TLS is the
//! engine's own client's (a [`Wire`](super::wire::Wire)); HTTP/2 goes out on hyper's client,
//! from either side (the engine's HTTP/1.1 requests through its bridge, `h1/bridge.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::config::{Config, Protocol};

/// Why a service's transport cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("services.{service}: {why}")]
pub struct TransportError {
    service: String,
    why: String,
}

/// How one service's instances are reached.
#[derive(Debug)]
pub struct Transport {
    /// HTTP/1.1, or HTTP/2 (with or without TLS).
    pub protocol: Protocol,
    /// TLS, when the instances speak it.
    pub tls: Option<TlsClient>,
}

/// TLS toward instances.
#[derive(Clone)]
pub struct TlsClient {
    /// Roots, ALPN.
    pub config: Arc<rustls::ClientConfig>,
    /// The name to send and verify, instead of the address's host.
    pub sni: Option<String>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("sni", &self.sni).finish()
    }
}

impl TlsClient {
    /// The server name for an instance at `address` (`host:port`).
    pub fn server_name(&self, address: &str) -> Result<ServerName<'static>, String> {
        let host = match &self.sni {
            Some(sni) => sni.as_str(),
            None => address.rsplit_once(':').map_or(address, |(h, _)| h),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string()).map_err(|e| format!("bad TLS name {host:?}: {e}"))
    }
}

impl TlsClient {
    /// Opens a TLS session over `stream` to the instance at `address`, within `limit`.
    pub async fn handshake(
        &self,
        stream: tokio::net::TcpStream,
        address: &str,
        limit: std::time::Duration,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let name = self.server_name(address)?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        tokio::time::timeout(limit, connector.connect(name, stream))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))
    }
}

impl Transport {
    /// The pool key of a connection to `address` over this transport (plain HTTP/1.1 uses the
    /// address alone).
    pub fn key(&self, address: &str) -> String {
        let proto = match self.protocol {
            Protocol::Http1 => "h1",
            Protocol::H2c | Protocol::H2 => "h2",
        };
        format!("{proto}{}|{address}", if self.tls.is_some() { "s" } else { "" })
    }

    /// Whether requests go out as HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.protocol != Protocol::Http1
    }
}

/// Every service's transport, when it is not plain HTTP/1.1.
#[derive(Debug, Default)]
pub struct Transports {
    by_service: HashMap<String, Arc<Transport>>,
}

impl Transports {
    /// Builds the transports `config` asks for (reading CA files: the binary checks them at
    /// load, so a worker does not meet an unreadable one).
    pub fn from_config(config: &Config) -> Result<Self, TransportError> {
        let mut by_service = HashMap::new();
        for (name, s) in &config.services {
            if s.protocol == Protocol::Http1 && !s.tls() {
                continue;
            }
            let err = |why: String| TransportError { service: name.clone(), why };
            let tls = match s.tls() {
                true => {
                    let roots = roots(s.upstream_ca.as_deref()).map_err(err)?;
                    let provider = Arc::new(rustls::crypto::ring::default_provider());
                    let mut client = rustls::ClientConfig::builder_with_provider(provider)
                        .with_safe_default_protocol_versions()
                        .map_err(|e| err(e.to_string()))?
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                    client.alpn_protocols = match s.protocol {
                        Protocol::H2 => vec![b"h2".to_vec()],
                        _ => vec![b"http/1.1".to_vec()],
                    };
                    Some(TlsClient { config: Arc::new(client), sni: s.upstream_sni.clone() })
                }
                false => None,
            };
            by_service.insert(name.clone(), Arc::new(Transport { protocol: s.protocol, tls }));
        }
        Ok(Transports { by_service })
    }

    /// The transport of `service`; `None`: plain HTTP/1.1.
    pub fn get(&self, service: &str) -> Option<&Arc<Transport>> {
        if self.by_service.is_empty() {
            return None;
        }
        self.by_service.get(service)
    }
}

fn roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("upstream_ca {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("upstream_ca {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("upstream_ca {}: no certificate", path.display()));
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("upstream_ca {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err("upstream_tls: no system CA certificates found; set upstream_ca".into());
            }
        }
    }
    Ok(roots)
}
