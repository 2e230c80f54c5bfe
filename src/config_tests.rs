//! Unit tests of `config.rs`.
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
        } else if let Some((key, _)) = line.split_once(" = ").filter(|_| !line.starts_with('#')) {
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
    assert!(e.message.contains("server.user") && e.message.contains("no-such-user-zkgate"), "{e}");
}

#[test]
fn an_instance_that_is_the_gateway_itself_is_refused() {
    let e = parse(
        "[server]\nlisten = [\"0.0.0.0:8080\"]\n[services.a]\ninstances = [\"127.0.0.1:8080\"]\n",
    )
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
    let e = parse("[zookeeper]\nhosts = \"127.0.0.1:2181\"\nformat = \"eureka\"\n").unwrap_err();
    assert!(e.message.contains("unknown variant `eureka`"), "{e}");
}

#[test]
fn service_options_are_checked() {
    let e =
        parse("[services.a]\ninstances = [\"127.0.0.1:1\"]\nweights = { \"127.0.0.1:1\" = 2 }\n")
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
    assert!(parse("[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"s3cret-s3cret-s3cret\"\n").is_ok());
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
    assert_eq!(shipped_snapshot.as_deref(), Some("/var/lib/zkgate/routes.json"), "shipped enabled");
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
    let zk: Config = toml::from_str(&uncommented("zookeeper")).expect("[zookeeper] example parses");
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
