//! Discovery figures (printed, never asserted), against a real ZooKeeper and the real gateway:
//! 1. propagation: time from a ZooKeeper write to the moment every worker has swapped in a
//!    table with the change, p50/p99 over 100 changes;
//! 2. initial sync: time for a worker to load a registry of `SERVICES` × 10 instances.
//!
//! The moment a worker applies a change is read from its log line (microsecond timestamps,
//! written just before the table swap). Run: `scripts/bench` or `cargo bench --bench discovery`.
//! `BENCH_SERVICES` (default 10000) sizes the registry.

#[path = "../tests/support/mod.rs"]
#[allow(unused_macros, unused_imports)]
mod support;

use std::time::{Duration, Instant, SystemTime};

use support::zk::Zk;
use support::Gateway;

fn log_time(line: &str) -> Option<SystemTime> {
    // "2026-11-25T15:44:31.975123Z INFO ..." -> seconds since the epoch
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, dd) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.')?;
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, s) = (t.next()??, t.next()??, t.next()??);
    let micros: i64 = format!("{frac:0<6}")[..6].parse().ok()?;
    // days from civil (Howard Hinnant)
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h * 3600 + mi * 60 + s;
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(secs as u64)
            + Duration::from_micros(micros as u64),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let zk = Zk::standalone();
    let c = zk.client();
    c.register("bench", "127.0.0.1:9");
    let config = format!(
        "[zookeeper]\nhosts = \"{}\"\nsession_timeout = \"10s\"\nconnect_timeout = \"5s\"\n",
        zk.hosts()
    );
    let gw = Gateway::with(&config).workers(2).env("RUST_LOG", "info").start();
    let workers = gw.workers().len();

    let mut lat = Vec::new();
    for i in 0..100u32 {
        let addr = format!("127.0.0.1:{}", 20000 + i);
        let needle = format!("service bench: +{addr} ");
        let t0 = SystemTime::now();
        c.register("bench", &addr);
        let deadline = Instant::now() + Duration::from_secs(10);
        let applied = loop {
            let lines: Vec<String> =
                gw.log().lines().filter(|l| l.contains(&needle)).map(String::from).collect();
            if lines.len() >= workers {
                break lines;
            }
            assert!(Instant::now() < deadline, "change {i} not applied by every worker");
            std::thread::sleep(Duration::from_millis(2));
        };
        let last = applied.iter().filter_map(|l| log_time(l)).max().unwrap();
        lat.push(last.duration_since(t0).unwrap_or_default());
    }
    lat.sort();
    println!(
        "propagation to all {workers} workers over {} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
    drop(gw);

    let services: usize =
        std::env::var("BENCH_SERVICES").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let t = Instant::now();
    c.populate(services, 10);
    println!("populated {services} services x 10 instances in {:.1}s", t.elapsed().as_secs_f64());
    let gw = Gateway::with(&config).workers(2).start();
    let log = gw.log();
    for line in log.lines().filter(|l| l.contains("zookeeper: loaded")) {
        let pid = line.split('[').nth(1).and_then(|s| s.split(']').next()).unwrap_or("?");
        let started = log
            .lines()
            .find(|l| {
                l.contains(&format!("[{pid}]"))
                    && l.contains("session")
                    && l.contains("established")
            })
            .and_then(log_time);
        if let (Some(a), Some(b)) = (started, log_time(line)) {
            println!(
                "initial sync, worker {pid}: {:.0} ms from session established to table loaded ({})",
                b.duration_since(a).unwrap_or_default().as_secs_f64() * 1e3,
                line.split("zookeeper: ").nth(1).unwrap_or("")
            );
        }
    }
    // What the ensemble holds for these sessions: `wchs` (connections and watched paths).
    let wchs = zk.four_letter(0, "wchs");
    println!(
        "watches held by ZooKeeper with {services} services, 2 workers: {}",
        wchs.split_whitespace().collect::<Vec<_>>().join(" ")
    );
}
