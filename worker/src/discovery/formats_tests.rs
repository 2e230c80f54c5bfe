//! Unit tests of the registry formats (`formats.rs`).
use super::*;

#[test]
fn unusable_registry_addresses_are_refused_in_every_format() {
    for bad in [
        "10.0.0.1:0",
        ":80",
        "10.0.0.1:+80",
        "127.1:80",
        "0x7f:80",
        "2130706433:80",
        "-bad.example:80",
        "under_score.example:80",
        "[::ffff:0.0.0.0]:80",
        "0.0.0.0:80",
        "[::]:80",
        "224.0.0.1:80",
        "255.255.255.255:80",
        "10.0.0.1:65536",
        "10.0.0.1:80 ",
        "10.0.0.1",
    ] {
        assert!(
            Format::Registrator.parse(bad, b"", None, false).is_err(),
            "registrator accepted {bad:?}"
        );
    }
    assert_eq!(
        addr(Format::Registrator.parse("[::1]:8080", b"", None, false)),
        Some(("[::1]:8080".into(), 1))
    );
    let curator = |a: &str, p: u64| format!("{{\"address\":\"{a}\",\"port\":{p}}}");
    assert_eq!(
        addr(Format::Curator.parse("id", curator("app-1.default.svc", 80).as_bytes(), None, false)),
        Some(("app-1.default.svc:80".into(), 1)),
        "a host name is an instance, resolved when connecting"
    );
    assert!(Format::Curator
        .parse("id", curator("::ffff:224.0.0.1", 80).as_bytes(), None, false)
        .is_err());
    assert!(Format::Curator.parse("id", curator("0.0.0.0", 80).as_bytes(), None, false).is_err());
    assert!(Format::Curator.parse("id", curator("10.0.0.1", 0).as_bytes(), None, false).is_err());
    let nerve = |w: u64| format!("{{\"host\":\"10.0.0.1\",\"port\":80,\"weight\":{w}}}");
    assert!(Format::Nerve.parse("i_1", nerve(MAX_WEIGHT as u64).as_bytes(), None, false).is_ok());
    assert!(Format::Nerve
        .parse("i_1", nerve(MAX_WEIGHT as u64 + 1).as_bytes(), None, false)
        .is_err());
    let ss = br#"{"serviceEndpoint":{"host":"::","port":80},"status":"ALIVE"}"#;
    assert!(Format::Serverset.parse("member_1", ss, None, false).is_err());
}

fn addr(r: Result<Node, String>) -> Option<(String, u32)> {
    r.unwrap().instance().map(|i| (i.address, i.weight))
}

#[test]
fn registrator_reads_the_node_name() {
    assert_eq!(
        addr(Format::Registrator.parse("10.0.0.5:8080", b"", None, false)),
        Some(("10.0.0.5:8080".into(), 1))
    );
    assert!(Format::Registrator.parse("not-an-address", b"", None, false).is_err());
}

#[test]
fn curator_reads_service_instance_json_and_honours_enabled() {
    let d = br#"{"name":"test","id":"ca2fff8e","address":"10.20.30.40","port":1234,"sslPort":null,"payload":null,"registrationTimeUTC":1325129459728,"serviceType":"DYNAMIC","uriSpec":{"parts":[]}}"#;
    assert_eq!(
        addr(Format::Curator.parse("ca2fff8e", d, None, false)),
        Some(("10.20.30.40:1234".into(), 1))
    );
    let off = br#"{"address":"10.0.0.1","port":80,"enabled":false}"#;
    assert_eq!(addr(Format::Curator.parse("x", off, None, false)), None);
    let ssl_only = br#"{"address":"10.0.0.1","port":null,"sslPort":443}"#;
    assert_eq!(addr(Format::Curator.parse("x", ssl_only, None, false)), None);
    assert_eq!(
        addr(Format::Curator.parse("x", ssl_only, None, true)),
        Some(("10.0.0.1:443".into(), 1)),
        "a TLS service uses sslPort"
    );
    assert!(Format::Curator.parse("x", b"{not json", None, false).is_err());
}

/// What dubbo-admin writes under `/dubbo/<interface>/configurators/` (the shapes in Dubbo's
/// documentation of dynamic configuration: `override://` URLs, URL-encoded as node names).
#[test]
fn dubbo_admin_overrides_disable_and_reweigh_providers() {
    let enc = |u: &str| url_encode(u);
    let disable = enc("override://10.20.153.10:20880/com.foo.BarService?category=configurators&dynamic=false&disabled=true");
    let all =
        enc("override://0.0.0.0/com.foo.BarService?category=configurators&dynamic=false&weight=50");
    let off = enc("override://10.20.153.11/com.foo.BarService?category=configurators&enabled=false&weight=500");
    let rules: Vec<Override> =
        [&disable, &all, &off].iter().filter_map(|n| Override::parse(n).unwrap()).collect();
    assert_eq!(rules.len(), 2, "a rule with enabled=false says nothing");
    let provider = |addr: &str| Node::Accepted(Instance::weighted(addr, 100));
    let (node, _) = apply_overrides(provider("10.20.153.10:20880"), &rules);
    assert!(
        matches!(node, Node::Withdrawn(ref a, ref why) if a == "10.20.153.10:20880" && why.contains("override")),
        "{node:?}"
    );
    let (node, note) = apply_overrides(provider("10.20.153.10:20881"), &rules);
    assert_eq!(node.instance().unwrap().weight, 50, "the rule for every provider applies");
    assert!(note.unwrap().contains("overridden to 50"));
    let specific =
        enc("override://10.20.153.12/com.foo.BarService?category=configurators&weight=200");
    let mut with_specific = rules.clone();
    with_specific.push(Override::parse(&specific).unwrap().unwrap());
    let (node, _) = apply_overrides(provider("10.20.153.12:8080"), &with_specific);
    assert_eq!(node.instance().unwrap().weight, 200, "one provider's rule beats the rule for all");
    assert!(Override::parse(&enc("override://not-an-ip/x?weight=2")).is_err());
}

/// What Spring Cloud Zookeeper writes (its `ZookeeperServiceRegistry` serialises a Curator
/// `ServiceInstance<ZookeeperInstance>`: the shape in Spring Cloud Zookeeper's reference
/// documentation), with `instance_status` as the actuator's service-registry endpoint sets it.
#[test]
fn spring_cloud_instances_are_routed_only_while_up() {
    let spring = |status: &str| {
        format!(
            r#"{{"name":"testZookeeperApp","id":"e2c8b9a4-4a3b-4d1b-9a52-3f0c1c2b7f10","address":"10.0.0.7","port":8080,"sslPort":null,"payload":{{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance","id":"testZookeeperApp-1","name":"testZookeeperApp","metadata":{{"instance_status":"{status}"}}}},"registrationTimeUTC":1549987777777,"serviceType":"DYNAMIC","uriSpec":{{"parts":[{{"value":"scheme","variable":true}},{{"value":"://","variable":false}},{{"value":"address","variable":true}},{{"value":":","variable":false}},{{"value":"port","variable":true}}]}}}}"#
        )
    };
    assert_eq!(
        addr(Format::Curator.parse("x", spring("UP").as_bytes(), None, false)),
        Some(("10.0.0.7:8080".into(), 1))
    );
    for status in ["OUT_OF_SERVICE", "DOWN", "STARTING"] {
        let node = Format::Curator.parse("x", spring(status).as_bytes(), None, false);
        match node {
            Ok(Node::Withdrawn(address, why)) => {
                assert_eq!(address, "10.0.0.7:8080");
                assert!(why.contains(status), "{why}");
            }
            other => panic!("{status}: {other:?}"),
        }
    }
    let no_metadata =
        br#"{"address":"10.0.0.7","port":8080,"payload":{"@class":"x","metadata":{}}}"#;
    assert!(addr(Format::Curator.parse("x", no_metadata, None, false)).is_some());
}

#[test]
fn serverset_takes_alive_members_and_named_endpoints() {
    assert!(Format::Serverset.accepts_name("member_0000000001"));
    assert!(Format::Serverset.accepts_name("member_-12"));
    assert!(!Format::Serverset.accepts_name("lock_0001"));
    assert!(!Format::Serverset.accepts_name("member_"));
    let d = br#"{"serviceEndpoint":{"host":"10.0.0.5","port":31000},"additionalEndpoints":{"http":{"host":"10.0.0.5","port":31001}},"status":"ALIVE","shard":0}"#;
    assert_eq!(
        addr(Format::Serverset.parse("member_1", d, None, false)),
        Some(("10.0.0.5:31000".into(), 1))
    );
    assert_eq!(
        addr(Format::Serverset.parse("member_1", d, Some("http"), false)),
        Some(("10.0.0.5:31001".into(), 1))
    );
    let dead = br#"{"serviceEndpoint":{"host":"10.0.0.5","port":31000},"status":"DEAD"}"#;
    assert_eq!(addr(Format::Serverset.parse("member_1", dead, None, false)), None);
    // Aurora's drain: STOPPING withdraws the member it names, a host name too.
    let stopping =
        br#"{"serviceEndpoint":{"host":"web-3.example","port":31000},"status":"STOPPING"}"#;
    assert_eq!(
        Format::Serverset.parse("member_1", stopping, None, false),
        Ok(Node::Withdrawn(
            "web-3.example:31000".into(),
            "status STOPPING (only ALIVE is routed)".into()
        ))
    );
    // Not ALIVE and naming no usable endpoint: nothing was routed, nothing is withdrawn.
    let bare = br#"{"status":"STOPPING"}"#;
    assert!(matches!(
        Format::Serverset.parse("member_1", bare, None, false),
        Ok(Node::Excluded(_))
    ));
}

#[test]
fn nerve_members_with_a_status_other_than_alive_are_withdrawn() {
    let d = br#"{"host":"10.0.0.5","port":8080,"name":"i-abc","status":"STOPPING"}"#;
    assert_eq!(
        Format::Nerve.parse("i-abc_0000000003", d, None, false),
        Ok(Node::Withdrawn(
            "10.0.0.5:8080".into(),
            "status STOPPING (only ALIVE is routed)".into()
        ))
    );
    let alive = br#"{"host":"10.0.0.5","port":8080,"status":"ALIVE"}"#;
    assert!(addr(Format::Nerve.parse("i_1", alive, None, false)).is_some());
}

#[test]
fn nerve_reads_weight_and_path_encoding() {
    let d = br#"{"host":"10.0.0.5","port":8080,"name":"i-abc","weight":10,"labels":{}}"#;
    assert_eq!(
        addr(Format::Nerve.parse("i-abc_0000000003", d, None, false)),
        Some(("10.0.0.5:8080".into(), 10))
    );
    // base64 of {"host":"10.0.0.6","port":80}
    let b64 = "eyJob3N0IjoiMTAuMC4wLjYiLCJwb3J0Ijo4MH0=";
    let name = format!("base64_{}_{}_0000000001", b64.len(), b64);
    assert_eq!(addr(Format::Nerve.parse(&name, b"", None, false)), Some(("10.0.0.6:80".into(), 1)));
    assert!(Format::Nerve
        .parse("x_1", br#"{"host":"h","port":80,"weight":-1}"#, None, false)
        .is_err());
}

#[test]
fn dubbo_providers_are_read_from_their_encoded_urls() {
    // Exactly as Dubbo's ZookeeperRegistry names provider nodes (URL.encode of the URL).
    let rest = "rest%3A%2F%2F10.20.30.40%3A8080%2Fcom.example.UserService%3Fanyhost%3Dtrue%26application%3Duser%26dubbo%3D2.0.2%26interface%3Dcom.example.UserService%26methods%3DgetUser%26pid%3D4242%26server%3Dtomcat%26side%3Dprovider%26timestamp%3D1700000000000%26weight%3D50";
    assert!(Format::Dubbo.accepts_name(rest));
    assert_eq!(
        addr(Format::Dubbo.parse(rest, b"", None, false)),
        Some(("10.20.30.40:8080".into(), 50))
    );
    let tri = "tri%3A%2F%2F10.0.0.7%3A50051%2Fcom.example.Greeter%3Fside%3Dprovider";
    assert_eq!(
        addr(Format::Dubbo.parse(tri, b"", None, false)),
        Some(("10.0.0.7:50051".into(), 100))
    );
    let binary = "dubbo%3A%2F%2F10.0.0.8%3A20880%2Fcom.example.UserService%3Fside%3Dprovider";
    let e = Format::Dubbo.parse(binary, b"", None, false).unwrap_err();
    assert!(e.contains("not HTTP-based"), "{e}");
    let disabled = "rest%3A%2F%2F10.0.0.9%3A8080%2Fx%3Fdisabled%3Dtrue";
    assert_eq!(
        Format::Dubbo.parse(disabled, b"", None, false),
        Ok(Node::Withdrawn("10.0.0.9:8080".into(), "disabled in its provider URL".into()))
    );
    let off = "rest%3A%2F%2F10.0.0.9%3A8080%2Fx%3Fenabled%3Dfalse";
    assert_eq!(addr(Format::Dubbo.parse(off, b"", None, false)), None);
    assert!(!Format::Dubbo.accepts_name("configurators"));
    assert_eq!(Format::Dubbo.instances_dir(), Some("providers"));
}

#[test]
fn what_register_writes_is_what_discovery_reads() {
    for f in [Format::Registrator, Format::Curator, Format::Serverset, Format::Nerve, Format::Dubbo]
    {
        let (name, data, seq) = f.encode("svc", "127.0.0.1", 9001, 3);
        let name = if seq { format!("{name}0000000007") } else { name };
        assert!(f.accepts_name(&name), "{f:?} {name}");
        let got = f.parse(&name, &data, None, false).unwrap().instance().unwrap();
        assert_eq!(got.address, "127.0.0.1:9001", "{f:?}");
    }
}
