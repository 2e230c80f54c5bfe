//! Health-check leases: one process per host probes a service's instances and the others read
//! the verdicts it writes to the instance table, so the probe count does not grow with the
//! worker count. The holder renews its lease with every round; a holder that dies or hangs
//! stops renewing, and the first worker to look after the lease ran out takes it over.

use std::sync::atomic::Ordering;

use super::{alive, monotonic_ms, Host, MAX_SERVICES};

/// The lease view.
#[derive(Debug, Clone, Copy)]
pub struct Leases {
    pub(super) host: Host,
}

const MS_BITS: u32 = 40;
const MS_MASK: u64 = (1 << MS_BITS) - 1;

fn pack(pid: u32, until_ms: u64) -> u64 {
    (u64::from(pid) << MS_BITS) | (until_ms & MS_MASK)
}

fn unpack(word: u64) -> (u32, u64) {
    ((word >> MS_BITS) as u32, word & MS_MASK)
}

impl Leases {
    /// Whether this process holds the lease of service `idx` (a metrics service index) for
    /// the next `hold_ms`: renewed when it held it, taken when it was free, ran out, or its
    /// holder is gone.
    pub fn hold(&self, idx: usize, hold_ms: u64) -> bool {
        let lease = &self.host.region.leases[idx.min(MAX_SERVICES - 1)];
        let me = std::process::id();
        let now = monotonic_ms();
        let word = lease.word.load(Ordering::Acquire);
        let (holder, until) = unpack(word);
        let mine = holder == me;
        let free = holder == 0 || until <= now || !alive(holder);
        (mine || free)
            && lease
                .word
                .compare_exchange(
                    word,
                    pack(me, now + hold_ms),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// The process holding service `idx`'s lease now, if any.
    pub fn holder(&self, idx: usize) -> Option<u32> {
        let lease = &self.host.region.leases[idx.min(MAX_SERVICES - 1)];
        let (pid, until) = unpack(lease.word.load(Ordering::Acquire));
        (pid != 0 && until > monotonic_ms()).then_some(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_held_renewed_and_taken_over_once_it_runs_out() {
        let host = Host::local(0);
        let leases = host.leases();
        assert!(leases.hold(3, 50), "free: taken");
        assert!(leases.hold(3, 50), "renewed by its holder");
        assert_eq!(leases.holder(3), Some(std::process::id()));
        // Another process holds it (pid 1 is alive, never us): not ours until it runs out.
        let lease = &host.region.leases[3];
        lease.word.store(pack(1, monotonic_ms() + 60_000), Ordering::Release);
        assert!(!leases.hold(3, 50));
        assert_eq!(leases.holder(3), Some(1));
        lease.word.store(pack(1, monotonic_ms() - 1), Ordering::Release);
        assert!(leases.hold(3, 50), "ran out: taken over");
        // A holder that is gone (no such pid) loses it at once.
        lease.word.store(pack(4_000_000, monotonic_ms() + 60_000), Ordering::Release);
        assert!(leases.hold(3, 50), "dead holder: taken over");
    }
}
