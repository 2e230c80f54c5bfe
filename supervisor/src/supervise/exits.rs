//! Worker exits: reaping, telling an expected exit (drain, stop) from a crash, and respawning a
//! crashed slot at once the first time, then with exponential backoff while it crash-loops.

use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{after, Mode, Phase, Supervisor, Worker};
use crate::{App, EXIT_FATAL};

/// A slot that crash-loops waits this long before its second respawn, doubling up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A worker that lived this long resets its slot's backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// This many crashes in a row, each before [`STABLE_AFTER`], and the slot crash-loops: the
/// application is asked whether its configuration can go back to one that worked.
const CRASH_LOOP: u32 = 3;

/// How long to wait before respawning a slot whose worker crashed after living `lived`, given
/// the slot's `failures` so far; returns the delay and the new failure count. The first crash
/// (or one after a stable life) respawns at once; then 100 ms, 200 ms, … up to 10 s.
pub(super) fn respawn_delay(failures: u32, lived: Duration) -> (Duration, u32) {
    let failures = if lived >= STABLE_AFTER { 0 } else { failures };
    let delay = match failures {
        0 => Duration::ZERO,
        n => BACKOFF_BASE.saturating_mul(2u32.saturating_pow(n - 1)).min(BACKOFF_MAX),
    };
    (delay, failures.saturating_add(1))
}

impl<A: App> Supervisor<A> {
    /// Reaps every exited child.
    pub(super) fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.on_exit(pid, Some(code), None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => self.on_exit(pid, None, Some(sig)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }

    fn on_exit(&mut self, pid: Pid, code: Option<i32>, signal: Option<Signal>) {
        let how = match (code, signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (_, Some(s)) => format!("killed by signal {s}"),
            _ => "exited".to_string(),
        };
        if self.upgrading == Some(pid) {
            return self.upgrade_failed(&how);
        }
        let Some(idx) = self.workers.iter().position(|w| w.child.pid == pid) else { return };
        let w = self.workers.swap_remove(idx);
        let lived = w.started.elapsed();
        let removed = self.slots.get(w.slot).is_none_or(|s| s.sockets.is_none());
        if removed && !self.workers.iter().any(|o| o.slot == w.slot) {
            // TTOU (or a stop): the slot is gone for good; its figures stop being reported.
            self.app.slot_retired(w.slot);
        }
        let expected = matches!(w.phase, Phase::Draining { .. } | Phase::Killed { respawn: false })
            || matches!(self.mode, Mode::Stopping { .. });
        if expected {
            log::info!(
                "worker slot {} (pid {pid}) {how} after {:.1}s",
                w.slot,
                lived.as_secs_f64()
            );
            self.forget_removed_slots();
            return;
        }
        log::warn!(
            "worker slot {} (pid {pid}, generation {}) {how} after {:.1}s",
            w.slot,
            w.generation,
            lived.as_secs_f64()
        );
        self.crashed(&w, code, &how);
    }

    /// A worker of a live slot died unexpectedly: stop a roll it was part of, give up on a
    /// slot that cannot start, go back to the configuration that worked when this generation
    /// fails, else respawn (with backoff while it crash-loops).
    fn crashed(&mut self, w: &Worker, code: Option<i32>, how: &str) {
        let slot_idx = w.slot;
        if self.slots[slot_idx].sockets.is_none() {
            return;
        }
        // A reload's replacement that died (or hung, and was killed) before it was ready:
        // the roll stops there.
        let was_incoming = matches!(w.phase, Phase::Starting | Phase::Killed { respawn: true })
            && self.roll == Some(slot_idx)
            && w.generation == self.generation;
        let before_ready =
            || format!("the new worker for slot {slot_idx} {how} before it was ready");
        if code == Some(EXIT_FATAL) {
            log::error!(
                "worker slot {slot_idx}: fatal start-up error (exit code {EXIT_FATAL}); not respawning this slot"
            );
            self.slots[slot_idx].fatal = true;
            if was_incoming {
                self.abort_roll(slot_idx);
                self.revert(before_ready());
            }
            return;
        }
        if was_incoming {
            self.abort_roll(slot_idx);
            if self.revert(before_ready()) {
                return;
            }
        }
        if self.workers.iter().any(|o| o.slot == slot_idx && o.phase.live()) {
            return; // the slot still has a worker (the old one after a failed replacement)
        }
        let slot = &mut self.slots[slot_idx];
        let (delay, failures) = respawn_delay(slot.failures, w.started.elapsed());
        slot.failures = failures;
        if failures >= CRASH_LOOP && w.generation == self.generation {
            let why = format!(
                "worker slot {slot_idx} crashed {failures} times in a row, each within {}s of its start (last: {how})",
                STABLE_AFTER.as_secs()
            );
            if self.revert(why) {
                return;
            }
        }
        if !delay.is_zero() {
            log::warn!(
                "worker slot {slot_idx} is crash-looping: respawn in {}ms",
                delay.as_millis()
            );
        }
        self.schedule_respawn(slot_idx, delay);
        self.on_timers();
    }

    /// The current generation failed (`why`): when the application can go back to a
    /// configuration that worked, reload to it now. Whether it did.
    pub(super) fn revert(&mut self, why: String) -> bool {
        if !matches!(self.mode, Mode::Running) || !self.app.generation_failed(&why) {
            return false;
        }
        log::error!(
            "supervisor: generation {} failed ({why}): going back to the configuration that worked",
            self.generation
        );
        for s in &mut self.slots {
            s.respawn_at = None;
        }
        self.reload();
        true
    }

    /// Respawns `slot` after `delay` (from the loop's timers).
    pub(super) fn schedule_respawn(&mut self, slot: usize, delay: Duration) {
        self.slots[slot].respawn_at = Some(after(delay));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_crash_respawns_at_once_then_backoff_doubles_to_a_cap() {
        let quick = Duration::from_millis(50);
        let mut failures = 0;
        let mut delays = Vec::new();
        for _ in 0..10 {
            let (d, f) = respawn_delay(failures, quick);
            delays.push(d.as_millis());
            failures = f;
        }
        assert_eq!(delays, [0, 100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
    }

    #[test]
    fn a_worker_that_lived_long_enough_resets_the_backoff() {
        assert_eq!(respawn_delay(7, STABLE_AFTER), (Duration::ZERO, 1));
        assert_eq!(respawn_delay(9, STABLE_AFTER - Duration::from_millis(1)).0, BACKOFF_MAX);
        assert_eq!(respawn_delay(u32::MAX, Duration::ZERO).0, BACKOFF_MAX, "no overflow");
    }
}
