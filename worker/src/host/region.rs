//! The layout of the shared-memory region and the only `unsafe` of the worker: turning the
//! supervisor's mapping into a typed [`Region`].
//!
//! `#[repr(C)]`, all atomics, zero = empty, so a freshly mapped region is valid as it is and a
//! worker that dies between two stores leaves atomics, never a torn value. The views that
//! interpret it live beside this file (admission, instances, leases) and in the metrics module.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::{Host, ACTIVE_ROWS, BUCKETS, LAG_BUCKETS, MAX_INSTANCES, MAX_SERVICES, MAX_WORKERS};
use super::{MAX_LISTENERS, MAX_ROUTES, MAX_SOURCES, NAME_LEN, RATE_RULES, RATE_SLOTS};

/// A service name in the shared name table.
#[repr(C)]
pub(crate) struct Name {
    /// `generation << 2 | state`; state 0 free, 1 being written, 2 ready, 3 being released
    /// (see `names`).
    pub(crate) state: AtomicU32,
    pub(crate) len: AtomicU32,
    /// CLOCK_MONOTONIC ms when a worker last held the service (in its table or configuration).
    pub(crate) seen_ms: AtomicU64,
    pub(crate) bytes: [AtomicU8; NAME_LEN],
}

/// One worker slot's counters for one service.
#[repr(C)]
pub(crate) struct ServiceStats {
    pub(crate) by_class: [AtomicU64; 5],
    pub(crate) buckets: [AtomicU64; BUCKETS.len()],
    pub(crate) count: AtomicU64,
    pub(crate) sum_micros: AtomicU64,
    /// Requests refused by a `[[rate_limit]]` (429).
    pub(crate) rate_limited: AtomicU64,
    /// Requests refused by `max_requests` (503).
    pub(crate) overloaded: AtomicU64,
    /// Instances this worker keeps in rotation although the registry removed them (removal
    /// guard): a gauge.
    pub(crate) held: AtomicU64,
    /// Request duration as the client sees it (first byte read to answer head sent).
    pub(crate) duration_buckets: [AtomicU64; BUCKETS.len()],
    pub(crate) duration_count: AtomicU64,
    pub(crate) duration_sum_micros: AtomicU64,
    /// Request body bytes received from clients, and answer body bytes sent to them.
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Mirror copies sent to this (shadow) service, skipped (in-flight bound, body too large),
    /// and failed (no answer, error status counts as answered).
    pub(crate) mirrored: AtomicU64,
    pub(crate) mirror_skipped: AtomicU64,
    pub(crate) mirror_failed: AtomicU64,
    /// Requests refused by `allow`/`deny` (403), and answered at the edge by the route itself:
    /// redirects, fixed answers, CORS preflights.
    pub(crate) address_refused: AtomicU64,
    pub(crate) redirected: AtomicU64,
    pub(crate) answered: AtomicU64,
    pub(crate) preflights: AtomicU64,
}

/// One worker slot's counters for one `[[route]]` (by its place in the file).
#[repr(C)]
pub(crate) struct RouteStats {
    /// Requests its `auth` answered 401, 403 and 503, and 400 (credentials presented twice).
    pub(crate) unauthorized: AtomicU64,
    pub(crate) forbidden: AtomicU64,
    pub(crate) auth_unavailable: AtomicU64,
    pub(crate) ambiguous: AtomicU64,
}

/// One worker slot's TLS and tracing counters.
#[repr(C)]
pub(crate) struct EdgeStats {
    /// TLS handshakes completed and failed (a client certificate refused counts as failed).
    pub(crate) tls_handshakes: AtomicU64,
    pub(crate) tls_failures: AtomicU64,
    /// Spans exported, and dropped (queue full, collector down).
    pub(crate) spans_exported: AtomicU64,
    pub(crate) spans_dropped: AtomicU64,
    /// Connections open per listening socket (`listen` then `listen_tls`, in file order).
    pub(crate) listener_connections: [AtomicI64; MAX_LISTENERS],
}

/// One worker process's requests in flight per service (for `max_requests`), claimed by pid:
/// rows of processes that died are cleared by the next worker that starts, so a crash does not
/// leave its requests counted (a reload's old and new worker share a slot, not a row).
#[repr(C)]
pub(crate) struct ActiveRow {
    pub(crate) pid: AtomicU32,
    pub(crate) services: [AtomicI32; MAX_SERVICES],
}

/// One rate-limit bucket: its key's hash (0: free) and GCRA's theoretical arrival time.
#[repr(C)]
pub(crate) struct LimitSlot {
    pub(crate) key: AtomicU64,
    pub(crate) tat: AtomicU64,
}

/// One worker slot's status and counters.
#[repr(C)]
pub(crate) struct WorkerStats {
    pub(crate) pid: AtomicU32,
    pub(crate) generation: AtomicU64,
    pub(crate) started_ms: AtomicU64,
    pub(crate) heartbeat_ms: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) active_connections: AtomicI64,
    /// This worker's session with each registry source.
    pub(crate) zk: [ZkStats; MAX_SOURCES],
    pub(crate) ejections: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) restarts: AtomicU64,
    /// Services and instances in this worker's current route table.
    pub(crate) routed_services: AtomicU64,
    pub(crate) routed_instances: AtomicU64,
    /// 1 once the slot was removed (TTOU) and its last worker exited: its counters still add
    /// to the totals, but it is no longer listed per slot.
    pub(crate) retired: AtomicU32,
    /// Discovery lag: from a znode's mtime to this worker's table swap.
    pub(crate) lag_buckets: [AtomicU64; LAG_BUCKETS.len()],
    pub(crate) lag_count: AtomicU64,
    pub(crate) lag_sum_ms: AtomicU64,
    /// The fleet release this worker serves once ready (`releases::encode`; 0: the file).
    pub(crate) release: AtomicU64,
    pub(crate) services: [ServiceStats; MAX_SERVICES],
    pub(crate) routes: [RouteStats; MAX_ROUTES],
    pub(crate) edge: EdgeStats,
}

/// One worker's session with one registry source.
#[repr(C)]
pub(crate) struct ZkStats {
    /// 0 no ZooKeeper, 1 connected, 2 disconnected, 3 session lost (resyncing).
    pub(crate) state: AtomicU32,
    /// Watches the session holds.
    pub(crate) watches: AtomicU64,
    /// Wall-clock ms when the worker last knew this source's part of its table current.
    pub(crate) synced_ms: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    /// The session's id (0: none yet), as ZooKeeper's `cons` lists it.
    pub(crate) session: AtomicU64,
}

/// What the host knows about one instance of one service, whichever worker learned it.
#[repr(C)]
pub(crate) struct InstanceEntry {
    /// Hash of (service, address); 0 free; the busy bit (the top one) | pid while a worker
    /// (re)initialises the entry.
    pub(crate) key: AtomicU64,
    /// A second, independent hash of the same pair: two pairs whose keys collide differ here.
    pub(crate) tag: AtomicU64,
    /// CLOCK_MONOTONIC ms when a worker's route table last held it (entries not seen for
    /// ten minutes may be reused).
    pub(crate) seen_ms: AtomicU64,
    pub(crate) failures: AtomicU32,
    pub(crate) ejections: AtomicU32,
    /// CLOCK_MONOTONIC ms + 1 until which the instance is ejected; 0 or past: not ejected.
    pub(crate) ejected_until: AtomicU64,
    /// 1: the active health check took it out.
    pub(crate) down: AtomicU32,
    pub(crate) probe_fails: AtomicU32,
    pub(crate) probe_oks: AtomicU32,
    /// 1: removed by the registry, held by the removal guard, then found gone.
    pub(crate) released: AtomicU32,
    /// Requests in flight to it from every worker of the host.
    pub(crate) active: AtomicI64,
    /// Requests sent to it by every worker of the host, and those that failed (connect error,
    /// timeout, reset, 5xx).
    pub(crate) requests: AtomicU64,
    pub(crate) errors: AtomicU64,
}

/// One period's session-ticket key: `tag` is the period + 1 when the key is ready (0: empty),
/// with the busy bit while a worker writes a fresh random key.
#[repr(C)]
pub(crate) struct TicketSlot {
    pub(crate) tag: AtomicU64,
    pub(crate) key: [AtomicU64; 4],
}

/// One health-check lease: which process probes a service for the host, until when — in one
/// word, so taking it over is one compare-and-swap (pid << 40 | CLOCK_MONOTONIC ms).
/// Fleet releases on the host (see `releases`): the one being applied, when it was decided
/// and its pointer flipped, the last apply that reached every worker, and refusals.
#[repr(C)]
pub(crate) struct FleetStats {
    pub(crate) applying: AtomicU64,
    pub(crate) decided_ms: AtomicU64,
    pub(crate) flip_ms: AtomicU64,
    pub(crate) converged: AtomicU64,
    pub(crate) converged_at_ms: AtomicU64,
    pub(crate) apply_ms: AtomicU64,
    pub(crate) convergence_ms: AtomicU64,
    pub(crate) rejections: AtomicU64,
}

#[repr(C)]
pub(crate) struct Lease {
    pub(crate) word: AtomicU64,
}

/// The whole region.
#[repr(C)]
pub(crate) struct Region {
    pub(crate) names: [Name; MAX_SERVICES],
    pub(crate) workers: [WorkerStats; MAX_WORKERS],
    pub(crate) active: [ActiveRow; ACTIVE_ROWS],
    pub(crate) limits: [LimitSlot; RATE_RULES * RATE_SLOTS],
    pub(crate) instances: [InstanceEntry; MAX_INSTANCES],
    /// Each process row's share of [`InstanceEntry::active`], row-major: what a dead process
    /// still counted is taken back out of the totals by the next worker that starts.
    pub(crate) inflight: [[AtomicU32; MAX_INSTANCES]; ACTIVE_ROWS],
    /// Instances that found no place in `instances` (their state stays per worker).
    pub(crate) instance_overflow: AtomicU64,
    /// The key of the rate-limit bucket hash, drawn by the first worker (0: not drawn yet).
    pub(crate) limit_secret: AtomicU64,
    /// TLS session-ticket keys, one slot per period parity (see `tls::tickets`).
    pub(crate) tickets: [TicketSlot; 2],
    /// Health-check leases, by service index.
    pub(crate) leases: [Lease; MAX_SERVICES],
    /// The registry sources' names (labels of the per-source series), and how many there are.
    pub(crate) sources: [Name; MAX_SOURCES],
    pub(crate) source_count: AtomicU32,
    pub(crate) fleet: FleetStats,
}

impl Host {
    /// Bytes the region needs.
    pub const fn size() -> usize {
        std::mem::size_of::<Region>()
    }

    /// A handle on a region mapped by the supervisor.
    ///
    /// # Safety
    /// `ptr` must point to at least [`Host::size`] zero-initialised (or previously written by
    /// this module) bytes, aligned to 8, that stay mapped for the life of the process.
    pub unsafe fn from_raw(ptr: *mut u8, slot: usize) -> Host {
        // SAFETY: guaranteed by the caller; every field is an atomic, for which zero is valid.
        let region = unsafe { &*(ptr as *const Region) };
        Host { region, slot: slot.min(MAX_WORKERS - 1), row: 0 }
    }

    /// A private region for a worker run without a supervisor (and for tests).
    pub fn local(slot: usize) -> Host {
        let layout = std::alloc::Layout::new::<Region>();
        // SAFETY: the layout is non-zero sized; zeroed memory is a valid Region (all atomics);
        // the allocation is leaked on purpose, so it lives as long as the process.
        unsafe {
            let ptr = std::alloc::alloc_zeroed(layout);
            assert!(!ptr.is_null(), "out of memory for the shared region");
            Host::from_raw(ptr, slot)
        }
    }
}

/// Zeroes one slot's counters of one service (a released row, before it is claimed again).
pub(crate) fn clear_service_stats(s: &ServiceStats) {
    const WORDS: usize = std::mem::size_of::<ServiceStats>() / 8;
    const _: () = assert!(std::mem::size_of::<ServiceStats>().is_multiple_of(8));
    // SAFETY: ServiceStats is `repr(C)` and made of AtomicU64 fields and arrays of them only,
    // so it is exactly WORDS AtomicU64s, with their alignment.
    let words =
        unsafe { std::slice::from_raw_parts(s as *const ServiceStats as *const AtomicU64, WORDS) };
    words.iter().for_each(|w| w.store(0, Ordering::Relaxed));
}

pub(crate) fn read_name(n: &Name) -> Vec<u8> {
    let len = (n.len.load(Ordering::Relaxed) as usize).min(NAME_LEN);
    n.bytes[..len].iter().map(|b| b.load(Ordering::Relaxed)).collect()
}

impl WorkerStats {
    /// Whether the slot was removed for good.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed) != 0
    }
}
