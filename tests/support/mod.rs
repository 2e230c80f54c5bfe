//! Test harness: the real `zkgate` binary on real loopback sockets, real backends, real signals.
//! Everything started here is stopped by its saved PID when the handle drops, even when a test
//! fails.
#![allow(dead_code)]

pub mod backend;
pub mod config;
pub mod fleet;
pub mod http;
pub mod jwt;
pub mod load;
pub mod netns;
pub mod otlp;
pub mod pki;
pub mod sides;
pub mod tls_front;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use backend::Backend;
pub use config::Toml;

/// How much longer than written every wait may take: `ZKGATE_TEST_PATIENCE=3` on a slow CI
/// machine triples them (linkerd's `RUST_TEST_PATIENCE_MS`, as a factor). Never shortens a wait.
pub fn patience() -> f64 {
    std::env::var("ZKGATE_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|f| *f >= 1.0)
        .unwrap_or(1.0)
}

/// Retries `$cond` until it holds or `$secs` seconds (times [`patience`]) pass, then fails with
/// the message.
#[macro_export]
macro_rules! assert_eventually {
    ($secs:expr, $cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_secs_f64($secs as f64 * $crate::support::patience());
        loop {
            if $cond {
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!($($msg)+);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }};
}

/// A port nobody listens on right now, below the kernel's ephemeral range: the kernel never
/// hands it to an outgoing connection (a ZooKeeper peer dialling its quorum, a gateway dialling
/// an instance), which could otherwise take it between this draw and the bind, and no two
/// draws of one test process return the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|h| *h > LOW + 1000)
        .unwrap_or(32_768);
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        // Free on every address (a wildcard listener would collide with a loopback one).
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub mod gateway;
#[allow(unused_imports)]
pub use gateway::{server_section, zkgate, Gateway, GatewayBuilder};

/// A helper process (`zkgate register`, say), KILLed by its saved PID when dropped.
pub struct Process(Option<Child>);

impl Process {
    pub fn new(child: Child) -> Self {
        Process(Some(child))
    }

    pub fn alive(&self) -> bool {
        self.0.as_ref().is_some_and(|c| kill(Pid::from_raw(c.id() as i32), None).is_ok())
    }

    pub fn signal(&self, s: Signal) {
        if let Some(c) = &self.0 {
            let _ = kill(Pid::from_raw(c.id() as i32), s);
        }
    }

    /// Waits for the exit code.
    pub fn wait(mut self, within: Duration) -> Option<i32> {
        let mut child = self.0.take()?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().ok()? {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.0 = Some(child);
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sum of every sample of `metric` whose labels contain `labels`.
pub fn metric_sum(text: &str, metric: &str, labels: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Waits until `counter` (a backend's `hits`) grew by `n`: load is flowing. Tests wait for this
/// instead of sleeping "long enough" before and after a disruption.
pub fn wait_for_progress(counter: &std::sync::atomic::AtomicUsize, n: usize) {
    let start = counter.load(std::sync::atomic::Ordering::Relaxed);
    assert_eventually!(
        15,
        counter.load(std::sync::atomic::Ordering::Relaxed) >= start + n,
        "load made no progress: {} requests in 15 s, wanted {n}",
        counter.load(std::sync::atomic::Ordering::Relaxed) - start
    );
}

/// Writes `text` to a file in `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Outcome of a bounded request loop.
#[derive(Debug, Default, Clone)]
pub struct LoopStats {
    pub ok: usize,
    pub failed: usize,
    pub refused: usize,
    pub errors: Vec<String>,
    pub bodies: Vec<String>,
}

/// Stops the loops started with `stop` and sums what they saw (bodies are dropped).
pub fn stop_loops(
    stop: &std::sync::atomic::AtomicBool,
    loops: Vec<std::thread::JoinHandle<LoopStats>>,
) -> LoopStats {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = LoopStats::default();
    for l in loops {
        let s = l.join().unwrap();
        total.ok += s.ok;
        total.failed += s.failed;
        total.refused += s.refused;
        total.errors.extend(s.errors);
    }
    total
}

/// Runs `GET path` in a loop in a thread until `stop` flips or `max` requests or `secs` pass.
pub fn request_loop(
    port: u16,
    path: &'static str,
    max: usize,
    secs: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<LoopStats> {
    std::thread::spawn(move || {
        let mut s = LoopStats::default();
        let deadline = Instant::now() + Duration::from_secs(secs);
        for _ in 0..max {
            if stop.load(std::sync::atomic::Ordering::Relaxed) || Instant::now() > deadline {
                break;
            }
            match http::request(port, "GET", path, &[], b"") {
                Ok(r) if r.status == 200 => {
                    s.ok += 1;
                    s.bodies.push(r.body_text());
                }
                Ok(r) => {
                    s.failed += 1;
                    s.errors.push(format!("status {}: {}", r.status, r.body_text()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => s.refused += 1,
                Err(e) => {
                    s.failed += 1;
                    s.errors.push(e.to_string());
                }
            }
        }
        s
    })
}
pub mod zk;

// Discovery helpers shared by the discovery and register suites.

/// Discovery from `zk` with debug headers (which worker answered) and more `[zookeeper]` keys.
pub fn zk_config(zk: &zk::Zk, extra: &str) -> Toml {
    Toml::new().proxy("debug_headers = true\nconnect_timeout = \"500ms\"").zookeeper(zk, extra)
}

pub fn via_headers(gw: &Gateway, service: &str, path: &str) -> std::io::Result<http::Response> {
    http::request(
        gw.port,
        "GET",
        "/services",
        &[("service_name", service), ("api_name", path)],
        b"",
    )
}

/// Which backends each worker routed `service` to, over `n` requests.
pub fn backends_by_worker(
    gw: &Gateway,
    service: &str,
    n: usize,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut m: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for _ in 0..n {
        if let Ok(r) = via_headers(gw, service, "/") {
            if r.status == 200 {
                let w = r.header("x-zkgate-worker").unwrap_or("?").to_string();
                m.entry(w).or_default().insert(r.backend());
            }
        }
    }
    m
}

/// True when every worker routed to `backend` within a few requests each.
pub fn every_worker_uses(gw: &Gateway, service: &str, backend: &str) -> bool {
    let workers: std::collections::BTreeSet<String> =
        gw.workers().iter().map(|p| p.to_string()).collect();
    let seen = backends_by_worker(gw, service, 40);
    workers.iter().all(|w| seen.get(w).is_some_and(|s| s.contains(backend)))
}

pub fn no_worker_uses(gw: &Gateway, service: &str, backend: &str) -> bool {
    backends_by_worker(gw, service, 40).values().all(|s| !s.contains(backend))
}
