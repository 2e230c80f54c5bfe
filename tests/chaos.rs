//! The zero-loss promises, tried as users meet them: routes from a real ZooKeeper ensemble,
//! keep-alive clients (one kind checks a connection before reusing it, the other does not),
//! a paced load running while reloads, crashes, scaling, outages and bad instances arrive.
//! Every failure is counted by class (refused, reset, EOF, timeout, status) and asserted.
//!
//! `ZKGATE_CHAOS_ROUNDS` sets how many disruptions each scenario makes (3 by default, the
//! short form `scripts/test` runs; `scripts/chaos` runs 10). The scenarios run one at a time:
//! each loads the 2-core machine on its own.

mod support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::backend::{Dying, Hung};
use support::load::{Load, Reuse, Spec};
use support::zk::Zk;
use support::{Backend, Gateway, Toml};

/// One scenario at a time: a second load on the same cores would measure the machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn rounds() -> usize {
    std::env::var("ZKGATE_CHAOS_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3)
}

/// Service `web` discovered in `zk`, every path routed to it.
fn discovered_web(zk: &Zk) -> Toml {
    Toml::new().proxy("debug_headers = true").zookeeper(zk, "").route_all("web")
}

/// Two backends registered in `zk` as service `web`.
fn registered_backends(zk: &Zk) -> (Backend, Backend, support::zk::ZkClient) {
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let c = zk.client();
    c.register("web", &b1.address());
    c.register("web", &b2.address());
    (b1, b2, c)
}

/// `rounds()` reloads, each waited for, with load flowing before, between and after.
fn reload_rounds(gw: &Gateway, load: &Load) {
    load.wait_for(400);
    for round in 1..=rounds() {
        let before = gw.readiness();
        gw.signal(Signal::SIGHUP);
        assert_eventually!(20, gw.reloaded(before), "round {round}: reload did not finish");
        load.wait_for(400);
    }
}

fn report(scenario: &str, tally: &support::load::Tally) {
    eprintln!("chaos {scenario}: {tally}");
}

#[test]
fn hup_with_zookeeper_routes_loses_no_request_even_for_unchecked_keep_alive() {
    let _one = serial();
    let zk = Zk::ensemble();
    let (_b1, _b2, _c) = registered_backends(&zk);
    let gw = Gateway::with(discovered_web(&zk)).workers(2).start();
    let load = Load::start(Spec::paced(gw.port, Reuse::Unchecked));
    reload_rounds(&gw, &load);
    let tally = load.stop();
    report("HUP x rounds, zookeeper routes, unchecked keep-alive", &tally);
    assert_eq!(tally.lost(), 0, "{tally}");
}

#[test]
fn killed_workers_with_zookeeper_routes_lose_only_what_they_had_in_flight() {
    let _one = serial();
    let zk = Zk::ensemble();
    let (_b1, _b2, _c) = registered_backends(&zk);
    let gw = Gateway::with(discovered_web(&zk)).workers(2).start();
    let load = Load::start(Spec::paced(gw.port, Reuse::Checked));
    load.wait_for(400);
    let kills = rounds();
    for _ in 0..kills {
        let started = Instant::now();
        let victim = gw.workers()[0];
        kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
        gw.assert_replaced(victim, 2);
        load.wait_for(200);
        // One kill every 2 s, as the scenario.
        std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    }
    let tally = load.stop();
    report("kill -9 a worker every 2 s, zookeeper routes", &tally);
    // Never a 404 or 503 from a respawned worker without routes, never a refused connection:
    // only requests the dead worker had on its connections (16 connections at most per kill).
    assert!(tally.status.is_empty() && tally.refused == 0, "{tally}");
    assert!(tally.lost() <= kills * 16, "{tally}");
}

#[test]
fn a_restart_and_a_reload_while_zookeeper_is_down_serve_the_snapshot() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("routes.json");
    let mut zk = Zk::standalone();
    let (b1, _b2, _c) = registered_backends(&zk);
    let body = discovered_web(&zk).snapshot(&snapshot);
    let mut gw = Gateway::with(body.clone()).workers(2).start();
    assert_eventually!(
        10,
        std::fs::read_to_string(&snapshot).is_ok_and(|s| s.contains(&b1.address())),
        "snapshot not written"
    );
    zk.kill(0);
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    // A new gateway on the same port while ZooKeeper is down: the load starts as soon as the
    // supervisor listens (connections queue until the workers are ready).
    let port = gw.port;
    drop(gw);
    let gw = Gateway::with(body).port(port).workers(2).spawn();
    assert_eventually!(
        10,
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "supervisor not listening"
    );
    let load = Load::start(Spec::paced(gw.port, Reuse::Unchecked));
    load.wait_for(800);
    gw.signal(Signal::SIGHUP);
    // One READY=1 when the workers first were, one when the reload is in service.
    assert_eventually!(20, gw.readiness() >= 2, "reload stalled");
    load.wait_for(800);
    let tally = load.stop();
    report("restart + HUP with zookeeper down, snapshot", &tally);
    assert_eq!(tally.lost(), 0, "{tally}");
}

#[test]
fn hup_with_static_routes_loses_no_request_for_either_kind_of_keep_alive_client() {
    let _one = serial();
    for reuse in [Reuse::Checked, Reuse::Unchecked] {
        let b = Backend::start("b");
        let gw =
            Gateway::with(Toml::new().backends("web", &[&b]).route_all("web")).workers(2).start();
        let load = Load::start(Spec::paced(gw.port, reuse));
        reload_rounds(&gw, &load);
        let tally = load.stop();
        report(&format!("HUP x rounds, static routes, {reuse:?} keep-alive"), &tally);
        assert_eq!(tally.lost(), 0, "{reuse:?}: {tally}");
    }
}

#[test]
fn ttin_and_ttou_rounds_lose_no_request_for_unchecked_keep_alive() {
    let _one = serial();
    let zk = Zk::standalone();
    let (_b1, _b2, _c) = registered_backends(&zk);
    let gw = Gateway::with(discovered_web(&zk)).workers(2).admin().start();
    let load = Load::start(Spec::paced(gw.port, Reuse::Unchecked));
    load.wait_for(400);
    for round in 0..rounds() {
        gw.signal(Signal::SIGTTIN);
        assert_eventually!(
            10,
            gw.workers().len() == 3
                && gw.admin_get("/workers").json()["workers"].as_array().map(Vec::len) == Some(3),
            "round {round}: TTIN"
        );
        load.wait_for(400);
        gw.signal(Signal::SIGTTOU);
        assert_eventually!(10, gw.workers().len() == 2, "round {round}: TTOU");
        load.wait_for(400);
    }
    // The retired slot is no longer listed.
    assert_eventually!(
        5,
        gw.admin_get("/workers").json()["workers"].as_array().map(Vec::len) == Some(2),
        "/workers still lists the retired slot: {}",
        gw.admin_get("/workers").body_text()
    );
    let tally = load.stop();
    report("TTIN/TTOU x rounds, unchecked keep-alive", &tally);
    assert_eq!(tally.lost(), 0, "{tally}");
}

#[test]
fn term_ends_keep_alive_connections_with_connection_close_never_a_reset() {
    let _one = serial();
    let b = Backend::start("b");
    let mut gw =
        Gateway::with(Toml::new().backends("web", &[&b]).route_all("web")).workers(2).start();
    let mut spec = Spec::paced(gw.port, Reuse::Unchecked);
    spec.fresh = 0;
    let load = Load::start(spec);
    load.wait_for(400);
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    let tally = load.stop();
    report("TERM, unchecked keep-alive", &tally);
    // After the stop nothing listens: new connections are refused, as they must be. Nothing
    // sent on a connection the gateway had accepted may be lost.
    assert_eq!(tally.reset + tally.eof + tally.timeout, 0, "{tally}");
    assert!(tally.status.is_empty(), "{tally}");
}

#[test]
fn an_instance_dying_mid_request_costs_idempotent_requests_nothing() {
    let _one = serial();
    let (good, dying) = (Backend::start("good"), Dying::start());
    let instances = [good.address(), dying.address()];
    // Outlier detection off: every request meets the dying instance in its turn.
    let body = Toml::new()
        .service("web", &instances, "")
        .route_all("web")
        .section("[proxy.outlier]", "consecutive_failures = 0");
    let gw = Gateway::with(body).workers(1).start();
    for _ in 0..40 {
        let r = gw.get("/").unwrap();
        assert_eq!((r.status, r.backend()), (200, "good".to_string()));
    }
    assert!(
        dying.hits.load(std::sync::atomic::Ordering::Relaxed) >= 10,
        "the dying instance was tried"
    );
    // A POST may have had effects: it is not sent twice, the client gets the 502.
    let statuses: Vec<u16> = (0..4)
        .map(|_| support::http::request(gw.port, "POST", "/", &[], b"").unwrap().status)
        .collect();
    assert!(statuses.contains(&502), "POST never retried after the instance took it: {statuses:?}");
}

#[test]
fn a_hung_instance_is_ejected_within_seconds_and_idempotent_requests_lose_nothing() {
    let _one = serial();
    let (good, hung) = (Backend::start("good"), Hung::start());
    let instances = [good.address(), hung.address()];
    // The defaults: request_timeout 30 s, slow_after 5 s, 5 consecutive failures.
    let gw = Gateway::with(Toml::new().service("web", &instances, "").route_all("web"))
        .workers(2)
        .admin()
        .start();
    let started = Instant::now();
    let load = Load::start(Spec { rate: 200, ..Spec::paced(gw.port, Reuse::Checked) });
    // Failures count host-wide: one ejection holds for both workers.
    assert_eventually!(
        15,
        gw.metric("zkgate_ejections_total", "") >= 1,
        "the hung instance was not ejected"
    );
    let ejected_after = started.elapsed();
    load.wait_for(400);
    let tally = load.stop();
    report(&format!("hung instance, ejected for both workers after {ejected_after:?}"), &tally);
    assert!(ejected_after < Duration::from_secs(12), "ejected after {ejected_after:?}");
    assert_eq!(tally.lost(), 0, "{tally}");
}
