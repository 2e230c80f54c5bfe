//! End-to-end discovery: a real ZooKeeper (Debian's package), the real gateway with 2 workers,
//! real backends, registrations written as Registrator / Curator / Finagle / Nerve write them.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::http::request;
use support::zk::java_url_encode;
use support::zk::Zk;
use support::{
    every_worker_uses, no_worker_uses, request_loop, via_headers, wait_for_progress, zk_config,
    Backend, Gateway, Toml,
};

#[test]
fn seed_scenarios_route_by_headers_round_robin_and_follow_a_stopped_instance() {
    let zk = Zk::standalone();
    let c = zk.client();
    let (a1, a2, b1) = (Backend::start("s1-a"), Backend::start("s1-b"), Backend::start("s2-a"));
    c.register("service_1", &a1.address());
    c.register("service_1", &a2.address());
    c.register("service_2", &b1.address());
    // The instance is deregistered while it lives: with the removal guard on (its only
    // instance is 100 % of service_2), it would stay in rotation until it proves gone.
    let gw = Gateway::with(zk_config(&zk, "keep_last_on_empty = false\nremoval_guard = \"100%\""))
        .workers(2)
        .start();

    let r = via_headers(&gw, "service_1", "/user?id=1").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/user?id=1");
    assert_eq!(via_headers(&gw, "service_2", "/").unwrap().backend(), "s2-a");
    // Round robin per worker: two consecutive requests to one worker reach both instances.
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut alternations = 0;
    for _ in 0..40 {
        let r = via_headers(&gw, "service_1", "/").unwrap();
        let w = r.header("x-zkgate-worker").unwrap().to_string();
        if let Some(prev) = last.insert(w, r.backend()) {
            assert_ne!(prev, r.backend(), "a worker sent two requests in a row to one instance");
            alternations += 1;
        }
    }
    assert!(alternations >= 30, "{alternations}");

    c.deregister("service_2", &b1.address());
    // Every worker, not just the one that answered first: each applies the change itself.
    assert_eventually!(10, no_worker_uses(&gw, "service_2", "s2-a"), "service_2 still routed");
    // The service node stays with no instance (keep_last_on_empty = false): 503, not 404.
    let r = via_headers(&gw, "service_2", "/").unwrap();
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert_eq!(via_headers(&gw, "service_1", "/").unwrap().status, 200);
    assert!(gw.log().contains(&format!("service service_2: -{}", b1.address())), "{}", gw.log());
}

#[test]
fn an_instance_added_or_removed_in_zookeeper_reaches_every_worker() {
    let zk = Zk::standalone();
    let c = zk.client();
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    c.register("web", &b1.address());
    let gw = Gateway::with(zk_config(&zk, "")).workers(2).start();
    assert_eventually!(10, every_worker_uses(&gw, "web", "b1"), "b1 not routed by every worker");
    c.register("web", &b2.address());
    assert_eventually!(10, every_worker_uses(&gw, "web", "b2"), "b2 not used by every worker");
    c.deregister("web", &b1.address());
    assert_eventually!(10, no_worker_uses(&gw, "web", "b1"), "b1 still used after removal");
    // Each worker logs the change once.
    assert_eq!(
        gw.log_count(&format!("service web: +{} (2 instances)", b2.address())),
        2,
        "{}",
        gw.log()
    );
}

#[test]
fn dubbo_providers_route_from_nodes_laid_out_as_dubbo_writes_them() {
    let zk = Zk::standalone();
    let c = zk.client();
    let (b1, b2) = (Backend::start("rest-1"), Backend::start("rest-2"));
    let iface = "com.example.UserService";
    let base = format!("/dubbo/{iface}");
    // What a Dubbo 2.7/3.x application writes: providers (one REST, one REST disabled, one
    // binary dubbo:// provider), a consumer, and the empty configurators and routers categories.
    let provider = |proto: &str, addr: &str, extra: &str| {
        java_url_encode(&format!(
            "{proto}://{addr}/{iface}?anyhost=true&application=user-provider&deprecated=false&dubbo=2.0.2&dynamic=true&generic=false&interface={iface}&methods=getUser,listUsers&pid=4242&release=3.2.0&server=tomcat&side=provider&timestamp=1700000000000{extra}"
        ))
    };
    c.create(&format!("{base}/providers/{}", provider("rest", &b1.address(), "")), b"", true);
    c.create(
        &format!("{base}/providers/{}", provider("rest", &b2.address(), "&weight=300")),
        b"",
        true,
    );
    c.create(
        &format!("{base}/providers/{}", provider("rest", "127.0.0.1:1", "&disabled=true")),
        b"",
        true,
    );
    c.create(&format!("{base}/providers/{}", provider("dubbo", "127.0.0.1:20880", "")), b"", true);
    let consumer = java_url_encode(&format!(
        "consumer://10.0.0.9/{iface}?application=web&category=consumers&check=false&interface={iface}&side=consumer"
    ));
    c.create(&format!("{base}/consumers/{consumer}"), b"", true);
    c.create(&format!("{base}/configurators"), b"", false);
    c.create(&format!("{base}/routers"), b"", false);

    let toml = Toml::new()
        .proxy("debug_headers = true")
        .zookeeper(&zk, "root = \"/dubbo\"\nformat = \"dubbo\"")
        .section("[[route]]", &format!("path_prefix = \"/users\"\nservice = \"{iface}\""));
    let gw = Gateway::with(toml).workers(2).start();
    assert_eventually!(
        10,
        {
            let seen: BTreeSet<String> = (0..20)
                .filter_map(|_| request(gw.port, "GET", "/users/7", &[], b"").ok())
                .filter(|r| r.status == 200)
                .map(|r| r.backend())
                .collect();
            seen == BTreeSet::from(["rest-1".to_string(), "rest-2".to_string()])
        },
        "both REST providers, nothing else:\n{}",
        gw.log()
    );
    // The binary provider is skipped with a warning (once per worker), never routed to.
    assert!(gw.log().contains("is not HTTP-based"), "{}", gw.log());
}

#[test]
fn each_worker_session_holds_one_persistent_watch_whatever_the_number_of_services() {
    let zk = Zk::standalone();
    let c = zk.client();
    let b = Backend::start("b");
    for i in 0..50 {
        c.register(&format!("svc{i}"), &b.address());
    }
    // Curator reads node data: one-shot watching would cost a watch per instance too.
    let gw = Gateway::with(zk_config(&zk, "format = \"registrator\"")).workers(2).start();
    assert_eq!(gw.log_count("one persistent recursive watch on /services"), 2, "{}", gw.log());
    // wchs: "N connections watching M paths"; two workers, one path (the root) each.
    let wchs = zk.four_letter(0, "wchs");
    eprintln!("wchs: {wchs}");
    assert!(wchs.contains("2 connections watching 1 paths"), "{wchs}");
    // A change still reaches every worker.
    let b2 = Backend::start("b2");
    c.register("svc7", &b2.address());
    assert_eventually!(
        10,
        every_worker_uses(&gw, "svc7", "b2"),
        "svc7 change not applied:\n{}",
        gw.log()
    );
    c.register("brand-new", &b2.address());
    assert_eventually!(10, every_worker_uses(&gw, "brand-new", "b2"), "new service not applied");
}

#[test]
fn malformed_nodes_are_skipped_with_one_warning_and_the_rest_serve() {
    let zk = Zk::standalone();
    let c = zk.client();
    let b1 = Backend::start("good");
    let good = format!("{{\"host\":\"127.0.0.1\",\"port\":{},\"weight\":1}}", b1.addr.port());
    c.create("/services/svc/good_0000000001", good.as_bytes(), true);
    c.create("/services/svc/bad_0000000002", b"{not json", true);
    c.create("/services/svc/noport_0000000003", br#"{"host":"127.0.0.1"}"#, true);
    let gw = Gateway::with(zk_config(&zk, "format = \"nerve\"")).workers(2).admin().start();
    assert_eventually!(10, every_worker_uses(&gw, "svc", "good"), "good instance not routed");
    for _ in 0..20 {
        assert_eq!(via_headers(&gw, "svc", "/").unwrap().backend(), "good");
    }
    // A later change relists the service: the bad nodes must not be warned about again. Wait
    // until both workers have relisted (their event counters moved) before counting warnings.
    let events = gw.metric("zkgate_zookeeper_events_total", "");
    c.set("/services/svc/good_0000000001", good.as_bytes());
    assert_eventually!(
        10,
        gw.metric("zkgate_zookeeper_events_total", "") >= events + 2,
        "no relist seen"
    );
    assert_eq!(
        gw.log_count("skipping /services/svc/bad_0000000002: data is not JSON"),
        2,
        "once per worker:\n{}",
        gw.log()
    );
    assert_eq!(gw.log_count("skipping /services/svc/noport_0000000003"), 2);
    let r = via_headers(&gw, "nosuch", "/").unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["service"], "nosuch");
}

#[test]
fn killing_the_ensemble_member_the_gateway_uses_loses_no_request() {
    let mut zk = Zk::ensemble();
    let c = zk.client();
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    c.register("web", &b1.address());
    let gw = Gateway::with(zk_config(&zk, "").route_all("web")).workers(2).admin().start();
    let sid = sessions(&gw)[0].clone().expect("the worker's session in /workers");
    let member = zk.node_with_session(&sid).expect("member hosting the gateway's session");
    let stop = Arc::new(AtomicBool::new(false));
    // Bounded by time (20 s) and the stop flag, not by a count the fast path gets through early.
    let load = request_loop(gw.port, "/", usize::MAX, 20, stop.clone());
    wait_for_progress(&b1.hits, 20);
    zk.kill(member);
    // The worker whose session lived there fails over to another member, keeping its session.
    assert_eventually!(
        15,
        zk.node_with_session(&sid).is_some_and(|m| m != member)
            && sessions(&gw)[0].as_ref() == Some(&sid)
            && gw.metric("zkgate_zookeeper_session_state", "") == 2,
        "no failover seen:\n{}",
        gw.admin_get("/metrics").body_text()
    );
    wait_for_progress(&b1.hits, 20);
    // Changes are still seen afterwards, through another member.
    let c2 = support::zk::ZkClient::connect(&zk.hosts());
    c2.register("web", &b2.address());
    assert_eventually!(15, every_worker_uses(&gw, "web", "b2"), "change after failover not seen");
    stop.store(true, Ordering::Relaxed);
    let s = load.join().unwrap();
    assert!(s.ok > 20, "{s:?}");
    assert_eq!((s.failed, s.refused), (0, 0), "{:?}", s.errors);
    drop(c);
}

#[test]
fn zookeeper_down_keeps_serving_and_after_an_expired_session_the_gateway_resyncs() {
    let mut zk = Zk::standalone();
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    {
        // A persistent registration survives the outage; the test client's session does not.
        let c = zk.client();
        c.create(&format!("/services/web/{}", b1.address()), b"", false);
    }
    let gw = Gateway::with(zk_config(&zk, "").route_all("web")).workers(2).admin().start();
    assert_eventually!(10, every_worker_uses(&gw, "web", "b1"), "b1 not routed");
    let resyncs = gw.metric("zkgate_zookeeper_resyncs_total", "");
    let before = sessions(&gw);
    assert!(before.iter().all(Option::is_some), "{before:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let load = request_loop(gw.port, "/", 100_000, 30, stop.clone());
    zk.kill(0);
    let down = std::time::Instant::now();
    // Both workers notice the outage (2 = disconnected, 3 = session lost).
    assert_eventually!(
        10,
        gw.metric("zkgate_zookeeper_session_state", "") >= 4,
        "outage not noticed"
    );
    // The scenario: an outage longer than session_timeout (4 s), so the sessions expire.
    let outage = Duration::from_secs(7);
    std::thread::sleep(outage.saturating_sub(down.elapsed()));
    wait_for_progress(&b1.hits, 20);
    zk.restart(0);
    // Each worker finds its session expired, opens a new one and resyncs the whole registry.
    assert_eventually!(
        20,
        gw.metric("zkgate_zookeeper_resyncs_total", "") >= resyncs + 2
            && sessions(&gw).iter().zip(&before).all(|(now, was)| now.is_some() && now != was),
        "no new sessions and resync after the expired ones: {:?} then {:?}\n{}",
        before,
        sessions(&gw),
        gw.log()
    );
    let c = zk.client();
    c.create(&format!("/services/web/{}", b2.address()), b"", true);
    assert_eventually!(
        20,
        every_worker_uses(&gw, "web", "b2"),
        "change after the outage not seen:\n{}",
        gw.log()
    );
    stop.store(true, Ordering::Relaxed);
    let s = load.join().unwrap();
    assert!(s.ok > 20, "{s:?}");
    assert_eq!((s.failed, s.refused), (0, 0), "{:?}", s.errors);
}

/// Each worker's ZooKeeper session id, by slot, as `/workers` reports it.
fn sessions(gw: &Gateway) -> Vec<Option<String>> {
    let workers = gw.admin_get("/workers").json();
    workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["zookeeper_session"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_gateway_started_while_zookeeper_is_down_serves_from_the_snapshot() {
    let b1 = Backend::start("b1");
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("routes.json");

    {
        let zk = Zk::standalone();
        zk.client().register("web", &b1.address());
        let gw = Gateway::with(zk_config(&zk, "").snapshot(&snapshot)).workers(2).start();
        assert_eventually!(
            10,
            std::fs::read_to_string(&snapshot).is_ok_and(|s| s.contains(&b1.address())),
            "snapshot not written"
        );
        drop(gw);
    }
    // ZooKeeper is gone now; its port is closed.
    let port = support::free_port();
    let dead = format!("127.0.0.1:{port}");
    let body = Toml::new()
        .proxy("debug_headers = true")
        .zookeeper_at(&dead, "connect_timeout = \"1s\"")
        .snapshot(&snapshot);
    let gw = Gateway::with(&body).workers(2).start();
    assert!(gw.log().contains("from snapshot"), "{}", gw.log());
    for _ in 0..10 {
        assert_eq!(via_headers(&gw, "web", "/").unwrap().backend(), "b1");
    }
    // The workers keep trying: once ZooKeeper answers, its listing replaces the snapshot.
    let zk = Zk::standalone_on(port);
    let b2 = Backend::start("b2");
    zk.client().register("web", &b2.address());
    assert_eventually!(
        20,
        every_worker_uses(&gw, "web", "b2") && no_worker_uses(&gw, "web", "b1"),
        "zookeeper listing not taken over:\n{}",
        gw.log()
    );
}

#[test]
fn a_chrooted_registry_is_read_relative_to_its_chroot() {
    let zk = Zk::standalone();
    let c = zk.client();
    let (b1, decoy) = (Backend::start("chrooted"), Backend::start("outside"));
    c.register_under("/tenant-a/services", "web", &b1.address());
    c.register("web", &decoy.address());
    let chrooted = format!("{}/tenant-a", zk.hosts());
    let body = Toml::new()
        .proxy("debug_headers = true")
        .zookeeper_at(&chrooted, "connect_timeout = \"2s\"");
    let gw = Gateway::with(&body).workers(2).start();
    assert_eventually!(
        10,
        every_worker_uses(&gw, "web", "chrooted"),
        "chrooted instance not routed"
    );
    assert!(
        no_worker_uses(&gw, "web", "outside"),
        "the registry outside the chroot must not be read"
    );
}

#[test]
fn a_worker_without_routes_answers_503_with_retry_after_never_404() {
    // ZooKeeper never answers and there is no snapshot: after connect_timeout the workers
    // accept anyway (a queue must not hang), and say "not ready", not "no such service".
    let dead = format!("127.0.0.1:{}", support::free_port());
    let body = Toml::new().zookeeper_at(&dead, "connect_timeout = \"1s\"").route_all("web");
    let gw = Gateway::with(body).workers(1).spawn();
    assert_eventually!(10, gw.log().contains("accepting anyway"), "{}", gw.log());
    let r = gw.get("/").unwrap();
    assert_eq!((r.status, r.header("retry-after")), (503, Some("1")), "{}", r.body_text());
    let r = via_headers(&gw, "other", "/").unwrap();
    assert_eq!(r.status, 503, "header routing too");
}

#[test]
fn discovery_runs_on_its_own_thread_that_yields_to_the_request_loop() {
    let zk = Zk::standalone();
    let b = Backend::start("a");
    zk.client().register("svc", &b.address());
    let gw = Gateway::with(zk_config(&zk, "")).workers(1).start();
    let worker = gw.workers()[0];
    // Every thread of the worker: its name (comm), policy and niceness from /proc.
    let threads: Vec<(String, u32, i32)> = std::fs::read_dir(format!("/proc/{worker}/task"))
        .unwrap()
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
            let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After "pid (comm)": state is field 3, nice 19 and policy 41 (1-based).
            Some((comm.to_string(), f[41 - 3].parse().ok()?, f[19 - 3].parse().ok()?))
        })
        .collect();
    let discovery = threads.iter().find(|(c, ..)| c == "discovery-0");
    let (_, policy, nice) = discovery.unwrap_or_else(|| panic!("no discovery thread: {threads:?}"));
    assert_eq!((*policy, *nice), (3, 5), "SCHED_BATCH (3) at nice 5: {threads:?}");
    // The request loop (the main thread, named after the binary) stays at the worker's own.
    let main = threads.iter().find(|(c, ..)| c == "zkgate").unwrap();
    assert_eq!((main.1, main.2), (0, 0), "{threads:?}");
}

/// A service gone from the registry gives its row of the host's service table back once
/// `server.service_row_ttl` has passed without any worker holding it: its series leave
/// `/metrics`, and registered again it starts from zero in a row of its own.
#[test]
fn a_service_gone_from_zookeeper_gives_its_shared_row_back() {
    let zk = Zk::standalone();
    let c = zk.client();
    let b = Backend::start("b");
    c.register("brief", &b.address());
    c.register("stays", &b.address());
    let gw = Gateway::with(zk_config(&zk, "keep_last_on_empty = false"))
        .workers(2)
        .admin()
        .server_extra("service_row_ttl = \"5s\"")
        .start();
    assert_eventually!(10, every_worker_uses(&gw, "brief", "b"), "brief not routed");
    assert_eq!(via_headers(&gw, "stays", "/").unwrap().status, 200);
    let rows = gw.metric("zkgate_host_service_rows", "");
    assert!(rows >= 3, "_unrouted, brief and stays: {rows}");
    assert!(gw.metric("zkgate_requests_total", "service=\"brief\"") >= 2);

    // Deregistered, a service a worker knew answers 503 (its instances may come back); the
    // workers a reload starts list the registry afresh and do not know it at all (404).
    c.deregister("brief", &b.address());
    let before = gw.readiness();
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    assert_eventually!(20, gw.reloaded(before), "not reloaded:\n{}", gw.log());
    assert_eventually!(
        10,
        (0..8).all(|_| via_headers(&gw, "brief", "/").unwrap().status == 404),
        "brief still known"
    );
    assert_eventually!(
        30,
        gw.metric("zkgate_host_service_rows", "") == rows - 1,
        "brief's row not released: {}",
        gw.admin_get("/metrics").body_text()
    );
    let text = gw.admin_get("/metrics").body_text();
    assert!(!text.contains("service=\"brief\""), "{text}");
    assert!(text.contains("service=\"stays\""), "a service still registered keeps its row");

    c.register("brief", &b.address());
    // Counted from zero: every request a worker that knows `brief` again answered (200, or
    // 503 while its table is still arriving) and none from before. A worker that does not
    // know it yet answers 404, counted under no service.
    let (mut known, deadline) = (0, std::time::Instant::now() + Duration::from_secs(10));
    loop {
        let status = via_headers(&gw, "brief", "/").unwrap().status;
        known += usize::from(status != 404);
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not back: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Counted as its answer is logged, just after it is sent.
    let counted = || gw.metric("zkgate_requests_total", "service=\"brief\"") as usize;
    assert_eventually!(5, counted() == known, "counted from zero: {} of {known}", counted());
}
