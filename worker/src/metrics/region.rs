//! The shared-memory layout and the only `unsafe` of the worker: turning the supervisor's
//! mapping into a typed [`Region`].
//!
//! `#[repr(C)]`, all atomics, zero = empty: a table of service names claimed by
//! compare-and-swap, shared by all workers so one service has one index everywhere; then one
//! [`WorkerStats`] per slot with per-service counters.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::{Metrics, ACTIVE_ROWS, BUCKETS, MAX_SERVICES, MAX_WORKERS, NAME_LEN};
use super::{RATE_RULES, RATE_SLOTS};

#[repr(C)]
pub(super) struct Name {
    /// 0 free, 1 being written, 2 ready.
    pub(super) state: AtomicU32,
    pub(super) len: AtomicU32,
    pub(super) bytes: [AtomicU8; NAME_LEN],
}

#[repr(C)]
pub(super) struct ServiceStats {
    pub(super) by_class: [AtomicU64; 5],
    pub(super) buckets: [AtomicU64; BUCKETS.len()],
    pub(super) count: AtomicU64,
    pub(super) sum_micros: AtomicU64,
    /// Requests refused by a `[[rate_limit]]` (429).
    pub(super) rate_limited: AtomicU64,
    /// Requests refused by `max_requests` (503).
    pub(super) overloaded: AtomicU64,
}

/// One worker process's requests in flight per service (for `max_requests`), claimed by pid:
/// rows of processes that died are cleared by the next worker that starts, so a crash does not
/// leave its requests counted (a reload's old and new worker share a slot, not a row).
#[repr(C)]
pub(super) struct ActiveRow {
    pub(super) pid: AtomicU32,
    pub(super) services: [AtomicI32; MAX_SERVICES],
}

/// One rate-limit bucket: its key's hash (0: free) and GCRA's theoretical arrival time.
#[repr(C)]
pub(super) struct LimitSlot {
    pub(super) key: AtomicU64,
    pub(super) tat: AtomicU64,
}

/// One worker slot's status and counters.
#[repr(C)]
pub struct WorkerStats {
    pub(super) pid: AtomicU32,
    pub(super) generation: AtomicU64,
    pub(super) started_ms: AtomicU64,
    pub(super) heartbeat_ms: AtomicU64,
    pub(super) requests: AtomicU64,
    pub(super) active_connections: AtomicI64,
    /// 0 no ZooKeeper, 1 connected, 2 disconnected, 3 session lost (resyncing).
    pub(super) zk_state: AtomicU32,
    pub(super) zk_events: AtomicU64,
    pub(super) zk_resyncs: AtomicU64,
    pub(super) ejections: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) restarts: AtomicU64,
    /// Services and instances in this worker's current route table.
    pub(super) routed_services: AtomicU64,
    pub(super) routed_instances: AtomicU64,
    /// 1 once the slot was removed (TTOU) and its last worker exited: its counters still add
    /// to the totals, but it is no longer listed per slot.
    pub(super) retired: AtomicU32,
    pub(super) services: [ServiceStats; MAX_SERVICES],
}

/// The whole region.
#[repr(C)]
pub struct Region {
    pub(super) names: [Name; MAX_SERVICES],
    pub(super) workers: [WorkerStats; MAX_WORKERS],
    pub(super) active: [ActiveRow; ACTIVE_ROWS],
    pub(super) limits: [LimitSlot; RATE_RULES * RATE_SLOTS],
}

impl Metrics {
    /// Bytes the region needs.
    pub const fn size() -> usize {
        std::mem::size_of::<Region>()
    }

    /// A handle on a region mapped by the supervisor.
    ///
    /// # Safety
    /// `ptr` must point to at least [`Metrics::size`] zero-initialised (or previously written by
    /// this module) bytes, aligned to 8, that stay mapped for the life of the process.
    pub unsafe fn from_raw(ptr: *mut u8, slot: usize) -> Metrics {
        // SAFETY: guaranteed by the caller; every field is an atomic, for which zero is valid.
        let region = unsafe { &*(ptr as *const Region) };
        Metrics { region, slot: slot.min(MAX_WORKERS - 1), row: 0 }
    }

    /// A private region for a worker run without a supervisor (and for tests).
    pub fn local(slot: usize) -> Metrics {
        let layout = std::alloc::Layout::new::<Region>();
        // SAFETY: the layout is non-zero sized; zeroed memory is a valid Region (all atomics);
        // the allocation is leaked on purpose, so it lives as long as the process.
        unsafe {
            let ptr = std::alloc::alloc_zeroed(layout);
            assert!(!ptr.is_null(), "out of memory for the metrics region");
            Metrics::from_raw(ptr, slot)
        }
    }
}

pub(super) fn read_name(n: &Name) -> Vec<u8> {
    let len = (n.len.load(Ordering::Relaxed) as usize).min(NAME_LEN);
    n.bytes[..len].iter().map(|b| b.load(Ordering::Relaxed)).collect()
}

impl WorkerStats {
    /// Whether the slot was removed for good.
    pub(super) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed) != 0
    }
}
