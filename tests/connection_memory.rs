//! What a client connection costs the worker holding it, measured on the real binary: many
//! silent connections (as many as 20 000, within the descriptor limit), then the same idle
//! after one request each. A silent connection holds its task and its registration only —
//! no read buffer, no engine state (tokio reports a new socket readable at once; a read that
//! finds nothing must give its buffer back) — and an idle keep-alive connection no buffer.
//!
//! Measured here (the debug binary the tests run): 993 B per silent and 3 867 B per idle
//! connection over 19 000; the release build, one worker: 1 048 B and 3 950 B, where it held
//! 7 341 B and 7 603 B before — a read buffer taken by every connection on tokio's first
//! readiness and kept. The bounds leave room for allocator noise, not for a buffer.

mod support;

use std::time::{Duration, Instant};

use support::http::KeepAlive;
use support::{Backend, Gateway, Toml};

/// Bytes of resident memory of `pid`.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// As many connections as the descriptor limit leaves room for (both ends are in this test's
/// and the worker's tables, which inherits it), at most 20 000.
fn how_many() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(1024);
    soft.saturating_sub(1_000).min(20_000)
}

fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn silent_connections_cost_their_task_alone_and_idle_ones_hold_no_buffer() {
    let n = how_many();
    assert!(n >= 4_000, "the descriptor limit leaves room for {n} connections only");
    let b = Backend::start("b");
    let toml = Toml::new()
        .backends("web", &[&b])
        .route_all("web")
        .proxy("max_connections = 40000\nheader_read_timeout = \"120s\"\nidle_timeout = \"120s\"");
    let gw = Gateway::with(toml).workers(1).admin().start();
    let worker = gw.workers()[0];
    let open = || gw.metric("zkgate_active_connections", "");
    // Warm: the first requests size the worker's pools and buffers once.
    for _ in 0..20 {
        assert_eq!(gw.get("/warm").unwrap().status, 200);
    }
    wait_until("warm-up connections closed", 10, || open() == 0);
    let before = rss(worker);
    let mut clients: Vec<KeepAlive> = (0..n).map(|_| KeepAlive::connect(gw.port)).collect();
    wait_until("every connection accepted", 60, || open() as usize == n);
    let silent = (rss(worker) - before) / n as u64;
    for c in clients.iter_mut() {
        assert_eq!(c.request("GET", "/one", &[]).status, 200);
    }
    let idle = (rss(worker) - before) / n as u64;
    assert_eq!(open() as usize, n, "every connection kept alive");
    eprintln!("{n} connections: {silent} B each silent, {idle} B each idle");
    assert!(silent < 1_536, "{silent} B per silent connection");
    assert!(idle < 5_120, "{idle} B per idle keep-alive connection");
}
