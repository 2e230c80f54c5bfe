//! The supervisor's event loop and the state of every slot and worker.
//!
//! One loop, one thread: `poll` on the signalfd and every worker's control pipe, with a timeout
//! set by the nearest deadline (a respawn after backoff, a draining worker's KILL, a heartbeat
//! check). Every state change happens in this loop, so there is nothing to lock.
//!
//! This file holds the state and the loop; each verb has its own file:
//! - [`exits`]: reaping, respawn with backoff ([`exits::respawn_delay`], a pure function).
//! - [`reload`]: SIGHUP, the slot-by-slot roll, promotion of a ready replacement.
//! - [`scale`]: TTIN / TTOU, adding and removing slots.
//! - [`timers`]: deadlines (drain KILL, hung workers, stop), readiness and systemd status.
//! - [`upgrade`]: USR2, exec of the new binary on the same sockets, and its take-over.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

use crate::notify::Notifier;
use crate::signals::{self, Command};
use crate::slots::{self, SlotSockets};
use crate::spawn::{self, Ids, Inherited};
use crate::{App, Error, Settings};

mod exits;
mod reload;
mod scale;
mod timers;
mod upgrade;

/// Longest `poll` sleep: bounds how late a heartbeat check can be.
const TICK: Duration = Duration::from_millis(250);

/// `d` from now; a duration too large for the clock (config bounds prevent it) means "never"
/// rather than a panic in the supervisor.
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

/// Where a worker is in its life; `supervisor/README.md` draws the same machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Forked, not ready yet (routes loading). During a reload the replacement starts here
    /// beside the slot's ready worker.
    Starting,
    /// Serving; it said so on its control pipe.
    Ready,
    /// Replaced, removed or stopping: finishing in-flight requests until `deadline`, then KILL.
    Draining { deadline: Instant },
    /// KILL sent. `respawn`: the slot needs a new worker (it hung), as opposed to the end of a
    /// drain or a stop.
    Killed { respawn: bool },
}

impl Phase {
    /// Starting or ready: the worker is (or will be) its slot's server.
    fn live(self) -> bool {
        matches!(self, Phase::Starting | Phase::Ready)
    }
}

#[derive(Debug)]
struct Worker {
    child: spawn::Child,
    slot: usize,
    generation: u64,
    phase: Phase,
    started: Instant,
    last_beat: Instant,
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

/// The supervisor's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
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
    mode: Mode,
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
    /// How this binary was started (what USR2 runs again).
    invocation: Option<upgrade::Invocation>,
    /// USR2: the new supervisor, until it takes over or fails.
    upgrading: Option<Pid>,
    /// Started by USR2: the supervisor to stop once every worker here is ready.
    inherited_from: Option<Pid>,
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
        Some(false) => log::info!(
            "net.ipv4.tcp_migrate_req is 0: zkgate steers connections away from a socket before removing it (TTOU), but a connection caught mid-handshake can still be reset; set it to 1 (see systemd/README.md)"
        ),
        None => log::info!("this kernel has no net.ipv4.tcp_migrate_req (Linux < 5.14): a TTOU may reset a connection caught mid-handshake"),
        Some(true) => {}
    }
    let invocation = upgrade::Invocation::current();
    let inherited = upgrade::take_inherited(&settings.listen)?;
    let mut slots = Vec::with_capacity(settings.workers);
    let inherited_from = match inherited {
        // An upgrade: the previous supervisor's slots, with their queues.
        Some(mut inherited) => {
            if !inherited.state.is_empty() {
                app.adopt_handover(&inherited.state);
                upgrade::wipe(&mut inherited.state);
            }
            slots.extend(inherited.slots.into_iter().map(Slot::adopt));
            Some(inherited.from)
        }
        None => {
            slots::SlotSockets::ensure_unused(&settings.listen)?;
            for _ in 0..settings.workers.max(1) {
                slots.push(Slot::open(&settings, true)?);
            }
            None
        }
    };
    log::info!(
        "supervisor pid {}: listening on {} with {} worker{}{}",
        std::process::id(),
        settings.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
        slots.len(),
        if slots.len() == 1 { "" } else { "s" },
        inherited_from.map_or(String::new(), |p| format!(
            " (upgrade from pid {p}: its sockets; server.workers applies on the next HUP)"
        ))
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
        mode: Mode::Running,
        roll: None,
        announced_ready: false,
        next_watchdog,
        steering: false,
        next_status: Instant::now() + timers::STATUS_EVERY,
        last_status: String::new(),
        invocation,
        upgrading: None,
        inherited_from,
    };
    for i in 0..sup.slots.len() {
        sup.spawn(i);
    }
    Ok(sup.run_loop())
}

impl Slot {
    /// A slot on sockets inherited from the previous supervisor.
    fn adopt(sockets: SlotSockets) -> Self {
        Slot { sockets: Some(sockets), failures: 0, respawn_at: None, fatal: false }
    }

    /// A slot's sockets; `listen` as in [`SlotSockets::open`].
    fn open(settings: &Settings, listen: bool) -> Result<Self, Error> {
        Ok(Slot {
            sockets: Some(SlotSockets::open(&settings.listen, settings.backlog, listen)?),
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
            let timeout = self
                .next_deadline()
                .map_or(TICK, |d| d.saturating_duration_since(Instant::now()).min(TICK));
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
        let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::ZERO);
        match nix::poll::poll(&mut fds, ms) {
            Ok(0) | Err(_) => (false, Vec::new()),
            Ok(_) => {
                let readable = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                let sig = readable(&fds[0]);
                let ready = fds[1..]
                    .iter()
                    .zip(pids)
                    .filter(|(f, _)| readable(f))
                    .map(|(_, p)| p)
                    .collect();
                (sig, ready)
            }
        }
    }

    fn exit_code(&mut self) -> Option<i32> {
        match self.mode {
            Mode::Stopping { .. } if self.workers.is_empty() => {
                log::info!("supervisor: all workers exited; bye");
                Some(0)
            }
            Mode::Running
                if self.workers.is_empty()
                    && self.slots.iter().filter(|s| s.sockets.is_some()).all(|s| s.fatal) =>
            {
                log::error!(
                    "supervisor: every worker slot failed fatally; no worker left, exiting"
                );
                self.notifier.send("STATUS=every worker failed fatally\nERRNO=1");
                Some(1)
            }
            _ => None,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let respawns = self.slots.iter().filter_map(|s| s.respawn_at);
        let drains = self.workers.iter().filter_map(|w| match w.phase {
            Phase::Draining { deadline } => Some(deadline),
            _ => None,
        });
        let stop = match self.mode {
            Mode::Stopping { deadline, .. } => Some(deadline),
            Mode::Running => None,
        };
        respawns.chain(drains).chain(stop).chain(self.next_watchdog).min()
    }

    fn on_command(&mut self, cmd: Command) {
        match (cmd, self.mode) {
            (Command::Reap, _) => self.reap(),
            (Command::GracefulStop, Mode::Running) => self.stop(false),
            (Command::GracefulStop | Command::FastStop, Mode::Stopping { fast: false, .. }) => {
                self.stop(true)
            }
            (Command::FastStop, Mode::Running) => self.stop(true),
            (_, Mode::Stopping { .. }) => {}
            (Command::Reload, Mode::Running) => self.reload(),
            (Command::AddWorker, Mode::Running) => self.add_slot(),
            (Command::RemoveWorker, Mode::Running) => self.remove_slot(),
            (Command::Upgrade, Mode::Running) => self.upgrade(),
        }
    }

    /// Forks a worker for `slot` on the current generation; it starts in [`Phase::Starting`].
    fn spawn(&mut self, slot: usize) {
        let Some(sockets) = self.slots[slot].sockets.as_ref() else { return };
        // The child duplicates its own slot's sockets, then closes every descriptor the
        // supervisor owns: other slots' sockets, the signalfd, other workers' pipes.
        let mut close: Vec<RawFd> = self
            .slots
            .iter()
            .filter_map(|s| s.sockets.as_ref())
            .flat_map(|s| s.raw_fds())
            .collect();
        close.push(self.sigfd.as_raw_fd());
        close.extend(
            self.workers.iter().filter_map(|w| w.child.control_fd()).map(|f| f.as_raw_fd()),
        );
        let replacing = self.workers.iter().any(|w| w.slot == slot && w.phase == Phase::Ready);
        let inherited = Inherited { own_sockets: sockets.listeners(), close, replacing };
        match spawn::spawn_worker(
            &self.app,
            slot,
            self.generation,
            &self.settings,
            self.ids.as_ref(),
            inherited,
        ) {
            Ok(child) => {
                log::info!(
                    "worker slot {slot} started: pid {} (generation {})",
                    child.pid,
                    self.generation
                );
                let now = Instant::now();
                self.workers.push(Worker {
                    child,
                    slot,
                    generation: self.generation,
                    phase: Phase::Starting,
                    started: now,
                    last_beat: now,
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
        if ready && w.phase == Phase::Starting {
            w.phase = Phase::Ready;
            log::info!("worker slot {} (pid {pid}) ready", w.slot);
            self.promote(idx);
            self.maybe_announce_ready();
        }
    }
}
