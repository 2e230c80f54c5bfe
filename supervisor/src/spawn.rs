//! Forking a worker, and what the child does before it runs the application.
//!
//! The child: resets its signal mask (the supervisor blocks the signals it reads from a
//! signalfd, and a blocked mask survives `fork`), asks the kernel to TERM it if the supervisor
//! dies, closes every descriptor the supervisor owns but its own slot's sockets, optionally pins
//! itself to one CPU, drops privileges, then runs [`crate::App::run_worker`] and exits with its code.
//!
//! A worker talks back over a [`ControlPipe`]: one byte `R` when it is ready (listening, routes
//! loaded), one byte `H` per heartbeat. A pipe, not shared memory, because a dead worker closes it
//! by itself and the supervisor sees EOF.

use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::unistd::{fork, ForkResult, Pid};

use crate::{sys, App, Error};

/// Byte a worker writes when it is ready to serve.
pub(crate) const MSG_READY: u8 = b'R';
/// Byte a worker writes on every heartbeat.
pub(crate) const MSG_HEARTBEAT: u8 = b'H';

/// What a worker process receives from the supervisor.
#[derive(Debug)]
pub struct WorkerContext {
    /// Slot index, 0-based: stable across respawns, so it names the worker in logs and metrics.
    pub slot: usize,
    /// Configuration generation (incremented by each successful reload).
    pub generation: u64,
    /// This slot's sockets (non-blocking), one per `listen` address, in order. A slot added at
    /// runtime hands them over bound but not listening: the worker calls `listen` once it is
    /// ready, which is when the kernel starts sending it connections.
    pub listeners: Vec<TcpListener>,
    /// Another worker serves this slot meanwhile (a reload's replacement): this one must not
    /// accept before it is ready, however long that takes — the old one keeps serving.
    pub replacing: bool,
    /// Where to report readiness and heartbeats.
    pub control: ControlPipe,
}

/// The write end of the pipe a worker reports on. Writes never block: a full pipe means the
/// supervisor is behind on reading, and a dropped heartbeat is harmless.
#[derive(Debug)]
pub struct ControlPipe(OwnedFd);

impl ControlPipe {
    /// Tells the supervisor this worker accepts and routes requests.
    pub fn ready(&self) {
        self.send(MSG_READY);
    }

    /// Tells the supervisor this worker's event loop is alive.
    pub fn heartbeat(&self) {
        self.send(MSG_HEARTBEAT);
    }

    fn send(&self, byte: u8) {
        // EAGAIN (full) and EPIPE (supervisor gone; SIGPIPE is ignored by Rust) are both fine to drop.
        let _ = nix::unistd::write(&self.0, &[byte]);
    }
}

/// The supervisor's view of a live child.
#[derive(Debug)]
pub(crate) struct Child {
    pub pid: Pid,
    /// Read end of the child's control pipe; `None` after EOF.
    pub control: Option<OwnedFd>,
}

/// Everything the child must close: descriptors the supervisor owns.
pub(crate) struct Inherited<'a> {
    pub own_sockets: &'a [TcpListener],
    pub close: Vec<RawFd>,
    /// See [`WorkerContext::replacing`].
    pub replacing: bool,
}

/// Forks a worker for `slot`. Returns the child's pid and its control pipe's read end in the parent;
/// never returns in the child.
pub(crate) fn spawn_worker<A: App>(
    app: &A,
    slot: usize,
    generation: u64,
    settings: &crate::Settings,
    ids: Option<&Ids>,
    inherited: Inherited<'_>,
) -> Result<Child, Error> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(sys("pipe2"))?;
    let supervisor = nix::unistd::getpid();
    // SAFETY: the supervisor is single-threaded (it never starts a thread or a runtime), so the
    // child is a complete copy of the process and may run arbitrary code, allocate included.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Parent { child } => {
            drop(write);
            Ok(Child { pid: child, control: Some(read) })
        }
        ForkResult::Child => {
            drop(read);
            let code = match prepare_child(supervisor, slot, settings, ids, &inherited) {
                Ok(listeners) => {
                    let ctx = WorkerContext {
                        slot,
                        generation,
                        listeners,
                        replacing: inherited.replacing,
                        control: ControlPipe(write),
                    };
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| app.run_worker(ctx)))
                        .unwrap_or(70)
                }
                Err(e) => {
                    log::error!("worker slot {slot}: cannot start: {e}");
                    crate::EXIT_FATAL
                }
            };
            // Never return into the supervisor's loop: this process is a worker.
            std::process::exit(code);
        }
    }
}

/// User and group ids to drop to, resolved once in the supervisor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ids {
    pub uid: nix::unistd::Uid,
    pub gid: nix::unistd::Gid,
}

/// Looks up `server.user` / `server.group`.
pub(crate) fn resolve_ids(user: Option<&str>, group: Option<&str>) -> Result<Option<Ids>, Error> {
    use nix::unistd::{Group, User};
    let Some(user) = user else {
        if let Some(g) = group {
            let grp = Group::from_name(g)
                .map_err(sys("getgrnam"))?
                .ok_or_else(|| Error::UnknownId { kind: "group", name: g.into() })?;
            return Ok(Some(Ids { uid: nix::unistd::getuid(), gid: grp.gid }));
        }
        return Ok(None);
    };
    let u = User::from_name(user)
        .map_err(sys("getpwnam"))?
        .ok_or_else(|| Error::UnknownId { kind: "user", name: user.into() })?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .map_err(sys("getgrnam"))?
                .ok_or_else(|| Error::UnknownId { kind: "group", name: g.into() })?
                .gid
        }
        None => u.gid,
    };
    Ok(Some(Ids { uid: u.uid, gid }))
}

fn prepare_child(
    supervisor: Pid,
    slot: usize,
    settings: &crate::Settings,
    ids: Option<&Ids>,
    inherited: &Inherited<'_>,
) -> Result<Vec<TcpListener>, Error> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(sys("sigprocmask"))?;
    // If the supervisor is killed outright, its workers must not linger holding the port.
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(sys("prctl(PR_SET_PDEATHSIG)"))?;
    if nix::unistd::getppid() != supervisor {
        // The supervisor died between fork and prctl.
        std::process::exit(0);
    }
    let listeners = inherited
        .own_sockets
        .iter()
        .map(TcpListener::try_clone)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Sys {
            what: "dup slot socket",
            cause: nix::Error::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
    for fd in &inherited.close {
        // Closing raw fds the supervisor owns is sound here: their owners are never dropped in
        // the child, which exits without returning into the supervisor's code.
        let _ = nix::unistd::close(*fd);
    }
    if settings.cpu_affinity {
        pin_to_cpu(slot);
    }
    if let Some(ids) = ids {
        drop_privileges(ids)?;
    }
    Ok(listeners)
}

fn pin_to_cpu(slot: usize) {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    let me = Pid::from_raw(0);
    let Ok(allowed) = sched_getaffinity(me) else { return };
    let cpus: Vec<usize> =
        (0..CpuSet::count()).filter(|c| allowed.is_set(*c).unwrap_or(false)).collect();
    if cpus.is_empty() {
        return;
    }
    let cpu = cpus[slot % cpus.len()];
    let mut set = CpuSet::new();
    if set.set(cpu).is_ok() {
        match sched_setaffinity(me, &set) {
            Ok(()) => log::info!("worker slot {slot}: pinned to CPU {cpu}"),
            Err(e) => log::warn!("worker slot {slot}: cannot pin to CPU {cpu}: {e}"),
        }
    }
}

fn drop_privileges(ids: &Ids) -> Result<(), Error> {
    // Order matters: groups first, while we still have the right to change them.
    nix::unistd::setgroups(&[ids.gid]).map_err(sys("setgroups"))?;
    nix::unistd::setgid(ids.gid).map_err(sys("setgid"))?;
    nix::unistd::setuid(ids.uid).map_err(sys("setuid"))?;
    Ok(())
}

/// Reads what a worker wrote on its control pipe. Returns (ready seen, heartbeat seen, eof).
pub(crate) fn read_control(fd: BorrowedFd<'_>) -> (bool, bool, bool) {
    let mut buf = [0u8; 256];
    let (mut ready, mut beat) = (false, false);
    loop {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => return (ready, beat, true),
            Ok(n) => {
                ready |= buf[..n].contains(&MSG_READY);
                beat |= buf[..n].contains(&MSG_HEARTBEAT);
            }
            Err(nix::Error::EINTR) => continue,
            Err(_) => return (ready, beat, false),
        }
    }
}

impl Child {
    /// The control pipe, for `poll`.
    pub fn control_fd(&self) -> Option<BorrowedFd<'_>> {
        self.control.as_ref().map(|f| f.as_fd())
    }
}
