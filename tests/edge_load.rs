//! The edge features on the path users take: routes from ZooKeeper, keep-alive clients that
//! reuse a connection without checking it was closed, and load running while a HUP and
//! registry changes arrive — on a route with JWT auth, a mirror to a shadow service that is
//! itself discovered in ZooKeeper, and tracing to an OTLP collector. Every failure is counted
//! by class, and what the instances, the shadow and the collector received is checked.

mod support;

use nix::sys::signal::Signal;
use support::http::request;
use support::jwt::{claims, jwks, Key};
use support::load::{Load, Reuse, Spec};
use support::otlp::Collector;
use support::zk::Zk;
use support::{write_file, zk_config, Backend, Gateway};

#[test]
fn auth_mirror_and_tracing_on_zookeeper_routes_lose_nothing_through_hup_and_registry_changes() {
    let zk = Zk::standalone();
    let c = zk.client();
    let (b1, b2, b3) = (Backend::start("b1"), Backend::start("b2"), Backend::start("b3"));
    let shadow = Backend::start("shadow");
    c.register("web", &b1.address());
    c.register("web", &b2.address());
    c.register("shadow", &shadow.address());
    let key = Key::es256("k1");
    let dir = tempfile::tempdir().unwrap();
    let jwks = write_file(dir.path(), "jwks.json", &jwks(&[&key]).to_string());
    let collector = Collector::start();
    let toml = zk_config(&zk, "")
        .section(
            "[[route]]",
            "path_prefix = \"/api\"\nservice = \"web\"\nauth = \"staff\"\nmirror = { service = \"shadow\", percent = 100.0 }",
        )
        .section(
            "[auth.staff]",
            &format!(
                "type = \"jwt\"\njwks = {jwks:?}\nissuer = \"https://issuer.test/\"\naudience = [\"api\"]\nalgorithms = [\"ES256\"]"
            ),
        )
        .section(
            "[tracing]",
            &format!(
                "otlp_endpoint = {:?}\nsample = 0.1\nflush_every = \"100ms\"",
                collector.endpoint()
            ),
        );
    let gw = Gateway::with(toml).workers(2).admin().start();
    assert_eq!(request(gw.port, "GET", "/api/x", &[], b"").unwrap().status, 401, "auth is on");

    let token = key.sign(&claims("alice", "api", 3600));
    let mut spec = Spec::paced(gw.port, Reuse::Unchecked);
    spec.path = "/api/load".into();
    spec.headers = vec![("authorization".into(), format!("Bearer {token}"))];
    let load = Load::start(spec);
    load.wait_for(300);

    // A new instance registers: it takes its share while the load runs.
    c.register("web", &b3.address());
    assert_eventually!(10, b3.requests_to("GET /api/load") > 20, "b3 never reached");
    // A reload: new workers, a new table listed from ZooKeeper, the same keys.
    let before = gw.readiness();
    gw.signal(Signal::SIGHUP);
    assert_eventually!(20, gw.reloaded(before), "reload did not finish:\n{}", gw.log());
    load.wait_for(300);
    // An instance leaves the registry (and keeps running, as one being drained does).
    c.deregister("web", &b1.address());
    assert_eventually!(
        10,
        {
            let had = b1.requests_to("GET /api/load");
            load.wait_for(100);
            b1.requests_to("GET /api/load") == had
        },
        "b1 still routed"
    );
    load.wait_for(200);
    let tally = load.stop();
    eprintln!("edge features under load: {tally}");
    assert_eq!(tally.lost(), 0, "{tally}");

    // Every request passed auth (the one refusal is the probe above) and reached an instance
    // with the gateway's identity, not the client's.
    assert_eq!(gw.metric("zkgate_auth_refusals_total", ""), 1);
    let reached: usize = [&b1, &b2, &b3].iter().map(|b| b.requests_to("GET /api/load")).sum();
    assert_eq!(reached, tally.ok, "each answered request reached one instance once");
    let head = b2.heads.lock().unwrap().last().cloned().unwrap().to_ascii_lowercase();
    assert!(head.contains("x-auth-subject: alice\r\n"), "{head}");
    // Each request was copied to the shadow once, or counted as skipped (the in-flight bound).
    assert_eventually!(
        10,
        {
            let sent = gw.metric("zkgate_mirror_requests_total", "outcome=\"sent\"");
            let skipped = gw.metric("zkgate_mirror_requests_total", "outcome=\"skipped\"");
            sent + skipped == tally.ok as u64 && shadow.requests_to("GET /api/load") as u64 == sent
        },
        "mirror copies: {} at the shadow, metrics sent {} skipped {} failed {}, {} requests",
        shadow.requests_to("GET /api/load"),
        gw.metric("zkgate_mirror_requests_total", "outcome=\"sent\""),
        gw.metric("zkgate_mirror_requests_total", "outcome=\"skipped\""),
        gw.metric("zkgate_mirror_requests_total", "outcome=\"failed\""),
        tally.ok
    );
    assert!(shadow.requests_to("GET /api/load") * 2 > tally.ok, "most requests were copied");
    // About a tenth of the requests were sampled, and the collector got each of their spans.
    assert_eventually!(
        10,
        {
            let exported = gw.metric("zkgate_trace_spans_total", "outcome=\"exported\"");
            exported > 0 && collector.spans.lock().unwrap().len() as u64 == exported
        },
        "spans: {} exported, {} at the collector",
        gw.metric("zkgate_trace_spans_total", "outcome=\"exported\""),
        collector.spans.lock().unwrap().len()
    );
    assert_eq!(gw.metric("zkgate_trace_spans_total", "outcome=\"dropped\""), 0);
    let sampled = collector.spans.lock().unwrap().len();
    assert!(sampled * 20 > tally.ok && sampled * 5 < tally.ok, "{sampled} of {}", tally.ok);
}
