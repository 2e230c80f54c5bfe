//! Unit tests of the table builder (`builder.rs`).
use super::*;
use crate::balance::Strategy;
use crate::config::ServiceSettings;
use crate::discovery::snapshot::Listing;
use crate::discovery::update::tests::listing;
use crate::discovery::update::Registry;
use crate::table::{Clock, Instance};
use arc_swap::ArcSwap;

fn svc(name: &str, addrs: &[&str]) -> Update {
    Update::Service(name.into(), addrs.iter().map(|a| Instance::new(*a)).collect())
}

fn config_with(name: &str, s: ServiceSettings) -> Arc<Config> {
    let mut c = Config::default();
    c.services.insert(name.into(), s);
    Arc::new(c)
}

#[test]
fn configured_weights_override_a_discovered_services_weights() {
    let weights = [("10.0.0.2:80".to_string(), 5)].into_iter().collect();
    let config = config_with(
        "a",
        ServiceSettings { weights, load_balance: Some(Strategy::Weighted), ..Default::default() },
    );
    let mut b = TableBuilder::new(config, Tracker::local(Clock::system()));
    let mut r = Registries::new(vec![Registry::new(true)]);
    let (_, ch) = r
        .get_mut(0)
        .unwrap()
        .apply(Update::Full(listing(&[("a", &["10.0.0.1:80", "10.0.0.2:80"])])));
    let t = b.build(&r, &ch);
    let w: Vec<u32> = t.get("a").unwrap().instances.iter().map(|i| i.weight).collect();
    assert_eq!(w, [1, 5]);
}

#[test]
fn the_builder_keeps_static_services_and_unchanged_balancers() {
    let config = config_with(
        "static",
        ServiceSettings {
            instances: Some(vec![Instance::new("127.0.0.1:1")]),
            ..Default::default()
        },
    );
    let mut b = TableBuilder::new(config, Tracker::local(Clock::system()));
    let mut r = Registries::new(vec![Registry::new(true)]);
    let (_, ch) = r.get_mut(0).unwrap().apply(Update::Full(listing(&[
        ("a", &["10.0.0.1:80"]),
        ("b", &["10.0.0.2:80"]),
        ("static", &["10.9.9.9:80"]),
    ])));
    let t1 = b.build(&r, &ch);
    assert_eq!(t1.get("static").unwrap().instances[0].address, "127.0.0.1:1", "static wins");
    let (_, ch) = r.get_mut(0).unwrap().apply(svc("a", &["10.0.0.3:80"]));
    let t2 = b.build(&r, &ch);
    assert_eq!(t2.get("a").unwrap().instances[0].weight, 1);
    assert!(Arc::ptr_eq(t1.get("b").unwrap(), t2.get("b").unwrap()), "unchanged service reused");
    assert_eq!(t2.get("a").unwrap().instances[0].address, "10.0.0.3:80");
}

#[test]
fn an_ejected_instance_stays_ejected_when_a_sibling_registers() {
    let mut config = Config::default();
    config.proxy.outlier.consecutive_failures = 1;
    let policy = config.proxy.outlier.clone();
    let mut b = TableBuilder::new(Arc::new(config), Tracker::local(Clock::system()));
    let mut r = Registries::new(vec![Registry::new(true)]);
    let (_, ch) = r
        .get_mut(0)
        .unwrap()
        .apply(Update::Full(listing(&[("a", &["10.0.0.1:80", "10.0.0.3:80"])])));
    let t1 = b.build(&r, &ch);
    let a1 = t1.get("a").unwrap();
    assert!(a1.health.failure(1, &policy).is_some(), "10.0.0.3 ejected");
    // 10.0.0.2 registers and sorts between the two: 10.0.0.3 moves from index 1 to 2.
    let (_, ch) =
        r.get_mut(0).unwrap().apply(svc("a", &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]));
    let t2 = b.build(&r, &ch);
    let a2 = t2.get("a").unwrap();
    assert_eq!(a2.instances[2].address, "10.0.0.3:80");
    assert!(a2.health.ejected(2), "still ejected after a sibling registered");
    assert!(!a2.health.ejected(1) && !a2.health.ejected(0));
}

/// A builder under test and the ends it publishes to.
struct Harness {
    builder: Builder,
    table: SharedTable,
    ready: watch::Receiver<Option<Source>>,
    snapshot: Option<watch::Receiver<Arc<Sections>>>,
}

fn harness(snapshot: bool) -> Harness {
    harness_full(snapshot, Arc::new(Config::default()))
}

fn harness_with(config: Arc<Config>) -> Harness {
    harness_full(false, config)
}

fn harness_full(snapshot: bool, config: Arc<Config>) -> Harness {
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(RouteTable::default()));
    let (ready_tx, ready) = watch::channel(None);
    let (snap_tx, snapshot) = if snapshot {
        let (t, r) = watch::channel(Arc::default());
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    let out = Outputs {
        table: table.clone(),
        ready: ready_tx,
        snapshot: snap_tx,
        metrics: Metrics::new(crate::host::Host::local(0)),
        changes: Arc::default(),
    };
    let keep = config.zookeeper.first().is_none_or(|z| z.keep_last_on_empty);
    let tables = TableBuilder::new(config, Tracker::local(Clock::system()));
    let registries = Registries::new(vec![Registry::new(keep)]);
    let builder = Builder::new(registries, vec!["zk0".into()], tables, out);
    Harness { builder, table, ready, snapshot }
}

fn addresses(table: &SharedTable, service: &str) -> Vec<String> {
    table
        .load()
        .get(service)
        .map(|s| s.instances.iter().map(|i| i.address.clone()).collect())
        .unwrap_or_default()
}

#[test]
fn the_snapshot_makes_a_worker_ready_and_zookeepers_listing_replaces_it() {
    let Harness { builder: mut b, table, ready, snapshot } = harness(true);
    let mut snap = snapshot.unwrap();
    assert_eq!(*ready.borrow(), None, "not ready before any listing");
    b.apply(vec![Update::Snapshot(listing(&[("a", &["10.0.0.9:80"])]))]);
    assert_eq!(*ready.borrow(), Some(Source::Snapshot));
    assert_eq!(addresses(&table, "a"), ["10.0.0.9:80"]);
    assert!(!snap.has_changed().unwrap(), "a snapshot is never written back from itself");

    b.apply(vec![Update::Full(listing(&[("a", &["10.0.0.1:80"])]))]);
    assert_eq!(*ready.borrow(), Some(Source::Zookeeper), "the listing wins");
    assert_eq!(addresses(&table, "a"), ["10.0.0.1:80"]);
    assert!(snap.has_changed().unwrap());
    assert_eq!(snap.borrow_and_update()["zk0"]["a"][0].address, "10.0.0.1:80");

    b.apply(vec![Update::Snapshot(listing(&[("a", &["10.0.0.9:80"])]))]);
    assert_eq!(
        addresses(&table, "a"),
        ["10.0.0.1:80"],
        "a late snapshot never overrides the live listing"
    );
    assert_eq!(*ready.borrow(), Some(Source::Zookeeper));
}

#[test]
fn a_burst_is_one_table_and_an_empty_registry_is_ready_too() {
    let Harness { builder: mut b, table, ready, .. } = harness(false);
    b.apply(vec![Update::Full(Listing::new())]);
    assert_eq!(*ready.borrow(), Some(Source::Zookeeper), "an empty registry is a loaded registry");
    let before = table.load_full();
    b.apply(vec![
        svc("a", &["10.0.0.1:80"]),
        svc("a", &["10.0.0.1:80", "10.0.0.2:80"]),
        svc("b", &["10.0.0.3:80"]),
    ]);
    assert!(!Arc::ptr_eq(&before, &table.load_full()));
    assert_eq!(addresses(&table, "a"), ["10.0.0.1:80", "10.0.0.2:80"]);
    assert_eq!(addresses(&table, "b"), ["10.0.0.3:80"]);
}

#[test]
fn a_mass_removal_stays_in_rotation_held_until_removal_hold_passes() {
    let mut config = Config::default();
    config.zookeeper = vec![crate::config::ZkSettings {
        removal_hold: std::time::Duration::from_millis(100),
        ..Default::default()
    }];
    let Harness { builder: mut b, table, .. } = harness_with(Arc::new(config));
    let four = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];
    b.apply(vec![Update::Full(listing(&[("a", &four)]))]);
    b.apply(vec![svc("a", &["10.0.0.4:80"])]);
    assert_eq!(addresses(&table, "a").len(), 4, "3 of 4 removed at once: held");
    let t = table.load();
    let a = t.get("a").unwrap();
    assert!(a.health.held(0) && a.health.held(1) && a.health.held(2) && !a.health.held(3));
    drop(t);
    std::thread::sleep(std::time::Duration::from_millis(150));
    b.expire_holds();
    assert_eq!(addresses(&table, "a"), ["10.0.0.4:80"], "removal_hold passed");
}

/// Every address `service` holds, and the terms: `true` when its health check vouches.
fn holds(table: &SharedTable, service: &str) -> Vec<(String, bool, String)> {
    let t = table.load();
    let s = t.get(service).unwrap();
    (0..s.instances.len())
        .filter_map(|i| {
            let h = s.health.hold(i)?;
            Some((s.instances[i].address.clone(), h.checked, h.why.to_string()))
        })
        .collect()
}

#[test]
fn a_withdrawal_is_never_held_and_a_hold_serves_on_its_services_terms() {
    let checked = crate::config::HealthCheck { path: "/h".into(), ..Default::default() };
    let mut config = Config::default();
    config.services.insert(
        "web".into(),
        ServiceSettings { health_check: Some(checked), ..Default::default() },
    );
    config.zookeeper = vec![crate::config::ZkSettings::default()];
    let Harness { builder: mut b, table, .. } = harness_with(Arc::new(config));
    let four = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];
    b.apply(vec![Update::Full(listing(&[("web", &four), ("api", &four)]))]);
    // Aurora drains three members: STOPPING, all at once. Intent: none is held.
    let stopping = |a: &str| (a.to_string(), "status STOPPING (only ALIVE is routed)".to_string());
    b.apply(vec![
        Update::Withdrawn("web".into(), four[..3].iter().map(|a| stopping(a)).collect()),
        svc("web", &["10.0.0.4:80"]),
    ]);
    assert_eq!(addresses(&table, "web"), ["10.0.0.4:80"], "withdrawn on purpose: out at once");
    // The same share deleted: doubt. web has a health check (held while it passes); api has
    // none (a fallback).
    b.apply(vec![svc("web", &four)]);
    b.apply(vec![svc("web", &["10.0.0.4:80"]), svc("api", &["10.0.0.4:80"])]);
    let web = holds(&table, "web");
    assert_eq!(web.len(), 3, "{web:?}");
    assert!(web
        .iter()
        .all(|(_, checked, why)| *checked && why.starts_with("3 of 4 removed within")));
    let api = holds(&table, "api");
    assert_eq!(api.len(), 3);
    assert!(api.iter().all(|(_, checked, _)| !checked), "no health check: fallback only");
}

#[test]
fn a_removal_with_a_resync_or_emptying_several_services_is_a_suspected_fault() {
    let mut config = Config::default();
    config.zookeeper = vec![crate::config::ZkSettings::default()];
    let Harness { builder: mut b, table, .. } = harness_with(Arc::new(config));
    let three = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
    let one = ["10.0.0.1:80"];
    b.apply(vec![Update::Full(listing(&[("a", &three), ("b", &three), ("c", &three)]))]);
    // Watch events that take most of one service: doubt, but nothing points at a fault.
    b.apply(vec![svc("a", &one)]);
    let a = holds(&table, "a");
    assert!(a.len() == 2 && !a[0].2.contains("suspected"), "{a:?}");
    // A resync (after a session loss) that lists b with one instance left.
    b.apply(vec![Update::Full(listing(&[("a", &one), ("b", &one), ("c", &three)]))]);
    let b_holds = holds(&table, "b");
    assert!(
        b_holds[0].2.contains("suspected registry fault: came with this worker's resync"),
        "{b_holds:?}"
    );
    // Most of two services gone in one batch of watch events.
    b.apply(vec![svc("a", &three), svc("c", &three)]);
    b.apply(vec![svc("a", &one), svc("c", &one)]);
    let c = holds(&table, "c");
    assert!(c[0].2.contains("2 services lost most of their instances at once"), "{c:?}");
}

#[test]
fn keep_last_on_empty_false_answers_503_for_an_emptied_service() {
    let mut config = Config::default();
    config.zookeeper = vec![crate::config::ZkSettings::default()];
    config.zookeeper[0].keep_last_on_empty = false;
    let Harness { builder: mut b, table, .. } = harness_with(Arc::new(config));
    b.apply(vec![Update::Full(listing(&[("a", &["10.0.0.1:80", "10.0.0.2:80"])]))]);
    b.apply(vec![Update::Removed("a".into())]);
    assert!(addresses(&table, "a").is_empty(), "every node deleted: empty is empty");
}
