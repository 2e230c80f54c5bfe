//! TTIN / TTOU: one worker slot more or less. A new slot gets its own SO_REUSEPORT sockets; a
//! leaving slot first has new connections steered away from its socket (a reuseport BPF
//! program), then its worker takes what is queued and drains.

use nix::sys::signal::{kill, Signal};

use super::{after, Phase, Slot, Supervisor};
use crate::App;

impl<A: App> Supervisor<A> {
    /// TTIN: a new slot (its own sockets) and its worker.
    pub(super) fn add_slot(&mut self) {
        match Slot::open(&self.settings, false) {
            Ok(slot) => {
                // Reuse a removed slot's index so slot numbers stay dense.
                let idx = match self.slots.iter().position(|s| s.sockets.is_none()) {
                    Some(i) if !self.workers.iter().any(|w| w.slot == i) => {
                        self.slots[i] = slot;
                        i
                    }
                    _ => {
                        self.slots.push(slot);
                        self.slots.len() - 1
                    }
                };
                self.settings.workers = self.live_slots();
                log::info!(
                    "supervisor: adding worker slot {idx} ({} workers)",
                    self.settings.workers
                );
                self.spawn(idx);
            }
            Err(e) => log::error!("supervisor: cannot add a worker: {e}"),
        }
    }

    /// TTOU: the last slot leaves (never the only one); its worker drains.
    pub(super) fn remove_slot(&mut self) {
        if self.live_slots() <= 1 {
            log::warn!("supervisor: TTOU ignored: at least one worker must run");
            return;
        }
        let Some(idx) = self.slots.iter().rposition(|s| s.sockets.is_some()) else { return };
        // Steer new connections away from the leaving socket first (it is the last one of its
        // reuseport groups), so that once its worker has taken its queue nothing new lands on it.
        let keep = self.live_slots() - 1;
        if let Some(first) = self.slots.iter().find_map(|s| s.sockets.as_ref()) {
            match first.steer_to_first(keep) {
                Ok(()) => self.steering = true,
                Err(e) => log::warn!(
                    "supervisor: cannot steer connections away from slot {idx} ({e}); its queue may be reset"
                ),
            }
        }
        let deadline = after(self.settings.shutdown_timeout);
        for w in self.workers.iter_mut().filter(|w| w.slot == idx) {
            w.phase = Phase::Draining { deadline };
            let _ = kill(w.child.pid, Signal::SIGTERM);
        }
        let slot = &mut self.slots[idx];
        slot.sockets = None;
        slot.respawn_at = None;
        self.settings.workers = self.live_slots();
        log::info!("supervisor: removed worker slot {idx} ({} workers)", self.settings.workers);
        self.forget_removed_slots();
    }

    /// Slots that have sockets (not removed).
    pub(super) fn live_slots(&self) -> usize {
        self.slots.iter().filter(|s| s.sockets.is_some()).count()
    }

    /// Drops trailing removed slots whose workers are gone, and stops steering once no removed
    /// slot has a worker left (its socket is then closed and out of the group).
    pub(super) fn forget_removed_slots(&mut self) {
        while self.slots.len() > 1 && self.slots.last().is_some_and(|s| s.sockets.is_none()) {
            let last = self.slots.len() - 1;
            if self.workers.iter().any(|w| w.slot == last) {
                break;
            }
            self.slots.pop();
        }
        let retiring =
            self.workers.iter().any(|w| self.slots.get(w.slot).is_none_or(|s| s.sockets.is_none()));
        if self.steering && !retiring {
            if let Some(first) = self.slots.iter().find_map(|s| s.sockets.as_ref()) {
                first.clear_steering();
            }
            self.steering = false;
        }
    }
}
