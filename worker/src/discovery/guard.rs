//! The removal guard: one listing that removes most of a service at once is more often a
//! registry fault (a bad deploy, a script deleting znodes, a resync reading a half-written
//! subtree) than a fleet dying at once, and taking every removed instance out would send all the
//! traffic to the few left. So when one listing removes more than `removal_guard` percent of a
//! service's instances, the removed ones stay in rotation, *held*, until each proves gone — its
//! first connect failure or failed health check releases it (see `table::health`) — or
//! `removal_hold` passes. Smaller removals apply at once. Envoy keeps a host discovery removed
//! while it passes active checks; Finagle's stabilizer dampens removals; this ties a mass
//! removal to evidence. Pure: times are passed in, so unit tests drive it directly.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::table::Instance;

/// One held instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// The instance as last listed.
    pub instance: Instance,
    /// When the hold ends (ms on the builder's clock).
    pub until_ms: u64,
}

/// Removals close together count as one change: a script deleting znodes one by one, or a
/// resync applied in several listings, removes a service's instances in a burst.
pub const BURST: Duration = Duration::from_secs(10);

/// The removals of one burst: how many instances the service had before it, and which of them
/// are gone so far.
#[derive(Debug)]
struct Burst {
    started_ms: u64,
    base: usize,
    removed: Vec<Instance>,
}

/// Held instances per service.
#[derive(Debug, Default)]
pub struct RemovalGuard {
    /// Percent of a service one change may remove before the guard holds the removed ones.
    guard: u32,
    hold: Duration,
    held: HashMap<String, Vec<Held>>,
    bursts: HashMap<String, Burst>,
}

impl RemovalGuard {
    /// A guard holding removals of more than `guard` percent for at most `hold`.
    pub fn new(guard: u32, hold: Duration) -> Self {
        RemovalGuard { guard, hold, held: HashMap::new(), bursts: HashMap::new() }
    }

    /// `service`'s listing went from `before` to `after`. Instances listed again are no longer
    /// held; when this listing removes more than the guard's share of `before`, the removed
    /// ones are held. Returns the log lines.
    pub fn listed(
        &mut self,
        service: &str,
        before: &[Instance],
        after: &[Instance],
        now_ms: u64,
    ) -> Vec<String> {
        let mut log = Vec::new();
        let listed: HashSet<&str> = after.iter().map(|i| i.address.as_str()).collect();
        if let Some(held) = self.held.get_mut(service) {
            held.retain(|h| {
                let back = listed.contains(h.instance.address.as_str());
                if back {
                    log.push(format!(
                        "service {service}: held instance {} is listed again",
                        h.instance.address
                    ));
                }
                !back
            });
        }
        if self.guard >= 100 {
            return log;
        }
        // The burst this change belongs to: removals within BURST of the first add up. A burst
        // starts with a removal, counted against the instances there were just before it.
        let removes = before.iter().any(|i| !listed.contains(i.address.as_str()));
        let fresh = self
            .bursts
            .get(service)
            .is_none_or(|b| now_ms.saturating_sub(b.started_ms) > BURST.as_millis() as u64);
        if fresh && !removes {
            self.bursts.remove(service);
            self.tidy(service);
            return log;
        }
        if fresh {
            let burst = Burst { started_ms: now_ms, base: before.len(), removed: Vec::new() };
            self.bursts.insert(service.to_string(), burst);
        }
        let burst = self.bursts.get_mut(service).expect("inserted above");
        burst.removed.retain(|i| !listed.contains(i.address.as_str()));
        for i in before.iter().filter(|i| !listed.contains(i.address.as_str())) {
            if !burst.removed.iter().any(|r| r.address == i.address) {
                burst.removed.push(i.clone());
            }
        }
        if burst.base == 0 || burst.removed.len() * 100 <= burst.base * self.guard as usize {
            self.tidy(service);
            return log;
        }
        let held = self.held.entry(service.to_string()).or_default();
        let new: Vec<&Instance> = burst
            .removed
            .iter()
            .filter(|i| !held.iter().any(|h| h.instance.address == i.address))
            .collect();
        if !new.is_empty() {
            let until_ms = now_ms + self.hold.as_millis() as u64;
            let names: Vec<&str> = new.iter().map(|i| i.address.as_str()).collect();
            log.push(format!(
                "service {service}: the registry removed {} of {} instances within {}s (more than removal_guard {}%); holding {} in rotation until each proves gone or removal_hold ({}) passes",
                burst.removed.len(),
                burst.base,
                BURST.as_secs(),
                self.guard,
                names.join(" "),
                humanize(self.hold)
            ));
            held.extend(new.into_iter().map(|i| Held { instance: i.clone(), until_ms }));
        }
        self.tidy(service);
        log
    }

    fn tidy(&mut self, service: &str) {
        if self.held.get(service).is_some_and(Vec::is_empty) {
            self.held.remove(service);
        }
    }

    /// The instances `service` holds.
    pub fn held(&self, service: &str) -> &[Held] {
        self.held.get(service).map_or(&[], Vec::as_slice)
    }

    /// Every held address of `service`.
    pub fn held_addresses(&self, service: &str) -> HashSet<String> {
        self.held(service).iter().map(|h| h.instance.address.clone()).collect()
    }

    /// Ends the holds that ran out by `now_ms`; returns the log lines and the services changed.
    pub fn expire(&mut self, now_ms: u64) -> (Vec<String>, HashSet<String>) {
        let (mut log, mut changed) = (Vec::new(), HashSet::new());
        for (service, held) in &mut self.held {
            held.retain(|h| {
                let over = h.until_ms <= now_ms;
                if over {
                    log.push(format!(
                        "service {service}: held instance {} released: removal_hold ({}) passed",
                        h.instance.address,
                        humanize(self.hold)
                    ));
                    changed.insert(service.clone());
                }
                !over
            });
        }
        self.held.retain(|_, h| !h.is_empty());
        (log, changed)
    }

    /// The services holding instances.
    pub fn services(&self) -> impl Iterator<Item = &String> {
        self.held.keys()
    }

    /// When the next hold ends.
    pub fn next_deadline(&self) -> Option<u64> {
        self.held.values().flatten().map(|h| h.until_ms).min()
    }
}

/// `60s`, `1500ms`: how the configuration writes durations.
fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(addrs: &[&str]) -> Vec<Instance> {
        addrs.iter().map(|a| Instance::new(*a)).collect()
    }

    const LATER: u64 = BURST.as_millis() as u64 + 1;

    #[test]
    fn a_mass_removal_is_held_and_a_small_one_is_not() {
        let mut g = RemovalGuard::new(50, Duration::from_secs(60));
        let four = list(&["a:1", "b:1", "c:1", "d:1"]);
        assert!(g.listed("s", &four, &list(&["a:1", "b:1"]), 0).is_empty(), "50% is not more");
        assert!(g.held("s").is_empty());
        // Another burst: 3 of 4 at once.
        let log = g.listed("s", &four, &list(&["d:1"]), LATER);
        assert_eq!(log.len(), 1, "{log:?}");
        assert!(log[0].contains("removed 3 of 4") && log[0].contains("a:1 b:1 c:1"), "{log:?}");
        assert_eq!(g.held_addresses("s"), ["a:1", "b:1", "c:1"].map(String::from).into());
        assert_eq!(g.next_deadline(), Some(LATER + 60_000));
        // One comes back: no longer held.
        g.listed("s", &list(&["d:1"]), &list(&["b:1", "d:1"]), LATER + 1);
        assert_eq!(g.held_addresses("s"), ["a:1", "c:1"].map(String::from).into());
        let (log, changed) = g.expire(LATER + 59_999);
        assert!(log.is_empty() && changed.is_empty());
        let (log, changed) = g.expire(LATER + 60_000);
        assert_eq!(log.len(), 2);
        assert!(changed.contains("s"));
        assert!(g.held("s").is_empty() && g.next_deadline().is_none());
    }

    #[test]
    fn removals_one_by_one_add_up_within_a_burst_and_not_beyond() {
        let mut g = RemovalGuard::new(50, Duration::from_secs(60));
        let mut now = list(&["a:1", "b:1", "c:1", "d:1"]);
        for (t, gone) in ["a:1", "b:1", "c:1"].iter().enumerate() {
            let after: Vec<Instance> = now.iter().filter(|i| i.address != *gone).cloned().collect();
            g.listed("s", &now, &after, t as u64 * 100);
            now = after;
        }
        assert_eq!(
            g.held_addresses("s"),
            ["a:1", "b:1", "c:1"].map(String::from).into(),
            "3 of 4 within a burst: all three held, the first two brought back"
        );
        let mut slow = RemovalGuard::new(50, Duration::from_secs(60));
        let mut now = list(&["a:1", "b:1", "c:1", "d:1"]);
        for (t, gone) in ["a:1", "b:1", "c:1"].iter().enumerate() {
            let after: Vec<Instance> = now.iter().filter(|i| i.address != *gone).cloned().collect();
            slow.listed("s", &now, &after, t as u64 * LATER);
            now = after;
        }
        assert!(slow.held("s").is_empty(), "one removal per burst: each applies");
    }

    #[test]
    fn a_burst_starts_with_a_removal_not_with_the_additions_before_it() {
        let mut g = RemovalGuard::new(50, Duration::from_secs(60));
        g.listed("s", &list(&["a:1"]), &list(&["a:1", "b:1"]), 0);
        g.listed("s", &list(&["a:1", "b:1"]), &list(&["b:1"]), 100);
        assert!(g.held("s").is_empty(), "1 of 2 is not more than 50%");
    }

    #[test]
    fn one_hundred_percent_is_off_and_a_new_service_holds_nothing() {
        let mut off = RemovalGuard::new(100, Duration::from_secs(60));
        off.listed("s", &list(&["a:1", "b:1"]), &[], 0);
        assert!(off.held("s").is_empty());
        let mut on = RemovalGuard::new(50, Duration::from_secs(60));
        on.listed("s", &[], &list(&["a:1"]), 0);
        assert!(on.held("s").is_empty());
        on.listed("s", &list(&["a:1"]), &[], LATER);
        assert_eq!(on.held("s").len(), 1, "its only instance removed: 100% > 50%");
    }
}
