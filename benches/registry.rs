//! Registry scale (printed, never asserted), against a real ZooKeeper and the real gateway with
//! 2 workers: a registry of `SERVICES` × 10 instances (10 000 × 10 by default, and a small one
//! of 100 × 10 to compare), then 100 changes per second (an instance registered, another
//! removed, in services picked in turn) for `BENCH_CHURN_SECONDS` (600 by default: the ten
//! minutes of the issue; 60 for the small registry). Printed per registry:
//! - RSS per worker after the sync, then its smallest and largest during the churn;
//! - worker CPU per change (user + system, both workers, over the churn), the figure that must
//!   not grow with the table;
//! - p50/p99 of a static service's requests (sequential, one connection each) without churn,
//!   then during it.
//!
//! Run: `scripts/bench --registry` or `cargo bench --bench registry`.

#[path = "../tests/support/mod.rs"]
#[allow(unused_macros, unused_imports)]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::zk::{Zk, ZkClient};
use support::{Backend, Gateway};

/// Clock ticks of CPU (user + system) a process used so far.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After "pid (comm)": state is field 3; utime 14 and stime 15 are at 11 and 12 here.
    let n = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// Resident set size of a process, in MiB.
fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Sequential requests to the static service for `secs`; their latencies, sorted.
fn latencies(port: u16, secs: u64) -> Vec<Duration> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut lat = Vec::new();
    while Instant::now() < end {
        let t = Instant::now();
        if support::http::request(port, "GET", "/real/x", &[], b"").is_ok_and(|r| r.status == 200) {
            lat.push(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    lat.sort();
    lat
}

/// 100 changes a second until `stop`: in service `s<k>` (k in turn), a new instance registered,
/// and the one registered the round before in that service removed. Returns the changes made.
fn churn(c: &ZkClient, services: usize, stop: &AtomicBool) -> usize {
    let mut changes = 0;
    let mut round = 0usize;
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let k = round % services;
        let port = 30_000 + (round / services) % 20_000;
        c.create(&format!("/services/s{k}/10.9.{}.{}:{port}", k / 250, k % 250), b"", false);
        changes += 1;
        if round >= services {
            let old = 30_000 + (round / services - 1) % 20_000;
            c.delete(&format!("/services/s{k}/10.9.{}.{}:{old}", k / 250, k % 250));
            changes += 1;
        }
        round += 1;
        // Paced: 100 changes per second in all.
        let due = start + Duration::from_millis(changes as u64 * 10);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    changes
}

fn run(services: usize, churn_secs: u64, real: &Backend) {
    let zk = Zk::standalone();
    let c = zk.client();
    let t = Instant::now();
    c.populate(services, 10);
    println!("registry {services} x 10: populated in {:.1}s", t.elapsed().as_secs_f64());
    let config = format!(
        "[zookeeper]\nhosts = \"{}\"\nsession_timeout = \"10s\"\nconnect_timeout = \"20s\"\n\n[services.real]\ninstances = [\"{}\"]\n\n[[route]]\npath_prefix = \"/real\"\nservice = \"real\"\n",
        zk.hosts(),
        real.address()
    );
    let gw = Gateway::with(&config).workers(2).start();
    let workers = gw.workers();
    let rss0: Vec<f64> = workers.iter().map(|p| rss_mib(*p)).collect();
    println!(
        "  RSS per worker after the sync: {:?} MiB",
        rss0.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>()
    );
    let quiet = latencies(gw.port, 15);
    println!(
        "  requests without churn: p50 {:.2} ms, p99 {:.2} ms ({} requests)",
        percentile(&quiet, 0.5).as_secs_f64() * 1e3,
        percentile(&quiet, 0.99).as_secs_f64() * 1e3,
        quiet.len()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let hosts = zk.hosts();
        std::thread::spawn(move || churn(&ZkClient::connect(&hosts), services, &stop))
    };
    let cpu0: u64 = workers.iter().map(|p| cpu_ticks(*p)).sum();
    let (mut rss_min, mut rss_max) = (f64::MAX, 0.0f64);
    let sampler = {
        let stop = stop.clone();
        let workers = workers.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                samples.push(workers.iter().map(|p| rss_mib(*p)).fold(0.0f64, f64::max));
                std::thread::sleep(Duration::from_secs(5));
            }
            samples
        })
    };
    let busy = latencies(gw.port, churn_secs);
    stop.store(true, Ordering::Relaxed);
    let changes = writer.join().unwrap();
    let cpu1: u64 = workers.iter().map(|p| cpu_ticks(*p)).sum();
    for s in sampler.join().unwrap() {
        rss_min = rss_min.min(s);
        rss_max = rss_max.max(s);
    }
    let ticks_per_sec = 100.0;
    let cpu_ms = (cpu1 - cpu0) as f64 / ticks_per_sec * 1e3;
    println!(
        "  churn {changes} changes in {churn_secs}s: worker CPU {:.3} ms per change per worker",
        cpu_ms / changes.max(1) as f64 / workers.len() as f64
    );
    println!(
        "  requests during churn: p50 {:.2} ms, p99 {:.2} ms ({} requests); p99 {:.2} x without",
        percentile(&busy, 0.5).as_secs_f64() * 1e3,
        percentile(&busy, 0.99).as_secs_f64() * 1e3,
        busy.len(),
        percentile(&busy, 0.99).as_secs_f64() / percentile(&quiet, 0.99).as_secs_f64().max(1e-9)
    );
    println!("  largest worker RSS during churn: min {rss_min:.1} MiB, max {rss_max:.1} MiB");
}

fn main() {
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let real = Backend::start("real");
    run(100, env("BENCH_CHURN_SECONDS_SMALL", 60), &real);
    run(env("BENCH_SERVICES", 10_000) as usize, env("BENCH_CHURN_SECONDS", 600), &real);
}
