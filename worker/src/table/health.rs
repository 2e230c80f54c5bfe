//! What a worker has learned about each instance: consecutive failures, ejection, the active
//! health check's verdict and the requests in flight.
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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{HealthCheck, OutlierSettings};
use crate::table::instance::Instance;

/// Milliseconds on a monotonic clock, shared by every table a worker builds so that carried
/// ejection deadlines keep their meaning. Tests drive a manual one instead of sleeping.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The real clock, counting from now.
    pub fn system() -> Self {
        let epoch = Instant::now();
        // +1 so that 0 can mean "not ejected".
        Clock(Arc::new(move || epoch.elapsed().as_millis() as u64 + 1))
    }

    /// A clock that moves only when the returned cell is advanced (milliseconds).
    pub fn manual() -> (Self, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(1));
        let read = now.clone();
        (Clock(Arc::new(move || read.load(Ordering::Relaxed))), now)
    }

    fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({}ms)", self.now_ms())
    }
}

/// One instance's state.
#[derive(Debug, Default)]
pub struct InstanceState {
    failures: AtomicU32,
    ejections: AtomicU32,
    /// Clock milliseconds; 0 = not ejected.
    ejected_until: AtomicU64,
    /// Taken out by the active health check.
    down: AtomicBool,
    probe_fails: AtomicU32,
    probe_oks: AtomicU32,
    /// Requests in flight to this instance from this worker.
    active: AtomicUsize,
}

/// Health of one service's instances, index-aligned with its instance list.
#[derive(Debug)]
pub struct ServiceHealth {
    clock: Clock,
    states: Vec<Arc<InstanceState>>,
}

impl ServiceHealth {
    /// State for `instances`: an address the previous list (and its health) knew keeps its
    /// state, a new one starts healthy.
    pub fn carry(
        instances: &[Instance],
        previous: Option<(&[Instance], &ServiceHealth)>,
        clock: &Clock,
    ) -> Self {
        let known: HashMap<&str, &Arc<InstanceState>> = match previous {
            Some((list, health)) => {
                list.iter().map(|i| i.address.as_str()).zip(&health.states).collect()
            }
            None => HashMap::new(),
        };
        let states = instances
            .iter()
            .map(|i| known.get(i.address.as_str()).map_or_else(Default::default, |s| Arc::clone(s)))
            .collect();
        ServiceHealth { clock: clock.clone(), states }
    }

    /// Every instance healthy.
    pub fn new(instances: usize, clock: &Clock) -> Self {
        ServiceHealth {
            clock: clock.clone(),
            states: (0..instances).map(|_| Default::default()).collect(),
        }
    }

    /// Whether instance `idx` may take traffic now.
    pub fn available(&self, idx: usize) -> bool {
        let Some(s) = self.states.get(idx) else { return false };
        !s.down.load(Ordering::Relaxed)
            && s.ejected_until.load(Ordering::Relaxed) <= self.clock.now_ms()
    }

    /// Whether `idx` is ejected now (for `/routes`).
    pub fn ejected(&self, idx: usize) -> bool {
        self.states
            .get(idx)
            .is_some_and(|s| s.ejected_until.load(Ordering::Relaxed) > self.clock.now_ms())
    }

    /// Whether the health check has taken `idx` out.
    pub fn down(&self, idx: usize) -> bool {
        self.states.get(idx).is_some_and(|s| s.down.load(Ordering::Relaxed))
    }

    /// Requests in flight to `idx` from this worker.
    pub fn active(&self, idx: usize) -> usize {
        self.states.get(idx).map_or(0, |s| s.active.load(Ordering::Relaxed))
    }

    /// A request to `idx` started.
    pub fn started(&self, idx: usize) {
        if let Some(s) = self.states.get(idx) {
            s.active.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request to `idx` ended (its response body is done or dropped).
    pub fn finished(&self, idx: usize) {
        if let Some(s) = self.states.get(idx) {
            let _ =
                s.active.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }

    /// A request to `idx` succeeded.
    pub fn success(&self, idx: usize) {
        if let Some(s) = self.states.get(idx) {
            if s.failures.load(Ordering::Relaxed) != 0 {
                s.failures.store(0, Ordering::Relaxed);
            }
        }
    }

    /// A request to `idx` failed. Returns how long it is now ejected for, if it was ejected.
    pub fn failure(&self, idx: usize, policy: &OutlierSettings) -> Option<Duration> {
        let s = self.states.get(idx)?;
        let n = s.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if policy.consecutive_failures == 0 || n < policy.consecutive_failures || self.ejected(idx)
        {
            return None;
        }
        let total = self.states.len();
        let ejected_now = (0..total).filter(|i| self.ejected(*i)).count();
        let allowed = (total * policy.max_ejection_percent as usize / 100).max(1);
        if ejected_now >= allowed {
            return None;
        }
        let times = s.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let span = policy.base_ejection.saturating_mul(times).min(policy.max_ejection);
        s.ejected_until.store(self.clock.now_ms() + span.as_millis() as u64, Ordering::Relaxed);
        s.failures.store(0, Ordering::Relaxed);
        Some(span)
    }

    /// Records one probe result; returns `Some(true/false)` when the instance changed state.
    pub fn probe(&self, idx: usize, ok: bool, check: &HealthCheck) -> Option<bool> {
        let s = self.states.get(idx)?;
        if ok {
            s.probe_fails.store(0, Ordering::Relaxed);
            let n = s.probe_oks.fetch_add(1, Ordering::Relaxed) + 1;
            if s.down.load(Ordering::Relaxed) && n >= check.healthy {
                s.down.store(false, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            s.probe_oks.store(0, Ordering::Relaxed);
            let n = s.probe_fails.fetch_add(1, Ordering::Relaxed) + 1;
            if !s.down.load(Ordering::Relaxed) && n >= check.unhealthy {
                s.down.store(true, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierSettings {
        OutlierSettings {
            consecutive_failures: 3,
            base_ejection: Duration::from_millis(50),
            ..Default::default()
        }
    }

    #[test]
    fn consecutive_failures_eject_and_ejection_grows_then_expires() {
        let (clock, now) = Clock::manual();
        let h = ServiceHealth::new(4, &clock);
        assert_eq!(h.failure(0, &policy()), None);
        h.success(0);
        assert_eq!(h.failure(0, &policy()), None);
        assert_eq!(h.failure(0, &policy()), None);
        assert_eq!(h.failure(0, &policy()), Some(Duration::from_millis(50)));
        assert!(!h.available(0) && h.ejected(0));
        now.fetch_add(49, Ordering::Relaxed);
        assert!(h.ejected(0), "still ejected 1 ms before the end");
        now.fetch_add(1, Ordering::Relaxed);
        assert!(h.available(0), "ejection expires");
        for _ in 0..2 {
            assert_eq!(h.failure(0, &policy()), None);
        }
        assert_eq!(
            h.failure(0, &policy()),
            Some(Duration::from_millis(100)),
            "second ejection is longer"
        );
    }

    #[test]
    fn never_more_than_max_ejection_percent_but_at_least_one() {
        let (clock, _) = Clock::manual();
        let h = ServiceHealth::new(4, &clock);
        let mut ejected = 0;
        for idx in 0..4 {
            for _ in 0..3 {
                if h.failure(idx, &policy()).is_some() {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 2, "50% of 4");
        let single = ServiceHealth::new(1, &clock);
        let n = (0..3).filter_map(|_| single.failure(0, &policy())).count();
        assert_eq!(n, 1);
    }

    #[test]
    fn probes_take_an_instance_out_and_back() {
        let (clock, _) = Clock::manual();
        let h = ServiceHealth::new(1, &clock);
        let c = HealthCheck { path: "/h".into(), healthy: 2, unhealthy: 3, ..Default::default() };
        assert_eq!(h.probe(0, false, &c), None);
        assert_eq!(h.probe(0, false, &c), None);
        assert_eq!(h.probe(0, false, &c), Some(false));
        assert!(!h.available(0));
        assert_eq!(h.probe(0, true, &c), None);
        assert_eq!(h.probe(0, true, &c), Some(true));
        assert!(h.available(0));
    }

    #[test]
    fn state_follows_the_address_when_the_list_changes() {
        let (clock, _) = Clock::manual();
        let before = vec![Instance::new("10.0.0.1:80"), Instance::new("10.0.0.3:80")];
        let h = ServiceHealth::new(2, &clock);
        for _ in 0..3 {
            h.failure(1, &policy());
        }
        h.started(0);
        assert!(h.ejected(1));
        // A sibling registers between the two: positions shift, state must not.
        let after = vec![
            Instance::new("10.0.0.1:80"),
            Instance::new("10.0.0.2:80"),
            Instance::new("10.0.0.3:80"),
        ];
        let carried = ServiceHealth::carry(&after, Some((&before, &h)), &clock);
        assert!(carried.ejected(2), "10.0.0.3 stays ejected");
        assert!(!carried.ejected(1), "the newcomer starts healthy");
        assert_eq!(carried.active(0), 1, "in-flight count of 10.0.0.1 kept");
        carried.finished(0);
        assert_eq!(h.active(0), 0, "old and new table share the state");
    }
}
