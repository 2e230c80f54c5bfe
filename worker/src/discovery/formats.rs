//! Registry formats: how each registrator writes an instance into ZooKeeper, read exactly as it
//! writes it (`../shared/REGISTRY.md`), and written the same way by `zkgate register`.
//!
//! A node that does not parse yields an error naming why (*rejected*); the caller skips it with
//! one warning. [`Node::Excluded`] is a well-formed node that must not take traffic now, with
//! the reason in words (no usable port), or *withdrawn* on purpose by its own status (ServerSet
//! or Nerve not ALIVE, Curator `enabled: false`, a Spring Cloud instance whose
//! `instance_status` is not `UP`, a Dubbo provider disabled in its URL or by an override).

use serde_json::Value;

pub use crate::config::Format;
pub(crate) use crate::discovery::urlcode::{url_decode, url_encode};
use crate::instance::Instance;

/// What one registry node says, once parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// An instance to route to.
    Accepted(Instance),
    /// A well-formed node that must not take traffic now, and why.
    Excluded(String),
    /// A registration its own status withdrew on purpose (a drain, a blue/green switch, a
    /// disabled provider): its address, and why. Intent, never doubt: the removal guard never
    /// holds it.
    Withdrawn(String, String),
}

impl Node {
    /// The instance, when accepted.
    pub fn instance(self) -> Option<Instance> {
        match self {
            Node::Accepted(i) => Some(i),
            Node::Excluded(_) | Node::Withdrawn(..) => None,
        }
    }
}

/// A registration withdrawn by its status: [`Node::Withdrawn`] with the address it names
/// (`address`: what parsing it as an instance gives), or merely excluded when it names none
/// that could be an instance (it was never routed, so nothing is withdrawn).
fn withdrawn(why: String, address: Result<Node, String>) -> Node {
    match address {
        Ok(Node::Accepted(i)) => Node::Withdrawn(i.address, why),
        _ => Node::Excluded(why),
    }
}

impl Format {
    /// The format's name as `zookeeper.format` writes it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Registrator => "registrator",
            Format::Curator => "curator",
            Format::Serverset => "serverset",
            Format::Nerve => "nerve",
            Format::Dubbo => "dubbo",
        }
    }

    /// Whether instance nodes must be read (registrator's names say everything).
    pub fn needs_data(self) -> bool {
        !matches!(self, Format::Registrator)
    }

    /// Whether a child node name can be an instance of this format at all.
    pub fn accepts_name(self, name: &str) -> bool {
        match self {
            Format::Serverset => name
                .strip_prefix("member_")
                .map(|n| n.strip_prefix('-').unwrap_or(n))
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())),
            // A provider URL, encoded: `proto%3A%2F%2F…`.
            Format::Dubbo => name.contains("%3A%2F%2F"),
            _ => true,
        }
    }

    /// Parses one instance node. `endpoint` picks a ServerSet `additionalEndpoints` entry;
    /// `tls`: the service's instances are reached over TLS (a Curator `sslPort` is used).
    pub fn parse(
        self,
        name: &str,
        data: &[u8],
        endpoint: Option<&str>,
        tls: bool,
    ) -> Result<Node, String> {
        match self {
            Format::Registrator => registrator(name),
            Format::Curator => curator(data, tls),
            Format::Serverset => serverset(data, endpoint),
            Format::Nerve => nerve(name, data),
            Format::Dubbo => dubbo(name),
        }
    }

    /// The child of a service node its instances are under (Dubbo: `providers`), if any.
    pub fn instances_dir(self) -> Option<&'static str> {
        match self {
            Format::Dubbo => Some("providers"),
            _ => None,
        }
    }

    /// Node name (or sequential prefix) and data `zkgate register` writes for an instance, the way
    /// the real registrator would. Returns (name, data, sequential).
    pub fn encode(
        self,
        service: &str,
        host: &str,
        port: u16,
        weight: u32,
    ) -> (String, Vec<u8>, bool) {
        let address = join_host_port(host, port);
        match self {
            Format::Registrator => {
                let data = serde_json::json!({"Name": service, "IP": host, "PublicPort": port, "PrivatePort": port, "Tags": [], "Attrs": {}});
                (address, data.to_string().into_bytes(), false)
            }
            Format::Curator => {
                let id = format!("{:032x}", rand::random::<u128>());
                let id = format!(
                    "{}-{}-{}-{}-{}",
                    &id[..8],
                    &id[8..12],
                    &id[12..16],
                    &id[16..20],
                    &id[20..]
                );
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let data = serde_json::json!({"name": service, "id": id, "address": host, "port": port, "sslPort": null,
                    "payload": null, "registrationTimeUTC": now, "serviceType": "DYNAMIC", "uriSpec": null});
                (id, data.to_string().into_bytes(), false)
            }
            Format::Serverset => {
                let data = serde_json::json!({"serviceEndpoint": {"host": host, "port": port}, "additionalEndpoints": {}, "status": "ALIVE", "shard": 0});
                ("member_".into(), data.to_string().into_bytes(), true)
            }
            Format::Nerve => {
                let data = serde_json::json!({"host": host, "port": port, "name": address, "weight": weight});
                (format!("{address}_"), data.to_string().into_bytes(), true)
            }
            Format::Dubbo => {
                // As Dubbo's ZookeeperRegistry writes a REST provider: the URL, encoded, as the
                // node name; no data.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let url = format!(
                    "rest://{address}/{service}?anyhost=false&application=zkgate-register&interface={service}&side=provider&timestamp={now}&weight={weight}"
                );
                (url_encode(&url), Vec::new(), false)
            }
        }
    }
}

/// Dubbo's default provider weight (its URLs carry none unless set).
const DUBBO_DEFAULT_WEIGHT: u64 = 100;

/// A Dubbo provider: the node name is `URL.encode(url)`, e.g.
/// `rest%3A%2F%2F10.0.0.5%3A8080%2Fcom.example.UserService%3Fweight%3D50%26…`. HTTP-based
/// protocols are routable (`rest`, `http`; `tri` is HTTP/2: give the service
/// `protocol = "h2c"`); `dubbo://` and other binary protocols are not (a warning per node).
fn dubbo(name: &str) -> Result<Node, String> {
    let url = url_decode(name).ok_or("node name is not a URL-encoded provider URL")?;
    let (protocol, rest) = url.split_once("://").ok_or("provider URL without ://")?;
    if !matches!(protocol, "rest" | "http" | "tri") {
        return Err(format!("provider protocol {protocol:?} is not HTTP-based: skipped"));
    }
    let (authority, query) = authority_and_query(rest);
    let param = |key: &str| query_param(query, key);
    let (host, port) = authority.rsplit_once(':').ok_or("provider URL without a port")?;
    let port: u64 = port.parse().map_err(|_| format!("invalid port {port:?}"))?;
    if param("enabled") == Some("false") || param("disabled") == Some("true") {
        return Ok(withdrawn("disabled in its provider URL".into(), instance(host, port, 1)));
    }
    let weight = match param("weight") {
        Some(w) => w.parse::<u64>().map_err(|_| format!("invalid weight {w:?}"))?,
        None => DUBBO_DEFAULT_WEIGHT,
    };
    let number = |key: &str| param(key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(match instance(host, port, weight)? {
        // A provider warms up over `warmup` ms from its `timestamp` (its start), as Dubbo's
        // own consumers ramp it.
        Node::Accepted(i) => Node::Accepted(i.ramping(number("timestamp"), number("warmup"))),
        other => other,
    })
}

/// A Dubbo override, as dubbo-admin writes it under `/dubbo/<interface>/configurators/`: the
/// node name is `URL.encode("override://<ip>[:<port>]/<interface>?category=configurators&…")`,
/// `0.0.0.0` naming every provider. `disabled=true` takes providers out ("disable provider"),
/// `weight=N` sets their weight; `enabled=false` turns the rule itself off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The provider's IP (`0.0.0.0`: all providers).
    pub host: String,
    /// The provider's port (`None` or 0: any port).
    pub port: Option<u16>,
    /// `disabled=true|false`.
    pub disabled: Option<bool>,
    /// `weight=N`.
    pub weight: Option<u32>,
}

impl Override {
    /// Parses an override node name; `Ok(None)` for a rule turned off (`enabled=false`) or one
    /// that says nothing zkgate applies.
    pub fn parse(name: &str) -> Result<Option<Override>, String> {
        let url = url_decode(name).ok_or("node name is not a URL-encoded override URL")?;
        let rest = url.strip_prefix("override://").ok_or("not an override:// URL")?;
        let (authority, query) = authority_and_query(rest);
        let param = |key: &str| query_param(query, key);
        if param("enabled") == Some("false") {
            return Ok(None);
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                (h, Some(p.parse::<u16>().map_err(|_| format!("invalid port {p:?}"))?))
            }
            _ => (authority, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.parse::<std::net::IpAddr>().map_err(|_| format!("host {host:?} is not an IP"))?;
        let disabled = match param("disabled") {
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => return Err(format!("invalid disabled={other}")),
            None => None,
        };
        let weight = match param("weight") {
            Some(w) => Some(
                w.parse::<u32>()
                    .ok()
                    .filter(|w| *w <= MAX_WEIGHT)
                    .ok_or_else(|| format!("invalid weight {w:?}"))?,
            ),
            None => None,
        };
        if disabled.is_none() && weight.is_none() {
            return Ok(None);
        }
        Ok(Some(Override {
            host: host.to_string(),
            port: port.filter(|p| *p != 0),
            disabled,
            weight,
        }))
    }

    /// Whether the rule applies to the provider at `address` (`ip:port`); `Some(true)` when it
    /// names it exactly (a rule for one provider beats one for all).
    pub fn applies_to(&self, address: &str) -> Option<bool> {
        let addr: std::net::SocketAddr = address.parse().ok()?;
        if self.host == "0.0.0.0" {
            return Some(false);
        }
        let ip: std::net::IpAddr = self.host.parse().ok()?;
        (ip == addr.ip() && self.port.is_none_or(|p| p == addr.port())).then_some(true)
    }
}

/// Applies Dubbo overrides to a provider parsed from the registry: the rules for every
/// provider first, then those naming this one. Returns the node's outcome and what the rules
/// changed (for `/registry`).
pub fn apply_overrides(node: Node, overrides: &[Override]) -> (Node, Option<String>) {
    let Node::Accepted(mut instance) = node else { return (node, None) };
    let mut rules: Vec<(bool, &Override)> = overrides
        .iter()
        .filter_map(|o| o.applies_to(&instance.address).map(|exact| (exact, o)))
        .collect();
    rules.sort_by_key(|(exact, _)| *exact);
    let (mut disabled, mut weight) = (None, None);
    for (_, o) in &rules {
        disabled = o.disabled.or(disabled);
        weight = o.weight.or(weight);
    }
    if disabled == Some(true) {
        let why = "disabled by a dubbo-admin override".to_string();
        return (Node::Withdrawn(instance.address, why), None);
    }
    let note = weight.map(|w| {
        let note =
            format!("weight {} overridden to {w} by a dubbo-admin override", instance.weight);
        instance.weight = w;
        note
    });
    (Node::Accepted(instance), note)
}

/// A Dubbo URL after its `scheme://`: the authority (`host:port`) and the query.
fn authority_and_query(rest: &str) -> (&str, &str) {
    let (before, query) = rest.split_once('?').unwrap_or((rest, ""));
    (before.split('/').next().unwrap_or(""), query)
}

/// The first value of `key` in a URL query.
fn query_param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// `host:port`, bracketing IPv6 literals.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Largest weight a registry may give an instance (HAProxy's is 256, nginx's is unbounded;
/// beyond this a weight says more about a bug than about capacity).
pub const MAX_WEIGHT: u32 = 10_000;

/// An instance from a registry: a port 1–65535 and an IP literal that can be connected to
/// (not unspecified, multicast or broadcast, in any spelling: IPv4-mapped IPv6 too), or a host
/// name (Spring Cloud Zookeeper registers host names unless `prefer-ip-address` is set;
/// Kubernetes pods register DNS names), resolved when connecting and judged again then (see
/// `http::client::dial`).
fn instance(host: &str, port: u64, weight: u64) -> Result<Node, String> {
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port {port} (1-65535)"))?;
    let weight = u32::try_from(weight)
        .ok()
        .filter(|w| *w <= MAX_WEIGHT)
        .ok_or_else(|| format!("weight {weight} above {MAX_WEIGHT}"))?;
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let address = match literal.parse::<std::net::IpAddr>() {
        Ok(ip) => {
            if let Some(why) = crate::instance::unusable(ip) {
                return Err(format!("address {ip} is {why}: it cannot be an instance"));
            }
            std::net::SocketAddr::new(ip, port).to_string()
        }
        Err(_) if host_name(host) => format!("{}:{port}", host.trim_end_matches('.')),
        Err(_) => return Err(format!("host {host:?} is neither an IP address nor a host name")),
    };
    Ok(Node::Accepted(Instance::weighted(address, weight)))
}

/// Whether `s` is a DNS host name (RFC 1123 labels: letters, digits, hyphens, 1–63 each, 253
/// in all) whose last label starts with a letter — so that nothing a resolver would read as a
/// number (`127.1`, `0x7f`, `2130706433`) passes as a name.
fn host_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(label)
        && s.rsplit('.').next().is_some_and(|last| last.as_bytes()[0].is_ascii_alphabetic())
}

/// A Registrator node name: exactly `ip:port` (`[v6]:port`), digits only in the port.
fn registrator(name: &str) -> Result<Node, String> {
    let (host, port) = name.rsplit_once(':').ok_or("node name is not ip:port")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
        return Err(format!("node name {name:?} is not ip:port (port {port:?})"));
    }
    let port: u64 = port.parse().map_err(|_| format!("invalid port in {name:?}"))?;
    instance(host, port, 1).map_err(|e| format!("node name {name:?}: {e}"))
}

fn json(data: &[u8]) -> Result<Value, String> {
    if data.is_empty() {
        return Err("no data".into());
    }
    serde_json::from_slice(data).map_err(|e| format!("data is not JSON: {e}"))
}

/// A Curator `ServiceInstance` (Spring Cloud Zookeeper writes these too: its
/// `payload.metadata.instance_status` is the blue/green switch Spring users flip; only `UP`, or
/// none, is routed).
fn curator(data: &[u8], tls: bool) -> Result<Node, String> {
    let v = json(data)?;
    let listed = || curator_instance(&v, tls);
    if v.get("enabled").and_then(Value::as_bool) == Some(false) {
        return Ok(withdrawn("\"enabled\": false".into(), listed()));
    }
    let status = v.pointer("/payload/metadata/instance_status");
    match status {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.eq_ignore_ascii_case("UP") => {}
        Some(Value::String(s)) => {
            let why = format!("Spring instance_status {s} (only UP is routed)");
            return Ok(withdrawn(why, listed()));
        }
        Some(other) => return Err(format!("invalid payload.metadata.instance_status {other}")),
    }
    listed()
}

/// A Curator `ServiceInstance`'s address, on the port its service needs.
fn curator_instance(v: &Value, tls: bool) -> Result<Node, String> {
    let address = v.get("address").and_then(Value::as_str).ok_or("missing \"address\"")?;
    let port = |key: &str| match v.get(key) {
        Some(Value::Number(p)) => p.as_u64().map(Some).ok_or(format!("invalid \"{key}\"")),
        Some(Value::Null) | None => Ok(None),
        Some(_) => Err(format!("invalid \"{key}\"")),
    };
    // A TLS service is reached on sslPort; a plain one on port. An instance without the port
    // its service needs cannot be used.
    let since = v.get("registrationTimeUTC").and_then(Value::as_u64).unwrap_or(0);
    match if tls { port("sslPort")? } else { port("port")? } {
        Some(p) => Ok(match instance(address, p, 1)? {
            Node::Accepted(i) => Node::Accepted(i.ramping(since, 0)),
            other => other,
        }),
        None if tls => Ok(Node::Excluded("no \"sslPort\" for a TLS service".into())),
        None => Ok(Node::Excluded("no \"port\" (TLS only)".into())),
    }
}

fn endpoint(v: &Value) -> Result<(String, u64), String> {
    let host = v.get("host").and_then(Value::as_str).ok_or("endpoint without \"host\"")?;
    let port = v.get("port").and_then(Value::as_u64).ok_or("endpoint without a valid \"port\"")?;
    Ok((host.to_string(), port))
}

fn serverset(data: &[u8], named: Option<&str>) -> Result<Node, String> {
    let v = json(data)?;
    let status = v.get("status").and_then(Value::as_str).ok_or("missing \"status\"")?;
    let listed = || {
        let ep = match named {
            Some(name) => v
                .get("additionalEndpoints")
                .and_then(|a| a.get(name))
                .ok_or_else(|| format!("no additionalEndpoints.{name}"))?,
            None => v.get("serviceEndpoint").ok_or("missing \"serviceEndpoint\"")?,
        };
        let (host, port) = endpoint(ep)?;
        instance(&host, port, 1)
    };
    if status != "ALIVE" {
        return Ok(withdrawn(format!("status {status} (only ALIVE is routed)"), listed()));
    }
    listed()
}

fn nerve(name: &str, data: &[u8]) -> Result<Node, String> {
    let decoded;
    let data = match name.strip_prefix("base64_") {
        Some(rest) => {
            decoded = decode_path_encoding(rest)?;
            &decoded[..]
        }
        None => data,
    };
    let v = json(data)?;
    let host = v.get("host").and_then(Value::as_str).ok_or("missing \"host\"")?;
    let port = v.get("port").and_then(Value::as_u64).ok_or("missing or invalid \"port\"")?;
    let weight = match v.get("weight") {
        None | Some(Value::Null) => 1,
        Some(w) => w.as_u64().ok_or("invalid \"weight\" (an integer >= 0)")?,
    };
    // Nerve writes no status; writers sharing its layout with ServerSet's (kazoo's
    // ServerSet-style members) add one, and a member not ALIVE is withdrawn.
    match v.get("status") {
        None | Some(Value::Null) => instance(host, port, weight),
        Some(Value::String(s)) if s == "ALIVE" => instance(host, port, weight),
        Some(Value::String(s)) => Ok(withdrawn(
            format!("status {s} (only ALIVE is routed)"),
            instance(host, port, weight),
        )),
        Some(other) => Err(format!("invalid \"status\" {other}")),
    }
}

/// Nerve's `use_path_encoding`: `base64_<len>_<base64 of the JSON>_<seq>`.
fn decode_path_encoding(rest: &str) -> Result<Vec<u8>, String> {
    let (len, tail) = rest.split_once('_').ok_or("bad base64 path encoding")?;
    let len: usize = len.parse().map_err(|_| "bad base64 path encoding length")?;
    let encoded = tail.get(..len).ok_or("base64 path encoding shorter than its length")?;
    base64_decode(encoded).ok_or_else(|| "invalid base64 in node name".to_string())
}

/// Standard and URL-safe base64, padding optional (Nerve uses URL-safe in names).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    let s = s.trim_end_matches('=');
    URL_SAFE_NO_PAD.decode(s).or_else(|_| STANDARD_NO_PAD.decode(s)).ok()
}

#[cfg(test)]
#[path = "formats_tests.rs"]
mod tests;
