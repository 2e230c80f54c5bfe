//! `check`'s rules that span sections (serde already checked each value on its own): the
//! listeners and the admin API, routes and their header rules, the services, the registry
//! sources; the edge sections' rules are in `edge_checks`.

use worker::config::Config;

/// Shortest admin token `check` accepts.
const MIN_TOKEN_LEN: usize = 16;

/// Checks that span sections (serde already checked each value on its own).
pub fn check(config: &Config) -> Result<(), String> {
    crate::edge_checks::check(config)?;
    check_listeners(config)?;
    if let Some(admin) = &config.admin {
        check_admin(config, admin)?;
    }
    for (i, r) in config.routes.iter().enumerate() {
        check_route_extras(i, r)?;
    }
    check_limits(config)?;
    for (name, s) in &config.services {
        check_service(config, name, s)?;
    }
    config.header_routing.check_names()?;
    supervisor::check_ids(config.server.user.as_deref(), config.server.group.as_deref())
        .map_err(|e| format!("server.user/group: {e}"))?;
    if config.proxy.outlier.max_ejection < config.proxy.outlier.base_ejection {
        return Err("proxy.outlier.max_ejection: must not be below base_ejection".into());
    }
    if !config.zookeeper.is_empty() {
        return check_sources(&config.zookeeper);
    }
    check_static_only(config)
}

/// `listen`, `listen_tls` and the certificates they need.
fn check_listeners(config: &Config) -> Result<(), String> {
    if config.server.listen.is_empty() {
        return Err("server.listen: at least one address is required".into());
    }
    if config.server.backlog < 1 {
        return Err("server.backlog: must be at least 1".into());
    }
    if let Some(both) = config.server.listen_tls.iter().find(|a| config.server.listen.contains(a)) {
        return Err(format!("server.listen_tls: {both} is also in server.listen"));
    }
    match (config.server.listen_tls.is_empty(), config.tls.is_empty()) {
        (false, true) => Err("server.listen_tls: needs at least one [[tls]] certificate".into()),
        (true, false) => {
            Err("[[tls]]: certificates without server.listen_tls would never be used".into())
        }
        _ => Ok(()),
    }
}

/// The admin API: a token worth its name, off loopback only with one, on a socket of its own.
fn check_admin(config: &Config, admin: &worker::config::AdminSettings) -> Result<(), String> {
    if let Some(token) = &admin.token {
        if token.trim().len() < MIN_TOKEN_LEN || token.chars().any(char::is_whitespace) {
            return Err(format!(
                "admin.token: at least {MIN_TOKEN_LEN} characters and no spaces (a guessable token protects nothing)"
            ));
        }
    }
    if !admin.listen.ip().is_loopback() && admin.token.as_deref().is_none_or(str::is_empty) {
        return Err(format!(
            "admin.listen = \"{}\" is not a loopback address: set admin.token, or listen on 127.0.0.1",
            admin.listen
        ));
    }
    if config.server.listen.contains(&admin.listen) {
        return Err(format!("admin.listen = \"{}\" is also in server.listen", admin.listen));
    }
    if config.server.listen_tls.contains(&admin.listen) {
        return Err(format!("admin.listen = \"{}\" is also in server.listen_tls", admin.listen));
    }
    Ok(())
}

/// Rate limits and in-flight bounds fit the shared region and mean something.
fn check_limits(config: &Config) -> Result<(), String> {
    if config.rate_limits.len() > worker::host::RATE_RULES {
        return Err(format!(
            "[[rate_limit]]: at most {} rules (their buckets live in shared memory sized at start)",
            worker::host::RATE_RULES
        ));
    }
    let identity = |r: &&worker::config::RateLimit| r.per == worker::config::RateKey::Identity;
    if let Some(r) = config.rate_limits.iter().find(|r| !r.overrides.is_empty() && !identity(r)) {
        return Err(format!(
            "[[rate_limit]] on {}: overrides are per consumer, so per = \"identity\"",
            r.service
        ));
    }
    if let Some(r) = config.rate_limits.iter().find(|r| r.service.is_empty()) {
        return Err(format!("[[rate_limit]]: service must name a service (rate {:?})", r.rate));
    }
    if let Some((name, _)) = config.services.iter().find(|(_, s)| s.max_requests == Some(0)) {
        return Err(format!("services.{name}.max_requests: at least 1"));
    }
    if !(0.0..=1.0).contains(&config.proxy.retry_budget) {
        return Err("proxy.retry_budget: must be between 0.0 and 1.0".into());
    }
    Ok(())
}

/// One service: not the gateway itself, weights only where they apply, a health check that
/// can run.
fn check_service(
    config: &Config,
    name: &str,
    s: &worker::config::ServiceSettings,
) -> Result<(), String> {
    if let Some(own) = s.instances.iter().flatten().find(|i| config.is_own_address(&i.address)) {
        return Err(format!(
            "services.{name}.instances: {} is this gateway's own address (a request loop)",
            own.address
        ));
    }
    if s.instances.is_some() && !s.weights.is_empty() {
        return Err(format!(
            "services.{name}.weights: only for discovered services; give static instances a weight"
        ));
    }
    if let Some(hc) = &s.health_check {
        if !hc.path.starts_with('/') {
            return Err(format!(
                "services.{name}.health_check.path = {:?}: must start with '/'",
                hc.path
            ));
        }
        if hc.healthy == 0 || hc.unhealthy == 0 || hc.interval.is_zero() || hc.timeout.is_zero() {
            return Err(format!(
                "services.{name}.health_check: healthy, unhealthy, interval and timeout must be above 0"
            ));
        }
    }
    Ok(())
}

/// Without discovery every routed service must have static instances.
fn check_static_only(config: &Config) -> Result<(), String> {
    for (i, r) in config.routes.iter().enumerate() {
        if config.services.get(&r.service).is_none_or(|s| s.instances.is_none()) {
            return Err(format!(
                "route[{i}].service = {:?}: no [services.{}] with instances, and no [zookeeper] to discover it",
                r.service, r.service
            ));
        }
    }
    for (name, s) in &config.services {
        if s.instances.is_none() {
            return Err(format!(
                "services.{name}: instances is required when there is no [zookeeper]"
            ));
        }
    }
    Ok(())
}

/// Headers a route's rules may not touch: they frame the message or describe the connection.
const UNTOUCHABLE: [&str; 10] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// A route's canary and header rules.
fn check_route_extras(i: usize, r: &worker::config::RouteRule) -> Result<(), String> {
    let at = format!("route[{i}] ({})", r.path_prefix);
    if let Some(c) = &r.canary {
        if !(0.0..=100.0).contains(&c.percent) {
            return Err(format!("{at}.canary.percent = {}: 0 to 100", c.percent));
        }
        if c.service.is_empty() {
            return Err(format!("{at}.canary.service: required"));
        }
        if let Some(h) = &c.header {
            let ok = h.split_once(':').is_some_and(|(n, v)| {
                http::HeaderName::from_bytes(n.trim().as_bytes()).is_ok()
                    && http::HeaderValue::from_str(v.trim()).is_ok()
            });
            if !ok {
                return Err(format!("{at}.canary.header = {h:?}: expected \"name: value\""));
            }
        }
        if let Some(k) = &c.cookie {
            if k.split_once('=').is_none_or(|(n, _)| n.trim().is_empty()) {
                return Err(format!("{at}.canary.cookie = {k:?}: expected \"name=value\""));
            }
        }
    }
    for (which, rules) in
        [("request_headers", &r.request_headers), ("response_headers", &r.response_headers)]
    {
        let names = rules.set.keys().chain(rules.add.keys()).chain(rules.remove.iter());
        for name in names {
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("{at}.{which}: {name:?} is not a header name"));
            }
            if UNTOUCHABLE.contains(&lower.as_str()) {
                return Err(format!("{at}.{which}: {name} frames the message or the connection; the gateway owns it"));
            }
        }
        for value in rules.set.values().chain(rules.add.values()) {
            if http::HeaderValue::from_str(value).is_err() {
                return Err(format!("{at}.{which}: {value:?} is not a header value"));
            }
        }
    }
    Ok(())
}

/// `host:port[,host:port…][/chroot]`, every host with a port.
/// The registry sources: each one's hosts and credentials; at most [`MAX_SOURCES`]; names
/// distinct; and two sources can never list the same service name unless prefixes tell them
/// apart (at most one source without a prefix, no two with the same one, none a prefix of
/// another: the unprefixed source drops names in a prefixed source's namespace at run time).
fn check_sources(sources: &[worker::config::ZkSettings]) -> Result<(), String> {
    let at = |i: usize| {
        if sources.len() == 1 {
            "zookeeper".to_string()
        } else {
            format!("zookeeper[{i}]")
        }
    };
    if sources.len() > worker::host::MAX_SOURCES {
        return Err(format!("zookeeper: at most {} sources", worker::host::MAX_SOURCES));
    }
    let mut names = std::collections::HashSet::new();
    let mut prefixes = std::collections::HashSet::new();
    for (i, zk) in sources.iter().enumerate() {
        check_hosts(&zk.hosts).map_err(|e| format!("{}.hosts: {e}", at(i)))?;
        if let Some(auth) = &zk.auth {
            match zk.auth_parts() {
                Some(("digest", creds)) if creds.contains(':') => {}
                _ => {
                    return Err(format!(
                        "{}.auth = {auth:?}: write \"digest:user:password\"",
                        at(i)
                    ))
                }
            }
        }
        if let Some(tls) = &zk.tls {
            tls.read().map_err(|e| format!("{}.tls: {e}", at(i)))?;
        }
        if !names.insert(zk.source_name(i)) {
            return Err(format!("{}.name: {:?} names two sources", at(i), zk.source_name(i)));
        }
        let nested = sources.iter().enumerate().find(|(j, other)| {
            *j != i
                && !zk.prefix.is_empty()
                && other.prefix != zk.prefix
                && other.prefix.starts_with(zk.prefix.as_str())
        });
        if let Some((j, other)) = nested {
            return Err(format!(
                "{}.prefix {:?} is a prefix of {}.prefix {:?}: a service named {:?}… would be in both namespaces; give each source a prefix that does not start another",
                at(i),
                zk.prefix,
                at(j),
                other.prefix,
                other.prefix
            ));
        }
        if !prefixes.insert(zk.prefix.clone()) {
            return Err(format!(
                "{}.prefix: two sources with prefix {:?} could both list a service of the same name; give each source its own prefix",
                at(i),
                zk.prefix
            ));
        }
    }
    Ok(())
}

fn check_hosts(hosts: &str) -> Result<(), String> {
    let (list, chroot) = match hosts.find('/') {
        Some(i) => (&hosts[..i], Some(&hosts[i..])),
        None => (hosts, None),
    };
    if list.trim().is_empty() {
        return Err("no host given".into());
    }
    for h in list.split(',') {
        worker::table::Instance::validate(h.trim()).map_err(|e| format!("{e} in {hosts:?}"))?;
    }
    if let Some(c) = chroot {
        if c.len() > 1 && c.ends_with('/') {
            return Err(format!("chroot {c:?} must not end with '/'"));
        }
    }
    Ok(())
}
