//! The leaf type of the data plane: one upstream instance (address and weight).
//!
//! Everything may import it and it imports nothing of the crate (Pingora's `Backend`): the
//! balancers, the registry formats, the configuration and the route table all speak of it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// One upstream instance: where to send requests and how much traffic it takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Instance {
    /// `host:port` (an IP address or a name resolved when connecting).
    pub address: String,
    /// Relative share of traffic for the weighted strategies; 0 means no traffic.
    pub weight: u32,
    /// When it registered (ms since the epoch; 0: unknown): slow start ramps from here.
    #[serde(skip)]
    pub since_ms: u64,
    /// Its own warm-up (ms; 0: the service's `slow_start`), as a Dubbo provider's `warmup`.
    #[serde(skip)]
    pub warmup_ms: u64,
}

impl Instance {
    /// An instance with weight 1.
    pub fn new(address: impl Into<String>) -> Self {
        Instance { address: address.into(), weight: 1, since_ms: 0, warmup_ms: 0 }
    }

    /// An instance with `weight`.
    pub fn weighted(address: impl Into<String>, weight: u32) -> Self {
        Instance { weight, ..Instance::new(address) }
    }

    /// The same instance, registered at `since_ms` with its own warm-up of `warmup_ms`.
    pub fn ramping(self, since_ms: u64, warmup_ms: u64) -> Self {
        Instance { since_ms, warmup_ms, ..self }
    }

    /// Its weight `now_ms` under a slow start of `slow_start_ms` (its own warm-up first): ramped
    /// linearly from its registration, scaled by `scale` so a ramp shows even at weight 1;
    /// `None` once ramped up (or never ramping).
    pub fn ramp_weight(&self, now_ms: u64, slow_start_ms: u64, scale: u32) -> Option<u32> {
        let ramp = if self.warmup_ms > 0 { self.warmup_ms } else { slow_start_ms };
        if ramp == 0 || self.since_ms == 0 || self.weight == 0 {
            return None;
        }
        let elapsed = now_ms.saturating_sub(self.since_ms);
        if elapsed >= ramp {
            return None;
        }
        let full = u64::from(self.weight) * u64::from(scale);
        Some(((full * elapsed / ramp).max(1)).min(u64::from(u32::MAX)) as u32)
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
        // A misspelt key (`wieght = 3`) is refused, never ignored.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            address: String,
            #[serde(default = "one")]
            weight: u32,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Plain(String),
            Full(Full),
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
            Form::Full(Full { address, weight }) => (address, weight),
        };
        Instance::validate(&address).map_err(serde::de::Error::custom)?;
        Ok(Instance::weighted(address, weight))
    }
}

/// The gateway's own sockets: an instance there would send the gateway its own requests.
#[derive(Debug, Clone, Default)]
pub struct OwnAddresses(Vec<SocketAddr>);

impl OwnAddresses {
    /// The listeners (and the admin socket).
    pub fn new(listeners: impl IntoIterator<Item = SocketAddr>) -> Self {
        OwnAddresses(listeners.into_iter().collect())
    }

    /// Whether `addr` (in any spelling) is one of them: the same address and port, or the
    /// port of a wildcard listener on a loopback address.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.0.iter().any(|l| {
            let own = l.ip().to_canonical();
            l.port() == addr.port() && (own == ip || (own.is_unspecified() && ip.is_loopback()))
        })
    }
}

/// Why an address cannot be an instance, if it cannot.
pub fn unusable(ip: IpAddr) -> Option<&'static str> {
    let ip = ip.to_canonical();
    if ip.is_unspecified() {
        Some("an unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("the broadcast address")
    } else {
        None
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

    #[test]
    fn a_misspelt_key_of_an_instance_is_refused_not_ignored() {
        #[derive(Deserialize)]
        struct S {
            i: Vec<Instance>,
        }
        let ok: S = toml::from_str(r#"i = ["a:1", { address = "b:2", weight = 3 }]"#).unwrap();
        assert_eq!(ok.i[1], Instance::weighted("b:2", 3));
        assert!(toml::from_str::<S>(r#"i = [{ address = "b:2", wieght = 3 }]"#).is_err());
    }
}
