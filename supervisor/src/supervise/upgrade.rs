//! SIGUSR2: replacing the running binary without refusing a connection (nginx's recipe, with
//! the hand-over automated).
//!
//! The old supervisor forks and execs the binary found at the path it was started from (the
//! new file, once an upgrade replaced it), with the same arguments and every slot's sockets
//! inherited — the same kernel sockets, so their accept queues carry over. The new supervisor
//! adopts them as its slots and starts its workers; once every one is ready it tells systemd
//! `MAINPID=` (its own pid) and sends TERM to the old supervisor, whose workers drain as on
//! any stop. A new binary that fails to start (bad config, crash, wrong listen list) exits, the
//! old supervisor reaps it and keeps serving.
//!
//! The hand-over travels in the environment: [`INHERIT`] lists the slots' descriptors
//! (`fd,fd;fd,fd` — slot by slot, in `listen` order), [`INHERIT_LISTEN`] the addresses they
//! are bound to, [`INHERIT_FROM`] the old supervisor's pid, and [`INHERIT_STATE`] the read
//! end of a pipe holding the application's [`App::handover`] (secrets: a pipe's bytes are gone
//! once read, where the environment can be read in `/proc` for the process's life).

use std::ffi::{CString, OsString};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::unistd::{execv, fork, ForkResult, Pid};

use super::{Mode, Supervisor};
use crate::slots::SlotSockets;
use crate::{App, Error, EXIT_FATAL};

/// The slots' descriptors handed to the new binary.
pub const INHERIT: &str = "ZKGATE_INHERIT";
/// The addresses those descriptors are bound to.
pub const INHERIT_LISTEN: &str = "ZKGATE_INHERIT_LISTEN";
/// The supervisor being replaced.
pub const INHERIT_FROM: &str = "ZKGATE_INHERIT_FROM";
/// The descriptor to read the application's hand-over from.
pub const INHERIT_STATE: &str = "ZKGATE_INHERIT_STATE";

/// The most hand-over bytes carried: what a pipe holds without a reader (the old supervisor
/// writes it all before the new binary starts).
const STATE_MAX: usize = 60 * 1024;

/// What the binary was started as, captured at start: after an upgrade replaced the file,
/// `/proc/self/exe` names the deleted old one, and the path is what must be run.
#[derive(Debug, Clone)]
pub struct Invocation {
    exe: PathBuf,
    args: Vec<OsString>,
}

impl Invocation {
    /// The current process's path and arguments.
    pub fn current() -> Option<Self> {
        let exe = std::env::current_exe().ok()?;
        Some(Invocation { exe, args: std::env::args_os().collect() })
    }
}

/// Sockets inherited from a previous supervisor.
#[derive(Debug)]
pub struct Inherited {
    /// Each slot's sockets.
    pub slots: Vec<SlotSockets>,
    /// The supervisor to stop once this one serves.
    pub from: Pid,
    /// What the previous binary's [`App::handover`] gave (empty: nothing).
    pub state: Vec<u8>,
}

/// Reads the hand-over pipe named by [`INHERIT_STATE`], if any, and closes it. A pipe that
/// cannot be read costs the state, never the upgrade.
fn take_state(spec: Option<String>) -> Vec<u8> {
    let Some(fd) = spec.and_then(|s| s.parse::<RawFd>().ok()).filter(|fd| *fd > 2) else {
        return Vec::new();
    };
    // SAFETY: the previous supervisor created this pipe and handed its read end over by
    // number; nothing else in this process owns it.
    let pipe = unsafe { std::fs::File::from_raw_fd(fd) };
    // Room for all of it at once: a buffer grown while reading would leave copies of the
    // secrets in freed memory, out of `wipe`'s reach.
    let mut state = Vec::with_capacity(STATE_MAX);
    match pipe.take(STATE_MAX as u64).read_to_end(&mut state) {
        Ok(_) => state,
        Err(e) => {
            log::warn!(
                "upgrade: the previous binary's state cannot be read ({e}); starting without it"
            );
            Vec::new()
        }
    }
}

/// Zeroes hand-over bytes once used: secrets leave no copy behind in the heap.
pub(super) fn wipe(state: &mut [u8]) {
    for b in state {
        // SAFETY: `b` is a valid, exclusive reference; volatile so the store is not elided.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

/// A pipe holding `state`, its write end closed: the read end for the new binary.
fn carry(state: &[u8]) -> std::io::Result<OwnedFd> {
    if state.len() > STATE_MAX {
        return Err(std::io::Error::other(format!("{} bytes, over {STATE_MAX}", state.len())));
    }
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    std::fs::File::from(write).write_all(state)?;
    Ok(read)
}

/// Takes the hand-over from the environment, if this process is an upgrade. The variables are
/// removed (workers must not see them). `listen` must be the inherited addresses, in order:
/// sockets cannot be moved to other addresses.
pub fn take_inherited(listen: &[SocketAddr]) -> Result<Option<Inherited>, Error> {
    let Some(spec) = std::env::var_os(INHERIT) else { return Ok(None) };
    let addrs = std::env::var(INHERIT_LISTEN).unwrap_or_default();
    let from = std::env::var(INHERIT_FROM).ok().and_then(|p| p.parse::<i32>().ok());
    let state = take_state(std::env::var(INHERIT_STATE).ok());
    // SAFETY of the environment edit: the supervisor is single-threaded at this point.
    std::env::remove_var(INHERIT);
    std::env::remove_var(INHERIT_LISTEN);
    std::env::remove_var(INHERIT_FROM);
    std::env::remove_var(INHERIT_STATE);
    let bad = |why: String| Error::Upgrade(why);
    let inherited: Vec<SocketAddr> = addrs
        .split(',')
        .filter(|a| !a.is_empty())
        .map(|a| a.parse().map_err(|_| bad(format!("{INHERIT_LISTEN}: bad address {a:?}"))))
        .collect::<Result<_, _>>()?;
    if inherited != listen {
        return Err(bad(format!(
            "the listen addresses changed ({} inherited, {} configured): an upgrade keeps the sockets; restart to change them",
            addrs,
            listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
        )));
    }
    let spec = spec.into_string().map_err(|_| bad(format!("{INHERIT}: not UTF-8")))?;
    let mut slots = Vec::new();
    for slot in spec.split(';').filter(|s| !s.is_empty()) {
        let fds: Vec<RawFd> = slot
            .split(',')
            .map(|f| f.parse().map_err(|_| bad(format!("{INHERIT}: bad descriptor {f:?}"))))
            .collect::<Result<_, _>>()?;
        if fds.len() != listen.len() {
            return Err(bad(format!(
                "{INHERIT}: {} sockets for {} addresses",
                fds.len(),
                listen.len()
            )));
        }
        let sockets = fds
            .into_iter()
            .map(|fd| {
                // SAFETY: the previous supervisor opened these listening sockets and handed
                // them over by number; nothing else in this process owns them.
                let l = unsafe { TcpListener::from_raw_fd(fd) };
                let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
                l
            })
            .collect();
        slots.push(SlotSockets::adopt(sockets));
    }
    let from = from.ok_or_else(|| bad(format!("{INHERIT_FROM} missing")))?;
    if slots.is_empty() {
        return Err(bad(format!("{INHERIT}: no slot")));
    }
    Ok(Some(Inherited { slots, from: Pid::from_raw(from), state }))
}

impl<A: App> Supervisor<A> {
    /// SIGUSR2: starts the binary at the original path with every slot's sockets.
    pub(super) fn upgrade(&mut self) {
        if let Some(pid) = self.upgrading {
            log::warn!("upgrade: the new binary (pid {pid}) is still starting; USR2 ignored");
            return;
        }
        let Some(invocation) = self.invocation.clone() else {
            log::error!("upgrade: the binary's path is unknown; USR2 ignored");
            return;
        };
        let slots: Vec<Vec<RawFd>> =
            self.slots.iter().filter_map(|s| s.sockets.as_ref()).map(|s| s.raw_fds()).collect();
        let spec = slots
            .iter()
            .map(|fds| fds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
            .join(";");
        let listen =
            self.settings.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
        // Everything the child needs is built before the fork.
        let Ok(exe) = CString::new(invocation.exe.clone().into_os_string().into_vec()) else {
            return log::error!("upgrade: the binary's path holds a NUL byte");
        };
        let args: Vec<CString> = invocation
            .args
            .iter()
            .filter_map(|a| CString::new(a.clone().into_vec()).ok())
            .collect();
        let me = std::process::id().to_string();
        let state = self.handover_pipe();
        log::info!(
            "upgrade: starting {} with {} slots' sockets",
            invocation.exe.display(),
            slots.len()
        );
        // SAFETY: the supervisor is single-threaded; the child only edits its own descriptor
        // flags, environment and signal mask, then execs (or exits).
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                for fd in
                    slots.iter().flatten().chain(state.as_ref().map(|s| s.as_raw_fd()).as_ref())
                {
                    let _ = fcntl(*fd, FcntlArg::F_SETFD(FdFlag::empty()));
                }
                let _ = nix::sys::signal::sigprocmask(
                    SigmaskHow::SIG_SETMASK,
                    Some(&SigSet::empty()),
                    None,
                );
                std::env::set_var(INHERIT, &spec);
                std::env::set_var(INHERIT_LISTEN, &listen);
                std::env::set_var(INHERIT_FROM, &me);
                if let Some(state) = &state {
                    std::env::set_var(INHERIT_STATE, state.as_raw_fd().to_string());
                }
                // The new supervisor is systemd's main process once it takes over.
                std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
                let _ = execv(&exe, &args);
                eprintln!("zkgate: upgrade: cannot exec {}", invocation.exe.display());
                std::process::exit(EXIT_FATAL);
            }
            Ok(ForkResult::Parent { child }) => {
                // The new binary holds the pipe's read end now; this copy goes.
                drop(state);
                log::info!("upgrade: new supervisor pid {child} starting");
                self.upgrading = Some(child);
            }
            Err(e) => log::error!("upgrade: cannot fork: {e}"),
        }
    }

    /// The application's hand-over in a pipe for the new binary (`None`: nothing to carry, or
    /// it cannot be carried; the upgrade goes on without it).
    fn handover_pipe(&self) -> Option<OwnedFd> {
        let mut state = self.app.handover();
        if state.is_empty() {
            return None;
        }
        let pipe = carry(&state)
            .map_err(|e| {
                log::warn!("upgrade: the application's state cannot be handed over ({e}); the new binary starts without it")
            })
            .ok();
        wipe(&mut state);
        pipe
    }

    /// The new binary exited before taking over: this supervisor keeps serving.
    pub(super) fn upgrade_failed(&mut self, how: &str) {
        if let Some(pid) = self.upgrading.take() {
            if matches!(self.mode, Mode::Running) {
                log::error!(
                    "upgrade: the new supervisor (pid {pid}) {how} before taking over; still serving with this binary"
                );
            }
        }
    }

    /// Once every worker is ready, an upgraded supervisor takes over from the previous one.
    pub(super) fn take_over(&mut self) {
        let Some(old) = self.inherited_from.take() else { return };
        self.notifier.send(&format!("MAINPID={}", std::process::id()));
        match kill(old, Signal::SIGTERM) {
            Ok(()) => {
                log::info!("upgrade: serving; the previous supervisor (pid {old}) drains and exits")
            }
            Err(e) => log::warn!("upgrade: cannot stop the previous supervisor (pid {old}): {e}"),
        }
    }
}
