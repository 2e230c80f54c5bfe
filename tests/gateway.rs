//! End-to-end: the real binary with static services (no ZooKeeper), real sockets, real signals.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::http::request;
use support::{request_loop, wait_for_progress, Backend, Gateway, Toml};

/// Every path to service `web` on these backends.
fn web(backends: &[&Backend]) -> Toml {
    Toml::new().backends("web", backends).route_all("web")
}

#[test]
fn round_robin_alternates_between_two_backends() {
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let gw = Gateway::with(web(&[&b1, &b2])).workers(1).start();
    let seen: Vec<String> = (0..10).map(|_| gw.get("/hello").unwrap().backend()).collect();
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin must alternate: {seen:?}");
    }
    assert_eq!(seen.iter().filter(|b| *b == "b1").count(), 5);
}

#[test]
fn header_routing_forwards_api_name_and_refuses_anything_but_a_path() {
    let (b1, b2) = (Backend::start("s1-a"), Backend::start("s2-a"));
    let gw = Gateway::with(Toml::new().backends("service_1", &[&b1]).backends("service_2", &[&b2]))
        .start();

    let r = request(
        gw.port,
        "GET",
        "/services",
        &[("service_name", "service_1"), ("api_name", "/user?id=1")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "s1-a");
    assert_eq!(r.json()["path"], "/user?id=1");
    let r = request(
        gw.port,
        "GET",
        "/services",
        &[("service_name", "service_2"), ("api_name", "/")],
        b"",
    )
    .unwrap();
    assert_eq!((r.status, r.backend().as_str()), (200, "s2-a"));

    for bad in ["http://evil.example/", "//evil.example/", "evil.example"] {
        let r = request(
            gw.port,
            "GET",
            "/services",
            &[("service_name", "service_1"), ("api_name", bad)],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 400, "api_name {bad:?}");
        assert!(r.json()["error"].as_str().unwrap().contains("api_name"));
    }
    let r =
        request(gw.port, "GET", "/services", &[("service_name", "nope"), ("api_name", "/")], b"")
            .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["service"], "nope");
    assert_eq!(r.json()["error"], "unknown service");
    let r = request(gw.port, "GET", "/elsewhere", &[], b"").unwrap();
    assert_eq!(r.status, 404);
}

#[test]
fn forwarded_request_carries_proxy_headers_and_no_hop_by_hop_headers() {
    let b1 = Backend::start("b1");
    let gw = Gateway::with(web(&[&b1])).workers(1).start();
    let r = request(
        gw.port,
        "POST",
        "/submit",
        &[
            ("host", "api.example.com"),
            ("x-forwarded-for", "203.0.113.7"),
            ("connection", "close, x-private"),
            ("x-private", "1"),
            ("keep-alive", "5"),
        ],
        b"hello",
    )
    .unwrap();
    let seen = &r.json()["headers"];
    // The client is not a trusted proxy: its own X-Forwarded-For is replaced, not extended.
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-port"], gw.port.to_string());
    assert_eq!(seen["x-forwarded-host"], "api.example.com");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["host"], "api.example.com", "Host is preserved by default");
    let via = seen["via"].as_str().unwrap_or_default();
    assert!(via.starts_with("1.1 zkgate-") && via.len() == "1.1 zkgate-".len() + 8, "{via}");
    assert!(seen.get("x-private").is_none() && seen.get("keep-alive").is_none(), "{seen}");
    assert_eq!(r.json()["received"], 5);
}

#[test]
fn unreachable_instance_is_502_and_no_instance_is_a_clean_json_error() {
    let dead = format!("127.0.0.1:{}", support::free_port());
    let body = Toml::new().service("gone", &[dead], "").route_all("gone");
    let gw = Gateway::with(&body).workers(1).start();
    let r = gw.get("/x").unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.json(), serde_json::json!({"error": "upstream failure", "service": "gone"}));
}

#[test]
fn slow_instance_beyond_request_timeout_is_504() {
    let b1 = Backend::start("slow");
    let body = web(&[&b1]).proxy("request_timeout = \"300ms\"");
    let gw = Gateway::with(&body).workers(1).start();
    let r = gw.get("/slow/2000").unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream timeout");
}

#[test]
fn killed_worker_is_respawned_without_refusing_connections() {
    let b1 = Backend::start("b1");
    let gw = Gateway::with(web(&[&b1])).workers(2).start();
    let before = gw.workers();
    assert_eq!(before.len(), 2);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> =
        (0..4).map(|_| request_loop(gw.port, "/slow/5", 2000, 15, stop.clone())).collect();
    wait_for_progress(&b1.hits, 20);
    kill(Pid::from_raw(before[0]), Signal::SIGKILL).unwrap();
    gw.assert_replaced(before[0], 2);
    // Enough progress after the respawn that the count below cannot be met before the kill.
    wait_for_progress(&b1.hits, 40);
    let s = support::stop_loops(&stop, clients);
    assert!(s.ok > 50, "the loop made progress: {s:?}");
    assert_eq!(s.refused, 0, "no connection may be refused");
    // Only what the killed worker had in flight may fail: at most one per client.
    assert!(s.failed <= 4, "failed {}: {:?}", s.failed, s.errors);
    assert!(
        gw.log().contains(&format!("(pid {}", before[0]))
            && gw.log().contains("killed by signal SIGKILL")
    );
}

#[test]
fn ttin_adds_and_ttou_removes_a_worker_never_below_one() {
    let b1 = Backend::start("b1");
    let gw = Gateway::with(web(&[&b1])).workers(1).start();
    assert_eq!(gw.workers().len(), 1);
    gw.signal(Signal::SIGTTIN);
    assert_eventually!(10, gw.workers().len() == 2, "TTIN did not add a worker");
    assert_eventually!(10, gw.all_ready(2), "new worker not ready");
    for _ in 0..20 {
        assert_eq!(gw.get("/").unwrap().status, 200);
    }
    gw.signal(Signal::SIGTTOU);
    assert_eventually!(
        10,
        gw.workers().len() == 1,
        "TTOU did not remove a worker: {:?}",
        gw.workers()
    );
    gw.signal(Signal::SIGTTOU);
    assert_eventually!(
        10,
        gw.log().contains("TTOU ignored"),
        "TTOU below one worker must be refused"
    );
    assert_eq!(gw.workers().len(), 1);
    for _ in 0..20 {
        assert_eq!(gw.get("/").unwrap().status, 200);
    }
}

#[test]
fn hup_with_a_broken_file_keeps_serving_unchanged() {
    let b1 = Backend::start("b1");
    let gw = Gateway::with(web(&[&b1])).start();
    let before = gw.workers();
    let good = gw.config_text();
    gw.rewrite_config(&(good.clone() + "\n[proxy]\nbogus_key = 1\n"));
    gw.signal(Signal::SIGHUP);
    assert_eventually!(10, gw.log().contains("reload failed"), "reload failure not logged");
    assert!(gw.log().contains("unknown field `bogus_key`"), "{}", gw.log());
    assert_eq!(gw.workers(), before, "workers must not be replaced");
    assert_eq!(gw.get("/").unwrap().backend(), "b1");
}

#[test]
fn hup_with_a_changed_instance_list_applies_it_without_a_failed_request() {
    let (b1, b2) = (Backend::start("old"), Backend::start("new"));
    let gw = Gateway::with(web(&[&b1])).workers(2).start();
    let before = gw.workers();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> =
        (0..3).map(|_| request_loop(gw.port, "/slow/2", 5000, 20, stop.clone())).collect();
    wait_for_progress(&b1.hits, 20);
    gw.rewrite_config(&gw.config_text().replace(&b1.address(), &b2.address()));
    let ready = gw.readiness();
    gw.signal(Signal::SIGHUP);
    assert_eventually!(15, gw.reloaded(ready), "reload did not finish");
    assert_eventually!(
        15,
        gw.workers().len() == 2 && gw.workers().iter().all(|p| !before.contains(p)),
        "old workers still there"
    );
    wait_for_progress(&b2.hits, 20);
    let s = support::stop_loops(&stop, clients);
    assert!(s.errors.is_empty() && s.refused == 0, "requests failed during reload: {:?}", s.errors);
    let last: BTreeSet<String> = (0..10).map(|_| gw.get("/").unwrap().backend()).collect();
    assert_eq!(last, BTreeSet::from(["new".to_string()]));
    assert!(s.ok > 50, "{}", s.ok);
}

#[test]
fn term_lets_a_slow_request_finish_then_exits_zero_with_no_worker_left() {
    let b1 = Backend::start("b1");
    let mut gw = Gateway::with(web(&[&b1])).workers(2).start();
    let workers = gw.workers();
    let port = gw.port;
    let slow = std::thread::spawn(move || request(port, "GET", "/slow/1500", &[], b""));
    // Signal only once the request is in flight at the backend: else the test proves nothing.
    wait_for_progress(&b1.hits, 1);
    gw.signal(Signal::SIGTERM);
    let r = slow.join().unwrap().expect("in-flight request completes");
    assert_eq!(r.status, 200);
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
    for w in workers {
        assert!(kill(Pid::from_raw(w), None).is_err(), "worker {w} still alive");
    }
}

#[test]
fn quit_stops_at_once_even_with_a_request_in_flight() {
    let b1 = Backend::start("b1");
    let mut gw = Gateway::with(web(&[&b1])).workers(1).start();
    let port = gw.port;
    let slow = std::thread::spawn(move || request(port, "GET", "/slow/5000", &[], b""));
    wait_for_progress(&b1.hits, 1);
    gw.signal(Signal::SIGQUIT);
    assert_eq!(gw.wait_exit(Duration::from_secs(3)), Some(0));
    assert!(slow.join().unwrap().is_err(), "the in-flight request is cut");
}

#[test]
fn check_accepts_a_good_file_and_names_line_column_and_key_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = support::write_file(dir.path(), "good.toml", "[services.user]\ninstances = [\"127.0.0.1:9001\", { address = \"127.0.0.1:9002\", weight = 3 }]\n[[route]]\npath_prefix = \"/users\"\nservice = \"user\"\n");
    let out = std::process::Command::new(support::zkgate())
        .args(["check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("127.0.0.1:9002 (weight 3)") && text.contains("configuration is valid"),
        "{text}"
    );

    let bad = support::write_file(
        dir.path(),
        "bad.toml",
        "[server]\nworkers = 2\n\n[proxy]\nconect_timeout = \"2s\"\n",
    );
    let out = std::process::Command::new(support::zkgate())
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:5:1: proxy.conect_timeout: unknown field `conect_timeout`"),
        "{err}"
    );

    let missing = dir.path().join("missing.toml");
    let out = std::process::Command::new(support::zkgate())
        .args(["check", "-c"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml: cannot read"));
}

#[test]
fn the_shipped_gateway_toml_passes_check() {
    let out = std::process::Command::new(support::zkgate())
        .args(["check", "-c", concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn requests_spread_over_every_worker() {
    let b1 = Backend::start("b1");
    let body = web(&[&b1]).proxy("debug_headers = true");
    let gw = Gateway::with(&body).workers(2).start();
    let workers: BTreeSet<String> = gw.workers().iter().map(|p| p.to_string()).collect();
    let mut seen = BTreeMap::new();
    for _ in 0..200 {
        let r = gw.get("/").unwrap();
        *seen.entry(r.header("x-zkgate-worker").unwrap().to_string()).or_insert(0) += 1;
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        workers,
        "SO_REUSEPORT spreads connections"
    );
}

#[test]
fn hup_applies_a_new_worker_count() {
    let b1 = Backend::start("b1");
    let gw = Gateway::with(web(&[&b1])).workers(2).start();
    gw.rewrite_config(&gw.config_text().replace("workers = 2", "workers = 3"));
    let ready = gw.readiness();
    gw.signal(Signal::SIGHUP);
    assert_eventually!(
        15,
        gw.reloaded(ready) && gw.workers().len() == 3,
        "not 3 workers: {:?}",
        gw.workers()
    );
    gw.rewrite_config(&gw.config_text().replace("workers = 3", "workers = 1"));
    gw.signal(Signal::SIGHUP);
    assert_eventually!(15, gw.workers().len() == 1, "not 1 worker: {:?}", gw.workers());
    for _ in 0..10 {
        assert_eq!(gw.get("/").unwrap().backend(), "b1");
    }
}

#[test]
fn a_second_gateway_on_an_address_already_served_is_refused() {
    let b1 = Backend::start("b1");
    let first = Gateway::with(web(&[&b1])).workers(1).start();
    let mut second = Gateway::with(web(&[&b1])).port(first.port).workers(1).spawn();
    assert_eq!(second.wait_exit(Duration::from_secs(10)), Some(1), "{}", second.log());
    assert!(second.log().contains("address already in use"), "{}", second.log());
    assert_eq!(first.get("/").unwrap().backend(), "b1", "the first one still serves");
}
