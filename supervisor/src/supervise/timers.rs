//! Deadlines and what they trigger (respawns after backoff, KILL of a worker still draining or
//! silent for `worker_timeout`, the end of a stop), stopping, and what systemd is told.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};

use super::{after, Mode, Phase, Slot, Supervisor};
use crate::App;

/// After a fast stop (QUIT) workers get this long before KILL.
const FAST_STOP_GRACE: Duration = Duration::from_secs(1);
/// How often systemd's `STATUS=` line is refreshed (when it changed).
pub(super) const STATUS_EVERY: Duration = Duration::from_secs(2);

impl<A: App> Supervisor<A> {
    /// Everything due now: respawns, KILLs of overdue workers, systemd status and watchdog.
    pub(super) fn on_timers(&mut self) {
        let now = Instant::now();
        if matches!(self.mode, Mode::Running) {
            for i in 0..self.slots.len() {
                if self.slots[i].respawn_at.is_some_and(|t| t <= now) {
                    self.slots[i].respawn_at = None;
                    self.spawn(i);
                }
            }
        }
        let timeout = self.settings.worker_timeout;
        for w in &mut self.workers {
            let respawn = match w.phase {
                Phase::Draining { deadline } if deadline <= now => {
                    log::warn!(
                        "worker slot {} (pid {}) still draining after shutdown_timeout: KILL",
                        w.slot,
                        w.child.pid
                    );
                    false
                }
                Phase::Starting | Phase::Ready if now.duration_since(w.last_beat) > timeout => {
                    log::error!(
                        "worker slot {} (pid {}) sent no heartbeat for {:.1}s (worker_timeout): KILL and respawn",
                        w.slot,
                        w.child.pid,
                        now.duration_since(w.last_beat).as_secs_f64()
                    );
                    true
                }
                _ => continue,
            };
            let _ = kill(w.child.pid, Signal::SIGKILL);
            w.phase = Phase::Killed { respawn };
        }
        if let Mode::Stopping { deadline, .. } = self.mode {
            if deadline <= now {
                for w in
                    self.workers.iter_mut().filter(|w| !matches!(w.phase, Phase::Killed { .. }))
                {
                    log::warn!(
                        "worker slot {} (pid {}) did not stop in time: KILL",
                        w.slot,
                        w.child.pid
                    );
                    let _ = kill(w.child.pid, Signal::SIGKILL);
                    w.phase = Phase::Killed { respawn: false };
                }
            }
        }
        if self.next_status <= now && self.announced_ready {
            self.next_status = now + STATUS_EVERY;
            let status = self.status_line();
            if status != self.last_status {
                self.notifier.send(&format!("STATUS={status}"));
                self.last_status = status;
            }
        }
        if let Some(at) = self.next_watchdog {
            if at <= now {
                self.notifier.send("WATCHDOG=1");
                self.next_watchdog =
                    self.notifier.watchdog_interval().map(|i| now.checked_add(i).unwrap_or(now));
            }
        }
    }

    /// TERM/INT (graceful) or QUIT (fast): every worker is told, the sockets close.
    pub(super) fn stop(&mut self, fast: bool) {
        let grace = if fast { FAST_STOP_GRACE } else { self.settings.shutdown_timeout };
        let signal = if fast { Signal::SIGQUIT } else { Signal::SIGTERM };
        log::info!(
            "supervisor: {} stop of {} workers (up to {:.1}s)",
            if fast { "fast" } else { "graceful" },
            self.workers.len(),
            grace.as_secs_f64()
        );
        match self.upgrading.take() {
            // Replaced by an upgrade: the service goes on under the new supervisor (its main
            // pid for systemd now), so this is no stop of the service.
            Some(new) => log::info!("supervisor: replaced by pid {new}"),
            None => self.notifier.send("STOPPING=1"),
        }
        self.mode = Mode::Stopping { deadline: after(grace), fast };
        self.roll = None;
        for w in &self.workers {
            let _ = kill(w.child.pid, signal);
        }
        // Workers drain their accept queues before closing their copies; closing ours now means
        // new connections are refused rather than left hanging on a stopping gateway.
        for s in &mut self.slots {
            s.sockets = None;
            s.respawn_at = None;
        }
    }

    /// `READY=1` to systemd once every live slot has a ready worker and no roll is under way.
    pub(super) fn maybe_announce_ready(&mut self) {
        if self.announced_ready || self.roll.is_some() || !matches!(self.mode, Mode::Running) {
            return;
        }
        let live: Vec<&Slot> =
            self.slots.iter().filter(|s| s.sockets.is_some() && !s.fatal).collect();
        let ready = (0..self.slots.len())
            .filter(|i| self.slots[*i].sockets.is_some() && !self.slots[*i].fatal)
            .all(|i| self.workers.iter().any(|w| w.slot == i && w.phase == Phase::Ready));
        if ready && !live.is_empty() {
            self.announced_ready = true;
            let status = self.status_line();
            match live.len() {
                1 => log::info!("supervisor: the worker is ready"),
                n => log::info!("supervisor: all {n} workers ready"),
            }
            self.notifier.send(&format!("READY=1\nSTATUS={status}"));
            self.take_over();
        }
    }

    /// systemd's `STATUS=` line.
    pub(super) fn status_line(&self) -> String {
        let ready = self.workers.iter().filter(|w| w.phase == Phase::Ready).count();
        let app = self.app.status();
        let slots = self.slots.iter().filter(|s| s.sockets.is_some()).count();
        if app.is_empty() {
            format!("{ready}/{slots} workers ready")
        } else {
            format!("{ready}/{slots} workers ready; {app}")
        }
    }
}
