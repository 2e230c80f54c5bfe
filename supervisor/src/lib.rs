//! # zkgate supervisor
//!
//! The process half of zkgate: it owns the listening sockets and the worker processes, and
//! nothing else. It knows nothing of HTTP or ZooKeeper; the binary hands it an [`App`] whose
//! [`App::run_worker`] is what a child runs after `fork`.
//!
//! The supervisor is single-threaded and never starts a runtime or a thread: `fork` in a
//! multi-threaded process only copies the calling thread, so keeping this process to one thread
//! is what makes it safe for the child to run arbitrary code after the fork.
//!
//! # Layout
//! - [`slots`]: one set of SO_REUSEPORT listening sockets per worker slot. The supervisor keeps
//!   every slot's sockets open for its whole life so that a dying worker never drops the
//!   connections queued on its socket.
//! - [`spawn`]: `fork`, what the child does before running the worker (signal mask, CPU pinning,
//!   privilege drop), and the control pipe a worker reports readiness and heartbeats on.
//! - [`signals`]: the signalfd the supervisor waits on, and what each signal means.
//! - [`shared`]: the shared memory region mapped before the first fork (the application's layout).
//! - [`notify`]: the systemd `sd_notify` protocol (`READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=`).
//! - [`supervise`]: the event loop and the state of each slot and worker, with one file per
//!   verb: exits and respawn backoff, rolling reload, adding and removing slots, timers (drain
//!   deadlines, hung workers, stop, systemd status).
//!
//! See `supervisor/README.md` for the slot state machine.

#![warn(missing_docs)]

pub mod notify;
pub mod shared;
pub mod signals;
pub mod slots;
pub mod spawn;
pub mod supervise;

use std::net::SocketAddr;
use std::time::Duration;

pub use shared::SharedMemory;

/// Checks that `server.user` / `server.group` exist (for `zkgate check`: a typo must not wait
/// for the first fork to show).
pub fn check_ids(user: Option<&str>, group: Option<&str>) -> Result<(), Error> {
    spawn::resolve_ids(user, group).map(|_| ())
}
pub use spawn::{ControlPipe, WorkerContext};
pub use supervise::run;

/// From a worker: asks its supervisor for a reload (SIGHUP to the parent), the same rolling,
/// zero-loss reload an operator's HUP starts. A worker whose supervisor is gone (it was
/// re-parented) asks nobody.
pub fn request_reload() {
    let parent = nix::unistd::getppid();
    if parent.as_raw() > 1 {
        let _ = nix::sys::signal::kill(parent, nix::sys::signal::Signal::SIGHUP);
    }
}

/// Exit code a worker uses when it cannot start for a reason a respawn will not fix (bad
/// configuration, a resource it cannot open). The supervisor stops respawning that slot instead
/// of crash-looping, as gunicorn does with its exit code 3.
pub const EXIT_FATAL: i32 = 3;

/// What the supervisor needs to know; built by the binary from `gateway.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Addresses to listen on; every slot gets its own SO_REUSEPORT socket for each.
    pub listen: Vec<SocketAddr>,
    /// Number of worker slots (at least 1).
    pub workers: usize,
    /// `listen(2)` backlog of each slot socket.
    pub backlog: i32,
    /// How long a graceful stop (or a worker draining after a reload) may take before KILL.
    pub shutdown_timeout: Duration,
    /// A worker whose heartbeat is older than this is considered hung, killed and respawned.
    pub worker_timeout: Duration,
    /// Pin worker *i* to CPU *i* (modulo the CPUs this process may run on).
    pub cpu_affinity: bool,
    /// Drop workers to this user after the fork (the supervisor keeps its privileges to bind).
    pub user: Option<String>,
    /// Drop workers to this group (defaults to the user's primary group).
    pub group: Option<String>,
}

/// The application the supervisor runs in its workers; implemented by the binary.
pub trait App {
    /// Runs in the child after `fork`, after the signal mask is reset and privileges dropped.
    /// Returns the process exit code ([`EXIT_FATAL`] for errors a respawn will not fix).
    fn run_worker(&self, ctx: WorkerContext) -> i32;

    /// Called on SIGHUP: re-read the configuration. `Err` keeps everything as it is (the error is
    /// logged); `Ok` makes the next workers run the new configuration.
    fn reload(&mut self) -> Result<Settings, String>;

    /// The configuration the current generation runs has failed on this host: a reload's
    /// replacement died (or hung) before it was ready, or a worker of the generation
    /// crash-loops (`why` says which). The application may switch back to a configuration that
    /// worked (zkgate: the fleet release it served before); `true` makes the supervisor reload
    /// to it at once. `false` (the default): nothing to go back to, the usual backoff goes on.
    fn generation_failed(&mut self, _why: &str) -> bool {
        false
    }

    /// A one-line summary for systemd's `STATUS=` (e.g. services and instances configured).
    fn status(&self) -> String {
        String::new()
    }

    /// Bytes of shared memory the application wants mapped before the first fork (0: none).
    fn shared_memory_size(&self) -> usize {
        0
    }

    /// Hands the application its shared memory region, once, before the first fork.
    fn attach_shared(&mut self, _region: SharedMemory) {}

    /// Slot `slot` was removed (TTOU) and its last worker has exited: per-slot figures (the
    /// application's `/workers`, gauges) should stop showing it. A later TTIN may reuse it.
    fn slot_retired(&mut self, _slot: usize) {}

    /// USR2: state the upgraded binary should start with (zkgate: its TLS session-ticket keys,
    /// so tickets issued before the upgrade still resume). It travels through a pipe inherited
    /// by the new binary, never its environment or arguments, and is read once. Empty: nothing.
    /// The format is the application's; a new binary that does not know it ignores it.
    fn handover(&self) -> Vec<u8> {
        Vec::new()
    }

    /// In a binary started by USR2, after [`App::attach_shared`] and before the first fork:
    /// what the previous binary's [`App::handover`] gave (never called with nothing).
    fn adopt_handover(&mut self, _state: &[u8]) {}
}

/// Errors that stop the supervisor from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A slot socket could not be created or bound.
    #[error("cannot listen on {addr}: {cause}")]
    Listen {
        /// The address that failed.
        addr: SocketAddr,
        /// Why.
        cause: std::io::Error,
    },
    /// A system call the supervisor depends on failed.
    #[error("{what}: {cause}")]
    Sys {
        /// What the supervisor was doing.
        what: &'static str,
        /// The errno.
        cause: nix::Error,
    },
    /// An upgrade's hand-over (USR2) cannot be used.
    #[error("upgrade: {0}")]
    Upgrade(String),
    /// `server.user` or `server.group` does not exist.
    #[error("unknown {kind} {name:?}")]
    UnknownId {
        /// "user" or "group".
        kind: &'static str,
        /// The name looked up.
        name: String,
    },
}

/// Shorthand to attach what the supervisor was doing to a nix error.
pub(crate) fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> Error {
    move |cause| Error::Sys { what, cause }
}
