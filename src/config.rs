//! `gateway.toml` → typed configuration, checked once here at the binary's edge.
//!
//! The types and defaults live in `worker::config` (their one home); this module owns the
//! whole-file parse (paths resolved from the file's directory, the files it names read),
//! errors that name the file, line and column, and the supervisor's part of the
//! configuration. The checks that span sections are in `checks` and `edge_checks`,
//! `zkgate check`'s summary in `summary`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::checks::check;
pub use worker::config::Config;
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

/// Reads, parses and checks a configuration file; files it names (`upstream_ca`) are
/// resolved from its directory and read, so a worker never meets an unreadable one. With
/// `[fleet]`, the release the host last applied (its cache) supplies the dynamic sections; a
/// cached release that no longer fits the file is set aside (logged) and the file serves.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read(path)?;
    let config = parse(path, &text)?;
    let Some(fleet) = &config.fleet else { return finish(path, config) };
    let cache = crate::fleet::cache_dir(path, &config);
    let Some((id, release)) = crate::fleet::current(&cache) else {
        return finish(path, config);
    };
    match load_release(path, &text, &release) {
        Ok(mut with_release) => {
            with_release.release = Some(id);
            Ok(with_release)
        }
        Err(e) => {
            log::warn!(
                "fleet {}: cached release {id} set aside ({e}); serving {} alone",
                fleet.cluster,
                path.display()
            );
            finish(path, config)
        }
    }
}

/// The file's text.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        position: None,
        message: format!("cannot read: {e}"),
    })
}

/// The file `text` (at `path`) with a release's dynamic sections, parsed and checked as
/// [`load`] checks a file: what a host runs `zkgate config` releases through before serving
/// one.
pub fn load_release(path: &Path, text: &str, release: &str) -> Result<Config, ConfigError> {
    let refuse =
        |message: String| ConfigError { path: path.to_path_buf(), position: None, message };
    // A wrong value is reported at its line in the release, then the whole is checked.
    deserialize(Path::new("release"), release)?;
    let merged = crate::fleet::overlay(text, release).map_err(refuse)?;
    let config = parse(Path::new("release"), &merged).map_err(|e| ConfigError {
        position: None, // a line of the merged document would point nowhere the operator knows
        ..e
    })?;
    finish(path, config)
}

/// Resolves the paths a configuration names from `path`'s directory and reads the files.
fn finish(path: &Path, mut config: Config) -> Result<Config, ConfigError> {
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
    let config = deserialize(path, text)?;
    check(&config).map_err(|message| ConfigError {
        path: path.to_path_buf(),
        position: None,
        message,
    })?;
    Ok(config)
}

/// The text as typed sections, unchecked. The dotted key of a wrong value goes in the message
/// ("auth.idp.leeway: …"), toml's span gives its line and column.
fn deserialize(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let config: Config =
        serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            let key = e.path().to_string();
            let e = e.into_inner();
            let message = e.message().trim();
            ConfigError {
                path: path.to_path_buf(),
                position: e.span().map(|s| line_col(text, s.start)),
                message: match key.as_str() {
                    "" | "." | "?" => message.to_string(),
                    _ => format!("{key}: {message}"),
                },
            }
        })?;
    Ok(config)
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
    use crate::summary::summary;
    use std::collections::BTreeMap;
    use std::time::Duration;
    use worker::config::Workers;
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
        assert!(msg.starts_with("gw.toml:3:1: server.workerz: unknown field `workerz`"), "{msg}");
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

    /// The dotted key of every `key = value` line of `text`, by line number (1-based): the
    /// section's path (`route[0]` for the first `[[route]]`), then the key.
    fn keys_of(text: &str) -> Vec<(usize, String)> {
        let (mut section, mut arrays) = (String::new(), BTreeMap::<String, usize>::new());
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
                let i = arrays.entry(name.to_string()).and_modify(|i| *i += 1).or_insert(0);
                section = format!("{name}[{i}]");
            } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
            } else if let Some((key, _)) = line.split_once(" = ").filter(|_| !line.starts_with('#'))
            {
                keys.push((n + 1, format!("{section}.{}", key.trim())));
            }
        }
        keys
    }

    /// Every key of `text` given a value of a type no key takes (an array of arrays) is refused
    /// with a message naming that key, at its line.
    fn every_wrong_type_names_its_key(text: &str) {
        let keys = keys_of(text);
        assert!(keys.len() > 10, "{keys:?}");
        for (line, key) in keys {
            let broken: Vec<String> = text
                .lines()
                .enumerate()
                .map(|(n, l)| match (n + 1 == line, l.split_once(" = ")) {
                    (true, Some((k, _))) => format!("{k} = [[1]]"),
                    _ => l.to_string(),
                })
                .collect();
            let e = parse(&broken.join("\n")).unwrap_err();
            assert!(e.message.starts_with(&key), "{key} (line {line}): {e}");
            assert_eq!(e.position.map(|p| p.0), Some(line), "{key}: {e}");
        }
    }

    #[test]
    fn a_wrong_type_at_any_key_names_the_key_and_its_line() {
        every_wrong_type_names_its_key(include_str!("../gateway.toml"));
        // The sections the shipped file shows commented out.
        every_wrong_type_names_its_key(concat!(
            "[server]\nlisten = [\"127.0.0.1:8080\"]\nlisten_tls = [\"127.0.0.1:8443\"]\n",
            "[zookeeper]\nhosts = \"127.0.0.1:2181\"\nroot = \"/services\"\nformat = \"registrator\"\n",
            "session_timeout = \"10s\"\nkeep_last_on_empty = true\nremoval_guard = \"50%\"\nremoval_hold = \"60s\"\n",
            "[services.web]\nload_balance = \"weighted\"\nmax_requests = 10\n",
            "health_check = { path = \"/h\", interval = \"5s\" }\n",
            "[[route]]\npath_prefix = \"/\"\nservice = \"web\"\nauth = \"idp\"\n",
            "[[rate_limit]]\nservice = \"web\"\nper = \"identity\"\nrate = \"10/s\"\nburst = 5\n",
            "[auth.idp]\ntype = \"jwt\"\njwks = \"/x\"\nissuer = \"i\"\naudience = \"api\"\n",
            "leeway = \"30s\"\ncookie = \"s\"\nhide_credentials = true\n",
            "[auth.ops]\ntype = \"basic\"\nhtpasswd = \"/h\"\nrealm = \"r\"\n",
            "[tracing]\nsample = 0.5\nhonour_client_sampling = true\nmax_exported_per_second = 10\n",
        ));
    }

    #[test]
    fn fifty_invalid_releases_are_refused_and_the_valid_one_passes() {
        let local = "[server]\nlisten = [\"127.0.0.1:8080\"]\n[zookeeper]\nhosts = \"127.0.0.1:1\"\n[fleet]\ncluster = \"c\"\n";
        let release = concat!(
            "[header_routing]\nenabled = true\nmount = \"/services\"\n",
            "[services.web]\nload_balance = \"weighted\"\nmax_requests = 10\n",
            "health_check = { path = \"/h\", interval = \"5s\" }\n",
            "[services.api]\ninstances = [\"127.0.0.1:9001\"]\nslow_start = \"10s\"\n",
            "[[route]]\npath_prefix = \"/api\"\nservice = \"api\"\nstrip_prefix = true\nauth = \"idp\"\n",
            "[[route]]\nhost = \"a.example\"\npath_prefix = \"/\"\nservice = \"web\"\n",
            "[[rate_limit]]\nservice = \"web\"\nper = \"client_ip\"\nrate = \"10/s\"\nburst = 5\n",
            "[auth.idp]\ntype = \"jwt\"\njwks_url = \"https://idp.example/jwks\"\naudience = \"api\"\n",
            "leeway = \"30s\"\nhide_credentials = true\n",
            "[tracing]\nsample = 0.5\nmax_exported_per_second = 10\n",
        );
        let path = Path::new("gw.toml");
        load_release(path, local, release).expect("the valid release");
        let keys = keys_of(release);
        let mut refused = 0;
        for (line, key) in &keys {
            // The key with a value of a type no key takes, then the key misspelt.
            for variant in [" = [[1]]", "x = 1"] {
                let broken: Vec<String> = release
                    .lines()
                    .enumerate()
                    .map(|(i, l)| match (i + 1 == *line, l.split_once(" = ")) {
                        (true, Some((k, _))) => format!("{k}{variant}"),
                        _ => l.to_string(),
                    })
                    .collect();
                let e = load_release(path, local, &broken.join("\n"));
                assert!(e.is_err(), "{key} ({variant}) was accepted");
                refused += 1;
            }
        }
        for structural in ["[server]\nworkers = 1\n", "[[route]\n", "[admin]\n", "tracing = 3\n"] {
            assert!(load_release(path, local, structural).is_err(), "{structural}");
            refused += 1;
        }
        assert!(refused >= 50, "only {refused} invalid releases tried");
    }

    #[test]
    fn registry_namespaces_never_overlap() {
        let two = |a: &str, b: &str| {
            format!("[[zookeeper]]\nhosts = \"127.0.0.1:1\"\nroot = \"/a\"\nprefix = \"{a}\"\n[[zookeeper]]\nhosts = \"127.0.0.1:1\"\nroot = \"/b\"\nprefix = \"{b}\"\n")
        };
        assert!(parse(&two("", "dubbo.")).is_ok(), "the unprefixed source leaves dubbo.* alone");
        let e = parse(&two("dubbo.", "dubbo.v2.")).unwrap_err();
        assert!(e.message.contains("is a prefix of"), "{e}");
        let e = parse(&two("x.", "x.")).unwrap_err();
        assert!(e.message.contains("two sources with prefix"), "{e}");
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

    #[test]
    fn summary_warns_when_the_file_names_more_services_than_the_host_table_holds() {
        let mut text = String::from("[server]\nlisten = [\"127.0.0.1:8080\"]\n");
        for n in 0..worker::host::MAX_SERVICES - 1 {
            text += &format!("[services.s{n}]\ninstances = [\"127.0.0.1:{}\"]\n", 9000 + n);
        }
        let c = parse(&text).unwrap();
        let s = summary(&c, None);
        assert!(s.contains("1023 services named, the host's service table has 1022 rows"), "{s}");
    }
}
