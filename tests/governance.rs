//! Registry-native: what teams already write into ZooKeeper to steer traffic is honoured, and the
//! gateway says why a request goes where it goes. Real ZooKeeper, real gateway processes, the
//! nodes laid out as Spring Cloud Zookeeper and dubbo-admin write them.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::http::request;
use support::zk::{java_url_encode, Zk};
use support::{Backend, Gateway, Toml};

/// A Spring Cloud Zookeeper registration (a Curator `ServiceInstance<ZookeeperInstance>`) for
/// `address` (`host:port`), with `instance_status`.
fn spring(service: &str, id: &str, address: &str, status: &str) -> Vec<u8> {
    let (host, port) = address.rsplit_once(':').unwrap();
    format!(
        r#"{{"name":"{service}","id":"{id}","address":"{host}","port":{port},"sslPort":null,"payload":{{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance","id":"{service}-1","name":"{service}","metadata":{{"instance_status":"{status}"}}}},"registrationTimeUTC":1549987777777,"serviceType":"DYNAMIC","uriSpec":{{"parts":[{{"value":"scheme","variable":true}},{{"value":"://","variable":false}},{{"value":"address","variable":true}},{{"value":":","variable":false}},{{"value":"port","variable":true}}]}}}}"#
    )
    .into_bytes()
}

/// Which backends answered `n` requests to `path`, and how often.
fn shares(port: u16, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        if let Ok(r) = request(port, "GET", path, &[], b"") {
            if r.status == 200 {
                *m.entry(r.backend()).or_default() += 1;
            }
        }
    }
    m
}

#[test]
fn a_spring_instance_out_of_service_leaves_rotation_within_a_second_and_comes_back() {
    let zk = Zk::standalone();
    let c = zk.client();
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    // Spring Cloud Zookeeper registers the host name unless prefer-ip-address is set.
    let named = format!("localhost:{}", b2.addr.port());
    c.create("/services/web/i1", &spring("web", "i1", &b1.address(), "UP"), false);
    c.create("/services/web/i2", &spring("web", "i2", &named, "UP"), false);
    let gw = Gateway::with(Toml::new().zookeeper(&zk, "format = \"curator\"").route_all("web"))
        .workers(2)
        .admin()
        .start();
    assert_eventually!(
        10,
        shares(gw.port, "/", 20).len() == 2,
        "both instances, one registered by host name, are routed:\n{}",
        gw.log()
    );
    // The blue/green switch: OUT_OF_SERVICE through Spring's service-registry endpoint.
    c.set("/services/web/i2", &spring("web", "i2", &named, "OUT_OF_SERVICE"));
    let flipped = Instant::now();
    assert_eventually!(
        5,
        shares(gw.port, "/", 10).keys().all(|b| b == "b1"),
        "the out-of-service instance still takes traffic"
    );
    let took = flipped.elapsed();
    eprintln!(
        "governance: OUT_OF_SERVICE left rotation after {took:?} (10 requests' probe included)"
    );
    assert!(shares(gw.port, "/", 40).keys().all(|b| b == "b1"));
    // /explain says why, by service name or by resolving the route.
    let why = gw.admin_get("/explain?service=web").json();
    let out = &why["not_routed"][0];
    assert_eq!(out["node"], "i2", "{why}");
    assert_eq!(out["state"], "out of service", "{why}");
    assert!(out["why"].as_str().unwrap().contains("OUT_OF_SERVICE"), "{why}");
    let routed = gw.admin_get("/explain?host=any.example&path=/x").json();
    assert_eq!(routed["service"], "web", "{routed}");
    assert_eq!(routed["instances"][0]["state"], "routable", "{routed}");
    // And back.
    c.set("/services/web/i2", &spring("web", "i2", &named, "UP"));
    assert_eventually!(5, shares(gw.port, "/", 20).len() == 2, "UP again: not back in rotation");
}

#[test]
fn registry_reports_every_node_with_its_outcome_and_a_missing_root_is_stated() {
    let zk = Zk::standalone();
    let c = zk.client();
    let b1 = Backend::start("b1");
    c.create("/services/web/good", &spring("web", "good", &b1.address(), "UP"), false);
    c.create("/services/web/broken", b"{not json", false);
    c.create("/services/web/multicast", &spring("web", "m", "224.0.0.1:80", "UP"), false);
    let gw = Gateway::with(Toml::new().zookeeper(&zk, "format = \"curator\"").route_all("web"))
        .workers(1)
        .admin()
        .start();
    let registry = gw.admin_get("/registry").json();
    let source = &registry["sources"][0];
    assert_eq!(source["format"], "curator", "{registry}");
    assert_eq!(source["root_exists"], true, "{registry}");
    assert_eq!(source["session"], "connected", "{registry}");
    let web = &source["services"]["web"];
    assert_eq!((web["accepted"].as_u64(), web["rejected"].as_u64()), (Some(1), Some(2)), "{web}");
    let node = |name: &str| {
        web["nodes"].as_array().unwrap().iter().find(|n| n["node"] == name).cloned().unwrap()
    };
    assert_eq!(node("good")["outcome"], "accepted");
    assert!(
        node("good")["mzxid"].as_i64().is_some()
            && node("good")["changed_unix_ms"].as_i64().is_some()
    );
    assert_eq!(node("broken")["outcome"], "rejected");
    assert!(node("broken")["reason"].as_str().unwrap().contains("not JSON"), "{web}");
    assert!(node("multicast")["reason"].as_str().unwrap().contains("multicast"), "{web}");

    // A root that does not exist (a typo) is stated, in the log and in /registry.
    let typo = Gateway::with(
        Toml::new().zookeeper(&zk, "format = \"curator\"\nroot = \"/servces\"").route_all("web"),
    )
    .workers(1)
    .admin()
    .start();
    assert!(typo.log().contains("registry root /servces does not exist"), "{}", typo.log());
    assert_eq!(typo.admin_get("/registry").json()["sources"][0]["root_exists"], false);
}

/// A Dubbo REST provider node name, as Dubbo's ZookeeperRegistry writes it.
fn provider(iface: &str, address: &str, extra: &str) -> String {
    java_url_encode(&format!(
        "rest://{address}/{iface}?anyhost=true&application=p&dubbo=2.0.2&interface={iface}&side=provider&timestamp=1700000000000&weight=100{extra}"
    ))
}

/// A dubbo-admin override node name.
fn override_rule(iface: &str, address: &str, params: &str) -> String {
    java_url_encode(&format!(
        "override://{address}/{iface}?category=configurators&dynamic=false&enabled=true&{params}"
    ))
}

#[test]
fn dubbo_admin_overrides_disable_one_provider_and_double_anothers_share_then_go_away() {
    let zk = Zk::standalone();
    let c = zk.client();
    let (b1, b2, b3) = (Backend::start("p1"), Backend::start("p2"), Backend::start("p3"));
    let iface = "com.example.OrderService";
    let base = format!("/dubbo/{iface}");
    for b in [&b1, &b2, &b3] {
        c.create(&format!("{base}/providers/{}", provider(iface, &b.address(), "")), b"", true);
    }
    c.create(&format!("{base}/configurators"), b"", false);
    let toml = Toml::new()
        .proxy("load_balance = \"weighted\"")
        .zookeeper(&zk, "root = \"/dubbo\"\nformat = \"dubbo\"")
        .section("[[route]]", &format!("path_prefix = \"/\"\nservice = \"{iface}\""));
    let gw = Gateway::with(toml).workers(2).admin().start();
    assert_eventually!(10, shares(gw.port, "/", 30).len() == 3, "three providers");
    // dubbo-admin: "disable provider" p1, "weight" 200 for p2.
    let disable =
        format!("{base}/configurators/{}", override_rule(iface, &b1.address(), "disabled=true"));
    let heavier =
        format!("{base}/configurators/{}", override_rule(iface, &b2.address(), "weight=200"));
    c.create(&disable, b"", false);
    c.create(&heavier, b"", false);
    let changed = Instant::now();
    assert_eventually!(5, !shares(gw.port, "/", 12).contains_key("p1"), "p1 still routed");
    eprintln!("governance: overrides applied after {:?}", changed.elapsed());
    let s = shares(gw.port, "/", 600);
    let (p2, p3) = (s.get("p2").copied().unwrap_or(0), s.get("p3").copied().unwrap_or(0));
    eprintln!("governance: with the overrides, p2 {p2}, p3 {p3} of 600 ({s:?})");
    assert!(!s.contains_key("p1"), "{s:?}");
    let ratio = p2 as f64 / p3 as f64;
    assert!((1.7..=2.3).contains(&ratio), "p2 should get twice p3's share: {s:?}");
    let why = gw.admin_get(&format!("/explain?service={iface}")).json();
    assert!(why.to_string().contains("disabled by a dubbo-admin override"), "{why}");
    assert!(why.to_string().contains("overridden to 200"), "{why}");
    // Overrides removed: the registry's values again.
    c.delete(&disable);
    c.delete(&heavier);
    assert_eventually!(5, shares(gw.port, "/", 30).len() == 3, "p1 not back");
    let s = shares(gw.port, "/", 300);
    let spread = s.values().max().unwrap() - s.values().min().unwrap();
    assert!(spread <= 30, "equal weights again: {s:?}");
}

#[test]
fn slow_start_ramps_a_new_instances_share_over_its_first_seconds() {
    let zk = Zk::standalone();
    let c = zk.client();
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    c.create("/services/web/old", &spring("web", "old", &old.address(), "UP"), false);
    let toml = Toml::new()
        .proxy("slow_start = \"6s\"")
        .zookeeper(&zk, "format = \"curator\"")
        .route_all("web");
    let gw = Gateway::with(toml).workers(1).admin().start();
    assert_eventually!(10, shares(gw.port, "/", 5).contains_key("old"), "old not routed");
    // Registered now (registrationTimeUTC): its weight ramps from 0 to full over 6 s.
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let data = String::from_utf8(spring("web", "new", &new.address(), "UP"))
        .unwrap()
        .replace("1549987777777", &now_ms.to_string());
    c.create("/services/web/new", data.as_bytes(), false);
    let registered = Instant::now();
    assert_eventually!(5, shares(gw.port, "/", 50).contains_key("new"), "new never routed");
    let early = shares(gw.port, "/", 200);
    let early_at = registered.elapsed();
    let explained = gw.admin_get("/explain?service=web").json();
    assert!(explained.to_string().contains("slow start"), "{explained}");
    // After the ramp: an even split.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(registered.elapsed()));
    assert_eventually!(
        3,
        gw.admin_get("/explain?service=web").json()["instances"][1]["ramping"].is_null(),
        "still ramping"
    );
    let late = shares(gw.port, "/", 200);
    let share = |m: &BTreeMap<String, usize>| {
        m.get("new").copied().unwrap_or(0) as f64 / m.values().sum::<usize>().max(1) as f64
    };
    eprintln!(
        "governance: slow start 6 s: the new instance took {:.0} % of requests {early_at:?} after registering, {:.0} % after the ramp",
        100.0 * share(&early),
        100.0 * share(&late)
    );
    assert!(share(&early) < 0.4, "{early:?}");
    assert!((0.4..=0.6).contains(&share(&late)), "{late:?}");
}

#[test]
fn two_registries_one_behind_digest_acls_are_served_at_once_and_losing_one_keeps_the_other() {
    let spring_zk = Zk::standalone();
    let mut dubbo_zk = Zk::standalone();
    let (s1, d1, d2) =
        (Backend::start("spring-1"), Backend::start("dubbo-1"), Backend::start("dubbo-2"));
    let plain = spring_zk.client();
    plain.create("/services/web/i1", &spring("web", "i1", &s1.address(), "UP"), false);
    // The Dubbo ensemble's registry is readable only with credentials.
    let owner = support::zk::ZkClient::connect_as(&dubbo_zk.hosts(), "gateway", "s3cret");
    let iface = "com.example.Orders";
    owner.create_private(
        &format!("/dubbo/{iface}/providers/{}", provider(iface, &d1.address(), "")),
        b"",
    );
    assert!(!dubbo_zk.client().can_list(&format!("/dubbo/{iface}/providers")), "the ACL holds");
    let toml = format!(
        "{}\n[[zookeeper]]\nname = \"spring\"\nhosts = \"{}\"\nformat = \"curator\"\nsession_timeout = \"4s\"\nconnect_timeout = \"2s\"\n\n[[zookeeper]]\nname = \"dubbo\"\nhosts = \"{}\"\nroot = \"/dubbo\"\nformat = \"dubbo\"\nprefix = \"dubbo.\"\nauth = \"digest:gateway:s3cret\"\nsession_timeout = \"4s\"\nconnect_timeout = \"2s\"\n\n[[route]]\npath_prefix = \"/orders\"\nservice = \"dubbo.{iface}\"\n\n[[route]]\npath_prefix = \"/\"\nservice = \"web\"\n",
        Toml::new(),
        spring_zk.hosts(),
        dubbo_zk.hosts()
    );
    let gw = Gateway::with(toml).workers(2).admin().start();
    assert_eventually!(
        10,
        shares(gw.port, "/", 5).contains_key("spring-1"),
        "spring source not routed"
    );
    assert_eventually!(
        10,
        shares(gw.port, "/orders/1", 5).contains_key("dubbo-1"),
        "the ACL-protected dubbo source not routed:\n{}",
        gw.log()
    );
    let registry = gw.admin_get("/registry").json();
    assert_eq!(registry["sources"].as_array().unwrap().len(), 2, "{registry}");
    assert_eq!(registry["sources"][1]["name"], "dubbo");
    assert_eq!(registry["sources"][1]["auth"], "digest");
    assert!(
        gw.admin_get("/metrics")
            .body_text()
            .contains("zkgate_zookeeper_session_state{slot=\"0\",source=\"dubbo\"} 1"),
        "per-source series"
    );
    // The Dubbo ensemble dies: its routes stay (last known), and the Spring source's changes
    // keep flowing.
    dubbo_zk.kill(0);
    let s2 = Backend::start("spring-2");
    plain.create("/services/web/i2", &spring("web", "i2", &s2.address(), "UP"), false);
    assert_eventually!(
        10,
        shares(gw.port, "/", 20).contains_key("spring-2"),
        "a change in the live registry did not flow while the other was down"
    );
    assert!(
        shares(gw.port, "/orders/1", 10).contains_key("dubbo-1"),
        "the dead registry's routes were dropped"
    );
    assert!(
        gw.metric("zkgate_zookeeper_session_state", "source=\"dubbo\"") >= 4,
        "the loss shows per source"
    );
    drop(d2);
}

#[test]
fn a_registry_reached_over_tls_is_routed_and_an_untrusted_ca_is_refused() {
    let pki = support::pki::Pki::new();
    let (zk, secure) = Zk::standalone_tls(&pki);
    let c = zk.client();
    let b1 = Backend::start("b1");
    c.create("/services/web/i1", &spring("web", "i1", &b1.address(), "UP"), false);
    let source = |ca: &std::path::Path| {
        format!(
            "[zookeeper]\nhosts = \"127.0.0.1:{secure}\"\nformat = \"curator\"\nsession_timeout = \"4s\"\nconnect_timeout = \"2s\"\ntls = {{ ca = \"{}\" }}\n\n[[route]]\npath_prefix = \"/\"\nservice = \"web\"\n",
            ca.display()
        )
    };
    let gw = Gateway::with(source(&pki.ca_file())).workers(1).admin().start();
    assert_eventually!(
        10,
        shares(gw.port, "/", 5).contains_key("b1"),
        "not routed from the TLS registry:\n{}",
        gw.log()
    );
    assert_eq!(gw.admin_get("/registry").json()["sources"][0]["session"], "connected");
    // Another CA: the server's certificate is refused, nothing is routed from it.
    let other = support::pki::Pki::new();
    let refused = Gateway::with(source(&other.ca_file())).workers(1).admin().spawn();
    assert_eventually!(
        15,
        refused.log().contains("cannot connect"),
        "a server certificate from an untrusted CA was accepted:\n{}",
        refused.log()
    );
    assert_ne!(refused.admin_get("/registry").json()["sources"][0]["session"], "connected");
}
