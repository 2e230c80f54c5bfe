//! Unit tests of `health.rs`.
use super::*;

fn policy() -> OutlierSettings {
    OutlierSettings {
        consecutive_failures: 3,
        base_ejection: Duration::from_millis(50),
        ..Default::default()
    }
}

#[test]
fn consecutive_failures_eject_and_ejection_grows_then_expires() {
    let (clock, now) = Clock::manual();
    let h = ServiceHealth::new(4, &clock);
    assert_eq!(h.failure(0, &policy()), None);
    h.success(0);
    assert_eq!(h.failure(0, &policy()), None);
    assert_eq!(h.failure(0, &policy()), None);
    assert_eq!(h.failure(0, &policy()), Some(Duration::from_millis(50)));
    assert!(!h.available(0) && h.ejected(0));
    now.fetch_add(49, Ordering::Relaxed);
    assert!(h.ejected(0), "still ejected 1 ms before the end");
    now.fetch_add(1, Ordering::Relaxed);
    assert!(h.available(0), "ejection expires");
    for _ in 0..2 {
        assert_eq!(h.failure(0, &policy()), None);
    }
    assert_eq!(
        h.failure(0, &policy()),
        Some(Duration::from_millis(100)),
        "second ejection is longer"
    );
}

#[test]
fn never_more_than_max_ejection_percent_but_at_least_one() {
    let (clock, _) = Clock::manual();
    let h = ServiceHealth::new(4, &clock);
    let mut ejected = 0;
    for idx in 0..4 {
        for _ in 0..3 {
            if h.failure(idx, &policy()).is_some() {
                ejected += 1;
            }
        }
    }
    assert_eq!(ejected, 2, "50% of 4");
    let single = ServiceHealth::new(1, &clock);
    let n = (0..3).filter_map(|_| single.failure(0, &policy())).count();
    assert_eq!(n, 1);
}

#[test]
fn probes_take_an_instance_out_and_back() {
    let (clock, _) = Clock::manual();
    let h = ServiceHealth::new(1, &clock);
    let c = HealthCheck { path: "/h".into(), healthy: 2, unhealthy: 3, ..Default::default() };
    assert_eq!(h.probe(0, false, &c), None);
    assert_eq!(h.probe(0, false, &c), None);
    assert_eq!(h.probe(0, false, &c), Some(false));
    assert!(!h.available(0));
    assert_eq!(h.probe(0, true, &c), None);
    assert_eq!(h.probe(0, true, &c), Some(true));
    assert!(h.available(0));
}

#[test]
fn state_follows_the_address_when_the_list_changes() {
    let (clock, _) = Clock::manual();
    let before = vec![Instance::new("10.0.0.1:80"), Instance::new("10.0.0.3:80")];
    let h = ServiceHealth::new(2, &clock);
    for _ in 0..3 {
        h.failure(1, &policy());
    }
    h.started(0);
    assert!(h.ejected(1));
    // A sibling registers between the two: positions shift, state must not.
    let after = vec![
        Instance::new("10.0.0.1:80"),
        Instance::new("10.0.0.2:80"),
        Instance::new("10.0.0.3:80"),
    ];
    let tracker = Tracker::local(clock.clone());
    let carried =
        ServiceHealth::carry("svc", &after, Some((&before, &h)), (&tracker, &HashMap::new()));
    assert!(carried.ejected(2), "10.0.0.3 stays ejected");
    assert!(!carried.ejected(1), "the newcomer starts healthy");
    assert_eq!(carried.active(0), 1, "in-flight count of 10.0.0.1 kept");
    carried.finished(0);
    assert_eq!(h.active(0), 0, "old and new table share the state");
}

#[test]
fn failures_count_host_wide_and_a_new_worker_starts_from_the_ejection() {
    let host = crate::host::Host::local(0);
    let list = vec![Instance::new("10.0.0.1:80"), Instance::new("10.0.0.2:80")];
    let none = HashMap::new();
    let worker = |slot: usize| {
        let tracker = Tracker::host(host.for_slot(slot).instances());
        ServiceHealth::carry("svc", &list, None, (&tracker, &none))
    };
    let (a, b) = (worker(0), worker(1));
    // Three failures in all, from two workers: the third ejects, for both.
    assert_eq!(a.failure(1, &policy()), None);
    assert_eq!(b.failure(1, &policy()), None);
    assert!(b.failure(1, &policy()).is_some(), "the third failure host-wide ejects");
    assert!(a.ejected(1) && b.ejected(1));
    assert_eq!(a.failure(1, &policy()), None, "ejected once, by one worker");
    // A worker started now (respawn, TTIN, reload) sees the ejection at once.
    let c = worker(2);
    assert!(c.ejected(1) && !c.available(1) && c.available(0));
    // In-flight counts are the host's; the connection limit reads this worker's.
    a.started(0);
    c.started(0);
    assert_eq!((b.active(0), b.local_active(0), a.local_active(0)), (2, 0, 1));
}

#[test]
fn a_verdict_written_by_the_prober_holds_for_every_worker() {
    let host = crate::host::Host::local(0);
    let list = vec![Instance::new("10.0.0.1:80")];
    let none = HashMap::new();
    let tracker = Tracker::host(host.instances());
    let prober = ServiceHealth::carry("svc", &list, None, (&tracker, &none));
    let reader = ServiceHealth::carry("svc", &list, None, (&tracker, &none));
    let c = HealthCheck { path: "/h".into(), healthy: 1, unhealthy: 1, ..Default::default() };
    assert_eq!(prober.probe(0, false, &c), Some(false));
    assert!(reader.down(0) && !reader.available(0));
}

#[test]
fn a_held_instance_is_released_once_and_listing_it_again_clears_the_release() {
    let host = crate::host::Host::local(0);
    let list = vec![Instance::new("10.0.0.1:80"), Instance::new("10.0.0.2:80")];
    let tracker = Tracker::host(host.instances());
    let hold = Hold { checked: false, why: "1 of 2 removed".into() };
    let held: HashMap<String, Hold> = [("10.0.0.2:80".to_string(), hold)].into();
    let h = ServiceHealth::carry("svc", &list, None, (&tracker, &held));
    assert!(h.held(1) && !h.held(0) && h.available(1));
    assert!(h.fallback(1) && !h.fallback(0), "no health check: a fallback");
    assert!(!h.release(0), "a listed instance is never released");
    assert!(h.release(1));
    assert!(!h.release(1), "released once");
    assert!(!h.available(1) && h.released(1));
    let listed = ServiceHealth::carry("svc", &list, None, (&tracker, &HashMap::new()));
    assert!(listed.available(1), "listed again: in rotation");
}

#[test]
fn a_held_instance_of_a_checked_service_serves_only_while_its_last_probe_passed() {
    let host = crate::host::Host::local(0);
    let list = vec![Instance::new("10.0.0.1:80"), Instance::new("10.0.0.2:80")];
    let tracker = Tracker::host(host.instances());
    let c = HealthCheck { path: "/h".into(), healthy: 1, unhealthy: 2, ..Default::default() };
    let hold = Hold { checked: true, why: "2 of 2 removed".into() };
    let held: HashMap<String, Hold> =
        list.iter().map(|i| (i.address.clone(), hold.clone())).collect();
    let h = ServiceHealth::carry("svc", &list, None, (&tracker, &held));
    assert!(!h.available(0), "never probed: no evidence of life, not routed");
    assert!(!h.fallback(0), "a checked hold is no fallback");
    h.probe(0, true, &c);
    assert!(h.available(0) && h.passing(0), "its probe passed: routed");
    h.probe(0, false, &c);
    assert!(!h.available(0), "one failed probe ends the evidence, before it is down");
    assert!(!h.down(0), "still up by the check's own count");
}
