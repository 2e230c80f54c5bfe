//! Signing keys for the tests' JWTs (ES256 and EdDSA, generated per test) with their public
//! JWKs, and the claims an issuer writes.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key and its public JWK.
pub struct Key {
    pub kid: &'static str,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: serde_json::Value,
}

impl Key {
    pub fn es256(kid: &'static str) -> Key {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        assert_eq!(raw.len(), 65, "uncompressed P-256 point");
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64url(&raw[1..33]), "y": b64url(&raw[33..]),
        });
        let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        Key { kid, alg: Algorithm::ES256, encoding, jwk }
    }

    pub fn ed25519(kid: &'static str) -> Key {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let jwk = serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64url(pair.public_key_raw()),
        });
        let encoding = EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap();
        Key { kid, alg: Algorithm::EdDSA, encoding, jwk }
    }

    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn claims(sub: &str, aud: &str, exp_from_now: i64) -> serde_json::Value {
    serde_json::json!({
        "sub": sub,
        "iss": "https://issuer.test/",
        "aud": aud,
        "exp": now() as i64 + exp_from_now,
        "email": format!("{sub}@example.test"),
    })
}

/// A JWKS document with these keys.
pub fn jwks(keys: &[&Key]) -> serde_json::Value {
    serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}
