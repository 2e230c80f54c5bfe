//! The discovery thread yields to the request loop: it runs under `SCHED_BATCH` at a lower
//! priority (nice +5), so its wake-ups never preempt the thread that serves requests.
//!
//! Why: discovery sleeps most of the time, so under Linux's fair scheduler each ZooKeeper packet
//! that wakes it would preempt whatever runs on that core — often the worker's own request
//! loop, which then waits out the listing and the table build (~0.5 ms per change). `SCHED_BATCH`
//! drops the wake-up preemption; nice +5 weights it at a third of a request loop when both want
//! the core, which still leaves it far more than 100 changes a second need. Threads it starts
//! (zookeeper-client's I/O reactor) inherit both.
#![allow(unsafe_code)]

/// The niceness the discovery thread runs at, relative to the worker.
const NICE: libc::c_int = 5;

/// Lowers the calling thread's priority as above; a failure is logged and changes nothing else.
pub fn yield_to_requests() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscalls on the calling thread (pid 0 / its tid), given integer arguments
    // and a pointer to a local that outlives the call; no memory is shared or retained.
    let (batch, nice) = unsafe {
        let tid = libc::gettid();
        let batch = libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
        let nice = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE);
        (batch, nice)
    };
    if batch != 0 || nice != 0 {
        log::warn!(
            "discovery thread: cannot lower its priority ({}): registry changes may delay requests",
            std::io::Error::last_os_error()
        );
    }
}
