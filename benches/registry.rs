//! Registry scale (printed, never asserted), against a real ZooKeeper and the real gateway with
//! 2 workers: a registry of `SERVICES` × 10 instances (10 000 × 10 by default, and a small one
//! of 100 × 10 to compare), then 100 changes per second (an instance registered, another
//! removed, in services picked in turn) for `BENCH_CHURN_SECONDS` (600 by default: the ten
//! minutes of the issue; 60 for the small registry) of watched churn, taken in 5 s windows
//! between as many quiet and unwatched ones (the run lasts three times as long). Printed per
//! registry:
//! - RSS per worker after the sync, then its smallest and largest during the churn;
//! - worker CPU per change (user + system, both workers, over the watched windows), the figure
//!   that must not grow with the table;
//! - p50/p99 of a static service's requests (sequential, one connection each) in three kinds of
//!   5 s windows taken in turn: without churn, during the same churn written under a root the
//!   gateway does not watch (what ZooKeeper and the writer cost this machine alone), and during
//!   the churn it watches. On a 2-core machine the ZooKeeper server shares the cores with the
//!   gateway, so the ratio to unwatched churn is the gateway's own share; taking the windows in
//!   turn spreads whatever else the machine does over all three.
//!
//! Run: `scripts/bench --registry` or `cargo bench --bench registry`.

#[path = "../tests/support/mod.rs"]
#[allow(unused_macros, unused_imports)]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
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

/// What the writer does in a window: nothing, churn where the gateway does not look, or churn
/// in its registry.
const QUIET: u8 = 0;
const UNWATCHED: u8 = 1;
const WATCHED: u8 = 2;

/// 100 changes a second while `mode` says so, until `stop`: in service `s<k>` (k in turn) under
/// the mode's root, a new instance registered, and the one registered the round before in that
/// service removed. Returns the changes made in the registry the gateway watches.
fn churn(c: &ZkClient, services: usize, mode: &AtomicU8, stop: &AtomicBool) -> usize {
    let mut watched = 0;
    let mut rounds = [0usize; 3];
    while !stop.load(Ordering::Relaxed) {
        let m = mode.load(Ordering::Relaxed);
        if m == QUIET {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let root = if m == WATCHED { "/services" } else { "/elsewhere" };
        let round = rounds[m as usize];
        let t = Instant::now();
        let k = round % services;
        let port = 30_000 + (round / services) % 20_000;
        c.create(&format!("{root}/s{k}/10.9.{}.{}:{port}", k / 250, k % 250), b"", false);
        let mut changes = 1;
        if round >= services {
            let old = 30_000 + (round / services - 1) % 20_000;
            c.delete(&format!("{root}/s{k}/10.9.{}.{}:{old}", k / 250, k % 250));
            changes += 1;
        }
        if m == WATCHED {
            watched += changes;
        }
        rounds[m as usize] += 1;
        // Paced: 100 changes per second in all.
        let due = t + Duration::from_millis(changes as u64 * 10);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    watched
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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
    let (stop, mode) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU8::new(QUIET)));
    let writer = {
        let (stop, mode) = (stop.clone(), mode.clone());
        let hosts = zk.hosts();
        std::thread::spawn(move || churn(&ZkClient::connect(&hosts), services, &mode, &stop))
    };
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
    // Windows of 5 s in turn — quiet, unwatched churn, watched churn — so that whatever else
    // the machine does over the run weighs on the three alike.
    let window = 5;
    let mut lat: [Vec<Duration>; 3] = Default::default();
    let mut watched_ticks = 0u64;
    let rounds = (churn_secs / window).max(1);
    for _ in 0..rounds {
        for m in [QUIET, UNWATCHED, WATCHED] {
            mode.store(m, Ordering::Relaxed);
            let cpu0: u64 = workers.iter().map(|p| cpu_ticks(*p)).sum();
            lat[m as usize].extend(latencies(gw.port, window));
            let cpu1: u64 = workers.iter().map(|p| cpu_ticks(*p)).sum();
            if m == WATCHED {
                watched_ticks += cpu1 - cpu0;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let changes = writer.join().unwrap();
    let (mut rss_min, mut rss_max) = (f64::MAX, 0.0f64);
    for s in sampler.join().unwrap() {
        rss_min = rss_min.min(s);
        rss_max = rss_max.max(s);
    }
    for l in &mut lat {
        l.sort();
    }
    let ticks_per_sec = 100.0;
    let cpu_ms = watched_ticks as f64 / ticks_per_sec * 1e3;
    println!(
        "  churn {changes} changes in {}s of watched windows: worker CPU {:.3} ms per change per worker (requests included)",
        rounds * window,
        cpu_ms / changes.max(1) as f64 / workers.len() as f64
    );
    let p99 = |m: u8| percentile(&lat[m as usize], 0.99);
    for (m, what) in
        [(QUIET, "without churn"), (UNWATCHED, "during unwatched churn"), (WATCHED, "during churn")]
    {
        let l = &lat[m as usize];
        println!(
            "  requests {what}: p50 {:.2} ms, p99 {:.2} ms ({} requests)",
            ms(percentile(l, 0.5)),
            ms(percentile(l, 0.99)),
            l.len()
        );
    }
    println!(
        "  p99 during churn: {:.2} x without, {:.2} x unwatched churn",
        ms(p99(WATCHED)) / ms(p99(QUIET)).max(1e-9),
        ms(p99(WATCHED)) / ms(p99(UNWATCHED)).max(1e-9)
    );
    println!("  largest worker RSS during churn: min {rss_min:.1} MiB, max {rss_max:.1} MiB");
}

fn main() {
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let real = Backend::start("real");
    run(100, env("BENCH_CHURN_SECONDS_SMALL", 60), &real);
    run(env("BENCH_SERVICES", 10_000) as usize, env("BENCH_CHURN_SECONDS", 600), &real);
}
