//! The leaf type of the data plane: one upstream instance (address and weight).
//!
//! Everything may import it and it imports nothing of the crate (Pingora's `Backend`): the
//! balancers, the registry formats, the configuration and the route table all speak of it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One upstream instance: where to send requests and how much traffic it takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Instance {
    /// `host:port` (an IP address or a name resolved when connecting).
    pub address: String,
    /// Relative share of traffic for the weighted strategies; 0 means no traffic.
    pub weight: u32,
}

impl Instance {
    /// An instance with weight 1.
    pub fn new(address: impl Into<String>) -> Self {
        Instance { address: address.into(), weight: 1 }
    }

    /// Checks that `address` is a `host:port` authority usable in an upstream URI.
    pub fn validate(address: &str) -> Result<(), String> {
        let auth: http::uri::Authority =
            address.parse().map_err(|e| format!("invalid address {address:?}: {e}"))?;
        if auth.port_u16().is_none() {
            return Err(format!("invalid address {address:?}: a port is required (host:port)"));
        }
        if auth.as_str().contains('@') {
            return Err(format!("invalid address {address:?}: user info is not allowed"));
        }
        Ok(())
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

/// Config form: `"10.0.0.5:80"` or `{ address = "10.0.0.5:80", weight = 3 }`.
impl<'de> Deserialize<'de> for Instance {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Plain(String),
            Full {
                address: String,
                #[serde(default = "one")]
                weight: u32,
            },
        }
        fn one() -> u32 {
            1
        }
        let (address, weight) = match Form::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "an instance is \"host:port\" or { address = \"host:port\", weight = N }",
            )
        })? {
            Form::Plain(a) => (a, 1),
            Form::Full { address, weight } => (address, weight),
        };
        Instance::validate(&address).map_err(serde::de::Error::custom)?;
        Ok(Instance { address, weight })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_addresses_must_carry_a_port_and_no_userinfo() {
        assert!(Instance::validate("10.0.0.1:80").is_ok());
        assert!(Instance::validate("backend.local:8080").is_ok());
        assert!(Instance::validate("[::1]:8080").is_ok());
        assert!(Instance::validate("10.0.0.1").is_err());
        assert!(Instance::validate("user@evil:80").is_err());
        assert!(Instance::validate("a b:80").is_err());
    }
}
