//! What one host's workers share: the memory region the supervisor maps before forking, and
//! the views on it. One module owns the layout ([`region`], with the worker's only `unsafe`);
//! each job reads it through its own view:
//! - the metrics module's `Metrics`: counters and worker status (each worker writes its slot,
//!   a scrape sums them all);
//! - [`admission::Admission`]: `[[rate_limit]]` buckets and `max_requests` in-flight counts;
//! - [`instances::Instances`]: per-instance failures, ejection, health verdict, in-flight
//!   requests and the removal guard's verdicts, host-wide;
//! - [`leases::Leases`]: which worker runs a service's active health checks for the host;
//! - [`names`]: the service-name table those index by, rows released when services go.
//!
//! Fixed capacity, documented by the constants below: beyond [`MAX_SERVICES`] - 1 services at
//! once (rows of services gone are released), the rest count in the last row (`_other`, no
//! shared `max_requests`: such a service counts its limit per worker); slots beyond [`MAX_WORKERS`] share the last slot;
//! instances that find no place among [`MAX_INSTANCES`] keep their state per worker (counted
//! in `zkgate_host_instances_overflow_total`).

pub mod admission;
pub mod instances;
pub mod leases;
pub mod names;
pub(crate) mod region;
pub mod releases;

use std::sync::atomic::Ordering;

use region::Region;

/// Worker slots with their own counters.
pub const MAX_WORKERS: usize = 64;
/// Services with their own counters (the last row is `_other`).
pub const MAX_SERVICES: usize = 1024;
/// Worker processes counted at once (a reload briefly runs two per slot).
pub const ACTIVE_ROWS: usize = 2 * MAX_WORKERS;
/// `[[rate_limit]]` rules with buckets in the shared region.
pub const RATE_RULES: usize = 32;
/// Buckets per rule (keys: client addresses, header values). When every bucket near a new
/// key's place is taken, the one closest to full is reused (see `admission`).
pub const RATE_SLOTS: usize = 4096;
/// Instances (service, address) whose state the host shares. 16 384 entries take 1 MiB, plus
/// 64 KiB per process row of in-flight counts (8 MiB of address space, touched as used).
pub const MAX_INSTANCES: usize = 16_384;
pub(crate) const NAME_LEN: usize = 120;
/// Registry sources (`[[zookeeper]]` entries) with their own series.
pub const MAX_SOURCES: usize = 8;
/// `[[route]]` rules with their own counters (auth refusals); later rules count in the last.
pub const MAX_ROUTES: usize = 128;
/// Listening sockets (`listen` and `listen_tls`) with their own connection gauge.
pub const MAX_LISTENERS: usize = 16;
/// Upper bounds (seconds) of the upstream latency histogram buckets.
pub const BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Upper bounds (seconds) of the discovery lag histogram buckets.
pub const LAG_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// A worker's handle on the region: its slot (where it writes its counters) and its process
/// row (where it counts what it has in flight).
#[derive(Clone, Copy)]
pub struct Host {
    pub(crate) region: &'static Region,
    pub(crate) slot: usize,
    /// This process's row (claimed by [`Host::started`]).
    pub(crate) row: usize,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Host(slot {}, row {})", self.slot, self.row)
    }
}

impl Host {
    /// The host's session-ticket key slots.
    pub(crate) fn ticket_slots(&self) -> &'static [region::TicketSlot; 2] {
        &self.region.tickets
    }

    /// Records this worker's start: claims its process row (clearing the rows of processes
    /// that are gone, so what they counted in flight stops counting).
    pub fn started(mut self) -> Host {
        self.row = self.claim_row();
        self
    }

    /// The rate-limit and `max_requests` view.
    pub fn admission(&self) -> admission::Admission {
        admission::Admission { host: *self }
    }

    /// The host-wide instance state view.
    pub fn instances(&self) -> instances::Instances {
        instances::Instances { host: *self }
    }

    /// The health-check lease view.
    pub fn leases(&self) -> leases::Leases {
        leases::Leases { host: *self }
    }

    /// The fleet release view.
    pub fn releases(&self) -> releases::Releases {
        releases::Releases { host: *self }
    }

    /// A handle on the same region for another slot (as a second worker process has).
    pub fn for_slot(&self, slot: usize) -> Host {
        Host { region: self.region, slot: slot.min(MAX_WORKERS - 1), row: self.row }
    }

    /// Claims this process's row, first clearing rows of processes that are gone: their
    /// `max_requests` counts are zeroed and their share of every instance's in-flight count is
    /// taken back out of the host total.
    fn claim_row(&self) -> usize {
        let me = std::process::id();
        for (i, row) in self.region.active.iter().enumerate() {
            let pid = row.pid.load(Ordering::Acquire);
            if pid != 0 && pid != me && !alive(pid) {
                for s in &row.services {
                    s.store(0, Ordering::Relaxed);
                }
                self.instances().forget_row(i);
                let _ = row.pid.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
        for (i, row) in self.region.active.iter().enumerate() {
            if row.pid.load(Ordering::Relaxed) == me {
                return i;
            }
            if row.pid.compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return i;
            }
        }
        log::warn!(
            "more than {ACTIVE_ROWS} worker processes: this one counts in flight in the last row"
        );
        ACTIVE_ROWS - 1
    }
}

/// Whether process `pid` exists (signal 0 checks without sending).
pub(crate) fn alive(pid: u32) -> bool {
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

/// CLOCK_MONOTONIC in milliseconds, + 1 so that 0 can mean "never".
pub fn monotonic_ms() -> u64 {
    monotonic_ns() / 1_000_000 + 1
}
