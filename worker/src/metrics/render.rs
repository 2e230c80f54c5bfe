//! What scrapes read: `/workers` as JSON and `/metrics` in Prometheus text, summed over every
//! slot of the shared region.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::scrape::{escape, Count, Family, Scrape};
use super::{Metrics, ZkState, LAG_BUCKETS, MAX_SERVICES, MAX_SOURCES};
use crate::host::region::{read_name, WorkerStats, ZkStats};

impl Metrics {
    /// Every slot that has had a worker: the `/workers` answer.
    pub fn workers_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .region
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.pid.load(Ordering::Relaxed) != 0 && !w.is_retired())
            .map(|(i, w)| {
                serde_json::json!({
                    "slot": i,
                    "pid": w.pid.load(Ordering::Relaxed),
                    "generation": w.generation.load(Ordering::Relaxed),
                    "started_unix_ms": w.started_ms.load(Ordering::Relaxed),
                    "last_heartbeat_unix_ms": w.heartbeat_ms.load(Ordering::Relaxed),
                    "requests": w.requests.load(Ordering::Relaxed),
                    "active_connections": w.active_connections.load(Ordering::Relaxed),
                    "restarts": w.restarts.load(Ordering::Relaxed),
                    "release": crate::host::releases::decode(w.release.load(Ordering::Relaxed)),
                    "zookeeper": ZkState::from_u32(w.zk[0].state.load(Ordering::Relaxed)).as_str(),
                    "zookeeper_watches": w.zk[0].watches.load(Ordering::Relaxed),
                    "zookeeper_session": session(&w.zk[0]),
                    "last_sync_age_seconds": sync_age(&w.zk[0]),
                    "sources": self.sources().iter().enumerate().map(|(s, name)| serde_json::json!({
                        "name": name,
                        "zookeeper": ZkState::from_u32(w.zk[s].state.load(Ordering::Relaxed)).as_str(),
                        "watches": w.zk[s].watches.load(Ordering::Relaxed),
                        "session": session(&w.zk[s]),
                        "last_sync_age_seconds": sync_age(&w.zk[s]),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({ "workers": rows })
    }

    /// Prometheus text format, summed over every slot: the request path's series, discovery's,
    /// the host tables', then the per-source and per-slot ones.
    pub fn prometheus(&self) -> String {
        let scrape = Scrape::new(self);
        let mut out = String::new();
        requests(&scrape, &mut out);
        for (family, read) in REFUSALS {
            scrape.service_counter(&mut out, family, "", read);
        }
        scrape.service_histogram(&mut out, UPSTREAM_LATENCY, |s| {
            (&s.buckets, &s.count, &s.sum_micros)
        });
        held(&scrape, &mut out);
        discovery_lag(&scrape, &mut out);
        self.host_tables(&mut out);
        per_source(&scrape, &self.sources(), &mut out);
        per_slot(&scrape, &mut out);
        out
    }

    /// How full the host's fixed tables are.
    fn host_tables(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP zkgate_host_instances_overflow_total Instances that found no place in the host-wide instance table (their state stays per worker).\n# TYPE zkgate_host_instances_overflow_total counter\nzkgate_host_instances_overflow_total {}",
            self.region.instance_overflow.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP zkgate_host_service_rows Rows of the host's service table in use (counters, limits, leases), of zkgate_host_service_rows_max; rows of services gone from every worker are released. Services beyond it count as _other.\n# TYPE zkgate_host_service_rows gauge\nzkgate_host_service_rows {}\n# HELP zkgate_host_service_rows_max Rows the host's service table has.\n# TYPE zkgate_host_service_rows_max gauge\nzkgate_host_service_rows_max {}",
            self.host.service_rows_used(),
            MAX_SERVICES - 1
        );
    }
}

const REFUSALS: [(Family, Count); 2] = [
    (("zkgate_rate_limited_total", "Requests refused by a [[rate_limit]] (429)."), |s| {
        s.rate_limited.load(Ordering::Relaxed)
    }),
    (("zkgate_overloaded_total", "Requests refused by max_requests (503)."), |s| {
        s.overloaded.load(Ordering::Relaxed)
    }),
];

const UPSTREAM_LATENCY: Family = (
    "zkgate_upstream_latency_seconds",
    "Time from sending a request to an instance to its response headers.",
);

fn requests(scrape: &Scrape, out: &mut String) {
    *out += "# HELP zkgate_requests_total Requests answered, by service and status class.\n";
    *out += "# TYPE zkgate_requests_total counter\n";
    for (i, name) in &scrape.names {
        for (c, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let n = scrape.sum(|w| w.services[*i].by_class[c].load(Ordering::Relaxed));
            if n > 0 {
                let _ = writeln!(
                    out,
                    "zkgate_requests_total{{service=\"{}\",code_class=\"{class}\"}} {n}",
                    escape(name)
                );
            }
        }
    }
}

fn held(scrape: &Scrape, out: &mut String) {
    *out += "# HELP zkgate_discovery_held_instances Instances the registry removed that the removal guard holds (routed while their health check passes, else as a fallback) until they prove gone (largest over the workers).\n";
    *out += "# TYPE zkgate_discovery_held_instances gauge\n";
    for (i, name) in &scrape.names {
        let n = scrape.live().map(|(_, w)| w.services[*i].held.load(Ordering::Relaxed)).max();
        if let Some(n) = n.filter(|n| *n > 0) {
            let _ = writeln!(
                out,
                "zkgate_discovery_held_instances{{service=\"{}\"}} {n}",
                escape(name)
            );
        }
    }
}

fn discovery_lag(scrape: &Scrape, out: &mut String) {
    *out += "# HELP zkgate_discovery_lag_seconds From a znode's change (its mtime, ZooKeeper's clock) to a worker's route table holding it.\n";
    *out += "# TYPE zkgate_discovery_lag_seconds histogram\n";
    let mut cumulative = 0;
    for (b, le) in LAG_BUCKETS.iter().enumerate() {
        cumulative += scrape.sum(|w| w.lag_buckets[b].load(Ordering::Relaxed));
        let _ = writeln!(out, "zkgate_discovery_lag_seconds_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let count = scrape.sum(|w| w.lag_count.load(Ordering::Relaxed));
    let lag_ms = scrape.sum(|w| w.lag_sum_ms.load(Ordering::Relaxed));
    let _ = writeln!(
        out,
        "zkgate_discovery_lag_seconds_bucket{{le=\"+Inf\"}} {count}\nzkgate_discovery_lag_seconds_sum {}\nzkgate_discovery_lag_seconds_count {count}",
        lag_ms as f64 / 1e3
    );
}

type PerSource = fn(&ZkStats) -> i64;

const PER_SOURCE: [(&str, &str, &str, PerSource); 4] = [
    (
        "zkgate_zookeeper_events_total",
        "counter",
        "ZooKeeper listings applied, per worker slot and registry source.",
        |z| z.events.load(Ordering::Relaxed) as i64,
    ),
    (
        "zkgate_zookeeper_resyncs_total",
        "counter",
        "Full registry resyncs (new sessions), per worker slot and registry source.",
        |z| z.resyncs.load(Ordering::Relaxed) as i64,
    ),
    (
        "zkgate_zookeeper_session_state",
        "gauge",
        "0 none, 1 connected, 2 disconnected, 3 session lost; per worker slot and registry source.",
        |z| i64::from(z.state.load(Ordering::Relaxed)),
    ),
    (
        "zkgate_zookeeper_watches",
        "gauge",
        "Watches the worker's ZooKeeper session holds, per registry source.",
        |z| z.watches.load(Ordering::Relaxed) as i64,
    ),
];

fn per_source(scrape: &Scrape, sources: &[String], out: &mut String) {
    *out += "# HELP zkgate_discovery_last_sync_age_seconds Seconds since the worker last knew its route table current (session connected and synced), per registry source.\n";
    *out += "# TYPE zkgate_discovery_last_sync_age_seconds gauge\n";
    for (slot, w) in scrape.live() {
        for (s, source) in sources.iter().enumerate() {
            if let Some(age) = sync_age(&w.zk[s]) {
                let _ = writeln!(
                    out,
                    "zkgate_discovery_last_sync_age_seconds{{slot=\"{slot}\",source=\"{}\"}} {age}",
                    escape(source)
                );
            }
        }
    }
    for (name, kind, help, read) in PER_SOURCE {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (slot, w) in scrape.live() {
            if sources.is_empty() {
                let _ = writeln!(out, "{name}{{slot=\"{slot}\"}} {}", read(&w.zk[0]));
            }
            for (s, source) in sources.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{slot=\"{slot}\",source=\"{}\"}} {}",
                    escape(source),
                    read(&w.zk[s])
                );
            }
        }
    }
}

type PerSlot = fn(&WorkerStats) -> i64;

const PER_SLOT: [(&str, &str, &str, PerSlot); 5] = [
    ("zkgate_active_connections", "gauge", "Client connections open, per worker slot.", |w| {
        w.active_connections.load(Ordering::Relaxed)
    }),
    ("zkgate_worker_requests_total", "counter", "Requests answered, per worker slot.", |w| {
        w.requests.load(Ordering::Relaxed) as i64
    }),
    ("zkgate_worker_restarts_total", "counter", "Workers respawned after dying, per slot.", |w| {
        w.restarts.load(Ordering::Relaxed) as i64
    }),
    (
        "zkgate_ejections_total",
        "counter",
        "Instances ejected by outlier detection, per worker slot.",
        |w| w.ejections.load(Ordering::Relaxed) as i64,
    ),
    (
        "zkgate_retries_total",
        "counter",
        "Requests retried on another instance, per worker slot.",
        |w| w.retries.load(Ordering::Relaxed) as i64,
    ),
];

fn per_slot(scrape: &Scrape, out: &mut String) {
    for (name, kind, help, read) in PER_SLOT {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (slot, w) in scrape.live() {
            let _ = writeln!(out, "{name}{{slot=\"{slot}\"}} {}", read(w));
        }
    }
}

/// The session id as ZooKeeper writes it (`0x…`), none before the first session.
fn session(z: &ZkStats) -> Option<String> {
    let id = z.session.load(Ordering::Relaxed);
    (id != 0).then(|| format!("0x{id:x}"))
}

/// Seconds since the worker last knew a source's part of its table current (`None` before
/// its first listing).
fn sync_age(z: &ZkStats) -> Option<f64> {
    let synced = z.synced_ms.load(Ordering::Relaxed);
    (synced != 0).then(|| super::now_ms().saturating_sub(synced) as f64 / 1e3)
}

impl Metrics {
    /// The registry sources' names, in order.
    fn sources(&self) -> Vec<String> {
        let n = self.region.source_count.load(Ordering::Acquire) as usize;
        self.region.sources[..n.min(MAX_SOURCES)]
            .iter()
            .map(|name| String::from_utf8_lossy(&read_name(name)).into_owned())
            .collect()
    }
}
