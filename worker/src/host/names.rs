//! The host's service-name table: one row per service, the same index in every worker, for
//! its counters, its `max_requests` counts and its health-check lease.
//!
//! A row is claimed by the first worker that needs the service and released once no worker's
//! route table, and nothing the configuration names, has held the service for a while
//! (`server.service_row_ttl`): a gateway whose registry creates and removes services for months
//! keeps rows for the services it has now, not every name it ever saw. Release needs no
//! request of the service in flight on any worker, and it zeroes the row's counters before
//! the row can be claimed again, so two services never share a row's limits or series.
//!
//! A row's state word is `generation << 2 | state`. The generation grows at each release, so
//! a worker that read a row just before it was released sees the word change and looks again
//! (no ABA); a worker that finds its service's row refreshes the row's `seen_ms` first, and a
//! release re-reads `seen_ms` after taking the row, so one of the two always sees the other.

use std::sync::atomic::Ordering;

use super::region::{clear_service_stats, read_name, Name};
use super::{monotonic_ms, Host, MAX_SERVICES, NAME_LEN};

const FREE: u32 = 0;
const WRITING: u32 = 1;
const READY: u32 = 2;
const RELEASING: u32 = 3;

fn state(word: u32) -> u32 {
    word & 3
}

fn with_state(word: u32, st: u32) -> u32 {
    word & !3 | st
}

/// Whether a row's name is `name` (compared in place: a lookup scans many rows).
fn holds(n: &Name, name: &[u8]) -> bool {
    n.len.load(Ordering::Relaxed) as usize == name.len()
        && n.bytes.iter().zip(name).all(|(b, v)| b.load(Ordering::Relaxed) == *v)
}

/// Whether a name row holds a service (claimed and written).
pub(crate) fn is_ready(n: &Name) -> bool {
    state(n.state.load(Ordering::Acquire)) == READY
}

impl Host {
    /// The index of `service` in the shared name table (claimed on first use): one index per
    /// service in every worker, for counters and leases alike. The last row (`_other`) when the
    /// table is full or the name is longer than a row holds (two names alike in their first
    /// [`NAME_LEN`] bytes would share a row, and its limits).
    pub fn service_index(&self, service: &str) -> usize {
        if service.len() > NAME_LEN {
            return MAX_SERVICES - 1;
        }
        let name = service.as_bytes();
        if let Some(i) = self.find_row(name) {
            return i;
        }
        // Not there: the first free row. Another worker may be claiming the same name in
        // another row at the same moment: both rows stay (a lookup that could not wait for the
        // lower one may have taken the higher, so neither is freed under it), every lookup
        // from now on answers the lower, and the other is released with the service.
        for (i, slot) in self.rows().iter().enumerate() {
            let word = slot.state.load(Ordering::Acquire);
            if state(word) != FREE {
                continue;
            }
            let writing = with_state(word, WRITING);
            if slot
                .state
                .compare_exchange(word, writing, Ordering::SeqCst, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            slot.seen_ms.store(monotonic_ms(), Ordering::SeqCst);
            for (b, v) in slot.bytes.iter().zip(name) {
                b.store(*v, Ordering::Relaxed);
            }
            slot.len.store(name.len() as u32, Ordering::Relaxed);
            slot.state.store(with_state(word, READY), Ordering::SeqCst);
            return self.find_row(name).unwrap_or(i);
        }
        MAX_SERVICES - 1
    }

    /// The row holding `name`, its `seen_ms` refreshed (see the module's notes on release).
    fn find_row(&self, name: &[u8]) -> Option<usize> {
        for (i, slot) in self.rows().iter().enumerate() {
            // A row being written is waited for (microseconds), but not forever: a worker
            // killed while writing leaves it so until a sweep takes it back.
            let mut patience = 100_000;
            loop {
                let word = slot.state.load(Ordering::SeqCst);
                match state(word) {
                    WRITING if patience > 0 => {
                        patience -= 1;
                        std::hint::spin_loop()
                    }
                    READY if holds(slot, name) => {
                        slot.seen_ms.fetch_max(monotonic_ms(), Ordering::SeqCst);
                        if slot.state.load(Ordering::SeqCst) == word {
                            return Some(i);
                        }
                    }
                    _ => break,
                }
            }
        }
        None
    }

    /// The index of `service` in the shared name table, if some worker claimed one.
    pub fn find_service_index(&self, service: &str) -> Option<usize> {
        let name = service.as_bytes();
        self.rows().iter().position(|slot| is_ready(slot) && holds(slot, name))
    }

    /// Every claimed row with its service name, then `_other`'s row: what a scrape lists.
    pub fn service_names(&self, other: &str) -> Vec<(usize, String)> {
        self.rows()
            .iter()
            .enumerate()
            .filter(|(_, n)| is_ready(n))
            .map(|(i, n)| (i, String::from_utf8_lossy(&read_name(n)).into_owned()))
            .chain(std::iter::once((MAX_SERVICES - 1, other.to_string())))
            .collect()
    }

    /// Rows claimed, of the `MAX_SERVICES - 1` services can have.
    pub fn service_rows_used(&self) -> usize {
        self.rows().iter().filter(|n| state(n.state.load(Ordering::Relaxed)) != FREE).count()
    }

    /// Marks the services this worker still has (its route table and what its configuration
    /// names) as seen, and releases rows no worker has marked for `ttl` that have nothing in
    /// flight. Returns the names released. Called from every worker's heartbeat, so `ttl`
    /// spans many marks by every live worker.
    pub fn sweep_service_rows(
        &self,
        in_use: &dyn Fn(&str) -> bool,
        ttl: std::time::Duration,
    ) -> Vec<String> {
        let ttl_ms = ttl.as_millis() as u64;
        let now = monotonic_ms();
        let mut released = Vec::new();
        for (i, slot) in self.rows().iter().enumerate() {
            let word = slot.state.load(Ordering::SeqCst);
            let stale = |s: &Name| s.seen_ms.load(Ordering::SeqCst) + ttl_ms < now;
            if state(word) == WRITING && slot.seen_ms.load(Ordering::SeqCst) != 0 && stale(slot) {
                // Its writer died between claiming and naming it.
                let taking = with_state(word, RELEASING);
                if slot
                    .state
                    .compare_exchange(word, taking, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    self.clear_row(i);
                    self.free(slot, taking);
                }
                continue;
            }
            if state(word) != READY {
                continue;
            }
            // Read into the stack: the sweep runs every second on the request loop.
            let mut bytes = [0u8; NAME_LEN];
            let len = (slot.len.load(Ordering::Relaxed) as usize).min(NAME_LEN);
            for (b, a) in bytes.iter_mut().zip(&slot.bytes[..len]) {
                *b = a.load(Ordering::Relaxed);
            }
            let name = String::from_utf8_lossy(&bytes[..len]);
            if in_use(&name) {
                slot.seen_ms.fetch_max(now, Ordering::SeqCst);
                continue;
            }
            if !stale(slot) || self.in_flight(i) {
                continue;
            }
            let taking = with_state(word, RELEASING);
            if slot
                .state
                .compare_exchange(word, taking, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            // A worker that found the row before it was taken refreshed `seen_ms` first.
            if !stale(slot) || self.in_flight(i) {
                slot.state.store(word, Ordering::SeqCst);
                continue;
            }
            self.clear_row(i);
            self.free(slot, taking);
            released.push(name.into_owned());
        }
        released
    }

    /// Zeroes what row `i` counted: every slot's series, every process's in-flight count, its
    /// health-check lease.
    fn clear_row(&self, i: usize) {
        for w in &self.region.workers {
            clear_service_stats(&w.services[i]);
        }
        for row in &self.region.active {
            row.services[i].store(0, Ordering::Relaxed);
        }
        self.region.leases[i].word.store(0, Ordering::Relaxed);
    }

    /// Gives a row back: its name wiped, the next generation, free.
    fn free(&self, slot: &Name, word: u32) {
        slot.len.store(0, Ordering::Relaxed);
        slot.seen_ms.store(0, Ordering::Relaxed);
        let next = (word >> 2).wrapping_add(1) << 2;
        slot.state.store(with_state(next, FREE), Ordering::SeqCst);
    }

    fn in_flight(&self, i: usize) -> bool {
        self.region.active.iter().any(|row| row.services[i].load(Ordering::SeqCst) != 0)
    }

    /// The rows services may claim (the last is `_other`).
    fn rows(&self) -> &'static [Name] {
        &self.region.names[..MAX_SERVICES - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: std::time::Duration = std::time::Duration::from_secs(120);

    fn age(host: &Host, i: usize) {
        host.region.names[i].seen_ms.store(1, Ordering::SeqCst);
    }

    #[test]
    fn one_row_per_name_in_every_worker() {
        let a = Host::local(0);
        let b = a.for_slot(1);
        let i = a.service_index("web");
        assert_eq!(b.service_index("web"), i);
        assert_ne!(b.service_index("api"), i);
        assert_eq!(a.find_service_index("api"), Some(b.service_index("api")));
        assert_eq!(a.service_index(&"x".repeat(NAME_LEN + 1)), MAX_SERVICES - 1);
        assert_eq!(a.service_rows_used(), 2);
    }

    #[test]
    fn a_service_gone_long_enough_gives_its_row_back_with_its_counters_zeroed() {
        let host = Host::local(0).started();
        let gone = host.service_index("gone");
        host.region.workers[0].services[gone].count.store(7, Ordering::Relaxed);
        let kept = host.service_index("kept");
        let in_use = |s: &str| s == "kept";
        assert!(host.sweep_service_rows(&in_use, TTL).is_empty(), "seen a moment ago");
        age(&host, gone);
        age(&host, kept);
        assert_eq!(host.sweep_service_rows(&in_use, TTL), vec!["gone".to_string()]);
        assert_eq!(host.find_service_index("gone"), None);
        assert_eq!(host.find_service_index("kept"), Some(kept), "in use: kept");
        let next = host.service_index("next");
        assert_eq!(next, gone, "the row is reused");
        assert_eq!(host.region.workers[0].services[next].count.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_row_with_a_request_in_flight_or_just_found_again_is_kept() {
        let host = Host::local(0).started();
        let i = host.service_index("busy");
        age(&host, i);
        host.region.active[host.row].services[i].store(1, Ordering::SeqCst);
        assert!(host.sweep_service_rows(&|_| false, TTL).is_empty(), "a request in flight");
        host.region.active[host.row].services[i].store(0, Ordering::SeqCst);
        // A worker's new table found it again: its seen mark is fresh.
        assert_eq!(host.for_slot(1).service_index("busy"), i);
        assert!(host.sweep_service_rows(&|_| false, TTL).is_empty());
    }

    #[test]
    fn a_row_whose_writer_died_mid_claim_is_skipped_then_taken_back() {
        let host = Host::local(0).started();
        let dead = &host.region.names[0];
        dead.state.store(WRITING, Ordering::SeqCst);
        dead.seen_ms.store(1, Ordering::SeqCst);
        assert_eq!(host.service_index("web"), 1, "not stuck behind row 0");
        assert!(host.sweep_service_rows(&|_| true, TTL).is_empty());
        assert_eq!(state(dead.state.load(Ordering::SeqCst)), FREE);
        assert_eq!(host.service_index("api"), 0);
    }

    #[test]
    fn a_full_table_sends_new_names_to_other_until_a_row_is_released() {
        let host = Host::local(0).started();
        for n in 0..MAX_SERVICES - 1 {
            assert_eq!(host.service_index(&format!("s{n}")), n);
        }
        assert_eq!(host.service_index("late"), MAX_SERVICES - 1);
        age(&host, 5);
        assert_eq!(host.sweep_service_rows(&|s| s != "s5", TTL), vec!["s5".to_string()]);
        assert_eq!(host.service_index("late"), 5);
    }
}
