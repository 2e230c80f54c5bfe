//! The admin listener's live dashboard in a real browser (Debian's headless Chromium): the page
//! loads from the binary alone, renders services, instances, workers and registry changes from
//! the admin API, shows a service registered during the test, and honours the admin token. A
//! screenshot is kept in `target/test-artifacts/dashboard.png`.

mod support;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use support::zk::Zk;
use support::{Backend, Gateway, Toml};

const CHROMIUM_FLAGS: [&str; 5] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
];

/// The page's DOM after its scripts ran for `budget_ms` of virtual time.
fn dom(url: &str, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium (Debian package chromium; scripts/test installs it)");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn the_dashboard_shows_services_workers_and_changes_live_in_chromium() {
    let zk = Zk::standalone();
    let c = zk.client();
    let b1 = Backend::start("b1");
    c.register("web", &b1.address());
    let gw =
        Gateway::with(Toml::new().zookeeper(&zk, "").route_all("web")).workers(2).admin().start();
    let admin = gw.admin.unwrap();
    let url = format!("http://127.0.0.1:{admin}/");

    // A service registered during the test.
    let late = Backend::start("late");
    let registered = now_ms();
    c.register("late-svc", &late.address());
    let page = dom(&url, 3000);
    assert!(page.contains("late-svc"), "the new service is not on the page:\n{page}");
    assert!(page.contains(&late.address()), "{page}");
    assert!(page.contains("healthy"), "{page}");
    assert!(page.contains("routes loaded"), "{page}");
    for pid in gw.workers() {
        assert!(page.contains(&pid.to_string()), "worker {pid} missing:\n{page}");
    }
    assert!(
        page.contains(&format!("service late-svc: +{}", late.address())),
        "change missing:\n{page}"
    );
    // The worker applied it within a second of the registration (the page refreshes every
    // second; the applied time is what it shows).
    let applied = gw.admin_get("/routes").json()["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ch| ch["change"].as_str().unwrap().contains("late-svc"))
        .map(|ch| ch["at_ms"].as_u64().unwrap())
        .expect("change listed by /routes");
    assert!(
        applied.saturating_sub(registered) < 1000,
        "applied {} ms after the registration",
        applied - registered
    );

    // Host-wide state: a registry that removes 3 of a service's 4 live instances at once; the
    // page shows them held, the others' in-flight counts, and each worker's watch and sync age.
    let pool: Vec<Backend> = (0..4).map(|i| Backend::start(&format!("p{i}"))).collect();
    for b in &pool {
        c.register("pool", &b.address());
    }
    assert_eventually!(
        10,
        gw.admin_get("/routes").body_text().contains(&pool[3].address()),
        "pool not routed"
    );
    let paths: Vec<String> =
        pool[..3].iter().map(|b| format!("/services/pool/{}", b.address())).collect();
    c.delete_together(&paths);
    assert_eventually!(10, gw.metric("zkgate_discovery_held_instances", "pool") == 3, "not held");
    let page = dom(&url, 3000);
    let fallback = "\"warn\">fallback (removed by the registry)</td>";
    assert_eq!(page.matches(fallback).count(), 3, "{page}");
    assert!(page.contains("(this worker 0)"), "{page}");
    assert!(page.contains(" s ago"), "sync age missing:\n{page}");
    assert!(page.contains("local file"), "the release column is missing:\n{page}");

    // The registry section names a node that is not routed, and why; ?explain= explains a
    // service on the page.
    c.create("/services/pool/not-an-address", b"", false);
    let page = dom(&format!("{url}?explain=pool"), 3000);
    assert!(page.contains("not-an-address") && page.contains("rejected"), "{page}");
    assert!(page.contains("no health check vouches for it"), "explain section:\n{page}");

    // The screenshot, kept as an artefact.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("dashboard.png");
    let profile = tempfile::tempdir().unwrap();
    let status = Command::new("chromium")
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=3000", "--window-size=1280,900"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "an empty screenshot");
}

#[test]
fn with_a_token_the_page_needs_it_and_passes_it_on() {
    let b = Backend::start("b");
    let token = "dashboard-token-0123456789";
    let admin = support::free_port();
    let toml = Toml::new().backends("web", &[&b]).route_all("web").admin(admin, Some(token));
    let _gw = Gateway::with(toml).workers(1).start();
    let without = dom(&format!("http://127.0.0.1:{admin}/"), 1000);
    assert!(without.contains("missing or wrong bearer token"), "{without}");
    let with = dom(&format!("http://127.0.0.1:{admin}/?token={token}"), 3000);
    assert!(with.contains("web") && with.contains(&b.address()), "{with}");
}

#[test]
fn services_get_sparklines_of_rate_p99_and_errors_drawn_from_the_metrics() {
    let b = Backend::start("b");
    let toml = Toml::new().backends("web", &[&b]).route_all("web");
    let gw = Gateway::with(toml).workers(2).admin().start();
    // Traffic while the page samples: the trends need requests between two scrapes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, port) = (stop.clone(), gw.port);
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 20_000 {
                let _ = support::http::request(port, "GET", "/x", &[], b"");
                n += 1;
            }
        })
    };
    support::wait_for_progress(&b.hits, 20);
    let page = dom(&format!("http://127.0.0.1:{}/", gw.admin.unwrap()), 6000);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    for series in ["rps", "p99", "errors"] {
        let tag = format!("data-service=\"web\" data-series=\"{series}\"");
        let at = page.find(&tag).unwrap_or_else(|| panic!("no {series} sparkline:\n{page}"));
        let svg = &page[at..at + page[at..].find("</svg>").unwrap()];
        let points = svg.split("points=\"").nth(1).and_then(|p| p.split('"').next()).unwrap_or("");
        assert!(points.split(' ').count() >= 2, "{series}: a line needs two samples: {svg}");
        if series != "errors" {
            assert!(!svg.contains("no requests"), "{series} saw no requests: {svg}");
        }
    }
}

#[test]
fn the_grafana_dashboard_names_only_metrics_the_gateway_exports() {
    let b = Backend::start("b");
    let gw = Gateway::with(Toml::new().backends("web", &[&b]).route_all("web"))
        .workers(1)
        .admin()
        .start();
    let board = gw.admin_get("/grafana.json");
    assert_eq!(board.status, 200);
    let board = board.json();
    let metrics = gw.admin_get("/metrics").body_text();
    let mut exprs = Vec::new();
    for panel in board["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let mut names: Vec<String> = exprs
        .iter()
        .flat_map(|e| e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("zkgate_"))
        .map(|w| w.trim_end_matches("_bucket").to_string())
        .collect();
    names.sort();
    names.dedup();
    for name in &names {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "the board queries {name}, which /metrics does not export"
        );
    }
    for needed in [
        "zkgate_request_duration_seconds",
        "zkgate_instance_errors_total",
        "zkgate_tls_certificate_not_after_seconds",
        "zkgate_auth_refusals_total",
    ] {
        assert!(names.iter().any(|n| n == needed), "{needed} not on the board");
    }
}
