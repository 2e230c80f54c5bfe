//! How values are written in `gateway.toml`: durations (`"500ms"`), listen addresses, absolute
//! paths, the `consistent_hash` key and the worker count, each with an error that shows the
//! value and the expected form.

use serde::{Deserialize, Serialize};

/// A path setting must be absolute: a prefix like `users` would never match a request.
pub(crate) fn absolute_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !s.starts_with('/') {
        return Err(serde::de::Error::custom(format!("{s:?} must start with '/'")));
    }
    if s.contains(['?', '#']) || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(serde::de::Error::custom(format!(
            "{s:?} must be a plain path (no query, fragment or spaces)"
        )));
    }
    Ok(s)
}

/// `[zookeeper]` (one table) or `[[zookeeper]]` (an array of tables), as a list. A visitor
/// rather than an untagged enum, so that a mistake inside either form keeps its own message
/// (the key, the line) instead of "did not match any variant".
pub(crate) fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
    struct Visitor<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a table ([zookeeper]) or an array of tables ([[zookeeper]])")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map)).map(|t| vec![t])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
            Vec::<T>::deserialize(SeqAccessDeserializer::new(seq))
        }
    }
    d.deserialize_any(Visitor(std::marker::PhantomData))
}

/// A string, or a list of strings (`audience = "api"` or `audience = ["api", "web"]`).
pub(crate) fn string_or_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<String>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element::<String>()? {
                out.push(v);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Visitor)
}

/// Writes a list of sources back as `[[zookeeper]]`.
pub(crate) fn many<S: serde::Serializer, T: Serialize>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    v.serialize(s)
}

/// A share in percent, written `50` or `"50%"` (0 to 100).
pub(crate) fn percent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u32),
        Text(String),
    }
    let n = match Raw::deserialize(d)? {
        Raw::Number(n) => n,
        Raw::Text(t) => {
            t.trim().strip_suffix('%').and_then(|n| n.trim().parse().ok()).ok_or_else(|| {
                serde::de::Error::custom(format!("{t:?} is not a percentage like \"50%\""))
            })?
        }
    };
    if n > 100 {
        return Err(serde::de::Error::custom(format!("{n}% is more than 100%")));
    }
    Ok(n)
}

/// The request key `consistent_hash` uses: `"header:NAME"`, `"cookie:NAME"` or `"client_ip"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The value of a request header.
    Header(http::HeaderName),
    /// The value of a cookie.
    Cookie(String),
    /// The client's IP address.
    ClientIp,
}

impl std::str::FromStr for HashOn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "client_ip" {
            return Ok(HashOn::ClientIp);
        }
        if let Some(name) = s.strip_prefix("header:") {
            return http::HeaderName::from_bytes(name.as_bytes())
                .map(HashOn::Header)
                .map_err(|_| format!("invalid header name in hash_on {s:?}"));
        }
        if let Some(name) = s.strip_prefix("cookie:").filter(|n| !n.is_empty()) {
            return Ok(HashOn::Cookie(name.to_string()));
        }
        Err(format!(
            "invalid hash_on {s:?}: expected \"header:NAME\", \"cookie:NAME\" or \"client_ip\""
        ))
    }
}

impl<'de> Deserialize<'de> for HashOn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HashOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HashOn::Header(h) => s.serialize_str(&format!("header:{h}")),
            HashOn::Cookie(c) => s.serialize_str(&format!("cookie:{c}")),
            HashOn::ClientIp => s.serialize_str("client_ip"),
        }
    }
}

/// Serde helpers for durations written the way operators write them: `"500ms"`, `"30s"`, `"2m"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Parses `"500ms"`-style strings; another type is refused saying what was expected.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = String;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration like \"30s\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_string())
            }
        }
        let s = d.deserialize_str(Text)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. \"500ms\", \"30s\", \"2m\""
            ))
        })
    }

    /// Parses a duration and checks it lies in `MIN_MS..=MAX_MS` milliseconds: a value far out
    /// of range is refused with its position, instead of overflowing a deadline at runtime.
    pub fn within<'de, D: Deserializer<'de>, const MIN_MS: u64, const MAX_MS: u64>(
        d: D,
    ) -> Result<Duration, D::Error> {
        let v = deserialize(d)?;
        let (min, max) = (Duration::from_millis(MIN_MS), Duration::from_millis(MAX_MS));
        if v < min || v > max {
            let show = |d: Duration| humantime::format_duration(d).to_string();
            return Err(serde::de::Error::custom(format!(
                "{} is out of range: between {} and {}",
                show(v),
                if MIN_MS == 0 { "0s".to_string() } else { show(min) },
                show(max)
            )));
        }
        Ok(v)
    }

    /// Writes durations back in the same syntax.
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }

    /// [`within`] for an optional key.
    pub fn within_opt<'de, D: Deserializer<'de>, const MIN_MS: u64, const MAX_MS: u64>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        within::<D, MIN_MS, MAX_MS>(d).map(Some)
    }

    /// [`serialize`] for an optional key.
    pub fn serialize_opt<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => serialize(v, s),
            None => s.serialize_none(),
        }
    }
}

/// A number checked to lie in `MIN..=MAX`, refused with its position otherwise.
pub fn number_within<'de, D, T, const MIN: i64, const MAX: i64>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    let v = i64::deserialize(d)?;
    if !(MIN..=MAX).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "{v} is out of range: between {MIN} and {MAX}"
        )));
    }
    T::try_from(v).map_err(|_| serde::de::Error::custom(format!("{v} is out of range")))
}

/// Serde helpers for listen addresses: an IP and a port, with an error that shows the value.
pub mod listen_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer};

    fn parse<E: serde::de::Error>(s: &str) -> Result<SocketAddr, E> {
        s.parse().map_err(|_| {
            E::custom(format!(
                "{s:?} is not an IP:port address (names are not resolved here; write e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")"
            ))
        })
    }

    /// One address.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        parse(&String::deserialize(d)?)
    }

    /// A list of addresses.
    pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
        Vec::<String>::deserialize(d)?.iter().map(|s| parse(s)).collect()
    }
}

/// `workers = "auto" | N | "Kx"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workers {
    /// One per CPU this process may run on.
    #[default]
    Auto,
    /// Exactly this many.
    Count(usize),
    /// K per CPU this process may run on (load-testing setups scaling per core).
    PerCore(usize),
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        let raw = Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "workers is \"auto\", a number, or a per-core multiple like \"2x\"",
            )
        })?;
        match raw {
            Raw::S(s) if s == "auto" => Ok(Workers::Auto),
            Raw::S(s) if s.ends_with('x') => match s[..s.len() - 1].parse::<usize>() {
                Ok(k) if (1..=64).contains(&k) => Ok(Workers::PerCore(k)),
                _ => Err(serde::de::Error::custom(format!(
                    "workers = {s:?}: a per-core multiple is 1x to 64x"
                ))),
            },
            Raw::N(n) if (1..=1024).contains(&n) => Ok(Workers::Count(n as usize)),
            Raw::N(n) => {
                Err(serde::de::Error::custom(format!("workers = {n}: must be between 1 and 1024")))
            }
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "workers = {s:?}: must be \"auto\", a number or \"Kx\" (K per core)"
            ))),
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n as u64),
            Workers::PerCore(k) => s.serialize_str(&format!("{k}x")),
        }
    }
}

impl Workers {
    /// The number of worker processes this means on this machine.
    pub fn resolve(self) -> usize {
        match self {
            Workers::Auto => cpus(),
            Workers::Count(n) => n,
            Workers::PerCore(k) => (k * cpus()).min(1024),
        }
    }
}

/// CPUs this process may run on.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `proxy.trusted_proxies`: addresses and CIDR blocks (`"10.0.0.0/8"`, `"::1"`) whose
/// `X-Forwarded-*` and `Forwarded` lines are believed (nginx's `set_real_ip_from`). Empty by
/// default: a client's own forwarding headers never reach an instance as sent.
pub type TrustedProxies = AddressBlocks;

/// Addresses and CIDR blocks (`"10.0.0.0/8"`, `"2001:db8::/32"`, `"192.0.2.7"`), as
/// `trusted_proxies`, and a route's or service's `allow` and `deny` take them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressBlocks(Vec<(std::net::IpAddr, u8)>);

impl AddressBlocks {
    /// Parses each entry; an error names the one that is not an address or CIDR block.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut blocks = Vec::new();
        for entry in entries {
            let bad = || format!("{entry:?} is not an IP address or CIDR block (\"10.0.0.0/8\")");
            let (ip, bits) = match entry.split_once('/') {
                Some((ip, bits)) => (ip, Some(bits.parse::<u8>().map_err(|_| bad())?)),
                None => (entry, None),
            };
            let ip: std::net::IpAddr = ip.trim().parse().map_err(|_| bad())?;
            let ip = ip.to_canonical();
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = bits.unwrap_or(max);
            if bits > max {
                return Err(bad());
            }
            blocks.push((ip, bits));
        }
        Ok(AddressBlocks(blocks))
    }

    /// Whether no block is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 one) is in a block.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        if self.0.is_empty() {
            return false;
        }
        let ip = ip.to_canonical();
        self.0.iter().any(|&(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }

    /// The entries as written back (`"10.0.0.0/8"`).
    fn entries(&self) -> Vec<String> {
        self.0.iter().map(|(ip, bits)| format!("{ip}/{bits}")).collect()
    }
}

impl<'de> Deserialize<'de> for AddressBlocks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(d)?;
        AddressBlocks::parse(entries.iter().map(String::as_str)).map_err(serde::de::Error::custom)
    }
}

impl Serialize for AddressBlocks {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.entries().serialize(s)
    }
}

#[cfg(test)]
mod trusted_tests {
    use super::TrustedProxies;

    #[test]
    fn trusted_proxies_match_addresses_and_blocks() {
        let t = TrustedProxies::parse(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]).unwrap();
        let has = |ip: &str| t.contains(ip.parse().unwrap());
        assert!(has("10.1.2.3") && has("192.0.2.7") && has("2001:db8::1"));
        assert!(has("::ffff:10.9.9.9"), "an IPv4-mapped peer is its IPv4 address");
        assert!(!has("11.0.0.1") && !has("192.0.2.8") && !has("2001:db9::1"));
        assert!(!TrustedProxies::default().contains("127.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "localhost", "10.0.0.0/x"] {
            assert!(TrustedProxies::parse([bad]).is_err(), "{bad}");
        }
        assert!(TrustedProxies::parse(["0.0.0.0/0"]).unwrap().contains("8.8.8.8".parse().unwrap()));
    }
}
