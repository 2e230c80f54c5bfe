//! Metrics and worker status in shared memory: the one owner of the region the supervisor maps
//! before forking. Each worker writes only its own slot (plain atomic adds); any worker
//! answering a scrape sums every slot, so `/metrics` and `/workers` are exact across processes.
//!
//! Layout (`#[repr(C)]`, all atomics, zero = empty): a table of service names claimed by
//! compare-and-swap, shared by all workers so one service has one index everywhere; then one
//! [`WorkerStats`] per slot with per-service counters. Fixed capacity: services beyond
//! [`MAX_SERVICES`] - 1 share the last row, named `_other`; slots beyond [`MAX_WORKERS`] share
//! the last slot.

mod region;
mod render;

use region::{read_name, WorkerStats};

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Worker slots with their own counters.
pub const MAX_WORKERS: usize = 64;
/// Services with their own counters (the last row is `_other`).
pub const MAX_SERVICES: usize = 256;
/// Worker processes counted for `max_requests` at once (a reload briefly runs two per slot).
pub const ACTIVE_ROWS: usize = 2 * MAX_WORKERS;
/// `[[rate_limit]]` rules with buckets in the shared region.
pub const RATE_RULES: usize = 32;
/// Buckets per rule (keys: client addresses, header values). When every bucket near a new
/// key's place is taken, the one closest to full is reused (see `rate_limit`).
pub const RATE_SLOTS: usize = 4096;
/// Places tried for a key.
const RATE_PROBES: usize = 8;
pub(crate) const NAME_LEN: usize = 120;
/// Upper bounds (seconds) of the upstream latency histogram buckets.
pub const BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
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

/// A worker's handle on the region: where it writes, and what it reads for scrapes.
#[derive(Clone, Copy)]
pub struct Metrics {
    region: &'static region::Region,
    slot: usize,
    /// This process's row of requests in flight (claimed by `started`).
    row: usize,
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

    /// Records this worker's start in its slot; a start in the same generation as the previous
    /// occupant is a restart after a crash (a reload starts a new generation).
    pub fn started(mut self, generation: u64) -> Metrics {
        self.row = self.claim_row();
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
        self
    }

    /// Claims this process's row of in-flight counters, clearing rows of processes that are
    /// gone (a crashed worker's requests stop counting).
    fn claim_row(&self) -> usize {
        let me = std::process::id();
        for row in self.region.active.iter() {
            let pid = row.pid.load(Ordering::Acquire);
            if pid != 0 && pid != me && !alive(pid) {
                for s in &row.services {
                    s.store(0, Ordering::Relaxed);
                }
                let _ = row.pid.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
        for (i, row) in self.region.active.iter().enumerate() {
            if row.pid.compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return i;
            }
        }
        log::warn!("more than {ACTIVE_ROWS} worker processes: max_requests counts this one in the last row");
        ACTIVE_ROWS - 1
    }

    /// Counts a request in flight for service `idx`, unless that makes more than `max` across
    /// every worker of the host: then it is refused (and counted), and nothing stays counted.
    /// Exact: the request is counted before the total is read, so two workers racing for the
    /// last place may both be refused, never both admitted.
    pub fn enter(&self, idx: usize, max: u32) -> Option<InFlightGuard> {
        let idx = idx.min(MAX_SERVICES - 1);
        let mine = &self.region.active[self.row].services[idx];
        mine.fetch_add(1, Ordering::AcqRel);
        let total: i64 = self
            .region
            .active
            .iter()
            .filter(|r| r.pid.load(Ordering::Relaxed) != 0)
            .map(|r| i64::from(r.services[idx].load(Ordering::Acquire)))
            .sum();
        if total > i64::from(max) {
            mine.fetch_sub(1, Ordering::AcqRel);
            self.me().services[idx].overloaded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(InFlightGuard(mine))
    }

    /// GCRA rate limiting on bucket `key` of `rule`: admits a request when the key's
    /// theoretical arrival time is within `tolerance_ns` of `now_ns` (CLOCK_MONOTONIC, the same
    /// in every process), and moves it on by `interval_ns`; otherwise `Err(wait)` until one
    /// would be admitted. Buckets are shared by every worker, so the limit holds for the host.
    /// A key finds its bucket among `RATE_PROBES` places; when none is its own or free, the
    /// one with the earliest arrival time is taken over — a bucket already back to full burst
    /// carries no state, so only under more than `RATE_SLOTS` keys limited at once can a key
    /// start again from a full burst.
    pub fn rate_limit(
        &self,
        (rule, key): (usize, u64),
        now_ns: u64,
        interval_ns: u64,
        tolerance_ns: u64,
        service_idx: usize,
    ) -> Result<(), std::time::Duration> {
        let key = key.max(1);
        let base = rule.min(RATE_RULES - 1) * RATE_SLOTS;
        let start = (key as usize) % RATE_SLOTS;
        let slots = &self.region.limits[base..base + RATE_SLOTS];
        let place = |i: usize| &slots[(start + i) % RATE_SLOTS];
        let slot = (0..RATE_PROBES)
            .map(place)
            .find(|s| s.key.load(Ordering::Acquire) == key)
            .or_else(|| {
                (0..RATE_PROBES).map(place).find(|s| {
                    s.key.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire).is_ok()
                })
            })
            .unwrap_or_else(|| {
                let oldest =
                    (0..RATE_PROBES).map(place).min_by_key(|s| s.tat.load(Ordering::Relaxed));
                let s = oldest.expect("RATE_PROBES > 0");
                s.key.store(key, Ordering::Release);
                s.tat.store(0, Ordering::Release);
                s
            });
        let mut tat = slot.tat.load(Ordering::Acquire);
        loop {
            let from = tat.max(now_ns);
            if from - now_ns > tolerance_ns {
                self.me().services[service_idx.min(MAX_SERVICES - 1)]
                    .rate_limited
                    .fetch_add(1, Ordering::Relaxed);
                return Err(std::time::Duration::from_nanos(from - now_ns - tolerance_ns));
            }
            match slot.tat.compare_exchange_weak(
                tat,
                from + interval_ns,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// This slot was removed for good (TTOU) and its worker is gone: `/workers` and the
    /// per-slot series stop listing it; its counters still count in the totals.
    pub fn retire(&self) {
        let me = self.me();
        me.retired.store(1, Ordering::Relaxed);
        me.active_connections.store(0, Ordering::Relaxed);
        me.zk_state.store(0, Ordering::Relaxed);
    }

    /// The event loop is alive.
    pub fn heartbeat(&self) {
        self.me().heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A client connection opened (+1) or closed (-1).
    pub fn connections(&self, delta: i64) {
        self.me().active_connections.fetch_add(delta, Ordering::Relaxed);
    }

    /// Client connections this worker has open.
    pub fn active_connections(&self) -> i64 {
        self.me().active_connections.load(Ordering::Relaxed)
    }

    /// The index of `service` in the shared name table (claimed on first use).
    pub fn service_index(&self, service: &str) -> usize {
        let name = &service.as_bytes()[..service.len().min(NAME_LEN)];
        for (i, slot) in self.region.names.iter().enumerate().take(MAX_SERVICES - 1) {
            loop {
                match slot.state.load(Ordering::Acquire) {
                    2 if read_name(slot) == name => return i,
                    2 => break,
                    1 => std::hint::spin_loop(),
                    _ => {
                        if slot
                            .state
                            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                        {
                            for (b, v) in slot.bytes.iter().zip(name) {
                                b.store(*v, Ordering::Relaxed);
                            }
                            slot.len.store(name.len() as u32, Ordering::Relaxed);
                            slot.state.store(2, Ordering::Release);
                            return i;
                        }
                    }
                }
            }
        }
        MAX_SERVICES - 1
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
        self.me().zk_events.fetch_add(1, Ordering::Relaxed);
    }

    /// A full resync of the registry was done.
    pub fn zk_resync(&self) {
        self.me().zk_resyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// The ZooKeeper session changed state.
    pub fn set_zk_state(&self, s: ZkState) {
        self.me().zk_state.store(s as u32, Ordering::Relaxed);
    }

    /// This worker's ZooKeeper session state.
    pub fn zk_state(&self) -> ZkState {
        ZkState::from_u32(self.me().zk_state.load(Ordering::Relaxed))
    }

    /// A handle on the same region for another slot (as a second worker process has).
    pub fn for_slot(&self, slot: usize) -> Metrics {
        Metrics { region: self.region, slot: slot.min(MAX_WORKERS - 1), row: self.row }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_workers_on_one_region_report_exact_totals() {
        let a = Metrics::local(0);
        let b = a.for_slot(1);
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
        let m = Metrics::local(0);
        m.started(1);
        m.started(1);
        m.started(2);
        assert!(m.prometheus().contains("zkgate_worker_restarts_total{slot=\"0\"} 1"));
    }
}

/// A request counted in flight for `max_requests` until dropped.
#[derive(Debug)]
pub struct InFlightGuard(&'static std::sync::atomic::AtomicI32);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether process `pid` exists (signal 0 checks without sending).
fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the host.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
