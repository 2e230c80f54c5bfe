//! The host-wide instance table: what every worker of the host knows about one instance of one
//! service — consecutive failures, ejection, the health check's verdict, the removal guard's
//! release and the requests in flight from every worker.
//!
//! Entries are keyed by a hash of (service, address) with a second hash stored beside it, so two
//! pairs whose keys collide are still told apart. A worker claims an entry with a
//! compare-and-swap to a busy marker carrying its pid, resets the fields, then publishes the
//! key: a reader never trusts an entry before its key is published, and a marker left by a
//! process that died is cleared by the next one to meet it. An entry no route table has held
//! for [`RECLAIM_AFTER`] ms, with nothing in flight, may be reused. When an instance finds no
//! place within [`PROBES`] entries of its hash, its state stays with the worker (counted as an
//! overflow).
//!
//! In-flight counts are kept twice: the host total every reader compares, and each process's
//! share, so what a dead process still counted is taken back out of the total by the next
//! worker that starts ([`super::Host::started`]).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::region::InstanceEntry;
use super::{alive, monotonic_ms, Host, MAX_INSTANCES};

/// Top bit of a key: the entry is being (re)initialised by the pid in the low bits.
pub(crate) const BUSY: u64 = 1 << 63;
/// Entries no route table has held for this long (ms) may be reused for another instance.
/// Every worker marks the entries of its table every second, so this only frees instances
/// gone from every table for ten minutes.
pub const RECLAIM_AFTER: u64 = 10 * 60 * 1000;
/// Entries tried from an instance's hash.
pub const PROBES: usize = 32;

/// The instance table view.
#[derive(Debug, Clone, Copy)]
pub struct Instances {
    pub(super) host: Host,
}

/// One instance's state: an entry of the host table, or (on overflow, or without a region)
/// the worker's own.
pub struct Entry(Inner);

enum Inner {
    /// Shared by every worker: the entry, its index (for the in-flight rows), the handle (for
    /// this process's row).
    Host { entry: &'static InstanceEntry, idx: usize, host: Host },
    /// This worker's alone.
    Own(Box<InstanceEntry>),
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::Host { idx, .. } => write!(f, "Entry::Host({idx})"),
            Inner::Own(_) => f.write_str("Entry::Own"),
        }
    }
}

/// A fresh, private entry (all zero: healthy, nothing in flight).
pub fn own() -> Entry {
    Entry(Inner::Own(Box::new(zeroed())))
}

fn zeroed() -> InstanceEntry {
    use std::sync::atomic::AtomicI64;
    InstanceEntry {
        key: AtomicU64::new(0),
        tag: AtomicU64::new(0),
        seen_ms: AtomicU64::new(0),
        failures: AtomicU32::new(0),
        ejections: AtomicU32::new(0),
        ejected_until: AtomicU64::new(0),
        down: AtomicU32::new(0),
        probe_fails: AtomicU32::new(0),
        probe_oks: AtomicU32::new(0),
        released: AtomicU32::new(0),
        active: AtomicI64::new(0),
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    }
}

/// The two hashes of (service, address): the key (top bit clear, never 0) and the tag.
fn hashes(service: &str, address: &str) -> (u64, u64) {
    let hash = |salt: u8| {
        // SipHash with fixed keys: the same value in every process of this binary.
        let mut h = std::hash::DefaultHasher::new();
        salt.hash(&mut h);
        service.hash(&mut h);
        address.hash(&mut h);
        h.finish()
    };
    (((hash(1) & !BUSY) | 1), hash(2))
}

impl Instances {
    /// The entry of `address` in `service`, claimed when the host has none yet.
    pub fn claim(&self, service: &str, address: &str) -> Entry {
        let (key, tag) = hashes(service, address);
        let entries = &self.host.region.instances;
        let start = (key as usize) % MAX_INSTANCES;
        let at = |i: usize| (start + i) % MAX_INSTANCES;
        let me = BUSY | u64::from(std::process::id());
        for _round in 0..10_000 {
            let now = monotonic_ms();
            let mut busy = false;
            let mut candidate = None;
            for i in 0..PROBES {
                let e = &entries[at(i)];
                let k = e.key.load(Ordering::Acquire);
                if k == key && e.tag.load(Ordering::Acquire) == tag {
                    e.seen_ms.store(now, Ordering::Relaxed);
                    return self.entry(at(i));
                }
                if k & BUSY != 0 {
                    if alive((k & !BUSY) as u32) {
                        busy = true;
                    } else {
                        let _ = e.key.compare_exchange(k, 0, Ordering::AcqRel, Ordering::Relaxed);
                    }
                    continue;
                }
                let seen = e.seen_ms.load(Ordering::Relaxed);
                let stale = k != 0
                    && (seen == 0 || seen + RECLAIM_AFTER < now)
                    && e.active.load(Ordering::Relaxed) <= 0;
                if candidate.is_none() && (k == 0 || stale) {
                    candidate = Some((i, k));
                }
            }
            if busy {
                // Another worker is writing an entry here, perhaps this very instance's.
                std::thread::yield_now();
                continue;
            }
            let Some((i, old)) = candidate else { break };
            let e = &entries[at(i)];
            if e.key.compare_exchange(old, me, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                continue;
            }
            reset(e);
            e.tag.store(tag, Ordering::Relaxed);
            e.seen_ms.store(now, Ordering::Relaxed);
            e.key.store(key, Ordering::Release);
            // Two workers may have claimed different places for the same instance at once:
            // the first place in probe order wins; a later one is given back.
            let earlier = (0..i).map(at).find(|&j| {
                entries[j].key.load(Ordering::Acquire) == key
                    && entries[j].tag.load(Ordering::Acquire) == tag
            });
            if let Some(j) = earlier {
                e.key.store(0, Ordering::Release);
                return self.entry(j);
            }
            return self.entry(at(i));
        }
        // Logged at the 1st, 2nd, 4th, 8th … overflow only: a registry far beyond the table's
        // size would otherwise log a line per instance per worker.
        let n = self.host.region.instance_overflow.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            log::warn!(
                "service {service}: instance {address}: the host's instance table ({MAX_INSTANCES} entries) has no place left near it; its ejections, verdicts and in-flight count stay per worker ({n} such instances so far, zkgate_host_instances_overflow_total)"
            );
        }
        own()
    }

    fn entry(&self, idx: usize) -> Entry {
        Entry(Inner::Host { entry: &self.host.region.instances[idx], idx, host: self.host })
    }

    /// Takes what a dead process's row still counted in flight back out of the host totals.
    pub(super) fn forget_row(&self, row: usize) {
        let region = self.host.region;
        for (idx, mine) in region.inflight[row].iter().enumerate() {
            let n = mine.swap(0, Ordering::AcqRel);
            if n > 0 {
                region.instances[idx].active.fetch_sub(i64::from(n), Ordering::AcqRel);
            }
        }
    }

    /// Instances that found no place in the table since the region was mapped.
    pub fn overflow(&self) -> u64 {
        self.host.region.instance_overflow.load(Ordering::Relaxed)
    }
}

fn reset(e: &InstanceEntry) {
    for a in [&e.failures, &e.ejections, &e.down, &e.probe_fails, &e.probe_oks, &e.released] {
        a.store(0, Ordering::Relaxed);
    }
    e.ejected_until.store(0, Ordering::Relaxed);
    e.active.store(0, Ordering::Relaxed);
    e.requests.store(0, Ordering::Relaxed);
    e.errors.store(0, Ordering::Relaxed);
}

impl Entry {
    /// The fields.
    pub(crate) fn fields(&self) -> &InstanceEntry {
        match &self.0 {
            Inner::Host { entry, .. } => entry,
            Inner::Own(e) => e,
        }
    }

    /// Whether every worker of the host shares this entry.
    pub fn shared(&self) -> bool {
        matches!(self.0, Inner::Host { .. })
    }

    /// A request to the instance started: counted in this process's row, then in the total.
    pub fn started(&self) {
        if let Inner::Host { idx, host, .. } = &self.0 {
            host.region.inflight[host.row][*idx].fetch_add(1, Ordering::AcqRel);
        }
        self.fields().active.fetch_add(1, Ordering::AcqRel);
    }

    /// A request to the instance ended: out of the total, then out of this process's row.
    pub fn finished(&self) {
        self.fields().active.fetch_sub(1, Ordering::AcqRel);
        if let Inner::Host { idx, host, .. } = &self.0 {
            let _ = host.region.inflight[host.row][*idx].fetch_update(
                Ordering::AcqRel,
                Ordering::Relaxed,
                |v| v.checked_sub(1),
            );
        }
    }

    /// Requests in flight to the instance from every worker of the host.
    pub fn active(&self) -> usize {
        self.fields().active.load(Ordering::Relaxed).max(0) as usize
    }

    /// A request to the instance was answered (`failed`: connect error, timeout, reset, 5xx).
    pub fn answered(&self, failed: bool) {
        let f = self.fields();
        f.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            f.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests sent to the instance by the host's workers, and those that failed.
    pub fn answered_counts(&self) -> (u64, u64) {
        let f = self.fields();
        (f.requests.load(Ordering::Relaxed), f.errors.load(Ordering::Relaxed))
    }

    /// A route table holds the entry now (keeps it from being reused).
    pub fn touch(&self, now_ms: u64) {
        self.fields().seen_ms.store(now_ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_share_one_entry_per_instance_and_tell_instances_apart() {
        let host = Host::local(0);
        let (a, b) = (host.instances(), host.for_slot(1).instances());
        let e1 = a.claim("svc", "10.0.0.1:80");
        let e2 = b.claim("svc", "10.0.0.1:80");
        assert!(e1.shared() && e2.shared());
        assert!(std::ptr::eq(e1.fields(), e2.fields()), "one entry for both workers");
        let other = a.claim("svc", "10.0.0.2:80");
        let elsewhere = a.claim("other", "10.0.0.1:80");
        assert!(!std::ptr::eq(e1.fields(), other.fields()));
        assert!(!std::ptr::eq(e1.fields(), elsewhere.fields()), "keyed by service too");
        e1.started();
        e2.started();
        assert_eq!(other.active(), 0);
        assert_eq!(e1.active(), 2, "host-wide count");
        e2.finished();
        assert_eq!(e1.active(), 1);
    }

    #[test]
    fn a_key_collision_is_told_apart_by_the_tag() {
        let host = Host::local(0);
        let real = host.instances().claim("svc", "10.0.0.1:80");
        // Forge a colliding key with another tag in the very entry, as a collision would.
        let (key, _) = hashes("svc", "10.0.0.1:80");
        let idx = match &real.0 {
            Inner::Host { idx, .. } => *idx,
            Inner::Own(_) => unreachable!(),
        };
        host.region.instances[idx].tag.store(12345, Ordering::Release);
        let again = host.instances().claim("svc", "10.0.0.1:80");
        assert!(!std::ptr::eq(real.fields(), again.fields()), "same key, other tag: other entry");
        assert_eq!(host.region.instances[idx].key.load(Ordering::Relaxed), key);
    }

    #[test]
    fn a_dead_processs_in_flight_share_is_taken_back_out() {
        let host = Host::local(0);
        let e = host.instances().claim("svc", "10.0.0.1:80");
        e.started();
        e.started();
        assert_eq!(e.active(), 2);
        host.instances().forget_row(host.row);
        assert_eq!(e.active(), 0, "what the row counted no longer counts");
    }

    #[test]
    fn a_full_neighbourhood_overflows_to_a_private_entry_and_counts_it() {
        let host = Host::local(0);
        let (key, _) = hashes("svc", "x");
        let start = (key as usize) % MAX_INSTANCES;
        let now = monotonic_ms();
        for i in 0..PROBES {
            let e = &host.region.instances[(start + i) % MAX_INSTANCES];
            e.key.store(7 + i as u64, Ordering::Release);
            e.seen_ms.store(now, Ordering::Release);
        }
        let e = host.instances().claim("svc", "x");
        assert!(!e.shared());
        assert_eq!(host.instances().overflow(), 1);
        // Entries unseen for RECLAIM_AFTER are reused.
        host.region.instances[start].seen_ms.store(0, Ordering::Release);
        assert!(host.instances().claim("svc", "x").shared());
    }

    /// Workers racing: threads claim the same instances at once, in different orders, then
    /// count requests on them. Checked against the model of the table: one entry per
    /// instance, whoever claimed it first; distinct instances in distinct entries; exactly
    /// one key in the table per instance; no count lost; nothing left in flight.
    #[test]
    fn workers_claiming_and_counting_at_once_keep_one_entry_per_instance() {
        const THREADS: usize = 8;
        const INSTANCES: usize = 300;
        const ROUNDS: u64 = 50;
        let host = Host::local(0);
        let barrier = std::sync::Barrier::new(THREADS);
        let claimed: Vec<Vec<usize>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (host, barrier) = (host.for_slot(t), &barrier);
                    s.spawn(move || {
                        let mut order: Vec<usize> = (0..INSTANCES).collect();
                        order.rotate_left(t * INSTANCES / THREADS);
                        if t % 2 == 1 {
                            order.reverse();
                        }
                        barrier.wait();
                        let mut entries: Vec<Option<Entry>> =
                            (0..INSTANCES).map(|_| None).collect();
                        for i in order {
                            entries[i] = Some(
                                host.instances()
                                    .claim("svc", &format!("10.0.{}.{}:80", i / 250, i % 250)),
                            );
                        }
                        let entries: Vec<Entry> = entries.into_iter().map(Option::unwrap).collect();
                        for round in 0..ROUNDS {
                            for e in &entries {
                                e.started();
                                e.answered(round % 5 == 0);
                                e.finished();
                            }
                        }
                        entries
                            .iter()
                            .map(|e| e.fields() as *const InstanceEntry as usize)
                            .collect()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let first = &claimed[0];
        for (t, mine) in claimed.iter().enumerate() {
            assert_eq!(mine, first, "thread {t} holds another entry for some instance");
        }
        let distinct: std::collections::BTreeSet<usize> = first.iter().copied().collect();
        assert_eq!(distinct.len(), INSTANCES, "two instances share an entry");
        for i in 0..INSTANCES {
            let (key, tag) = hashes("svc", &format!("10.0.{}.{}:80", i / 250, i % 250));
            let holders = host
                .region
                .instances
                .iter()
                .filter(|e| {
                    e.key.load(Ordering::Acquire) == key && e.tag.load(Ordering::Acquire) == tag
                })
                .count();
            assert_eq!(holders, 1, "instance {i} has {holders} places in the table");
            let e = host.instances().claim("svc", &format!("10.0.{}.{}:80", i / 250, i % 250));
            assert_eq!(e.active(), 0, "instance {i}: still in flight");
            let want = THREADS as u64 * ROUNDS;
            assert_eq!(
                e.answered_counts(),
                (want, THREADS as u64 * ROUNDS.div_ceil(5)),
                "instance {i}"
            );
        }
    }
}
