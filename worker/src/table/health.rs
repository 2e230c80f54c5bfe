//! What the host's workers have learned about each instance: consecutive failures, ejection,
//! the active health check's verdict, the removal guard's release and the requests in flight —
//! kept in the host-wide instance table (see `host::instances`), so one worker's finding holds
//! for all of them, and a new worker starts from it.
//!
//! State belongs to an instance *address*, not to its position in a list: when discovery sends
//! a new instance list, a rebuilt service takes the state of every address it already knew
//! (Pingora's `do_update` keeps health by backend hash), so a sibling registering never
//! un-ejects a bad instance nor resets `least_request`'s counts. Everything is atomics, so the
//! request path reads it without a lock.
//!
//! Ejection follows Envoy: after `consecutive_failures` failures an instance is ejected for
//! `base_ejection × times ejected` (capped at `max_ejection`); no more than
//! `max_ejection_percent` of a service is ejected at once (at least one may be); when no
//! instance is available the proxy spreads over all of them (panic mode) rather than answer 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{HealthCheck, OutlierSettings};
use crate::host::instances::{self, Entry, Instances};
use crate::host::monotonic_ms;
use crate::instance::Instance;

/// Milliseconds on a clock every process of the host shares (CLOCK_MONOTONIC), so an ejection
/// deadline one worker writes means the same to all. Tests drive a manual one instead of
/// sleeping.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The host's monotonic clock (never 0, so that 0 can mean "not ejected").
    pub fn system() -> Self {
        Clock(Arc::new(monotonic_ms))
    }

    /// A clock that moves only when the returned cell is advanced (milliseconds).
    pub fn manual() -> (Self, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(1));
        let read = now.clone();
        (Clock(Arc::new(move || read.load(Ordering::Relaxed))), now)
    }

    /// Now, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({}ms)", self.now_ms())
    }
}

/// Where instance state is kept: the host-wide table every worker shares (a worker's normal
/// case), or private memory (a worker without a region, unit tests), and the clock deadlines
/// are read on.
#[derive(Clone, Debug)]
pub struct Tracker {
    clock: Clock,
    host: Option<Instances>,
}

impl Tracker {
    /// State shared by every worker of the host, on the host's clock.
    pub fn host(instances: Instances) -> Self {
        Tracker { clock: Clock::system(), host: Some(instances) }
    }

    /// State private to this process, on `clock`.
    pub fn local(clock: Clock) -> Self {
        Tracker { clock, host: None }
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn entry(&self, service: &str, address: &str) -> Entry {
        match &self.host {
            Some(host) => host.claim(service, address),
            None => instances::own(),
        }
    }
}

/// One instance's state: its (host-wide) entry, and what only this worker counts.
#[derive(Debug)]
pub struct InstanceState {
    entry: Entry,
    /// Requests in flight to this instance from this worker (its connection limit is this
    /// worker's).
    local_active: AtomicUsize,
}

/// Why the removal guard keeps an instance the registry removed, and on what evidence it may
/// take traffic. A removal the registry meant (a status, a drain) is never held; a mass removal
/// is doubt, and doubt serves only on evidence of life (Envoy keeps a host discovery removed
/// only while its active health check passes) or as a last resort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The service has an active health check: the instance is routed while its last probe
    /// passed. Without one it is a *fallback*: used only when no listed instance is routable.
    pub checked: bool,
    /// Why it is held, in words: "3 of 4 removed within 2 s", and a suspected registry fault
    /// when the gateway saw one.
    pub why: Arc<str>,
}

/// Health of one service's instances, index-aligned with its instance list.
#[derive(Debug)]
pub struct ServiceHealth {
    clock: Clock,
    states: Vec<Arc<InstanceState>>,
    /// Instances the registry removed that the removal guard keeps, and on what terms.
    held: Vec<Option<Hold>>,
}

impl ServiceHealth {
    /// State for `service`'s `instances`: an address the previous list (and its health) knew
    /// keeps its state; a new one takes the host's entry (what other workers learned), or a
    /// fresh one. `held`: addresses the removal guard keeps although the registry removed them;
    /// every other instance is listed, so a release from an earlier hold no longer applies.
    pub fn carry(
        service: &str,
        instances: &[Instance],
        previous: Option<(&[Instance], &ServiceHealth)>,
        (tracker, held): (&Tracker, &HashMap<String, Hold>),
    ) -> Self {
        let known: HashMap<&str, &Arc<InstanceState>> = match previous {
            Some((list, health)) => {
                list.iter().map(|i| i.address.as_str()).zip(&health.states).collect()
            }
            None => HashMap::new(),
        };
        let states: Vec<Arc<InstanceState>> = instances
            .iter()
            .map(|i| match known.get(i.address.as_str()) {
                Some(s) => Arc::clone(s),
                None => Arc::new(InstanceState {
                    entry: tracker.entry(service, &i.address),
                    local_active: AtomicUsize::new(0),
                }),
            })
            .collect();
        let held: Vec<Option<Hold>> =
            instances.iter().map(|i| held.get(&i.address).cloned()).collect();
        for (s, held) in states.iter().zip(&held) {
            if held.is_none() {
                s.entry.fields().released.store(0, Ordering::Relaxed);
            }
        }
        ServiceHealth { clock: tracker.clock.clone(), states, held }
    }

    /// Every instance healthy, state private to this process (tests).
    pub fn new(instances: usize, clock: &Clock) -> Self {
        ServiceHealth {
            clock: clock.clone(),
            states: (0..instances)
                .map(|_| {
                    Arc::new(InstanceState {
                        entry: instances::own(),
                        local_active: AtomicUsize::new(0),
                    })
                })
                .collect(),
            held: vec![None; instances],
        }
    }

    fn fields(&self, idx: usize) -> Option<&crate::host::region::InstanceEntry> {
        self.states.get(idx).map(|s| s.entry.fields())
    }

    /// Whether instance `idx` may take traffic now: not ejected, not taken out by the health
    /// check, and — when held by the removal guard — not found gone yet and, for a service
    /// with a health check, its last probe passed (evidence of life). A held instance of a
    /// service without one is available too, but only as a [`fallback`](Self::fallback).
    pub fn available(&self, idx: usize) -> bool {
        let Some(s) = self.fields(idx) else { return false };
        s.down.load(Ordering::Relaxed) == 0
            && s.ejected_until.load(Ordering::Relaxed) <= self.clock.now_ms()
            && !self.released(idx)
            && (!self.hold(idx).is_some_and(|h| h.checked) || self.passing(idx))
    }

    /// Whether `idx`'s last health check probe passed.
    pub fn passing(&self, idx: usize) -> bool {
        self.fields(idx).is_some_and(|s| {
            s.down.load(Ordering::Relaxed) == 0 && s.probe_oks.load(Ordering::Relaxed) > 0
        })
    }

    /// Whether `idx` is ejected now (for `/routes`).
    pub fn ejected(&self, idx: usize) -> bool {
        self.fields(idx)
            .is_some_and(|s| s.ejected_until.load(Ordering::Relaxed) > self.clock.now_ms())
    }

    /// Milliseconds left of `idx`'s ejection (0: not ejected), and how many times it was.
    pub fn ejection(&self, idx: usize) -> (u64, u32) {
        self.fields(idx).map_or((0, 0), |s| {
            let until = s.ejected_until.load(Ordering::Relaxed);
            (until.saturating_sub(self.clock.now_ms()), s.ejections.load(Ordering::Relaxed))
        })
    }

    /// Whether the health check has taken `idx` out.
    pub fn down(&self, idx: usize) -> bool {
        self.fields(idx).is_some_and(|s| s.down.load(Ordering::Relaxed) != 0)
    }

    /// Whether the removal guard holds `idx` (removed by the registry, kept on its terms).
    pub fn held(&self, idx: usize) -> bool {
        self.hold(idx).is_some()
    }

    /// Why and on what terms the removal guard holds `idx`.
    pub fn hold(&self, idx: usize) -> Option<&Hold> {
        self.held.get(idx).and_then(Option::as_ref)
    }

    /// Whether `idx` is held without a health check to vouch for it: the service's last
    /// resort, picked only when no listed instance is routable.
    pub fn fallback(&self, idx: usize) -> bool {
        self.hold(idx).is_some_and(|h| !h.checked)
    }

    /// Whether `idx`, held, was found gone (released: out of rotation).
    pub fn released(&self, idx: usize) -> bool {
        self.held(idx) && self.fields(idx).is_some_and(|s| s.released.load(Ordering::Relaxed) != 0)
    }

    /// Releases held instance `idx`: it proved gone. True for the one caller that released it
    /// (every worker reads the release; one logs it).
    pub fn release(&self, idx: usize) -> bool {
        self.held(idx)
            && self.fields(idx).is_some_and(|s| {
                s.released.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            })
    }

    /// Requests in flight to `idx` from every worker of the host.
    pub fn active(&self, idx: usize) -> usize {
        self.states.get(idx).map_or(0, |s| s.entry.active())
    }

    /// Requests in flight to `idx` from this worker.
    pub fn local_active(&self, idx: usize) -> usize {
        self.states.get(idx).map_or(0, |s| s.local_active.load(Ordering::Relaxed))
    }

    /// Whether `idx`'s state is shared by the host's workers (not an overflow).
    pub fn shared(&self, idx: usize) -> bool {
        self.states.get(idx).is_some_and(|s| s.entry.shared())
    }

    /// A request to `idx` started.
    pub fn started(&self, idx: usize) {
        if let Some(s) = self.states.get(idx) {
            s.local_active.fetch_add(1, Ordering::Relaxed);
            s.entry.started();
        }
    }

    /// A request to `idx` ended (its response body is done or dropped).
    pub fn finished(&self, idx: usize) {
        if let Some(s) = self.states.get(idx) {
            let _ = s
                .local_active
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
            s.entry.finished();
        }
    }

    /// Marks every instance's entry as held by a route table now (keeps it from reuse).
    pub fn touch(&self, now_ms: u64) {
        for s in &self.states {
            s.entry.touch(now_ms);
        }
    }

    /// A request to `idx` was answered, or failed (counted host-wide for `/metrics`).
    pub fn answered(&self, idx: usize, failed: bool) {
        if let Some(s) = self.states.get(idx) {
            s.entry.answered(failed);
        }
    }

    /// Requests sent to `idx` by the host's workers, and those that failed.
    pub fn answered_counts(&self, idx: usize) -> (u64, u64) {
        self.states.get(idx).map_or((0, 0), |s| s.entry.answered_counts())
    }

    /// A request to `idx` succeeded.
    pub fn success(&self, idx: usize) {
        if let Some(s) = self.fields(idx) {
            if s.failures.load(Ordering::Relaxed) != 0 {
                s.failures.store(0, Ordering::Relaxed);
            }
        }
    }

    /// A request to `idx` failed. Failures count host-wide: the `consecutive_failures`-th, from
    /// whichever worker, ejects the instance for every worker at once. Returns how long it is
    /// now ejected for, to the one caller that ejected it.
    pub fn failure(&self, idx: usize, policy: &OutlierSettings) -> Option<Duration> {
        let s = self.fields(idx)?;
        let n = s.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if policy.consecutive_failures == 0 || n < policy.consecutive_failures {
            return None;
        }
        let now = self.clock.now_ms();
        let until = s.ejected_until.load(Ordering::Acquire);
        if until > now {
            return None;
        }
        let total = self.states.len();
        let ejected_now = (0..total).filter(|i| self.ejected(*i)).count();
        let allowed = (total * policy.max_ejection_percent as usize / 100).max(1);
        if ejected_now >= allowed {
            return None;
        }
        let times = s.ejections.load(Ordering::Acquire) + 1;
        let span = policy.base_ejection.saturating_mul(times).min(policy.max_ejection);
        let new = now + span.as_millis() as u64;
        if s.ejected_until
            .compare_exchange(until, new, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None; // another worker ejected it first
        }
        s.ejections.fetch_add(1, Ordering::AcqRel);
        s.failures.store(0, Ordering::Release);
        Some(span)
    }

    /// Records one probe result; returns `Some(true/false)` when the instance changed state.
    /// One worker of the host probes (it holds the lease); every worker reads the verdict.
    pub fn probe(&self, idx: usize, ok: bool, check: &HealthCheck) -> Option<bool> {
        let s = self.fields(idx)?;
        if ok {
            s.probe_fails.store(0, Ordering::Relaxed);
            let n = s.probe_oks.fetch_add(1, Ordering::Relaxed) + 1;
            if s.down.load(Ordering::Relaxed) != 0 && n >= check.healthy {
                s.down.store(0, Ordering::Release);
                return Some(true);
            }
        } else {
            s.probe_oks.store(0, Ordering::Relaxed);
            let n = s.probe_fails.fetch_add(1, Ordering::Relaxed) + 1;
            if s.down.load(Ordering::Relaxed) == 0 && n >= check.unhealthy {
                s.down.store(1, Ordering::Release);
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
