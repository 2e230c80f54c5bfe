//! Test certificates: a CA and leaves it signs (rcgen), written to a temporary directory, and
//! rustls client configurations that trust the CA.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

/// A test CA and what it signed.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

/// A leaf certificate written to files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "zkgate test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { dir: tempfile::tempdir().unwrap(), ca, ca_key }
    }

    /// A leaf for `names` (DNS names or IP addresses), written as `<file>.pem` / `<file>.key`.
    pub fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (cert_path, key_path) = (
            self.dir.path().join(format!("{file}.pem")),
            self.dir.path().join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf { cert: cert_path, key: key_path, der: cert.der().clone() }
    }

    pub fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// The CA certificate as a PEM file, for configurations that name one.
    pub fn ca_file(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }
}
