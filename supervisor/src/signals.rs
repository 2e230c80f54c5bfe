//! The signals the supervisor acts on, read synchronously from a signalfd.
//!
//! The signals are blocked and read from a descriptor that `poll` waits on together with the
//! workers' control pipes, so a signal is handled between two steps of the event loop, never in
//! the middle of one (no async-signal-safety traps, no self-pipe).

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::{sys, Error};

/// What a signal asks the supervisor to do (the table in DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// TERM, INT: stop accepting, let in-flight requests finish up to `shutdown_timeout`.
    GracefulStop,
    /// QUIT (or a second TERM/INT): stop now.
    FastStop,
    /// HUP: re-read the configuration and roll the workers one by one.
    Reload,
    /// TTIN: one worker more.
    AddWorker,
    /// TTOU: one worker less (never below one).
    RemoveWorker,
    /// CHLD: reap exited workers.
    Reap,
    /// USR2: exec the binary again (an upgraded one) on the same sockets.
    Upgrade,
}

const HANDLED: [Signal; 8] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGCHLD,
    Signal::SIGUSR2,
];

/// Blocks the handled signals and opens a non-blocking signalfd for them.
pub fn open() -> Result<SignalFd, Error> {
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(sys("sigprocmask"))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(sys("signalfd"))
}

/// Reads every pending signal.
pub fn drain(fd: &SignalFd) -> Vec<Command> {
    let mut out = Vec::new();
    while let Ok(Some(info)) = fd.read_signal() {
        let cmd = match Signal::try_from(info.ssi_signo as i32) {
            Ok(Signal::SIGTERM | Signal::SIGINT) => Command::GracefulStop,
            Ok(Signal::SIGQUIT) => Command::FastStop,
            Ok(Signal::SIGHUP) => Command::Reload,
            Ok(Signal::SIGTTIN) => Command::AddWorker,
            Ok(Signal::SIGTTOU) => Command::RemoveWorker,
            Ok(Signal::SIGCHLD) => Command::Reap,
            Ok(Signal::SIGUSR2) => Command::Upgrade,
            _ => continue,
        };
        out.push(cmd);
    }
    out
}
