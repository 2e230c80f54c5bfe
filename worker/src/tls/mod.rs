//! TLS termination: certificates chosen by SNI, ALPN `h2` / `http/1.1`, TLS 1.2 and 1.3, and
//! session tickets every worker of a gateway can open.
//!
//! Certificates are read and checked by the binary — at start, on `check` and on every reload,
//! in the supervisor — so a bad or missing file fails that step and the running workers keep
//! the certificates they have (the same rule as a bad `gateway.toml`); a worker only builds its
//! rustls configuration from what it was handed. The crypto provider is ring (see Cargo.toml).

pub mod tickets;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why the certificates cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM section.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The key does not belong to the certificate, or is of an unsupported type.
    #[error("{cert}: {why}")]
    Key {
        /// The certificate file.
        cert: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Config(String),
}

/// What a worker terminates TLS with: the certificates the binary loaded and checked (session
/// ticket keys live in the host's shared region, see `tickets`).
#[derive(Debug, Clone)]
pub struct Tls {
    /// The certificates.
    pub certificates: Arc<Certificates>,
}

/// One certificate (with its chain and key), as configured by a `[[tls]]` entry.
pub struct Certificate {
    /// The chain file it was read from.
    pub path: PathBuf,
    /// The DNS names it is valid for (SAN; the subject CN when there is no SAN).
    pub names: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
    key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("path", &self.path)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// The configured certificates, in file order: the first is the default for clients that
/// send no SNI or a name none of them carries.
#[derive(Debug)]
pub struct Certificates {
    /// Each certificate.
    pub list: Vec<Certificate>,
    /// Client certificates asked for and verified (`client_ca`).
    pub client: Option<ClientVerification>,
}

/// How client certificates are verified: the CAs they must chain to, the revocation lists,
/// and whether a client without one may connect.
pub struct ClientVerification {
    roots: Arc<rustls::RootCertStore>,
    crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
    /// A handshake without a valid certificate fails; else a client may present none.
    pub required: bool,
    /// SHA-256 of the CAs, the revocation lists and `required`: session tickets are bound to
    /// it, so a session verified under other settings is never resumed under these.
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for ClientVerification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerification")
            .field("cas", &self.roots.len())
            .field("crls", &self.crls.len())
            .field("required", &self.required)
            .finish()
    }
}

impl ClientVerification {
    /// Reads the CA file (PEM certificates) and the optional CRL file (PEM).
    pub fn load(ca: &Path, crl: Option<&Path>, required: bool) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        digest.update(b"zkgate client verification/1");
        digest.update(&[u8::from(required)]);
        for cert in read_chain(ca)? {
            digest.update(&(cert.len() as u64).to_be_bytes());
            digest.update(cert.as_ref());
            roots.add(cert).map_err(|e| TlsError::File {
                path: ca.to_path_buf(),
                why: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let crls = match crl {
            None => Vec::new(),
            Some(path) => {
                use rustls::pki_types::CertificateRevocationListDer as Crl;
                let bad = |why: String| TlsError::File { path: path.to_path_buf(), why };
                let crls: Vec<Crl<'static>> = Crl::pem_file_iter(path)
                    .map_err(|e| bad(format!("cannot read: {e}")))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(format!("bad PEM: {e}")))?;
                if crls.is_empty() {
                    return Err(bad("no revocation list in the file".into()));
                }
                crls
            }
        };
        for crl in &crls {
            digest.update(&(crl.as_ref().len() as u64).to_be_bytes());
            digest.update(crl.as_ref());
        }
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest.finish().as_ref());
        let roots = Arc::new(roots);
        let verification = ClientVerification { roots, crls, required, fingerprint };
        verification.verifier()?;
        Ok(verification)
    }

    fn verifier(&self) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider,
        )
        .with_crls(self.crls.iter().cloned());
        let builder = match self.required {
            true => builder,
            false => builder.allow_unauthenticated(),
        };
        builder.build().map_err(|e| TlsError::Config(format!("client certificates: {e}")))
    }
}

/// The subject of a certificate as RFC 4514 text, most specific first (`CN=client,O=Example`),
/// as nginx's `$ssl_client_s_dn`. `None`: not a certificate x509-parser reads.
pub fn subject(der: &CertificateDer<'_>) -> Option<Arc<str>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let mut parts = Vec::new();
    for rdn in cert.subject().iter_rdn() {
        let attrs: Vec<String> = rdn
            .iter()
            .map(|a| {
                let name = x509_parser::objects::oid2abbrev(a.attr_type(), registry)
                    .map_or_else(|_| a.attr_type().to_id_string(), str::to_string);
                format!("{name}={}", dn_value(a.attr_value()))
            })
            .collect();
        parts.push(attrs.join("+"));
    }
    parts.reverse();
    let text = parts.join(",");
    // A header value: visible ASCII only (other bytes are escaped above, controls dropped).
    Some(Arc::from(text.as_str()))
}

/// An attribute value as RFC 4514 §2.4 writes it: a directory string as its text (UTF-8,
/// BMPString's UTF-16 and UniversalString's UTF-32 alike — so `CN=alice` and `CN=bob` in
/// BMPString stay apart), escaped; anything else as `#` and the hex of its DER encoding.
/// Distinct values never share a text.
fn dn_value(v: &x509_parser::der_parser::asn1_rs::Any<'_>) -> String {
    use x509_parser::der_parser::asn1_rs::{Tag, ToDer};
    let data = v.data;
    let text = match v.tag() {
        Tag::NumericString | Tag::PrintableString | Tag::Utf8String | Tag::Ia5String => {
            std::str::from_utf8(data).ok().map(str::to_string)
        }
        Tag::BmpString if data.len().is_multiple_of(2) => {
            let units = data.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units).collect::<Result<String, _>>().ok()
        }
        Tag::UniversalString if data.len().is_multiple_of(4) => data
            .chunks(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect::<Option<String>>(),
        _ => None,
    };
    match text {
        Some(t) => escape_dn_value(&t),
        None => {
            let der = v.to_der_vec().unwrap_or_default();
            let hex: String = der.iter().map(|b| format!("{b:02X}")).collect();
            format!("#{hex}")
        }
    }
}

/// RFC 4514 §2.4 escaping, plus every byte outside printable ASCII as `\XX`.
fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, b) in v.bytes().enumerate() {
        let special = matches!(b, b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' | b'=')
            || (i == 0 && (b == b'#' || b == b' '))
            || (i + 1 == v.len() && b == b' ');
        if !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\{b:02X}"));
        } else if special {
            out.push('\\');
            out.push(b as char);
        } else {
            out.push(b as char);
        }
    }
    out
}

impl Certificates {
    /// Reads and checks `(chain, key)` file pairs: each chain parses, each key parses, is of a
    /// supported type and matches its certificate.
    pub fn load(pairs: &[(PathBuf, PathBuf)]) -> Result<Self, TlsError> {
        let provider = rustls::crypto::ring::default_provider();
        let mut list = Vec::new();
        for (cert_path, key_path) in pairs {
            let chain = read_chain(cert_path)?;
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::File {
                path: key_path.clone(),
                why: format!("no usable private key: {e}"),
            })?;
            let signing =
                provider.key_provider.load_private_key(key).map_err(|e| TlsError::Key {
                    cert: cert_path.clone(),
                    why: format!("key {}: {e}", key_path.display()),
                })?;
            let key = CertifiedKey::new(chain.clone(), signing);
            key.keys_match().map_err(|_| TlsError::Key {
                cert: cert_path.clone(),
                why: format!("key {} does not match the certificate", key_path.display()),
            })?;
            let (names, not_after) = describe(&chain[0])
                .map_err(|why| TlsError::File { path: cert_path.clone(), why })?;
            list.push(Certificate {
                path: cert_path.clone(),
                names,
                not_after,
                key: Arc::new(key),
            });
        }
        if list.is_empty() {
            return Err(TlsError::Config("no certificate".into()));
        }
        Ok(Certificates { list, client: None })
    }

    /// The rustls server configuration of a worker: SNI resolver, ALPN, shared tickets.
    pub fn server_config(
        &self,
        host: crate::host::Host,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client {
            Some(client) => builder.with_client_cert_verifier(client.verifier()?),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(SniResolver::new(self)));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Tickets are bound to the client-verification settings: after client_ca, client_crl
        // or client_auth change, an old ticket opens nothing and the client does a full
        // handshake, verified as the settings now say.
        let binding = self.client.as_ref().map_or([0u8; 32], |c| c.fingerprint);
        config.ticketer = Arc::new(tickets::SharedTicketer::new(host, binding));
        Ok(Arc::new(config))
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |why: String| TlsError::File { path: path.to_path_buf(), why };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("cannot read: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(chain)
}

/// The DNS names and expiry of a leaf certificate.
fn describe(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| format!("bad certificate: {e}"))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// Picks the certificate for a client's SNI: an exact name, then a wildcard one label up,
/// else the first certificate.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn new(certs: &Certificates) -> Self {
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        // Earlier entries win a name claimed twice, as the first certificate wins the default.
        for cert in certs.list.iter().rev() {
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.insert(parent.to_string(), cert.key.clone()),
                    None => exact.insert(name.clone(), cert.key.clone()),
                };
            }
        }
        SniResolver { exact, wildcard, default: certs.list[0].key.clone() }
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else { return self.default.clone() };
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        let parent = name.split_once('.').map(|(_, p)| p);
        parent.and_then(|p| self.wildcard.get(p)).unwrap_or(&self.default).clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate whose subject is `O=Example` and this CN value.
    fn cert_with_cn(cn: rcgen::DnValue) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Example");
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn subjects_follow_rfc_4514_and_never_collide() {
        let bmp = |s: &str| rcgen::DnValue::BmpString(s.try_into().unwrap());
        let universal = |s: &str| rcgen::DnValue::UniversalString(s.try_into().unwrap());
        let alice = subject(&cert_with_cn(bmp("alice"))).unwrap();
        let bob = subject(&cert_with_cn(bmp("bob"))).unwrap();
        assert_eq!(&*alice, "CN=alice,O=Example");
        assert_eq!(&*bob, "CN=bob,O=Example");
        assert_eq!(&*subject(&cert_with_cn(universal("carol"))).unwrap(), "CN=carol,O=Example");
        let utf8 = subject(&cert_with_cn(rcgen::DnValue::Utf8String("a,b".into()))).unwrap();
        assert_eq!(&*utf8, "CN=a\\,b,O=Example");
    }

    fn key(tag: u8) -> Arc<CertifiedKey> {
        // Only the identity of the Arc matters to these tests.
        let provider = rustls::crypto::ring::default_provider();
        let signing = rcgen_free_key(&provider);
        Arc::new(CertifiedKey::new(vec![CertificateDer::from(vec![tag])], signing))
    }

    fn rcgen_free_key(
        provider: &rustls::crypto::CryptoProvider,
    ) -> Arc<dyn rustls::sign::SigningKey> {
        // A fixed PKCS#8 Ed25519 key: enough for the resolver, which never signs here.
        const PKCS8: [u8; 48] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
            22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
        ];
        let der = PrivateKeyDer::Pkcs8(PKCS8.to_vec().into());
        provider.key_provider.load_private_key(der).expect("ed25519 key")
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first_certificate() {
        let (a, b, w) = (key(1), key(2), key(3));
        let resolver = SniResolver {
            exact: [("a.example".to_string(), a.clone()), ("b.example".to_string(), b.clone())]
                .into(),
            wildcard: [("example".to_string(), w.clone())].into(),
            default: a.clone(),
        };
        assert!(Arc::ptr_eq(&resolver.pick(Some("B.Example")), &b));
        assert!(Arc::ptr_eq(&resolver.pick(Some("c.example")), &w));
        assert!(
            Arc::ptr_eq(&resolver.pick(Some("x.c.example")), &a),
            "a wildcard covers one label"
        );
        assert!(Arc::ptr_eq(&resolver.pick(None), &a));
    }
}
