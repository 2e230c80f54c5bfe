//! One host, one gateway: what the workers of one host learn about an instance holds for all
//! of them (failures, ejections, health verdicts), health checks run once per host, the removal
//! guard keeps a registry fault from emptying a service, and the registry's own faults (leader
//! loss, session expiry, poison znodes) cost no client a request. Routes from a real ZooKeeper,
//! 4 workers, real processes and signals; failures counted by class.

mod support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::load::{Load, Reuse, Spec};
use support::zk::Zk;
use support::{Backend, Gateway, Toml};

/// One scenario at a time: each loads the 2-core machine on its own.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

const WORKERS: usize = 4;

fn report(scenario: &str, tally: &support::load::Tally) {
    eprintln!("hostwide {scenario}: {tally}");
}

/// `n` requests, each on a fresh connection (so they spread over the workers); the statuses.
fn fresh_requests(gw: &Gateway, n: usize) -> Vec<u16> {
    (0..n).map(|_| gw.get("/").map_or(0, |r| r.status)).collect()
}

/// The `/routes` entry of `address` in `service`, as the worker that answered sees it.
fn instance_state(gw: &Gateway, service: &str, address: &str) -> serde_json::Value {
    let routes = gw.admin_get("/routes").json();
    routes["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == service))
        .and_then(|s| s["instances"].as_array())
        .and_then(|i| i.iter().find(|i| i["address"] == address))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// The current generation's workers are all in service (from `/workers`, not log text).
fn workers_of_generation(gw: &Gateway, generation: u64, n: usize) -> bool {
    let w = gw.admin_get("/workers").json();
    let rows = w["workers"].as_array().cloned().unwrap_or_default();
    rows.iter().filter(|r| r["generation"].as_u64() == Some(generation)).count() >= n
}

/// The newest configuration generation among the workers.
fn current_generation(gw: &Gateway) -> u64 {
    let w = gw.admin_get("/workers").json();
    let rows = w["workers"].as_array().cloned().unwrap_or_default();
    rows.iter().filter_map(|r| r["generation"].as_u64()).max().unwrap_or(0)
}

#[test]
fn ejection_counts_failures_host_wide_and_holds_for_new_and_reloaded_workers() {
    let _one = serial();
    let zk = Zk::standalone();
    let (good1, good2, bad) = (Backend::start("g1"), Backend::start("g2"), Backend::start("bad"));
    bad.failing.store(true, std::sync::atomic::Ordering::Relaxed);
    let c = zk.client();
    for b in [&good1, &good2, &bad] {
        c.register("web", &b.address());
    }
    let config = Toml::new()
        .zookeeper(&zk, "")
        .section(
            "[proxy.outlier]",
            "consecutive_failures = 5\nbase_ejection = \"300s\"\nmax_ejection = \"300s\"",
        )
        .route_all("web");
    let gw = Gateway::with(config).workers(WORKERS).admin().start();
    let statuses = fresh_requests(&gw, 120);
    let hits = bad.hits.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "hostwide ejection: the failing instance got {hits} of 120 requests over {WORKERS} workers"
    );
    // Exactly consecutive_failures host-wide (one more may have been in flight), where each
    // worker alone would have let 5 through: 20 with 4 workers.
    assert!((5..=6).contains(&hits), "the failing instance got {hits} requests");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), hits, "{statuses:?}");
    assert_eq!(gw.metric("zkgate_ejections_total", ""), 1, "one ejection for the host");
    let state = instance_state(&gw, "web", &bad.address());
    assert_eq!(state["ejected"], true, "{state}");
    assert!(state["ejected_for_ms"].as_u64().unwrap() > 200_000, "{state}");

    // A worker added at runtime starts from the host's ejection.
    let generation = current_generation(&gw);
    gw.signal(Signal::SIGTTIN);
    assert_eventually!(20, gw.workers().len() == WORKERS + 1, "TTIN added no worker");
    assert_eventually!(
        20,
        workers_of_generation(&gw, generation, WORKERS + 1),
        "new worker not in service"
    );
    let statuses = fresh_requests(&gw, 100);
    assert!(statuses.iter().all(|s| *s == 200), "after TTIN: {statuses:?}");
    // A reload's new workers too (the reload applies the configured count again: 4).
    gw.signal(Signal::SIGHUP);
    assert_eventually!(
        30,
        workers_of_generation(&gw, generation + 1, WORKERS),
        "reload did not finish"
    );
    let statuses = fresh_requests(&gw, 100);
    assert!(statuses.iter().all(|s| *s == 200), "after HUP: {statuses:?}");
    assert_eq!(bad.hits.load(std::sync::atomic::Ordering::Relaxed), hits, "no request reached it");
}

/// Probes `backend` received in `window` (`GET /health`).
fn probes_in(backend: &Backend, window: Duration) -> usize {
    let before = backend.requests_to("GET /health");
    std::thread::sleep(window);
    backend.requests_to("GET /health") - before
}

fn checked(zk: &Zk) -> Toml {
    Toml::new()
        .zookeeper(zk, "")
        .section(
            "[services.web]",
            "health_check = { path = \"/health\", interval = \"500ms\", timeout = \"200ms\" }",
        )
        .route_all("web")
}

#[test]
fn health_checks_run_once_per_host_whatever_the_worker_count_and_survive_the_prober() {
    let _one = serial();
    let zk = Zk::standalone();
    let b = Backend::start("b");
    let c = zk.client();
    c.register("web", &b.address());
    let window = Duration::from_secs(6);
    let one = {
        let _gw = Gateway::with(checked(&zk)).workers(1).admin().start();
        assert_eventually!(10, b.requests_to("GET /health") > 0, "no probe");
        probes_in(&b, window)
    };
    let gw = Gateway::with(checked(&zk)).workers(WORKERS).admin().start();
    assert_eventually!(10, b.requests_to("GET /health") > 0, "no probe");
    let four = probes_in(&b, window);
    eprintln!(
        "hostwide health checks: {one} probes in {window:?} with 1 worker, {four} with {WORKERS}"
    );
    // One probe per 500 ms interval: 12 in 6 s, whatever the worker count (±20 %).
    let ratio = four as f64 / one as f64;
    assert!((0.8..=1.2).contains(&ratio), "1 worker: {one} probes, {WORKERS} workers: {four}");
    assert!((9..=15).contains(&four), "{four} probes in 6 s at a 500 ms interval");

    // The prober dies: another worker takes the lease over and probing goes on.
    let routes = gw.admin_get("/routes").json();
    let holder = routes["services"][0]["health_check_holder"].as_i64().expect("a holder") as i32;
    assert!(gw.workers().contains(&holder), "holder {holder} is a worker");
    let before = b.requests_to("GET /health");
    kill(Pid::from_raw(holder), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    assert_eventually!(
        5,
        b.requests_to("GET /health") > before,
        "nobody probes after the holder died"
    );
    let gap = killed.elapsed();
    eprintln!("hostwide health checks: probing resumed {gap:?} after the holder was killed");
    assert!(gap < Duration::from_millis(1500), "probing resumed after {gap:?}");
}

#[test]
fn a_mass_removal_of_live_health_checked_instances_serves_until_their_check_fails_losing_none() {
    let _one = serial();
    let zk = Zk::standalone();
    let backends: Vec<Backend> = (0..4).map(|i| Backend::start(&format!("b{i}"))).collect();
    let c = zk.client();
    for b in &backends {
        c.register("web", &b.address());
    }
    let check = "health_check = { path = \"/health\", interval = \"200ms\", timeout = \"200ms\" }";
    let gw = Gateway::with(
        Toml::new().zookeeper(&zk, "").route_all("web").section("[services.web]", check),
    )
    .workers(WORKERS)
    .admin()
    .start();
    let load = Load::start(Spec::paced(gw.port, Reuse::Unchecked));
    load.wait_for(400);
    assert_eventually!(5, backends.iter().all(|b| b.requests_to("GET /health") > 0), "no probe");
    // A script deletes 3 of the 4 znodes, in one transaction, while the instances live.
    let paths: Vec<String> =
        backends[..3].iter().map(|b| format!("/services/web/{}", b.address())).collect();
    c.delete_together(&paths);
    assert_eventually!(
        10,
        gw.metric("zkgate_discovery_held_instances", "service=\"web\"") == 3,
        "the removal was not held:\n{}",
        gw.admin_get("/metrics").body_text()
    );
    assert_eq!(gw.log_count("holding"), WORKERS, "one hold line per worker");
    let state = instance_state(&gw, "web", &backends[0].address());
    assert_eq!(state["held"], true, "{state}");
    assert_eq!(state["state"], "held", "{state}");
    assert!(state["why"].as_str().unwrap().contains("health check passing"), "{state}");
    // Their health check vouches for them: they keep their share of the traffic.
    let before: Vec<usize> =
        backends.iter().map(|b| b.hits.load(std::sync::atomic::Ordering::Relaxed)).collect();
    load.wait_for(800);
    for (b, then) in backends.iter().zip(&before) {
        let now = b.hits.load(std::sync::atomic::Ordering::Relaxed);
        assert!(now > then + 50, "{} got {} requests while held", b.name, now - then);
    }
    // Then the instances die: each one's first connect failure or failed probe releases it,
    // and no client sees an error.
    for b in &backends[..3] {
        b.kill();
    }
    assert_eventually!(
        20,
        gw.metric("zkgate_discovery_held_instances", "service=\"web\"") == 0,
        "dead held instances were not released:\n{}",
        gw.log()
    );
    load.wait_for(800);
    let tally = load.stop();
    report("75% of znodes deleted, instances live then killed", &tally);
    assert_eq!(tally.lost(), 0, "{tally}");
    assert!(gw.log_count("released") >= 3, "{}", gw.log());
}

/// The ensemble member that leads (from the four-letter word `srvr`).
fn leader(zk: &Zk) -> usize {
    (0..3).find(|i| zk.four_letter(*i, "srvr").contains("Mode: leader")).expect("a leader")
}

#[test]
fn killing_the_zookeeper_leader_mid_load_loses_no_request_and_changes_flow_after() {
    let _one = serial();
    let mut zk = Zk::ensemble();
    let (b1, b2, b3) = (Backend::start("b1"), Backend::start("b2"), Backend::start("b3"));
    let c = zk.client();
    c.register("web", &b1.address());
    c.register("web", &b2.address());
    let gw = Gateway::with(Toml::new().zookeeper(&zk, "").route_all("web"))
        .workers(WORKERS)
        .admin()
        .start();
    let load = Load::start(Spec::paced(gw.port, Reuse::Checked));
    load.wait_for(400);
    let lead = leader(&zk);
    zk.kill(lead);
    load.wait_for(800);
    // A change written after the election reaches every worker.
    let c2 = support::zk::ZkClient::connect(&zk.hosts());
    c2.register("web", &b3.address());
    assert_eventually!(
        30,
        b3.hits.load(std::sync::atomic::Ordering::Relaxed) > 20,
        "a change after the leader's death never routed"
    );
    load.wait_for(400);
    let tally = load.stop();
    report("ZooKeeper leader killed", &tally);
    assert_eq!(tally.lost(), 0, "{tally}");
    drop(c);
}

#[test]
fn an_expired_session_mid_load_loses_no_request_and_the_gateway_resyncs() {
    let _one = serial();
    let mut zk = Zk::standalone();
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    {
        let c = zk.client();
        c.create(&format!("/services/web/{}", b1.address()), b"", false);
    }
    let gw = Gateway::with(Toml::new().zookeeper(&zk, "").route_all("web"))
        .workers(WORKERS)
        .admin()
        .start();
    let resyncs = gw.metric("zkgate_zookeeper_resyncs_total", "");
    let load = Load::start(Spec::paced(gw.port, Reuse::Unchecked));
    load.wait_for(400);
    // Down for longer than the 4 s session timeout: every session expires.
    zk.kill(0);
    let down = Instant::now();
    assert_eventually!(
        10,
        gw.metric("zkgate_zookeeper_session_state", "") >= 2 * WORKERS as u64,
        "outage not noticed"
    );
    assert_eventually!(
        5,
        gw.metric("zkgate_discovery_last_sync_age_seconds", "") >= 1,
        "sync age does not grow while the registry is away"
    );
    std::thread::sleep(Duration::from_secs(7).saturating_sub(down.elapsed()));
    load.wait_for(200);
    zk.restart(0);
    assert_eventually!(
        30,
        gw.metric("zkgate_zookeeper_resyncs_total", "") >= resyncs + WORKERS as u64,
        "no resync after the expired sessions:\n{}",
        gw.log()
    );
    let c = zk.client();
    c.register("web", &b2.address());
    assert_eventually!(
        20,
        b2.hits.load(std::sync::atomic::Ordering::Relaxed) > 20,
        "a change after the new sessions never routed"
    );
    // Registrator nodes carry no data: the new node is dated by its stat, per worker.
    assert_eventually!(
        10,
        gw.metric("zkgate_discovery_lag_seconds_count", "") >= WORKERS as u64,
        "the change's lag was not measured by every worker:\n{}",
        gw.admin_get("/metrics").body_text()
    );
    let tally = load.stop();
    report("session expired mid-load", &tally);
    assert_eq!(tally.lost(), 0, "{tally}");
    assert_eq!(gw.metric("zkgate_zookeeper_watches", ""), WORKERS as u64, "one watch per worker");
}

/// A Curator (Spring Cloud Zookeeper) instance node's data.
fn curator(service: &str, id: &str, address: &str) -> Vec<u8> {
    let (host, port) = address.rsplit_once(':').unwrap();
    format!(
        r#"{{"name":"{service}","id":"{id}","address":"{host}","port":{port},"sslPort":null,"payload":null,"registrationTimeUTC":0,"serviceType":"DYNAMIC"}}"#
    )
    .into_bytes()
}

#[test]
fn poison_znodes_beside_healthy_ones_cost_nothing_and_changes_report_their_lag() {
    let _one = serial();
    let zk = Zk::standalone();
    let (b1, b2, b3) = (Backend::start("b1"), Backend::start("b2"), Backend::start("b3"));
    let c = zk.client();
    c.create("/services/web/a", &curator("web", "a", &b1.address()), false);
    c.create("/services/web/b", &curator("web", "b", &b2.address()), false);
    let gw = Gateway::with(Toml::new().zookeeper(&zk, "format = \"curator\"").route_all("web"))
        .workers(WORKERS)
        .admin()
        .start();
    let load = Load::start(Spec::paced(gw.port, Reuse::Checked));
    load.wait_for(400);
    // Bad data, huge data (900 KB of it), and a child under an instance.
    c.create("/services/web/garbage", b"{not json", false);
    c.create("/services/web/huge", &vec![b'x'; 900 * 1024], false);
    c.create("/services/web/a/child", b"{}", false);
    load.wait_for(400);
    // A healthy change after the poison still flows, and its lag is measured.
    c.create("/services/web/c", &curator("web", "c", &b3.address()), false);
    assert_eventually!(
        20,
        b3.hits.load(std::sync::atomic::Ordering::Relaxed) > 20,
        "a change beside poison znodes never routed"
    );
    load.wait_for(400);
    let tally = load.stop();
    report("poison znodes beside healthy ones", &tally);
    assert_eq!(tally.lost(), 0, "{tally}");
    for b in [&b1, &b2] {
        assert!(b.hits.load(std::sync::atomic::Ordering::Relaxed) > 50, "{} starved", b.name);
    }
    assert!(gw.log().contains("skipping /services/web/garbage"), "{}", gw.log());
    assert!(gw.log().contains("skipping /services/web/huge"), "{}", gw.log());
    let lags = gw.metric("zkgate_discovery_lag_seconds_count", "");
    assert!(lags >= WORKERS as u64, "each worker measures the lag of the new instance: {lags}");
    let slow = gw.metric("zkgate_discovery_lag_seconds_bucket", "le=\"+Inf\"")
        - gw.metric("zkgate_discovery_lag_seconds_bucket", "le=\"5\"");
    assert_eq!(slow, 0, "a change took over 5 s to reach a worker");
}

#[test]
fn a_health_checks_verdict_holds_for_workers_added_and_reloaded_later() {
    let _one = serial();
    let zk = Zk::standalone();
    let (good, sick) = (Backend::start("good"), Backend::start("sick"));
    sick.failing.store(true, std::sync::atomic::Ordering::Relaxed);
    let c = zk.client();
    c.register("web", &good.address());
    c.register("web", &sick.address());
    let config = Toml::new()
        .zookeeper(&zk, "")
        .section(
            "[services.web]",
            "health_check = { path = \"/health\", interval = \"300ms\", timeout = \"200ms\", unhealthy = 2 }",
        )
        .route_all("web");
    let gw = Gateway::with(config).workers(WORKERS).admin().start();
    assert_eventually!(
        10,
        instance_state(&gw, "web", &sick.address())["healthy"] == false,
        "the failing instance was never found unhealthy"
    );
    let requests_to_sick = || sick.requests_to("GET / ");
    let before = requests_to_sick();
    assert!(fresh_requests(&gw, 60).iter().all(|s| *s == 200));
    assert_eq!(requests_to_sick(), before, "an unhealthy instance took client requests");
    // A worker added now, and a reload's workers, start from the verdict: no request reaches
    // the instance before their first probe round could have run.
    let generation = current_generation(&gw);
    gw.signal(Signal::SIGTTIN);
    assert_eventually!(
        20,
        workers_of_generation(&gw, generation, WORKERS + 1),
        "TTIN: no new worker"
    );
    assert!(fresh_requests(&gw, 100).iter().all(|s| *s == 200));
    gw.signal(Signal::SIGHUP);
    assert_eventually!(
        30,
        workers_of_generation(&gw, generation + 1, WORKERS),
        "reload did not finish"
    );
    assert!(fresh_requests(&gw, 100).iter().all(|s| *s == 200));
    assert_eq!(requests_to_sick(), before, "a new worker sent the unhealthy instance requests");
}
