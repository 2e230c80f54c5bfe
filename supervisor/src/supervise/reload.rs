//! SIGHUP: re-read the configuration and roll the workers one slot at a time — a replacement
//! starts on the slot's socket beside the serving worker, and only once it is ready does the old
//! one drain, so the slot never stops accepting.

use nix::sys::signal::{kill, Signal};

use super::{after, Phase, Supervisor, Worker};
use crate::App;

impl<A: App> Supervisor<A> {
    /// Applies a new configuration, or keeps the running one when it is invalid.
    pub(super) fn reload(&mut self) {
        log::info!("supervisor: SIGHUP: reloading configuration");
        self.notifier.reloading();
        let new = match self.app.reload() {
            Ok(new) => new,
            Err(e) => {
                log::error!("reload failed, keeping the running configuration: {e}");
                self.notifier.send(&format!("READY=1\nSTATUS=reload failed: {e}"));
                return;
            }
        };
        if new.listen != self.settings.listen || new.backlog != self.settings.backlog {
            log::warn!(
                "reload: server.listen and server.backlog take effect on restart only; keeping the current sockets"
            );
        }
        if new.user != self.settings.user || new.group != self.settings.group {
            log::warn!("reload: server.user and server.group take effect on restart only");
        }
        let want = new.workers.max(1);
        // Sockets and ids were set up at start; everything else takes the new values.
        let old = std::mem::replace(&mut self.settings, new);
        self.settings.listen = old.listen;
        self.settings.backlog = old.backlog;
        self.settings.user = old.user;
        self.settings.group = old.group;
        self.generation += 1;
        self.announced_ready = false;
        // Slots marked fatal get another chance with the new configuration.
        for s in &mut self.slots {
            s.fatal = false;
            s.failures = 0;
        }
        let old_count = self.live_slots();
        while self.live_slots() > want {
            self.remove_slot();
        }
        // Existing slots roll one by one; slots added now start directly on the new generation.
        let roll_until = self.live_slots().min(old_count);
        while self.live_slots() < want {
            self.add_slot();
        }
        log::info!(
            "reload: generation {}: rolling {roll_until} workers, {want} in all",
            self.generation
        );
        self.roll = Some(0);
        self.roll_step();
    }

    /// Starts the replacement for the next slot still on an older generation, or ends the roll.
    pub(super) fn roll_step(&mut self) {
        while let Some(i) = self.roll {
            if i >= self.slots.len() {
                self.roll = None;
                log::info!("reload: generation {} in service on every worker", self.generation);
                self.maybe_announce_ready();
                return;
            }
            let current = self
                .workers
                .iter()
                .any(|w| w.slot == i && w.phase.live() && w.generation == self.generation);
            if self.slots[i].sockets.is_none() || current {
                self.roll = Some(i + 1);
                continue;
            }
            self.spawn(i);
            let started = self
                .workers
                .iter()
                .any(|w| w.slot == i && w.phase.live() && w.generation == self.generation);
            if !started {
                // fork failed: skip this slot rather than stall the reload
                self.roll = Some(i + 1);
                continue;
            }
            return;
        }
    }

    /// A replacement died before it was ready: the roll stops, the rest keep the old generation.
    pub(super) fn abort_roll(&mut self, slot: usize) {
        log::error!("reload: the new worker for slot {slot} exited before it was ready; remaining workers keep the previous configuration");
        self.roll = None;
        self.announced_ready = false;
        self.maybe_announce_ready();
    }

    /// Worker `idx` just became ready: it is its slot's server now. Older-generation workers of
    /// the slot (a reload's predecessor) drain; the roll moves on to the next slot.
    pub(super) fn promote(&mut self, idx: usize) {
        let (slot, generation) = (self.workers[idx].slot, self.workers[idx].generation);
        let deadline = after(self.settings.shutdown_timeout);
        let older = |w: &&mut Worker| w.slot == slot && w.phase.live() && w.generation < generation;
        for w in self.workers.iter_mut().filter(older) {
            w.phase = Phase::Draining { deadline };
            log::info!("worker slot {slot} (pid {}) replaced: draining", w.child.pid);
            let _ = kill(w.child.pid, Signal::SIGTERM);
        }
        self.slots[slot].respawn_at = None;
        if self.roll == Some(slot) && generation == self.generation {
            self.roll = Some(slot + 1);
            self.roll_step();
        }
    }
}
