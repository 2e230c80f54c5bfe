//! The removal guard honours intent: a registration withdrawn on purpose leaves at once, and a
//! removal in doubt is held only on evidence of life. Written as the registration clients no one
//! here wrote do it — Aurora draining ServerSet members with `STOPPING`, a client closing its
//! session on a clean shutdown, Nerve and Registrator deleting every node, a redeploy deleting
//! and re-creating the service node, a rolling deploy removing instances seconds apart — against
//! a real ZooKeeper and the real gateway, under paced keep-alive load, failures counted by class.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::load::{Load, Reuse, Spec};
use support::zk::{Zk, ZkClient};
use support::{no_worker_uses, zk_config, Backend, Gateway};

/// One scenario at a time: each loads the 2-core machine on its own.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A light paced load: 8 keep-alive connections reused without checking, 2 fresh-connection
/// loops, 300 requests a second.
fn load(gw: &Gateway) -> Load {
    let mut spec = Spec::paced(gw.port, Reuse::Unchecked);
    (spec.keep_alive, spec.fresh, spec.rate) = (8, 2, 300);
    Load::start(spec)
}

/// A gateway on `zk` routing every path to `web`, 2 workers, admin API, more `[zookeeper]` keys.
fn gateway(zk: &Zk, keys: &str, services: &str) -> Gateway {
    let toml = zk_config(zk, keys).route_all("web");
    let toml = if services.is_empty() { toml } else { toml.section("[services.web]", services) };
    Gateway::with(toml).workers(2).admin().start()
}

/// Who answered `n` requests on fresh connections (spread over the workers): backend name, or
/// the status when it was not 200.
fn answers(gw: &Gateway, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let who = match gw.get("/") {
            Ok(r) if r.status == 200 => r.backend(),
            Ok(r) => r.status.to_string(),
            Err(e) => format!("{:?}", e.kind()),
        };
        *m.entry(who).or_default() += 1;
    }
    m
}

fn hits(b: &Backend) -> usize {
    b.hits.load(Ordering::Relaxed)
}

/// A ServerSet member (Finagle's `ServiceInstance`, as kazoo and Aurora write it).
fn member(b: &Backend, status: &str) -> Vec<u8> {
    format!(
        r#"{{"serviceEndpoint":{{"host":"127.0.0.1","port":{}}},"additionalEndpoints":{{}},"status":"{status}","shard":0}}"#,
        b.addr.port()
    )
    .into_bytes()
}

/// The `/routes` state of every instance of `web` (on the worker that answered).
fn states(gw: &Gateway) -> BTreeMap<String, String> {
    let routes = gw.admin_get("/routes").json();
    let web = routes["services"].as_array().and_then(|s| s.iter().find(|s| s["name"] == "web"));
    web.and_then(|w| w["instances"].as_array())
        .into_iter()
        .flatten()
        .map(|i| (i["address"].as_str().unwrap().to_string(), i["state"].as_str().unwrap().into()))
        .collect()
}

#[test]
fn serverset_members_drained_with_stopping_take_no_request_and_none_left_answers_503() {
    let _one = serial();
    let zk = Zk::standalone();
    let c = zk.client();
    let b: Vec<Backend> = (1..=3).map(|i| Backend::start(&format!("b{i}"))).collect();
    for (i, b) in b.iter().enumerate() {
        c.create(&format!("/services/web/member_000000000{i}"), &member(b, "ALIVE"), true);
    }
    let gw = gateway(&zk, "format = \"serverset\"", "");
    assert_eventually!(10, answers(&gw, 30).len() == 3, "not all three routed:\n{}", gw.log());
    let load = load(&gw);
    load.wait_for(200);
    // Aurora drains two of three at once: more than the guard's share, but meant.
    c.set("/services/web/member_0000000000", &member(&b[0], "STOPPING"));
    c.set("/services/web/member_0000000001", &member(&b[1], "STOPPING"));
    assert_eventually!(
        2,
        no_worker_uses(&gw, "web", "b1") && no_worker_uses(&gw, "web", "b2"),
        "STOPPING members still routed: {:?}\n{}",
        states(&gw),
        gw.log()
    );
    let drained = [hits(&b[0]), hits(&b[1])];
    load.wait_for(load.ok.load(Ordering::Relaxed) + 400);
    assert_eq!([hits(&b[0]), hits(&b[1])], drained, "a drained member got requests");
    let tally = load.stop();
    eprintln!("withdrawal: two of three members STOPPING under load: {tally}");
    assert_eq!(tally.lost(), 0, "{tally}");
    assert_eq!(states(&gw).len(), 1, "no instance held: {:?}", states(&gw));
    assert!(gw.log().contains("withdrawn: status STOPPING"), "{}", gw.log());
    // The last one drained too: nothing is left to serve, 503.
    c.set("/services/web/member_0000000002", &member(&b[2], "STOPPING"));
    assert_eventually!(2, answers(&gw, 10) == [("503".into(), 10)].into(), "not 503");
    let last = hits(&b[2]);
    assert_eq!(answers(&gw, 20), [("503".to_string(), 20)].into());
    assert_eq!(hits(&b[2]), last, "the last drained member got requests");
    let why = gw.admin_get("/explain?service=web").json();
    let nodes = why["not_routed"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 3, "{why}");
    assert!(nodes.iter().all(|n| n["state"] == "withdrawn"), "{why}");
    assert!(nodes[0]["why"].as_str().unwrap().starts_with("withdrawn: status STOPPING"), "{why}");
}

#[test]
fn members_whose_clients_closed_their_sessions_leave_at_once() {
    let _one = serial();
    let zk = Zk::standalone();
    let b: Vec<Backend> = (1..=3).map(|i| Backend::start(&format!("b{i}"))).collect();
    // Each instance registers through its own session, as a registration library does.
    let clients: Vec<ZkClient> = b
        .iter()
        .map(|b| {
            let c = zk.client();
            c.register("web", &b.address());
            c
        })
        .collect();
    let gw = gateway(&zk, "", "");
    assert_eventually!(10, answers(&gw, 30).len() == 3, "not all three routed:\n{}", gw.log());
    let load = load(&gw);
    load.wait_for(200);
    // Two instances shut down cleanly: their clients close their sessions.
    let closed = Instant::now();
    let mut clients = clients.into_iter();
    clients.next().unwrap().close();
    clients.next().unwrap().close();
    let observer = zk.client();
    assert_eventually!(
        2,
        observer.children("/services/web").len() == 1,
        "closing the sessions did not delete the nodes"
    );
    assert!(closed.elapsed() < Duration::from_secs(3), "the nodes went by session expiry");
    assert_eventually!(
        2,
        no_worker_uses(&gw, "web", "b1") && no_worker_uses(&gw, "web", "b2"),
        "closed members still routed: {:?}",
        states(&gw)
    );
    let gone = [hits(&b[0]), hits(&b[1])];
    load.wait_for(load.ok.load(Ordering::Relaxed) + 400);
    assert_eq!([hits(&b[0]), hits(&b[1])], gone, "a member that left got requests");
    let tally = load.stop();
    eprintln!("withdrawal: two of three sessions closed under load: {tally}");
    assert_eq!(tally.lost(), 0, "{tally}");
    // No health check: whatever the burst held is a fallback, never beside b3 (which of the
    // two depends on whether the closes came in one listing or two: a burst holds only what
    // its last listing removed).
    let s = states(&gw);
    assert_eq!(s[&b[2].address()], "routable", "{s:?}");
    assert!(s.len() > 1, "the second removal, beyond the share, holds nothing: {s:?}");
    assert!(s.iter().all(|(a, v)| *a == b[2].address() || v == "fallback"), "{s:?}");
}

#[test]
fn every_node_deleted_with_keep_last_on_empty_false_answers_503_within_a_second() {
    let _one = serial();
    let zk = Zk::standalone();
    let c = zk.client();
    let b: Vec<Backend> = (1..=2).map(|i| Backend::start(&format!("b{i}"))).collect();
    for b in &b {
        c.create(&format!("/services/web/{}", b.address()), b"", false);
    }
    let gw = gateway(&zk, "keep_last_on_empty = false", "");
    assert_eventually!(10, answers(&gw, 20).len() == 2, "not both routed:\n{}", gw.log());
    let paths: Vec<String> = b.iter().map(|b| format!("/services/web/{}", b.address())).collect();
    c.delete_together(&paths);
    let deleted = Instant::now();
    assert_eventually!(1, answers(&gw, 4) == [("503".into(), 4)].into(), "still served");
    eprintln!("withdrawal: every node deleted, 503 after {:?}", deleted.elapsed());
    let before: Vec<usize> = b.iter().map(hits).collect();
    assert_eq!(answers(&gw, 20), [("503".to_string(), 20)].into());
    assert_eq!(b.iter().map(hits).collect::<Vec<_>>(), before, "an emptied service was served");
}

#[test]
fn a_redeploy_that_recreates_the_service_node_routes_only_to_the_new_instance() {
    let _one = serial();
    let zk = Zk::standalone();
    let c = zk.client();
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    c.register("web", &old.address());
    let gw = gateway(&zk, "", "");
    assert_eventually!(10, answers(&gw, 10).contains_key("old"), "old not routed");
    let load = load(&gw);
    load.wait_for(200);
    // The deploy tool deletes the service node and writes it anew with the new instance.
    c.deregister("web", &old.address());
    c.register("web", &new.address());
    assert_eventually!(
        3,
        no_worker_uses(&gw, "web", "old"),
        "the old instance still routed beside the new: {:?}\n{}",
        states(&gw),
        gw.log()
    );
    let then = hits(&old);
    load.wait_for(load.ok.load(Ordering::Relaxed) + 400);
    assert_eq!(hits(&old), then, "the old instance got requests after the redeploy");
    let tally = load.stop();
    eprintln!("withdrawal: redeploy under load: {tally}");
    assert_eq!(tally.lost(), 0, "{tally}");
}

#[test]
fn two_removals_seconds_apart_never_bring_the_first_back() {
    let _one = serial();
    let zk = Zk::standalone();
    let c = zk.client();
    let b: BTreeMap<&str, Backend> =
        ["b1", "b2", "b4"].into_iter().map(|n| (n, Backend::start(n))).collect();
    for b in b.values() {
        c.register("web", &b.address());
    }
    let gw = gateway(&zk, "", "");
    assert_eventually!(10, answers(&gw, 30).len() == 3, "not all three routed");
    let load = load(&gw);
    load.wait_for(200);
    // A rolling deploy: b1 out, then b2 a few seconds later — one burst of the guard, whose
    // share (2 of 3) the second removal exceeds.
    c.deregister("web", &b["b1"].address());
    assert_eventually!(2, no_worker_uses(&gw, "web", "b1"), "b1 still routed");
    let first = Instant::now();
    let b1 = hits(&b["b1"]);
    while first.elapsed() < Duration::from_secs(2) {
        load.wait_for(load.ok.load(Ordering::Relaxed) + 50);
    }
    c.deregister("web", &b["b2"].address());
    assert_eventually!(2, no_worker_uses(&gw, "web", "b2"), "b2 still routed");
    let b2 = hits(&b["b2"]);
    load.wait_for(load.ok.load(Ordering::Relaxed) + 400);
    assert_eq!(answers(&gw, 30), [("b4".to_string(), 30)].into());
    assert_eq!((hits(&b["b1"]), hits(&b["b2"])), (b1, b2), "a removed instance came back");
    let tally = load.stop();
    eprintln!("withdrawal: rolling removal under load: {tally}");
    assert_eq!(tally.lost(), 0, "{tally}");
    let s = states(&gw);
    assert!(!s.contains_key(&b["b1"].address()), "b1 brought back by the second removal: {s:?}");
    assert_eq!(s.get(&b["b2"].address()).map(String::as_str), Some("fallback"), "{s:?}");
}

#[test]
fn a_mass_deletion_without_health_checks_serves_from_the_fallback_only_while_nothing_is_listed() {
    let _one = serial();
    let zk = Zk::standalone();
    let c = zk.client();
    let b: Vec<Backend> = (0..4).map(|i| Backend::start(&format!("b{i}"))).collect();
    for b in &b {
        c.register("web", &b.address());
    }
    let gw = gateway(&zk, "", "");
    assert_eventually!(10, answers(&gw, 40).len() == 4, "not all four routed");
    let load = load(&gw);
    load.wait_for(200);
    // A script deletes three of the four znodes in one transaction while the instances live.
    let paths: Vec<String> =
        b[..3].iter().map(|b| format!("/services/web/{}", b.address())).collect();
    c.delete_together(&paths);
    assert_eventually!(
        3,
        gw.metric("zkgate_discovery_held_instances", "service=\"web\"") == 3,
        "the removal was not held: {:?}",
        states(&gw)
    );
    // Held, but only as the fallback: the listed instance takes every request.
    assert_eventually!(2, answers(&gw, 20) == [("b3".into(), 20)].into(), "fallback beside b3");
    // The listed one dies (its node stays: keep_last_on_empty keeps a last instance anyway).
    // With no listed instance routable, the fallback answers, and no request is lost: one
    // that found b3 dead is retried there.
    b[3].kill();
    assert_eventually!(
        3,
        answers(&gw, 20).keys().all(|k| ["b0", "b1", "b2"].contains(&k.as_str())),
        "the fallback did not answer with nothing listed: {:?}\n{}",
        states(&gw),
        gw.log()
    );
    // A new registration: back to what is listed only.
    let b5 = Backend::start("b5");
    c.register("web", &b5.address());
    assert_eventually!(3, answers(&gw, 20) == [("b5".into(), 20)].into(), "fallback beside b5");
    let tally = load.stop();
    eprintln!("withdrawal: mass deletion without health checks under load: {tally}");
    assert_eq!(tally.lost(), 0, "{tally}");
    let s = states(&gw);
    assert_eq!(s.values().filter(|v| *v == "fallback").count(), 3, "{s:?}");
    assert_eq!(s[&b5.address()], "routable", "{s:?}");
}
