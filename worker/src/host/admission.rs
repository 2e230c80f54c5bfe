//! The rate-limit and `max_requests` view of the shared region: GCRA buckets shared by every
//! worker (so a limit holds for the host) and per-process counts of requests in flight.

use std::sync::atomic::Ordering;

use super::{Host, MAX_SERVICES, RATE_RULES, RATE_SLOTS};

/// Places tried for a key.
const RATE_PROBES: usize = 8;

/// Admission decisions for one worker.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub(super) host: Host,
}

impl Admission {
    /// The bucket key of `parts` (a client address, a header value) under rule `rule`: SipHash
    /// keyed with a secret the host's first worker draws and every later one reads from the
    /// region. Unkeyed, a client could compute offline addresses or header values that land
    /// in one bucket's neighbourhood and push each other's state out (nine crafted keys: 45 of
    /// 45 requests admitted under `1/m, burst = 1`); keyed, it cannot choose where its keys go.
    pub fn key(&self, rule: usize, parts: &[&[u8]]) -> u64 {
        use std::hash::Hasher as _;
        let secret = self.secret();
        let mut h = siphasher::sip::SipHasher13::new_with_keys(
            secret,
            secret.rotate_left(32) ^ rule as u64,
        );
        for p in parts {
            h.write(p);
            h.write_u8(0xff);
        }
        h.finish().max(1)
    }

    fn secret(&self) -> u64 {
        let cell = &self.host.region.limit_secret;
        match cell.load(Ordering::Acquire) {
            0 => {
                let drawn = rand::random::<u64>().max(1);
                match cell.compare_exchange(0, drawn, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => drawn,
                    Err(theirs) => theirs,
                }
            }
            s => s,
        }
    }

    /// Counts a request in flight for service `idx`, unless that makes more than `max` across
    /// every worker of the host: then it is refused (and counted), and nothing stays counted.
    /// Exact: the request is counted before the total is read, so two workers racing for the
    /// last place may both be refused, never both admitted.
    pub fn enter(&self, idx: usize, max: u32) -> Option<InFlightGuard> {
        let region = self.host.region;
        let idx = idx.min(MAX_SERVICES - 1);
        let mine = &region.active[self.host.row].services[idx];
        mine.fetch_add(1, Ordering::AcqRel);
        let total: i64 = region
            .active
            .iter()
            .filter(|r| r.pid.load(Ordering::Relaxed) != 0)
            .map(|r| i64::from(r.services[idx].load(Ordering::Acquire)))
            .sum();
        if total > i64::from(max) {
            mine.fetch_sub(1, Ordering::AcqRel);
            region.workers[self.host.slot].services[idx].overloaded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(InFlightGuard::Shared(mine))
    }

    /// Counts a request in flight in a count of this worker's own (`count`), unless that makes
    /// more than `max`: for a service the shared name table has no row of its own for (it is
    /// full, or the name is longer than a row holds). Its limit then holds per worker, but is
    /// never shared with another service's.
    pub fn enter_local(
        &self,
        count: std::sync::Arc<std::sync::atomic::AtomicI32>,
        max: u32,
    ) -> Option<InFlightGuard> {
        if count.fetch_add(1, Ordering::AcqRel) + 1 > max as i32 {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlightGuard::Local(count))
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
        let region = self.host.region;
        let key = key.max(1);
        let base = rule.min(RATE_RULES - 1) * RATE_SLOTS;
        let start = (key as usize) % RATE_SLOTS;
        let slots = &region.limits[base..base + RATE_SLOTS];
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
                region.workers[self.host.slot].services[service_idx.min(MAX_SERVICES - 1)]
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
}

/// A request counted in flight for `max_requests` until dropped: in this process's row of
/// the shared region, or in a worker-local count.
#[derive(Debug)]
pub enum InFlightGuard {
    /// The service's row in the region (its limit holds for the host).
    Shared(&'static std::sync::atomic::AtomicI32),
    /// A count of this worker's own (the service has no row of its own).
    Local(std::sync::Arc<std::sync::atomic::AtomicI32>),
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        match self {
            InFlightGuard::Shared(c) => c.fetch_sub(1, Ordering::AcqRel),
            InFlightGuard::Local(c) => c.fetch_sub(1, Ordering::AcqRel),
        };
    }
}
