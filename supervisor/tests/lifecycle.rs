//! The supervisor with applications that fail on purpose, in real processes: a fatal worker
//! stops its slot and the supervisor exits non-zero; a crash-looping worker is respawned with
//! backoff, not in a tight loop. The supervisor runs in a forked child so its signal mask and
//! forks stay out of the test harness.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use supervisor::{App, Settings, SharedMemory, WorkerContext, EXIT_FATAL};

/// Counts its workers in shared memory and exits each with `code`.
struct Failing {
    code: i32,
    starts: SharedMemory,
}

impl App for Failing {
    fn run_worker(&self, _ctx: WorkerContext) -> i32 {
        // SAFETY: the region is 8+ bytes, page aligned, shared and never unmapped.
        let words = unsafe { &*(self.starts.as_ptr() as *const [AtomicU64; 17]) };
        let n = words[0].fetch_add(1, Ordering::SeqCst) as usize;
        if n < 16 {
            words[1 + n].store(monotonic_ms(), Ordering::SeqCst);
        }
        self.code
    }

    fn reload(&mut self) -> Result<Settings, String> {
        Err("not in this test".into())
    }
}

fn settings(workers: usize) -> Settings {
    Settings {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        workers,
        backlog: 16,
        shutdown_timeout: Duration::from_secs(2),
        worker_timeout: Duration::from_secs(5),
        cpu_affinity: false,
        user: None,
        group: None,
    }
}

/// Runs a supervisor for `app` in a child process; returns its pid.
fn spawn_supervisor(app: Failing, workers: usize) -> Pid {
    // SAFETY: the child only runs the supervisor (which forks again and exits); it never
    // returns into the test harness.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let code = supervisor::run(settings(workers), app).unwrap_or(99);
            std::process::exit(code);
        }
        ForkResult::Parent { child } => child,
    }
}

fn wait_exit(pid: Pid, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)).unwrap() {
            WaitStatus::Exited(_, code) => return Some(code),
            WaitStatus::Signaled(..) => return Some(-1),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let _ = kill(pid, Signal::SIGKILL);
    let _ = waitpid(pid, None);
    None
}

/// CLOCK_MONOTONIC in milliseconds: the same clock in every process.
fn monotonic_ms() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000
}

/// When each of the first 16 workers started (CLOCK_MONOTONIC ms).
fn start_times(region: &SharedMemory) -> Vec<u64> {
    // SAFETY: as in run_worker.
    let words = unsafe { &*(region.as_ptr() as *const [AtomicU64; 17]) };
    let n = (starts(region) as usize).min(16);
    words[1..=n].iter().map(|w| w.load(Ordering::SeqCst)).collect()
}

fn starts(region: &SharedMemory) -> u64 {
    // SAFETY: as in run_worker.
    unsafe { &*(region.as_ptr() as *const AtomicU64) }.load(Ordering::SeqCst)
}

#[test]
fn fatal_workers_stop_their_slots_and_a_crash_loop_backs_off() {
    // Fatal: each slot's worker starts once, is not respawned, and the supervisor exits 1.
    let region = SharedMemory::map(64).unwrap();
    let pid = spawn_supervisor(Failing { code: EXIT_FATAL, starts: region }, 2);
    assert_eq!(
        wait_exit(pid, Duration::from_secs(10)),
        Some(1),
        "the supervisor exits 1 with no worker left"
    );
    assert_eq!(starts(&region), 2, "a fatal slot is not respawned");

    // Crash loop: respawns after 0, 100, 200, 400, 800 ms … — each wait twice the last, so a
    // crashing worker costs a handful of starts, not thousands.
    let region = SharedMemory::map(4096).unwrap();
    let pid = spawn_supervisor(Failing { code: 1, starts: region }, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while starts(&region) < 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(pid, Signal::SIGTERM).unwrap();
    assert_eq!(
        wait_exit(pid, Duration::from_secs(10)),
        Some(0),
        "TERM stops a crash-looping supervisor cleanly"
    );
    let times = start_times(&region);
    assert!(times.len() >= 6, "{} starts in 15 s", times.len());
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).take(5).collect();
    // The first respawn comes at once; from the second on, each wait at least doubles
    // (minus scheduling slack) and the fifth is at least 800 ms.
    for k in 2..gaps.len() {
        assert!(gaps[k] * 10 >= gaps[k - 1] * 18, "waits between starts: {gaps:?} ms");
    }
    assert!(gaps[4] >= 750, "waits between starts: {gaps:?} ms");
}

/// An application whose configuration the test picks for each reload (word 0: 0 good, 1 its
/// workers die before they are ready, 2 they crash soon after), and which can go back to the
/// good one when the supervisor says the generation failed. Words: 1 = reverts, 2 = why the
/// last revert (1 died before ready, 2 crash loop), 3 = good workers ready, 4 = bad starts.
struct Reverting {
    mode: u64,
    words: SharedMemory,
}

impl Reverting {
    fn words(&self) -> &[AtomicU64; 8] {
        // SAFETY: the region is 64+ bytes, page aligned, shared and never unmapped.
        unsafe { &*(self.words.as_ptr() as *const [AtomicU64; 8]) }
    }
}

impl App for Reverting {
    fn run_worker(&self, ctx: WorkerContext) -> i32 {
        let words = self.words();
        match self.mode {
            0 => {
                ctx.control.ready();
                words[3].fetch_add(1, Ordering::SeqCst);
                loop {
                    ctx.control.heartbeat();
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            1 => {
                words[4].fetch_add(1, Ordering::SeqCst);
                1
            }
            _ => {
                words[4].fetch_add(1, Ordering::SeqCst);
                ctx.control.ready();
                std::thread::sleep(Duration::from_millis(100));
                1
            }
        }
    }

    fn reload(&mut self) -> Result<Settings, String> {
        self.mode = self.words()[0].swap(0, Ordering::SeqCst);
        Ok(settings(2))
    }

    fn generation_failed(&mut self, why: &str) -> bool {
        let words = self.words();
        words[1].fetch_add(1, Ordering::SeqCst);
        let kind = if why.contains("before it was ready") { 1 } else { 2 };
        words[2].store(kind, Ordering::SeqCst);
        self.mode = 0;
        true
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_generation_that_fails_goes_back_to_the_configuration_that_worked() {
    let region = SharedMemory::map(64).unwrap();
    let app = Reverting { mode: 0, words: region };
    // SAFETY: as in run_worker.
    let words = unsafe { &*(region.as_ptr() as *const [AtomicU64; 8]) };
    // SAFETY: as in spawn_supervisor.
    let pid = match unsafe { fork() }.unwrap() {
        ForkResult::Child => std::process::exit(supervisor::run(settings(2), app).unwrap_or(99)),
        ForkResult::Parent { child } => child,
    };
    let read = |i: usize| words[i].load(Ordering::SeqCst);
    wait_for("two good workers", || read(3) == 2);

    // A reload whose first replacement dies before it is ready: the roll stops and the
    // application is asked once; it goes back, and the good configuration rolls on both slots.
    words[0].store(1, Ordering::SeqCst);
    kill(pid, Signal::SIGHUP).unwrap();
    wait_for("the revert after a replacement died", || read(1) == 1);
    assert_eq!(read(2), 1, "the reason says it died before it was ready");
    wait_for("the good configuration on both slots again", || read(3) == 4);
    assert_eq!(read(4), 1, "one bad worker only: the roll stopped at the first");

    // A reload whose workers are ready, then crash: after three crashes in a row of one slot
    // the application goes back, and the crashes stop.
    words[0].store(2, Ordering::SeqCst);
    kill(pid, Signal::SIGHUP).unwrap();
    wait_for("the revert after a crash loop", || read(1) == 2);
    assert_eq!(read(2), 2, "the reason says crash loop");
    wait_for("the good configuration on both slots again", || read(3) == 6);
    let bad = read(4);
    assert!((4..=8).contains(&bad), "{bad} bad starts: three on one slot, a few on the other");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(read(4), bad, "no bad worker starts once reverted");
    assert_eq!(read(3), 6, "the good workers stay");
    kill(pid, Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(pid, Duration::from_secs(10)), Some(0));
}
