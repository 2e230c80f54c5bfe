//! Metrics and worker status: the counters view of the host's shared region (see
//! [`crate::host`], which owns the layout). Each worker writes only its own slot (plain atomic
//! adds); any worker answering a scrape sums every slot, so `/metrics` and `/workers` are exact
//! across processes.

mod edge;
mod render;
mod render_edge;
mod scrape;

pub use edge::{EdgeAnswer, Mirrored};
pub use render_edge::EdgeLabels;

use crate::host::region::{Region, WorkerStats};
use crate::host::Host;
pub use crate::host::{monotonic_ns, BUCKETS, LAG_BUCKETS, MAX_SERVICES, MAX_SOURCES, MAX_WORKERS};

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Name under which requests that matched no service are counted.
pub const UNROUTED: &str = "_unrouted";
pub(crate) const OTHER: &str = "_other";

/// ZooKeeper session state as `/routes` and `/metrics` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZkState {
    /// No `[zookeeper]` configured.
    None = 0,
    /// Session connected.
    Connected = 1,
    /// Connection lost; session may still live; serving the last table.
    Disconnected = 2,
    /// Session expired or closed; a new one is being opened.
    Lost = 3,
}

impl ZkState {
    fn from_u32(v: u32) -> Self {
        match v {
            1 => ZkState::Connected,
            2 => ZkState::Disconnected,
            3 => ZkState::Lost,
            _ => ZkState::None,
        }
    }

    /// Lower-case name for JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ZkState::None => "none",
            ZkState::Connected => "connected",
            ZkState::Disconnected => "disconnected",
            ZkState::Lost => "session_lost",
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A worker's counters view: where it writes, and what it reads for scrapes.
#[derive(Clone, Copy)]
pub struct Metrics {
    host: Host,
    region: &'static Region,
    slot: usize,
    /// The registry source the session methods speak of.
    source: usize,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Metrics(slot {})", self.slot)
    }
}

impl Metrics {
    fn me(&self) -> &WorkerStats {
        &self.region.workers[self.slot]
    }

    /// The view on `host`'s region, for its slot.
    pub fn new(host: Host) -> Metrics {
        Metrics { host, region: host.region, slot: host.slot, source: 0 }
    }

    /// The host this view reads and writes.
    pub fn host(&self) -> Host {
        self.host
    }

    /// The same view, for registry source `source` (its session's state, events, watches).
    pub fn for_source(self, source: usize) -> Metrics {
        Metrics { source: source.min(MAX_SOURCES - 1), ..self }
    }

    /// Names the registry sources (labels of the per-source series).
    pub fn set_sources(&self, names: &[String]) {
        for (slot, name) in self.region.sources.iter().zip(names) {
            let bytes = &name.as_bytes()[..name.len().min(crate::host::NAME_LEN)];
            for (b, v) in slot.bytes.iter().zip(bytes) {
                b.store(*v, Ordering::Relaxed);
            }
            slot.len.store(bytes.len() as u32, Ordering::Relaxed);
            slot.state.store(2, Ordering::Release);
        }
        self.region.source_count.store(names.len().min(MAX_SOURCES) as u32, Ordering::Release);
    }

    fn zk(&self) -> &crate::host::region::ZkStats {
        &self.me().zk[self.source]
    }

    /// Records this worker's start in its slot; a start in the same generation as the previous
    /// occupant is a restart after a crash (a reload starts a new generation).
    pub fn started(self, generation: u64) {
        let me = self.me();
        let prev = me.pid.swap(std::process::id(), Ordering::Relaxed);
        let prev_gen = me.generation.swap(generation, Ordering::Relaxed);
        if prev != 0 && prev_gen == generation {
            me.restarts.fetch_add(1, Ordering::Relaxed);
        }
        me.started_ms.store(now_ms(), Ordering::Relaxed);
        me.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
        me.active_connections.store(0, Ordering::Relaxed);
        me.retired.store(0, Ordering::Relaxed);
    }

    /// This slot was removed for good (TTOU) and its worker is gone: `/workers` and the
    /// per-slot series stop listing it; its counters still count in the totals.
    pub fn retire(&self) {
        let me = self.me();
        me.retired.store(1, Ordering::Relaxed);
        me.active_connections.store(0, Ordering::Relaxed);
        for zk in &me.zk {
            zk.state.store(0, Ordering::Relaxed);
        }
    }

    /// The event loop is alive. While the ZooKeeper session is connected after a first sync,
    /// the route table is as current as the watch keeps it: the sync time moves on too.
    pub fn heartbeat(&self) {
        let me = self.me();
        let now = now_ms();
        me.heartbeat_ms.store(now, Ordering::Relaxed);
        for zk in &me.zk {
            let connected = zk.state.load(Ordering::Relaxed) == ZkState::Connected as u32;
            if connected && zk.synced_ms.load(Ordering::Relaxed) != 0 {
                zk.synced_ms.store(now, Ordering::Relaxed);
            }
        }
    }

    /// A listing from ZooKeeper was swapped in: the table is current as of now.
    pub fn synced(&self) {
        self.zk().synced_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A session was established: its id, for `/workers` (match it with ZooKeeper's `cons`).
    pub fn set_zk_session(&self, id: i64) {
        self.zk().session.store(id as u64, Ordering::Relaxed);
    }

    /// The watches this worker's session holds now.
    pub fn set_zk_watches(&self, n: usize) {
        self.zk().watches.store(n as u64, Ordering::Relaxed);
    }

    /// One change reached this worker's table `lag` after ZooKeeper recorded it.
    pub fn discovery_lag(&self, lag: Duration) {
        let me = self.me();
        let secs = lag.as_secs_f64();
        if let Some(b) = LAG_BUCKETS.iter().position(|le| secs <= *le) {
            me.lag_buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        me.lag_count.fetch_add(1, Ordering::Relaxed);
        me.lag_sum_ms.fetch_add(lag.as_millis() as u64, Ordering::Relaxed);
    }

    /// Instances of service `idx` this worker holds under the removal guard.
    pub fn set_held(&self, service_idx: usize, n: usize) {
        self.me().services[service_idx.min(MAX_SERVICES - 1)]
            .held
            .store(n as u64, Ordering::Relaxed);
    }

    /// A client connection opened (+1) or closed (-1).
    pub fn connections(&self, delta: i64) {
        self.me().active_connections.fetch_add(delta, Ordering::Relaxed);
    }

    /// Client connections this worker has open.
    pub fn active_connections(&self) -> i64 {
        self.me().active_connections.load(Ordering::Relaxed)
    }

    /// What a fleet rollout compares between hosts, since the host started: requests no
    /// route took (answered 4xx), and the duration histogram's counts per bucket
    /// ([`BUCKETS`]) and in all, over every service and every worker.
    pub fn unrouted_and_durations(&self) -> (u64, Vec<u64>, u64) {
        let scrape = scrape::Scrape::new(self);
        let unrouted = self
            .host
            .find_service_index(UNROUTED)
            .map_or(0, |i| scrape.sum(|w| w.services[i].by_class[3].load(Ordering::Relaxed)));
        let mut buckets = vec![0u64; BUCKETS.len()];
        let mut count = 0;
        for (i, _) in &scrape.names {
            for (b, n) in buckets.iter_mut().enumerate() {
                *n += scrape.sum(|w| w.services[*i].duration_buckets[b].load(Ordering::Relaxed));
            }
            count += scrape.sum(|w| w.services[*i].duration_count.load(Ordering::Relaxed));
        }
        (unrouted, buckets, count)
    }

    /// Requests the host answered since its start, by status class (1xx..5xx), over every
    /// service and every worker: what a fleet rollout compares between hosts.
    pub fn answered_by_class(&self) -> [u64; 5] {
        let scrape = scrape::Scrape::new(self);
        let mut out = [0u64; 5];
        for (i, _) in &scrape.names {
            for (c, n) in out.iter_mut().enumerate() {
                *n += scrape.sum(|w| w.services[*i].by_class[c].load(Ordering::Relaxed));
            }
        }
        out
    }

    /// The index of `service` in the shared name table (claimed on first use).
    pub fn service_index(&self, service: &str) -> usize {
        self.host.service_index(service)
    }

    /// A request answered with `status`; `latency` is the upstream time when one was asked.
    pub fn request(&self, service_idx: usize, status: u16, latency: Option<Duration>) {
        let me = self.me();
        me.requests.fetch_add(1, Ordering::Relaxed);
        let s = &me.services[service_idx.min(MAX_SERVICES - 1)];
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        s.by_class[class].fetch_add(1, Ordering::Relaxed);
        if let Some(l) = latency {
            let secs = l.as_secs_f64();
            if let Some(b) = BUCKETS.iter().position(|le| secs <= *le) {
                s.buckets[b].fetch_add(1, Ordering::Relaxed);
            }
            s.count.fetch_add(1, Ordering::Relaxed);
            s.sum_micros.fetch_add(l.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// The route table now holds this many services and instances.
    pub fn set_routes(&self, services: usize, instances: usize) {
        self.me().routed_services.store(services as u64, Ordering::Relaxed);
        self.me().routed_instances.store(instances as u64, Ordering::Relaxed);
    }

    /// A one-line summary for systemd's `STATUS=`: live workers and the largest route table.
    pub fn status_line(&self) -> String {
        let live: Vec<&WorkerStats> =
            self.region.workers.iter().filter(|w| w.pid.load(Ordering::Relaxed) != 0).collect();
        let services =
            live.iter().map(|w| w.routed_services.load(Ordering::Relaxed)).max().unwrap_or(0);
        let instances =
            live.iter().map(|w| w.routed_instances.load(Ordering::Relaxed)).max().unwrap_or(0);
        let requests: u64 = live.iter().map(|w| w.requests.load(Ordering::Relaxed)).sum();
        let (services, instances) = (services as usize, instances as usize);
        format!(
            "{}, {}, {requests} requests served",
            crate::table::count(services, "service"),
            crate::table::count(instances, "instance")
        )
    }

    /// An instance was ejected.
    pub fn ejection(&self) {
        self.me().ejections.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was retried on another instance.
    pub fn retry(&self) {
        self.me().retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A ZooKeeper watch event or listing arrived.
    pub fn zk_event(&self) {
        self.zk().events.fetch_add(1, Ordering::Relaxed);
    }

    /// A full resync of the registry was done.
    pub fn zk_resync(&self) {
        self.zk().resyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// The ZooKeeper session changed state.
    pub fn set_zk_state(&self, s: ZkState) {
        self.zk().state.store(s as u32, Ordering::Relaxed);
    }

    /// This worker's ZooKeeper session state.
    pub fn zk_state(&self) -> ZkState {
        ZkState::from_u32(self.zk().state.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_workers_on_one_region_report_exact_totals() {
        let host = Host::local(0);
        let (a, b) = (Metrics::new(host), Metrics::new(host.for_slot(1)));
        a.started(1);
        b.started(1);
        let (ia, ib) = (a.service_index("svc"), b.service_index("svc"));
        assert_eq!(ia, ib, "one index per service across workers");
        for _ in 0..3 {
            a.request(ia, 200, Some(Duration::from_millis(3)));
        }
        b.request(ib, 503, Some(Duration::from_millis(30)));
        let text = a.prometheus();
        assert!(
            text.contains("zkgate_requests_total{service=\"svc\",code_class=\"2xx\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("zkgate_requests_total{service=\"svc\",code_class=\"5xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("zkgate_upstream_latency_seconds_bucket{service=\"svc\",le=\"0.005\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("zkgate_upstream_latency_seconds_count{service=\"svc\"} 4"),
            "{text}"
        );
        assert_eq!(a.workers_json()["workers"].as_array().unwrap().len(), 2);
        b.retire();
        assert_eq!(
            a.workers_json()["workers"].as_array().unwrap().len(),
            1,
            "retired slot not listed"
        );
        let text = a.prometheus();
        assert!(!text.contains("zkgate_worker_requests_total{slot=\"1\"}"), "{text}");
        assert!(
            text.contains("zkgate_requests_total{service=\"svc\",code_class=\"5xx\"} 1"),
            "a retired slot's requests still count: {text}"
        );
    }

    #[test]
    fn a_restart_in_the_same_generation_counts_a_reload_does_not() {
        let host = Host::local(0);
        let m = Metrics::new(host);
        m.started(1);
        m.started(1);
        m.started(2);
        assert!(m.prometheus().contains("zkgate_worker_restarts_total{slot=\"0\"} 1"));
    }
}
