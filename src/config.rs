//! `gateway.toml` → typed configuration, checked once here at the binary's edge.
//!
//! The types and defaults live in `worker::config` (their one home); this module owns the
//! whole-file parse, the checks that span sections, errors that name the file, line and
//! column, the supervisor's part of the configuration and `zkgate check`'s summary.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use worker::config::{Config, Workers};
use worker::tls::Certificates;

/// A configuration error, with where it is when that is known.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line and column, when the error points into the file.
    pub position: Option<(usize, usize)>,
    /// What is wrong, naming the key.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.path.display(), self.message)
            }
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Shortest admin token `check` accepts.
const MIN_TOKEN_LEN: usize = 16;

/// Reads, parses and checks a configuration file; files it names (`upstream_ca`) are
/// resolved from its directory and read, so a worker never meets an unreadable one.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        position: None,
        message: format!("cannot read: {e}"),
    })?;
    let mut config = parse(path, &text)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let relative = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    };
    for s in config.services.values_mut() {
        s.upstream_ca.as_mut().map(relative);
    }
    for a in config.auth.values_mut() {
        match a {
            worker::config::AuthSettings::Jwt(j) => {
                j.jwks.as_mut().map(relative);
            }
            worker::config::AuthSettings::Basic(b) => relative(&mut b.htpasswd),
        }
    }
    for t in &mut config.tls {
        t.client_ca.as_mut().map(relative);
        t.client_crl.as_mut().map(relative);
    }
    let refuse =
        |message: String| ConfigError { path: path.to_path_buf(), position: None, message };
    worker::http::transport::Transports::from_config(&config).map_err(|e| refuse(e.to_string()))?;
    // Every JWKS and htpasswd file is read now: a bad one fails `check` and the reload, and
    // the running workers keep what they have.
    if let Err((_, errors)) = worker::auth::Auth::from_config(&config) {
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(refuse(errors.join("; ")));
    }
    Ok(config)
}

/// Parses and checks configuration text; `path` is only used in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        position: e.span().map(|s| line_col(text, s.start)),
        message: e.message().trim().to_string(),
    })?;
    check(&config).map_err(|message| ConfigError {
        path: path.to_path_buf(),
        position: None,
        message,
    })?;
    Ok(config)
}

/// Checks that span sections (serde already checked each value on its own).
fn check(config: &Config) -> Result<(), String> {
    crate::edge_checks::check(config)?;
    if config.server.listen.is_empty() {
        return Err("server.listen: at least one address is required".into());
    }
    if config.server.backlog < 1 {
        return Err("server.backlog: must be at least 1".into());
    }
    if let Some(admin) = &config.admin {
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
            return Err(format!(
                "admin.listen = \"{}\" is also in server.listen_tls",
                admin.listen
            ));
        }
    }
    if let Some(both) = config.server.listen_tls.iter().find(|a| config.server.listen.contains(a)) {
        return Err(format!("server.listen_tls: {both} is also in server.listen"));
    }
    match (config.server.listen_tls.is_empty(), config.tls.is_empty()) {
        (false, true) => {
            return Err("server.listen_tls: needs at least one [[tls]] certificate".into())
        }
        (true, false) => {
            return Err("[[tls]]: certificates without server.listen_tls would never be used".into())
        }
        _ => {}
    }
    for (i, r) in config.routes.iter().enumerate() {
        check_route_extras(i, r)?;
    }
    if config.rate_limits.len() > worker::host::RATE_RULES {
        return Err(format!(
            "[[rate_limit]]: at most {} rules (their buckets live in shared memory sized at start)",
            worker::host::RATE_RULES
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
    for (name, s) in &config.services {
        if let Some(own) = s.instances.iter().flatten().find(|i| config.is_own_address(&i.address))
        {
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
            if hc.healthy == 0 || hc.unhealthy == 0 || hc.interval.is_zero() || hc.timeout.is_zero()
            {
                return Err(format!(
                    "services.{name}.health_check: healthy, unhealthy, interval and timeout must be above 0"
                ));
            }
        }
    }
    config.header_routing.check_names()?;
    supervisor::check_ids(config.server.user.as_deref(), config.server.group.as_deref())
        .map_err(|e| format!("server.user/group: {e}"))?;
    if config.proxy.outlier.max_ejection < config.proxy.outlier.base_ejection {
        return Err("proxy.outlier.max_ejection: must not be below base_ejection".into());
    }
    if !config.zookeeper.is_empty() {
        check_sources(&config.zookeeper)?;
        return Ok(());
    }
    // Without discovery every routed service must have static instances.
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

/// Reads and checks the `[[tls]]` certificates (relative paths from the configuration file's
/// directory): every reload goes through here, so a bad file fails the reload and the running
/// workers keep the certificates they have.
pub fn load_tls(path: &Path, config: &Config) -> Result<Option<Certificates>, ConfigError> {
    if config.tls.is_empty() {
        return Ok(None);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let pairs: Vec<(PathBuf, PathBuf)> =
        config.tls.iter().map(|t| (dir.join(&t.cert), dir.join(&t.key))).collect();
    let refuse = |e: worker::tls::TlsError| ConfigError {
        path: path.to_path_buf(),
        position: None,
        message: format!("[[tls]]: {e}"),
    };
    let mut certificates = Certificates::load(&pairs).map_err(refuse)?;
    // One TLS configuration serves every name: the first entry's client settings apply.
    let first = &config.tls[0];
    if let Some(ca) = &first.client_ca {
        let required = first.client_auth != Some(worker::config::ClientAuth::Optional);
        let crl = first.client_crl.as_ref().map(|c| dir.join(c));
        certificates.client = Some(
            worker::tls::ClientVerification::load(&dir.join(ca), crl.as_deref(), required)
                .map_err(refuse)?,
        );
    }
    Ok(Some(certificates))
}

/// What the supervisor runs with: the plain addresses, then the TLS ones, then the admin
/// address if any (the workers split the inherited sockets in that order).
pub fn supervisor_settings(config: &Config) -> supervisor::Settings {
    let s = &config.server;
    let mut listen = s.listen.clone();
    listen.extend(&s.listen_tls);
    listen.extend(config.admin.as_ref().map(|a| a.listen));
    supervisor::Settings {
        listen,
        workers: s.workers.resolve(),
        backlog: s.backlog,
        shutdown_timeout: s.shutdown_timeout,
        worker_timeout: s.worker_timeout,
        cpu_affinity: s.cpu_affinity,
        user: s.user.clone(),
        group: s.group.clone(),
    }
}

/// A one-screen summary, for `zkgate check`.
pub fn summary(config: &Config, tls: Option<&Certificates>) -> String {
    let mut out = String::new();
    let p = &config.proxy;
    if !p.outlier.slow_after.is_zero() && p.outlier.slow_after >= p.request_timeout {
        out += &format!(
            "warning     proxy.outlier.slow_after ({}) >= proxy.request_timeout ({}): a hung instance is judged only at the deadline; retryable requests give it request_timeout / 2, others get 504\n",
            human(p.outlier.slow_after),
            human(p.request_timeout)
        );
    }
    let s = &config.server;
    let listen: Vec<String> = s.listen.iter().map(|a| a.to_string()).collect();
    out += &format!("listen      {}\n", listen.join(", "));
    if !s.listen_tls.is_empty() {
        let listen: Vec<String> = s.listen_tls.iter().map(|a| a.to_string()).collect();
        out += &format!("listen_tls  {}\n", listen.join(", "));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for r in &config.rate_limits {
        let per = match &r.per {
            worker::config::RateKey::ClientIp => "client_ip".to_string(),
            worker::config::RateKey::Global => "global".to_string(),
            worker::config::RateKey::Header(h) => format!("header:{h}"),
        };
        out += &format!(
            "rate_limit  {}: {:.3}/s per {per}, burst {}\n",
            r.service, r.rate.per_second, r.burst
        );
    }
    for (i, cert) in tls.iter().flat_map(|t| &t.list).enumerate() {
        let days = (cert.not_after - now).div_euclid(86_400);
        let expiry = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(cert.not_after.max(0) as u64),
        );
        let left = if days < 0 { "EXPIRED".to_string() } else { format!("{days} days left") };
        out += &format!(
            "tls         {} [{}] expires {expiry} ({left}){}\n",
            cert.path.display(),
            cert.names.join(", "),
            if i == 0 { ", default" } else { "" }
        );
    }
    let workers = match s.workers {
        Workers::Auto => format!("{} (auto: one per CPU)", s.workers.resolve()),
        Workers::Count(n) => n.to_string(),
        Workers::PerCore(k) => format!("{} ({k} per CPU on this machine)", s.workers.resolve()),
    };
    out += &format!(
        "workers     {workers}, backlog {}, shutdown_timeout {}, worker_timeout {}\n",
        s.backlog,
        human(s.shutdown_timeout),
        human(s.worker_timeout)
    );
    out += &format!(
        "proxy       {}, connect {}, request {}, retries {}\n",
        config_name(&config.proxy.load_balance),
        human(config.proxy.connect_timeout),
        human(config.proxy.request_timeout),
        config.proxy.retries
    );
    let h = &config.header_routing;
    if h.enabled {
        out += &format!(
            "header      {} with headers {} + {}\n",
            h.mount, h.service_header, h.path_header
        );
    } else {
        out += "header      routing disabled\n";
    }
    for r in &config.routes {
        out += &format!(
            "route       {}{} -> {}{}\n",
            r.host.as_deref().unwrap_or("*"),
            r.path_prefix,
            r.service,
            if r.strip_prefix { " (prefix stripped)" } else { "" }
        );
    }
    for (i, zk) in config.zookeeper.iter().enumerate() {
        out += &format!(
            "zookeeper   {}{}{} {} root {} format {}, session {}, keep_last_on_empty {}, removal_guard {}% (hold {})\n",
            zk.source_name(i),
            if zk.prefix.is_empty() { String::new() } else { format!(" (prefix {:?})", zk.prefix) },
            if zk.auth.is_some() { " (auth)" } else { "" },
            zk.hosts,
            zk.root,
            config_name(&zk.format),
            human(zk.session_timeout),
            zk.keep_last_on_empty,
            zk.removal_guard,
            human(zk.removal_hold)
        );
    }
    if let Some(a) = &config.admin {
        out += &format!(
            "admin       {}{}\n",
            a.listen,
            if a.token.is_some() { " (bearer token)" } else { "" }
        );
    }
    match (&config.cache.snapshot, config.zookeeper.first()) {
        (Some(s), Some(_)) => out += &format!("snapshot    {}\n", s.display()),
        (Some(s), None) => {
            out += &format!("snapshot    {} (unused without [zookeeper])\n", s.display())
        }
        _ => {}
    }
    for (name, svc) in &config.services {
        let instances: Vec<String> = svc
            .instances
            .iter()
            .flatten()
            .map(|i| {
                if i.weight == 1 {
                    i.address.clone()
                } else {
                    format!("{} (weight {})", i.address, i.weight)
                }
            })
            .collect();
        let lb = config_name(&svc.load_balance.unwrap_or(config.proxy.load_balance));
        let check = svc
            .health_check
            .as_ref()
            .map(|h| format!(", health check {}", h.path))
            .unwrap_or_default();
        if svc.instances.is_some() {
            out += &format!("service     {name}: {lb}{check}, static: {}\n", instances.join(", "));
        } else {
            out += &format!("service     {name}: {lb}{check}, discovered\n");
        }
    }
    out
}

/// How a value is written in gateway.toml (`round_robin`, not `RoundRobin`).
fn config_name<T: serde::Serialize>(v: &T) -> String {
    toml::Value::try_from(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// A duration as it is written in gateway.toml.
fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `host:port[,host:port…][/chroot]`, every host with a port.
/// The registry sources: each one's hosts and credentials; at most [`MAX_SOURCES`]; names
/// distinct; and two sources can never list the same service name unless prefixes tell them
/// apart (at most one source without a prefix, no two with the same one).
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

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;
    use worker::config::{AdminSettings, Format, HealthCheck, ZkSettings};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        super::parse(Path::new("gw.toml"), text)
    }

    #[test]
    fn an_empty_file_means_every_default() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(c.server.workers, Workers::Auto);
        assert_eq!(c.proxy.connect_timeout, Duration::from_secs(2));
        assert!(c.header_routing.enabled);
    }

    #[test]
    fn workers_take_a_per_core_multiple() {
        let c = parse("[server]\nworkers = \"2x\"\n").unwrap();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!((c.server.workers, c.server.workers.resolve()), (Workers::PerCore(2), 2 * cpus));
        assert!(summary(&c, None).contains("per CPU on this machine"));
        for bad in ["\"0x\"", "\"65x\"", "\"x\"", "\"2y\""] {
            assert!(parse(&format!("[server]\nworkers = {bad}\n")).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_file_line_and_column() {
        let e = parse("[server]\nlisten = [\"127.0.0.1:1\"]\nworkerz = 2\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("gw.toml:3:1: unknown field `workerz`"), "{msg}");
    }

    #[test]
    fn bad_values_name_their_position() {
        let e = parse("[proxy]\nconnect_timeout = \"2 parsecs\"\n").unwrap_err();
        assert_eq!(e.position, Some((2, 19)), "{e}");
        assert!(e.message.contains("invalid duration"), "{e}");
        let e = parse("[services.a]\ninstances = [\"10.0.0.1\"]\n").unwrap_err();
        assert!(e.message.contains("port is required"), "{e}");
        let e = parse("[[route]]\npath_prefix = \"users\"\nservice = \"a\"\n").unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(2), "{e}");
        let e = parse("[server]\nworkers = 0\n").unwrap_err();
        assert!(e.message.contains("between 1 and 1024"), "{e}");
    }

    #[test]
    fn values_out_of_their_bounds_are_refused_with_their_position() {
        for (text, line, what) in [
            ("[server]\nworker_timeout = \"0s\"\n", 2, "between 2s and 1h"),
            ("[server]\nshutdown_timeout = \"100000000000s\"\n", 2, "out of range"),
            ("[proxy]\nretries = 1000\n", 2, "between 0 and 10"),
            ("[proxy]\nmax_header_bytes = 10\n", 2, "between 1024"),
            ("[server]\nbacklog = 0\n", 2, "between 1 and 65535"),
            ("\n[proxy.outlier]\nmax_ejection_percent = 101\n", 3, "between 0 and 100"),
            ("[zookeeper]\nhosts = \"127.0.0.1:1\"\nsession_timeout = \"1ms\"\n", 3, "between 1s"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.position.map(|p| p.0), Some(line), "{text}: {e}");
            assert!(e.message.contains(what), "{text}: {e}");
        }
    }

    #[test]
    fn an_unknown_user_is_found_by_check() {
        let e = parse("[server]\nuser = \"no-such-user-zkgate\"\n").unwrap_err();
        assert!(
            e.message.contains("server.user") && e.message.contains("no-such-user-zkgate"),
            "{e}"
        );
    }

    #[test]
    fn an_instance_that_is_the_gateway_itself_is_refused() {
        let e = parse("[server]\nlisten = [\"0.0.0.0:8080\"]\n[services.a]\ninstances = [\"127.0.0.1:8080\"]\n")
            .unwrap_err();
        assert!(e.message.contains("own address"), "{e}");
    }

    #[test]
    fn a_route_to_a_service_without_instances_is_an_error() {
        let e = parse("[[route]]\npath_prefix = \"/a\"\nservice = \"missing\"\n").unwrap_err();
        assert!(e.to_string().contains("route[0].service"), "{e}");
    }

    #[test]
    fn zookeeper_hosts_are_checked_and_allow_discovered_routes() {
        let ok = parse("[zookeeper]\nhosts = \"127.0.0.1:2181,127.0.0.1:2182/chroot\"\nformat = \"nerve\"\n[[route]]\npath_prefix = \"/a\"\nservice = \"a\"\n[services.a]\nload_balance = \"weighted\"\n").unwrap();
        assert_eq!(ok.zookeeper[0].format, Format::Nerve);
        let e = parse("[zookeeper]\nhosts = \"127.0.0.1\"\n").unwrap_err();
        assert!(e.message.contains("zookeeper.hosts"), "{e}");
        let e =
            parse("[zookeeper]\nhosts = \"127.0.0.1:2181\"\nformat = \"eureka\"\n").unwrap_err();
        assert!(e.message.contains("unknown variant `eureka`"), "{e}");
    }

    #[test]
    fn service_options_are_checked() {
        let e = parse(
            "[services.a]\ninstances = [\"127.0.0.1:1\"]\nweights = { \"127.0.0.1:1\" = 2 }\n",
        )
        .unwrap_err();
        assert!(e.message.contains("services.a.weights"), "{e}");
        let e = parse(
            "[services.a]\ninstances = [\"127.0.0.1:1\"]\nhealth_check = { path = \"health\" }\n",
        )
        .unwrap_err();
        assert!(e.message.contains("must start with '/'"), "{e}");
    }

    #[test]
    fn a_public_admin_listener_needs_a_token() {
        let e = parse("[admin]\nlisten = \"0.0.0.0:9901\"\n").unwrap_err();
        assert!(e.message.contains("admin.token"), "{e}");
        assert!(
            parse("[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"s3cret-s3cret-s3cret\"\n").is_ok()
        );
        let e = parse("[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"s3cret\"\n").unwrap_err();
        assert!(e.message.contains("at least 16"), "{e}");
        assert!(parse("[admin]\n").is_ok(), "loopback by default");
    }

    #[test]
    fn instances_take_both_forms() {
        let c =
            parse("[services.user]\ninstances = [\"127.0.0.1:9001\", { address = \"127.0.0.1:9002\", weight = 3 }]\n")
                .unwrap();
        let i = c.services["user"].instances.as_ref().unwrap();
        assert_eq!((i[0].weight, i[1].weight), (1, 3));
    }

    /// The shipped gateway.toml, without its example sections, must mean exactly the defaults:
    /// what it documents is what an operator gets by leaving a key out.
    #[test]
    fn the_shipped_gateway_toml_documents_the_real_defaults() {
        let shipped = include_str!("../gateway.toml");
        let c = parse(shipped).expect("gateway.toml parses");
        let d = Config::default();
        assert_eq!(c.server, d.server);
        assert_eq!(c.proxy, d.proxy);
        assert_eq!(c.header_routing, d.header_routing);
        assert_eq!(c.log, d.log);
        assert_eq!(c.admin, Some(AdminSettings::default()));
        assert_eq!(d.cache.snapshot, None, "no snapshot unless configured");
        let shipped_snapshot = c.cache.snapshot.as_deref().map(|p| p.display().to_string());
        assert_eq!(
            shipped_snapshot.as_deref(),
            Some("/var/lib/zkgate/routes.json"),
            "shipped enabled"
        );
        // The commented-out sections document defaults too: uncomment them and compare.
        let uncommented = |section: &str| -> String {
            let start = shipped.find(&format!("# [{section}]")).expect("section documented");
            shipped[start..]
                .lines()
                .take_while(|l| l.starts_with("# "))
                .map(|l| l.trim_start_matches("# "))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let zk: Config =
            toml::from_str(&uncommented("zookeeper")).expect("[zookeeper] example parses");
        let zk = zk.zookeeper.into_iter().next().expect("zookeeper");
        let want = ZkSettings {
            hosts: zk.hosts.clone(),
            serverset_endpoint: zk.serverset_endpoint.clone(),
            ..Default::default()
        };
        assert_eq!(zk, want, "[zookeeper] comments show the defaults");
        let line = shipped
            .lines()
            .find(|l| l.starts_with("# health_check = "))
            .expect("health_check documented");
        let hc: toml::Table =
            toml::from_str(line.trim_start_matches("# ")).expect("health_check example parses");
        let hc: HealthCheck = hc["health_check"].clone().try_into().expect("health_check");
        assert_eq!(hc, HealthCheck { path: hc.path.clone(), ..Default::default() });
        let services = c.services.get("demo").expect("example service");
        assert_eq!(services.load_balance, None);
    }

    #[test]
    fn summary_warns_when_slow_after_reaches_request_timeout() {
        let base = "[server]\nlisten = [\"127.0.0.1:8080\"]\n[proxy]\nrequest_timeout = \"5s\"\n";
        let c = parse(base).unwrap();
        assert!(summary(&c, None)
            .contains("warning     proxy.outlier.slow_after (5s) >= proxy.request_timeout (5s)"));
        let c = parse(&format!("{base}[proxy.outlier]\nslow_after = \"2s\"\n")).unwrap();
        assert!(!summary(&c, None).contains("warning"));
    }
}
