//! Fleet configuration at scale (printed, never asserted): what a push costs ZooKeeper when
//! `BENCH_FLEET_HOSTS` hosts (1 000 by default) follow the cluster's channel.
//!
//! Each simulated host is the real host watcher (`worker::fleet::apply`) on its own session and
//! its own host region and release cache, in a thread of its own. When the watcher asks for
//! the reload, the simulated host does what a real one does to ZooKeeper: the worker that held
//! the lease goes (its session dropped, not closed) and a new one takes the lease, opens a new
//! session, replaces the host's node and watches the channels again. What the simulation
//! leaves out is what a reload costs that is not fleet configuration: each new worker's own
//! discovery session and registry sync (see docs/SCALING.md), and the binary's `check` of the
//! release (CPU on the host, no ZooKeeper request; a TOML parse stands in for it).
//!
//! For each step — the first release to stable, a second release (200 routes) to stable, a
//! rollback to the first (cached on every host: no bytes read) — it prints how long the hosts
//! took (from the flip to each host's apply: p50, p99, last), the requests ZooKeeper received
//! per host (`mntr`'s `zk_packets_received`, less the sessions' idle pings measured before),
//! and the ZooKeeper server's CPU time.
//!
//! Run: `scripts/bench --fleet` or `cargo bench --bench fleet`.

#[path = "../tests/support/mod.rs"]
#[allow(unused_macros, unused_imports)]
mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::zk::Zk;
use tokio::runtime::Runtime;
use worker::config::{Config, FleetSettings, ZkSettings};
use worker::fleet::apply::{self, Hooks};
use worker::fleet::store::Store;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Clock ticks of CPU (user + system) a process used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// ZooKeeper's count of requests received so far (`mntr`).
fn packets_received(zk: &Zk) -> u64 {
    zk.four_letter(0, "mntr")
        .lines()
        .find_map(|l| l.strip_prefix("zk_packets_received"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One simulated host: generations of the real watcher until `stop`; `applied[i]` is when its
/// watcher last asked for a reload (Unix ms).
fn sim_host(
    i: usize,
    (source, fleet): (ZkSettings, FleetSettings),
    cache: PathBuf,
    (applied, stop): (Arc<Vec<AtomicU64>>, Arc<AtomicBool>),
) -> std::thread::JoinHandle<()> {
    let run = move || {
        let host = worker::host::Host::local(0);
        let fleet = FleetSettings { host: Some(format!("sim-{i:04}")), ..fleet };
        while !stop.load(Ordering::Relaxed) {
            let serving = current(&cache);
            let config = Config {
                zookeeper: vec![source.clone()],
                fleet: Some(fleet.clone()),
                release: serving,
                ..Config::default()
            };
            let reloaded = Arc::new(AtomicBool::new(false));
            let (flag, applied) = (reloaded.clone(), applied.clone());
            let hooks = Hooks {
                validate: Arc::new(|t: &str| {
                    toml::from_str::<toml::Table>(t).map(|_| ()).map_err(|e| e.to_string())
                }),
                reload: Arc::new(move || {
                    applied[i].store(now_ms(), Ordering::Relaxed);
                    flag.store(true, Ordering::Relaxed);
                }),
                cache: cache.clone(),
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                apply::start(&config, (host, worker::metrics::Metrics::new(host)), hooks);
                while !reloaded.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // The new worker is ready shortly after the old one asked (a roll).
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
            drop(rt); // the replaced worker goes, with its session
        }
    };
    std::thread::Builder::new().stack_size(512 * 1024).spawn(run).unwrap()
}

/// The release a host's cache names as current.
fn current(cache: &Path) -> Option<String> {
    let id = std::fs::read_to_string(cache.join(apply::CURRENT)).ok()?;
    Some(id.trim().to_string()).filter(|id| !id.is_empty())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted.get(((sorted.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(0)
}

/// Flips stable to `id` and waits until every host applied it (without asking ZooKeeper, so
/// the count is the hosts'); prints the step's figures.
fn step(
    what: &str,
    (zk, pid): (&Zk, u32),
    (rt, store): (&Runtime, &Store),
    id: &str,
    hosts: &Hosts,
) {
    let (before, cpu_before) = (packets_received(zk), cpu_ticks(pid));
    let flip_ms = now_ms();
    let started = Instant::now();
    rt.block_on(async {
        let (_, version) = store.channel("stable").await.unwrap();
        let change = worker::fleet::store::Change { who: "bench", verb: "rollout", why: what };
        store.flip("stable", (id, version), change).await.unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let took: Vec<u64> = loop {
        let at: Vec<u64> = hosts.applied.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        if at.iter().all(|t| *t >= flip_ms) || Instant::now() > deadline {
            break at.iter().map(|t| t.saturating_sub(flip_ms)).collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let late = took.iter().filter(|t| **t > 120_000).count();
    // Let the new sessions connect, publish and watch, then count.
    std::thread::sleep(Duration::from_secs(3));
    let elapsed = started.elapsed().as_secs_f64();
    let idle = (hosts.idle_per_second * elapsed) as u64;
    let requests = (packets_received(zk) - before).saturating_sub(idle);
    let cpu_ms = (cpu_ticks(pid) - cpu_before) as f64 * 1000.0 / 100.0;
    let mut sorted = took.clone();
    sorted.sort();
    let n = hosts.applied.len();
    println!(
        "fleet: {what}: {n} hosts applied it p50 {} ms, p99 {} ms, last {} ms after the flip{}; ZooKeeper: {requests} requests ({:.1} per host, idle pings taken out), {cpu_ms:.0} ms CPU in {elapsed:.1} s",
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted.last().copied().unwrap_or(0),
        if late > 0 { format!(" ({late} never did)") } else { String::new() },
        requests as f64 / n as f64,
    );
}

/// The simulated hosts.
struct Hosts {
    applied: Arc<Vec<AtomicU64>>,
    idle_per_second: f64,
}

fn release(routes: usize) -> String {
    let mut text =
        "[services.web]\ninstances = [\"127.0.0.1:9\"]\n\n[[route]]\npath_prefix = \"/\"\nservice = \"web\"\n".to_string();
    for r in 0..routes {
        text += &format!("\n[[route]]\npath_prefix = \"/r{r}\"\nservice = \"web\"\n");
    }
    text
}

fn main() {
    let n: usize =
        std::env::var("BENCH_FLEET_HOSTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let zk = Zk::standalone();
    let pid = zk.pid(0).expect("zookeeper runs");
    let source: ZkSettings = toml::from_str(&format!(
        "hosts = \"{}\"\nsession_timeout = \"10s\"\nconnect_timeout = \"5s\"",
        zk.hosts()
    ))
    .unwrap();
    let fleet = FleetSettings {
        cluster: "bench".into(),
        host: None,
        labels: Default::default(),
        zookeeper: None,
        root: "/zkgate".into(),
    };
    // Its own thread drives the bench's session between calls.
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let store = rt.block_on(Store::connect(&source, &fleet)).unwrap();
    let (small, big) = (release(0), release(200));
    let (one, two) = rt.block_on(async {
        store.init().await.unwrap();
        let one = store.push(&small, "bench", "one").await.unwrap().0.id;
        let two = store.push(&big, "bench", "two").await.unwrap().0.id;
        (one, two)
    });
    let dir = tempfile::tempdir().unwrap();
    let applied: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let cache = dir.path().join(format!("h{i:04}"));
            sim_host(i, (source.clone(), fleet.clone()), cache, (applied.clone(), stop.clone()))
        })
        .collect();
    let hosts_up = || rt.block_on(store.hosts()).map_or(0, |h| h.len());
    let deadline = Instant::now() + Duration::from_secs(120);
    while hosts_up() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "fleet: {} of {n} simulated hosts up in {:.1} s ({} live sessions)",
        hosts_up(),
        started.elapsed().as_secs_f64(),
        n + 1
    );
    // The sessions' pings while nothing happens.
    std::thread::sleep(Duration::from_secs(2));
    let (p0, t0) = (packets_received(&zk), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let idle_per_second = (packets_received(&zk) - p0) as f64 / t0.elapsed().as_secs_f64();
    println!("fleet: idle: {idle_per_second:.0} requests/s (session pings)");
    let hosts = Hosts { applied, idle_per_second };
    let sizes = |t: &str| format!("{:.1} KiB", t.len() as f64 / 1024.0);
    step(
        &format!("first release ({}) to stable", sizes(&small)),
        (&zk, pid),
        (&rt, &store),
        &one,
        &hosts,
    );
    step(
        &format!("second release ({}, 200 routes)", sizes(&big)),
        (&zk, pid),
        (&rt, &store),
        &two,
        &hosts,
    );
    step("rollback to the first (cached: no bytes read)", (&zk, pid), (&rt, &store), &one, &hosts);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    reload_cost(&zk);
}

/// What one reload costs ZooKeeper on a host beside the fleet's own requests: each new worker
/// opens its discovery session and reads the registry. Measured on the real binary (2
/// workers) with a registry of 100 services x 10 instances.
fn reload_cost(zk: &Zk) {
    let c = zk.client();
    c.populate(100, 10);
    let toml = support::Toml::new().zookeeper(zk, "").route_all("s0");
    let gw = support::Gateway::with(toml).workers(2).start();
    std::thread::sleep(Duration::from_secs(2));
    let before_ready = gw.readiness();
    let before = packets_received(zk);
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gw.reloaded(before_ready) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    let requests = packets_received(zk) - before;
    println!(
        "fleet: a reload of a 2-worker host on a registry of 100 services x 10 instances: {requests} ZooKeeper requests ({} per worker): what every host's apply adds, per worker, to the figures above",
        requests / 2
    );
}
