//! The supervisor's event loop and the state of every slot and worker.
//!
//! One loop, one thread: `poll` on the signalfd and every worker's control pipe, with a timeout
//! set by the nearest deadline (a respawn after backoff, a draining worker's KILL, a heartbeat
//! check). Every state change happens in this loop, so there is nothing to lock.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::notify::Notifier;
use crate::signals::{self, Command};
use crate::slots::{self, SlotSockets};
use crate::spawn::{self, Ids, Inherited};
use crate::{App, Error, Settings, EXIT_FATAL};

/// A slot that crash-loops waits this long before its second respawn, doubling up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A worker that lived this long resets its slot's backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// After a fast stop (QUIT) workers get this long before KILL.
const FAST_STOP_GRACE: Duration = Duration::from_secs(1);
/// How often systemd's `STATUS=` line is refreshed (when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// Longest `poll` sleep: bounds how late a heartbeat check can be.
const TICK: Duration = Duration::from_millis(250);

/// The part a worker plays in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The slot's serving worker (starting or ready).
    Active,
    /// A reload's replacement, started beside the active worker; promoted when ready.
    Incoming,
    /// Replaced or being stopped: finishing in-flight requests until `deadline`, then KILL.
    Draining { deadline: Instant },
}

#[derive(Debug)]
struct Worker {
    child: spawn::Child,
    slot: usize,
    generation: u64,
    role: Role,
    ready: bool,
    started: Instant,
    last_beat: Instant,
    killed: bool,
}

#[derive(Debug)]
struct Slot {
    /// `None` once the slot was removed (TTOU) — its sockets are closed.
    sockets: Option<SlotSockets>,
    failures: u32,
    respawn_at: Option<Instant>,
    /// The slot's worker exited with [`EXIT_FATAL`]: respawning would not help.
    fatal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping { deadline: Instant, fast: bool },
}

struct Supervisor<A: App> {
    app: A,
    settings: Settings,
    generation: u64,
    slots: Vec<Slot>,
    workers: Vec<Worker>,
    ids: Option<Ids>,
    sigfd: nix::sys::signalfd::SignalFd,
    notifier: Notifier,
    phase: Phase,
    /// During a reload: the next slot to roll.
    roll: Option<usize>,
    /// Whether systemd was told READY=1 for the current generation.
    announced_ready: bool,
    next_watchdog: Option<Instant>,
    /// A BPF program steers connections away from removed slots still draining.
    steering: bool,
    /// When `STATUS=` is next refreshed, and what it said last.
    next_status: Instant,
    last_status: String,
}

/// Runs the supervisor until it is stopped. Returns the process exit code: 0 after a stop by
/// signal, 1 when every slot failed fatally so no worker is left.
pub fn run<A: App>(settings: Settings, mut app: A) -> Result<i32, Error> {
    let sigfd = signals::open()?;
    let shared = app.shared_memory_size();
    if shared > 0 {
        app.attach_shared(crate::SharedMemory::map(shared)?);
    }
    let ids = spawn::resolve_ids(settings.user.as_deref(), settings.group.as_deref())?;
    match slots::tcp_migrate_req() {
        Some(false) => log::warn!(
            "net.ipv4.tcp_migrate_req is 0: zkgate steers connections away from a socket before removing it (TTOU), but a connection caught mid-handshake can still be reset; set it to 1 (see systemd/README.md)"
        ),
        None => log::warn!("this kernel has no net.ipv4.tcp_migrate_req (Linux < 5.14): a TTOU may reset a connection caught mid-handshake"),
        Some(true) => {}
    }
    let mut slots = Vec::with_capacity(settings.workers);
    for _ in 0..settings.workers.max(1) {
        slots.push(Slot::open(&settings)?);
    }
    log::info!(
        "supervisor pid {}: listening on {} with {} workers",
        std::process::id(),
        settings.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
        slots.len()
    );
    let notifier = Notifier::from_env();
    let next_watchdog = notifier.watchdog_interval().map(|_| Instant::now());
    let mut sup = Supervisor {
        app,
        settings,
        generation: 1,
        slots,
        workers: Vec::new(),
        ids,
        sigfd,
        notifier,
        phase: Phase::Running,
        roll: None,
        announced_ready: false,
        next_watchdog,
        steering: false,
        next_status: Instant::now() + STATUS_EVERY,
        last_status: String::new(),
    };
    for i in 0..sup.slots.len() {
        sup.spawn(i, Role::Active);
    }
    Ok(sup.run_loop())
}

impl Slot {
    fn open(settings: &Settings) -> Result<Self, Error> {
        Ok(Slot {
            sockets: Some(SlotSockets::open(&settings.listen, settings.backlog)?),
            failures: 0,
            respawn_at: None,
            fatal: false,
        })
    }
}

impl<A: App> Supervisor<A> {
    fn run_loop(&mut self) -> i32 {
        loop {
            if let Some(code) = self.exit_code() {
                return code;
            }
            let timeout = self.next_deadline().map_or(TICK, |d| d.saturating_duration_since(Instant::now()).min(TICK));
            let (sig_ready, pipes_ready) = self.wait(timeout);
            if sig_ready {
                for cmd in signals::drain(&self.sigfd) {
                    self.on_command(cmd);
                }
            }
            for pid in pipes_ready {
                self.on_control(pid);
            }
            // CHLD can coalesce or arrive before the pipe's EOF; reaping every turn is cheap.
            self.reap();
            self.on_timers();
        }
    }

    /// `poll`s the signalfd and the control pipes. Returns whether a signal is pending and the
    /// pids whose pipes have something to read.
    fn wait(&self, timeout: Duration) -> (bool, Vec<Pid>) {
        let mut pids = Vec::new();
        let mut fds = vec![PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN)];
        for w in &self.workers {
            if let Some(fd) = w.child.control_fd() {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                pids.push(w.child.pid);
            }
        }
        let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::ZERO);
        match nix::poll::poll(&mut fds, ms) {
            Ok(0) | Err(_) => (false, Vec::new()),
            Ok(_) => {
                let readable = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                let sig = readable(&fds[0]);
                let ready = fds[1..].iter().zip(pids).filter(|(f, _)| readable(f)).map(|(_, p)| p).collect();
                (sig, ready)
            }
        }
    }

    fn exit_code(&mut self) -> Option<i32> {
        match self.phase {
            Phase::Stopping { .. } if self.workers.is_empty() => {
                log::info!("supervisor: all workers exited; bye");
                Some(0)
            }
            Phase::Running
                if self.workers.is_empty() && self.slots.iter().filter(|s| s.sockets.is_some()).all(|s| s.fatal) =>
            {
                log::error!("supervisor: every worker slot failed fatally; no worker left, exiting");
                self.notifier.send("STATUS=every worker failed fatally\nERRNO=1");
                Some(1)
            }
            _ => None,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let respawns = self.slots.iter().filter_map(|s| s.respawn_at);
        let drains = self.workers.iter().filter_map(|w| match w.role {
            Role::Draining { deadline } if !w.killed => Some(deadline),
            _ => None,
        });
        let stop = match self.phase {
            Phase::Stopping { deadline, .. } => Some(deadline),
            Phase::Running => None,
        };
        respawns.chain(drains).chain(stop).chain(self.next_watchdog).min()
    }

    fn on_command(&mut self, cmd: Command) {
        match (cmd, self.phase) {
            (Command::Reap, _) => self.reap(),
            (Command::GracefulStop, Phase::Running) => self.stop(false),
            (Command::GracefulStop | Command::FastStop, Phase::Stopping { fast: false, .. }) => self.stop(true),
            (Command::FastStop, Phase::Running) => self.stop(true),
            (_, Phase::Stopping { .. }) => {}
            (Command::Reload, Phase::Running) => self.reload(),
            (Command::AddWorker, Phase::Running) => self.add_slot(),
            (Command::RemoveWorker, Phase::Running) => self.remove_slot(),
        }
    }

    fn spawn(&mut self, slot: usize, role: Role) {
        let Some(sockets) = self.slots[slot].sockets.as_ref() else { return };
        // The child duplicates its own slot's sockets, then closes every descriptor the
        // supervisor owns: other slots' sockets, the signalfd, other workers' pipes.
        let mut close: Vec<RawFd> =
            self.slots.iter().filter_map(|s| s.sockets.as_ref()).flat_map(|s| s.raw_fds()).collect();
        close.push(self.sigfd.as_raw_fd());
        close.extend(self.workers.iter().filter_map(|w| w.child.control_fd()).map(|f| f.as_raw_fd()));
        let inherited = Inherited { own_sockets: sockets.listeners(), close };
        match spawn::spawn_worker(&self.app, slot, self.generation, &self.settings, self.ids.as_ref(), inherited) {
            Ok(child) => {
                log::info!("worker slot {slot} started: pid {} (generation {})", child.pid, self.generation);
                let now = Instant::now();
                self.workers.push(Worker {
                    child,
                    slot,
                    generation: self.generation,
                    role,
                    ready: false,
                    started: now,
                    last_beat: now,
                    killed: false,
                });
                self.slots[slot].respawn_at = None;
            }
            Err(e) => {
                log::error!("worker slot {slot}: cannot fork: {e}");
                self.schedule_respawn(slot, Duration::ZERO);
            }
        }
    }

    fn on_control(&mut self, pid: Pid) {
        let Some(idx) = self.workers.iter().position(|w| w.child.pid == pid) else { return };
        let w = &mut self.workers[idx];
        let Some(fd) = w.child.control_fd() else { return };
        let (ready, beat, eof) = spawn::read_control(fd);
        if beat || ready {
            w.last_beat = Instant::now();
        }
        if eof {
            w.child.control = None;
        }
        if ready && !w.ready {
            w.ready = true;
            let (slot, role) = (w.slot, w.role);
            log::info!("worker slot {slot} (pid {pid}) ready");
            if role == Role::Incoming {
                self.promote(idx);
            }
            self.maybe_announce_ready();
        }
    }

    /// A reload's replacement is ready: it becomes the slot's worker and the old one drains.
    fn promote(&mut self, idx: usize) {
        let slot = self.workers[idx].slot;
        let deadline = Instant::now() + self.settings.shutdown_timeout;
        for w in self.workers.iter_mut().filter(|w| w.slot == slot && w.role == Role::Active) {
            w.role = Role::Draining { deadline };
            log::info!("worker slot {slot} (pid {}) replaced: draining", w.child.pid);
            let _ = kill(w.child.pid, Signal::SIGTERM);
        }
        self.workers[idx].role = Role::Active;
        self.slots[slot].respawn_at = None;
        if self.roll == Some(slot) {
            self.roll = Some(slot + 1);
            self.roll_step();
        }
    }

    fn maybe_announce_ready(&mut self) {
        if self.announced_ready || self.roll.is_some() || !matches!(self.phase, Phase::Running) {
            return;
        }
        let live: Vec<&Slot> = self.slots.iter().filter(|s| s.sockets.is_some() && !s.fatal).collect();
        let ready = (0..self.slots.len())
            .filter(|i| self.slots[*i].sockets.is_some() && !self.slots[*i].fatal)
            .all(|i| self.workers.iter().any(|w| w.slot == i && w.role == Role::Active && w.ready));
        if ready && !live.is_empty() {
            self.announced_ready = true;
            let status = self.status_line();
            log::info!("supervisor: all {} workers ready", live.len());
            self.notifier.send(&format!("READY=1\nSTATUS={status}"));
        }
    }

    fn status_line(&self) -> String {
        let ready = self.workers.iter().filter(|w| w.role == Role::Active && w.ready).count();
        let app = self.app.status();
        let slots = self.slots.iter().filter(|s| s.sockets.is_some()).count();
        if app.is_empty() {
            format!("{ready}/{slots} workers ready")
        } else {
            format!("{ready}/{slots} workers ready; {app}")
        }
    }

    fn reap(&mut self) {
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
        let Some(idx) = self.workers.iter().position(|w| w.child.pid == pid) else { return };
        let w = self.workers.swap_remove(idx);
        let how = match (code, signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (_, Some(s)) => format!("killed by signal {s}"),
            _ => "exited".to_string(),
        };
        let lived = w.started.elapsed();
        let expected = matches!(w.role, Role::Draining { .. }) || matches!(self.phase, Phase::Stopping { .. });
        if expected {
            log::info!("worker slot {} (pid {pid}) {how} after {:.1}s", w.slot, lived.as_secs_f64());
            self.forget_removed_slots();
            return;
        }
        log::warn!(
            "worker slot {} (pid {pid}, generation {}) {how} after {:.1}s",
            w.slot,
            w.generation,
            lived.as_secs_f64()
        );
        let slot_idx = w.slot;
        if self.slots[slot_idx].sockets.is_none() {
            return;
        }
        if code == Some(EXIT_FATAL) {
            log::error!(
                "worker slot {slot_idx}: fatal start-up error (exit code {EXIT_FATAL}); not respawning this slot"
            );
            self.slots[slot_idx].fatal = true;
            if w.role == Role::Incoming {
                self.abort_roll(slot_idx);
            }
            return;
        }
        if w.role == Role::Incoming {
            self.abort_roll(slot_idx);
        }
        let has_active = self.workers.iter().any(|o| o.slot == slot_idx && o.role == Role::Active);
        let has_incoming = self.workers.iter().any(|o| o.slot == slot_idx && o.role == Role::Incoming);
        if has_active || has_incoming {
            return;
        }
        let slot = &mut self.slots[slot_idx];
        if lived >= STABLE_AFTER {
            slot.failures = 0;
        }
        let delay = if slot.failures == 0 {
            Duration::ZERO
        } else {
            (BACKOFF_BASE * 2u32.saturating_pow(slot.failures - 1)).min(BACKOFF_MAX)
        };
        slot.failures = slot.failures.saturating_add(1);
        if !delay.is_zero() {
            log::warn!("worker slot {slot_idx} is crash-looping: respawn in {}ms", delay.as_millis());
        }
        self.schedule_respawn(slot_idx, delay);
        self.on_timers();
    }

    fn schedule_respawn(&mut self, slot: usize, delay: Duration) {
        self.slots[slot].respawn_at = Some(Instant::now() + delay);
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        if matches!(self.phase, Phase::Running) {
            for i in 0..self.slots.len() {
                if self.slots[i].respawn_at.is_some_and(|t| t <= now) {
                    self.slots[i].respawn_at = None;
                    self.spawn(i, Role::Active);
                }
            }
        }
        let timeout = self.settings.worker_timeout;
        for w in self.workers.iter_mut().filter(|w| !w.killed) {
            let overdue = match w.role {
                Role::Draining { deadline } => deadline <= now,
                Role::Active | Role::Incoming => now.duration_since(w.last_beat) > timeout,
            };
            if overdue {
                match w.role {
                    Role::Draining { .. } => log::warn!(
                        "worker slot {} (pid {}) still draining after shutdown_timeout: KILL",
                        w.slot,
                        w.child.pid
                    ),
                    _ => log::error!(
                        "worker slot {} (pid {}) sent no heartbeat for {:.1}s (worker_timeout): KILL and respawn",
                        w.slot,
                        w.child.pid,
                        now.duration_since(w.last_beat).as_secs_f64()
                    ),
                }
                let _ = kill(w.child.pid, Signal::SIGKILL);
                w.killed = true;
            }
        }
        if let Phase::Stopping { deadline, .. } = self.phase {
            if deadline <= now {
                for w in self.workers.iter_mut().filter(|w| !w.killed) {
                    log::warn!("worker slot {} (pid {}) did not stop in time: KILL", w.slot, w.child.pid);
                    let _ = kill(w.child.pid, Signal::SIGKILL);
                    w.killed = true;
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
                self.next_watchdog = self.notifier.watchdog_interval().map(|i| now + i);
            }
        }
    }

    fn stop(&mut self, fast: bool) {
        let grace = if fast { FAST_STOP_GRACE } else { self.settings.shutdown_timeout };
        let signal = if fast { Signal::SIGQUIT } else { Signal::SIGTERM };
        log::info!(
            "supervisor: {} stop of {} workers (up to {:.1}s)",
            if fast { "fast" } else { "graceful" },
            self.workers.len(),
            grace.as_secs_f64()
        );
        self.notifier.send("STOPPING=1");
        self.phase = Phase::Stopping { deadline: Instant::now() + grace, fast };
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

    fn reload(&mut self) {
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
        log::info!("reload: generation {}: rolling {roll_until} workers, {want} in all", self.generation);
        self.roll = Some(0);
        self.roll_step();
    }

    fn live_slots(&self) -> usize {
        self.slots.iter().filter(|s| s.sockets.is_some()).count()
    }

    /// Starts the replacement for the next slot still on an older generation, or ends the roll.
    fn roll_step(&mut self) {
        while let Some(i) = self.roll {
            if i >= self.slots.len() {
                self.roll = None;
                log::info!("reload: generation {} in service on every worker", self.generation);
                self.maybe_announce_ready();
                return;
            }
            let current =
                self.workers.iter().any(|w| w.slot == i && w.role == Role::Active && w.generation == self.generation);
            if self.slots[i].sockets.is_none() || current {
                self.roll = Some(i + 1);
                continue;
            }
            self.spawn(i, Role::Incoming);
            if !self.workers.iter().any(|w| w.slot == i && w.role == Role::Incoming) {
                // fork failed: skip this slot rather than stall the reload
                self.roll = Some(i + 1);
                continue;
            }
            return;
        }
    }

    fn abort_roll(&mut self, slot: usize) {
        log::error!("reload: the new worker for slot {slot} exited before it was ready; remaining workers keep the previous configuration");
        self.roll = None;
        self.announced_ready = false;
        self.maybe_announce_ready();
    }

    fn add_slot(&mut self) {
        match Slot::open(&self.settings) {
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
                log::info!("supervisor: adding worker slot {idx} ({} workers)", self.settings.workers);
                self.spawn(idx, Role::Active);
            }
            Err(e) => log::error!("supervisor: cannot add a worker: {e}"),
        }
    }

    fn remove_slot(&mut self) {
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
        let deadline = Instant::now() + self.settings.shutdown_timeout;
        for w in self.workers.iter_mut().filter(|w| w.slot == idx) {
            w.role = Role::Draining { deadline };
            let _ = kill(w.child.pid, Signal::SIGTERM);
        }
        let slot = &mut self.slots[idx];
        slot.sockets = None;
        slot.respawn_at = None;
        self.settings.workers = self.live_slots();
        log::info!("supervisor: removed worker slot {idx} ({} workers)", self.settings.workers);
        self.forget_removed_slots();
    }

    /// Drops trailing removed slots whose workers are gone, and stops steering once no removed
    /// slot has a worker left (its socket is then closed and out of the group).
    fn forget_removed_slots(&mut self) {
        while self.slots.len() > 1 && self.slots.last().is_some_and(|s| s.sockets.is_none()) {
            let last = self.slots.len() - 1;
            if self.workers.iter().any(|w| w.slot == last) {
                break;
            }
            self.slots.pop();
        }
        let retiring = self.workers.iter().any(|w| self.slots.get(w.slot).is_none_or(|s| s.sockets.is_none()));
        if self.steering && !retiring {
            if let Some(first) = self.slots.iter().find_map(|s| s.sockets.as_ref()) {
                first.clear_steering();
            }
            self.steering = false;
        }
    }
}
