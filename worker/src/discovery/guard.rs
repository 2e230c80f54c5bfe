//! The removal guard tells what a registry *meant* from what it may have *lost*.
//!
//! - **Intent is never held.** A registration withdrawn by its own status (ServerSet and Nerve
//!   `status` other than `ALIVE`, Spring's `instance_status` other than `UP`, Curator
//!   `enabled: false`, Dubbo `disabled`) leaves at once, whatever the share; the watcher says so
//!   with [`Update::Withdrawn`](crate::discovery::update::Update::Withdrawn) before the listing.
//! - **Doubt is held, on terms.** One burst of listings (within [`BURST`]) removing more than
//!   `removal_guard` percent of a service may be a registry fault (a script deleting znodes, a
//!   resync reading a half-written subtree) as much as a fleet stopping. The instances *that
//!   listing* removes are held — never one an earlier listing already took out — for at most
//!   `removal_hold`, and they take traffic only on evidence: while the service's active health
//!   check passes (Envoy keeps a host discovery removed only while its check passes), or,
//!   without one, as a fallback when no listed instance is routable (Synapse's
//!   `use_previous_backends`). `keep_last_on_empty = false` means an empty service answers 503:
//!   a listing that empties one holds nothing.
//! - **Faults the gateway can see are named**: a hold that came with this worker's own resync
//!   of the registry (after a session loss), or with a listing that emptied several services at
//!   once, is logged and shown as a suspected registry fault.
//!
//! Pure: times are passed in, so unit tests drive it directly. The terms a held instance serves
//! on are the table's ([`Hold`](crate::table::Hold)); its first connect failure or failed probe
//! releases it (see `table::health`).

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
    /// Why, in words: "3 of 4 removed within 2 s", with the suspected fault when one was seen.
    pub why: String,
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

/// What a listing came with, beyond its instances.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// When it was applied (ms on the builder's clock).
    pub now_ms: u64,
    /// The source's `keep_last_on_empty = false`: a listing that leaves the service empty
    /// holds nothing (the operator's "an empty service answers 503").
    pub empty_is_empty: bool,
    /// Why this listing is suspected to be a registry fault, when the gateway saw why.
    pub suspect: Option<&'a str>,
}

/// Held instances per service.
#[derive(Debug, Default)]
pub struct RemovalGuard {
    /// Percent of a service one change may remove before the guard holds the removed ones.
    guard: u32,
    hold: Duration,
    held: HashMap<String, Vec<Held>>,
    bursts: HashMap<String, Burst>,
    /// Registrations the next listing of each service leaves out on purpose: address, why.
    withdrawn: HashMap<String, Vec<(String, String)>>,
}

impl RemovalGuard {
    /// A guard holding removals of more than `guard` percent for at most `hold`.
    pub fn new(guard: u32, hold: Duration) -> Self {
        RemovalGuard { guard, hold, ..Default::default() }
    }

    /// The next listing of `service` leaves these registrations out on purpose (their status
    /// withdrew them): they are never held.
    pub fn withdrawn(&mut self, service: &str, withdrawals: Vec<(String, String)>) {
        self.withdrawn.insert(service.to_string(), withdrawals);
    }

    /// Whether going from `before` to `after` removes more than the guard's share at once.
    pub fn beyond_share(&self, before: &[Instance], after: &[Instance]) -> bool {
        let listed: HashSet<&str> = after.iter().map(|i| i.address.as_str()).collect();
        let removed = before.iter().filter(|i| !listed.contains(i.address.as_str())).count();
        self.guard < 100 && removed * 100 > before.len() * self.guard as usize
    }

    /// `service`'s listing went from `before` to `after`. Instances listed again, or withdrawn
    /// on purpose, are no longer held; when this listing's burst removes more than the guard's
    /// share, what this listing removed is held. Returns the log lines.
    pub fn listed(
        &mut self,
        service: &str,
        before: &[Instance],
        after: &[Instance],
        cx: Context<'_>,
    ) -> Vec<String> {
        let withdrawn: HashMap<String, String> =
            self.withdrawn.remove(service).unwrap_or_default().into_iter().collect();
        let listed: HashSet<&str> = after.iter().map(|i| i.address.as_str()).collect();
        let emptied = after.is_empty() && cx.empty_is_empty;
        let mut log = self.unhold(service, &listed, &withdrawn, emptied);
        let removed: Vec<&Instance> =
            before.iter().filter(|i| !listed.contains(i.address.as_str())).collect();
        for i in removed.iter().filter(|i| withdrawn.contains_key(&i.address)) {
            log.push(format!(
                "service {service}: instance {} withdrawn: {}",
                i.address, withdrawn[&i.address]
            ));
        }
        let doubtful: Vec<&Instance> =
            removed.into_iter().filter(|i| !withdrawn.contains_key(&i.address)).collect();
        if self.guard >= 100 || emptied {
            self.bursts.remove(service);
        } else if let Some(why) = self.beyond(service, before.len(), &listed, &doubtful, cx) {
            log.extend(self.hold(service, doubtful, why, cx.now_ms));
        }
        self.tidy(service);
        log
    }

    /// Ends the holds this listing answers: listed again, withdrawn on purpose, or the service
    /// emptied under `keep_last_on_empty = false`.
    fn unhold(
        &mut self,
        service: &str,
        listed: &HashSet<&str>,
        withdrawn: &HashMap<String, String>,
        emptied: bool,
    ) -> Vec<String> {
        let mut log = Vec::new();
        if let Some(held) = self.held.get_mut(service) {
            held.retain(|h| {
                let address = h.instance.address.as_str();
                let line = if listed.contains(address) {
                    format!("service {service}: held instance {address} is listed again")
                } else if let Some(why) = withdrawn.get(address) {
                    format!("service {service}: held instance {address} withdrawn: {why}; no longer held")
                } else if emptied {
                    format!("service {service}: held instance {address} released: the service is empty and keep_last_on_empty is false")
                } else {
                    return true;
                };
                log.push(line);
                false
            });
        }
        log
    }

    /// Adds this listing's doubtful removals to the service's burst; when the burst is beyond
    /// the share, why the removals are held ("3 of 4 removed within 2 s", and the suspected
    /// fault).
    fn beyond(
        &mut self,
        service: &str,
        base: usize,
        listed: &HashSet<&str>,
        doubtful: &[&Instance],
        cx: Context<'_>,
    ) -> Option<String> {
        // The burst this change belongs to: removals within BURST of the first add up. A burst
        // starts with a removal, counted against the instances there were just before it.
        let fresh = self
            .bursts
            .get(service)
            .is_none_or(|b| cx.now_ms.saturating_sub(b.started_ms) > BURST.as_millis() as u64);
        if fresh && doubtful.is_empty() {
            self.bursts.remove(service);
            return None;
        }
        if fresh {
            let burst = Burst { started_ms: cx.now_ms, base, removed: Vec::new() };
            self.bursts.insert(service.to_string(), burst);
        }
        let burst = self.bursts.get_mut(service).expect("inserted above");
        burst.removed.retain(|i| !listed.contains(i.address.as_str()));
        for i in doubtful {
            if !burst.removed.iter().any(|r| r.address == i.address) {
                burst.removed.push((*i).clone());
            }
        }
        if burst.base == 0 || burst.removed.len() * 100 <= burst.base * self.guard as usize {
            return None;
        }
        let within = cx.now_ms.saturating_sub(burst.started_ms).div_ceil(1000).max(1);
        let why = format!("{} of {} removed within {within} s", burst.removed.len(), burst.base);
        Some(match cx.suspect {
            Some(suspect) => format!("{why}; suspected registry fault: {suspect}"),
            None => why,
        })
    }

    /// Holds what this listing removed — only that: an instance an earlier listing took out is
    /// out of rotation already, and a later removal never brings it back.
    fn hold(
        &mut self,
        service: &str,
        doubtful: Vec<&Instance>,
        why: String,
        now_ms: u64,
    ) -> Vec<String> {
        let held = self.held.entry(service.to_string()).or_default();
        let new: Vec<&Instance> = doubtful
            .into_iter()
            .filter(|i| !held.iter().any(|h| h.instance.address == i.address))
            .collect();
        if new.is_empty() {
            return Vec::new();
        }
        let until_ms = now_ms + self.hold.as_millis() as u64;
        let names: Vec<&str> = new.iter().map(|i| i.address.as_str()).collect();
        let line = format!(
            "service {service}: {why} (more than removal_guard {}%); holding {} until each proves gone or removal_hold ({}) passes: routed while its health check passes, else only when no listed instance is left",
            self.guard,
            names.join(" "),
            humanize(self.hold)
        );
        held.extend(new.into_iter().map(|i| Held {
            instance: i.clone(),
            until_ms,
            why: why.clone(),
        }));
        vec![line]
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

    fn at(now_ms: u64) -> Context<'static> {
        Context { now_ms, ..Default::default() }
    }

    fn held(g: &RemovalGuard, service: &str) -> HashSet<String> {
        g.held(service).iter().map(|h| h.instance.address.clone()).collect()
    }

    fn set(addrs: &[&str]) -> HashSet<String> {
        addrs.iter().map(|a| a.to_string()).collect()
    }

    const LATER: u64 = BURST.as_millis() as u64 + 1;

    #[test]
    fn a_mass_removal_is_held_and_a_small_one_is_not() {
        let mut g = RemovalGuard::new(50, Duration::from_secs(60));
        let four = list(&["a:1", "b:1", "c:1", "d:1"]);
        assert!(g.listed("s", &four, &list(&["a:1", "b:1"]), at(0)).is_empty(), "50% is no more");
        assert!(g.held("s").is_empty());
        // Another burst: 3 of 4 at once.
        let log = g.listed("s", &four, &list(&["d:1"]), at(LATER));
        assert_eq!(log.len(), 1, "{log:?}");
        assert!(
            log[0].contains("s: 3 of 4 removed within 1 s (more than removal_guard 50%)")
                && log[0].contains("a:1 b:1 c:1"),
            "{log:?}"
        );
        assert_eq!(held(&g, "s"), set(&["a:1", "b:1", "c:1"]));
        assert_eq!(g.held("s")[0].why, "3 of 4 removed within 1 s");
        assert_eq!(g.next_deadline(), Some(LATER + 60_000));
        // One comes back: no longer held.
        g.listed("s", &list(&["d:1"]), &list(&["b:1", "d:1"]), at(LATER + 1));
        assert_eq!(held(&g, "s"), set(&["a:1", "c:1"]));
        let (log, changed) = g.expire(LATER + 59_999);
        assert!(log.is_empty() && changed.is_empty());
        let (log, changed) = g.expire(LATER + 60_000);
        assert_eq!(log.len(), 2);
        assert!(changed.contains("s"));
        assert!(g.held("s").is_empty() && g.next_deadline().is_none());
    }

    #[test]
    fn a_burst_holds_only_what_its_last_listing_removed_never_an_earlier_removal() {
        // A rolling deploy: b1 out, then b2 a few seconds later. The burst now exceeds the
        // share, but b1 is out of rotation already and stays out.
        let mut g = RemovalGuard::new(50, Duration::from_secs(60));
        let three = list(&["b1:1", "b2:1", "b4:1"]);
        g.listed("s", &three, &list(&["b2:1", "b4:1"]), at(0));
        assert!(g.held("s").is_empty(), "1 of 3");
        g.listed("s", &list(&["b2:1", "b4:1"]), &list(&["b4:1"]), at(3000));
        assert_eq!(held(&g, "s"), set(&["b2:1"]), "b1 never comes back");
        assert_eq!(g.held("s")[0].why, "2 of 3 removed within 3 s");
        // Removals a burst apart each apply.
        let mut slow = RemovalGuard::new(50, Duration::from_secs(60));
        let mut now = list(&["a:1", "b:1", "c:1", "d:1"]);
        for (t, gone) in ["a:1", "b:1", "c:1"].iter().enumerate() {
            let after: Vec<Instance> = now.iter().filter(|i| i.address != *gone).cloned().collect();
            slow.listed("s", &now, &after, at(t as u64 * LATER));
            now = after;
        }
        assert!(slow.held("s").is_empty(), "one removal per burst: each applies");
    }

    #[test]
    fn a_withdrawn_registration_is_never_held_whatever_the_share() {
        let mut g = RemovalGuard::new(50, Duration::from_secs(60));
        let two = list(&["a:1", "b:1"]);
        g.withdrawn("s", vec![("a:1".into(), "status STOPPING".into())]);
        g.withdrawn(
            "s",
            vec![
                ("a:1".into(), "status STOPPING".into()),
                ("b:1".into(), "status STOPPING".into()),
            ],
        );
        let log = g.listed("s", &two, &[], at(0));
        assert!(g.held("s").is_empty(), "{log:?}");
        assert_eq!(
            log,
            [
                "service s: instance a:1 withdrawn: status STOPPING",
                "service s: instance b:1 withdrawn: status STOPPING"
            ]
        );
        // A withdrawal applies to the next listing only: a later deletion is doubt again.
        g.listed("s", &[], &two, at(LATER));
        g.listed("s", &two, &[], at(2 * LATER));
        assert_eq!(held(&g, "s"), set(&["a:1", "b:1"]));
        // A held instance re-registered withdrawn is released.
        g.withdrawn("s", vec![("a:1".into(), "status STOPPING".into())]);
        let log = g.listed("s", &[], &[], at(2 * LATER + 1));
        assert_eq!(held(&g, "s"), set(&["b:1"]), "{log:?}");
        assert!(log[0].contains("held instance a:1 withdrawn: status STOPPING"), "{log:?}");
    }

    #[test]
    fn keep_last_on_empty_false_holds_nothing_for_an_emptied_service() {
        let mut g = RemovalGuard::new(50, Duration::from_secs(60));
        let cx = Context { now_ms: 0, empty_is_empty: true, suspect: None };
        g.listed("s", &list(&["a:1", "b:1"]), &[], cx);
        assert!(g.held("s").is_empty(), "empty is empty");
        // Held from a partial removal, then the service empties: released.
        g.listed("s", &[], &list(&["a:1", "b:1", "c:1"]), Context { now_ms: LATER, ..cx });
        g.listed(
            "s",
            &list(&["a:1", "b:1", "c:1"]),
            &list(&["c:1"]),
            Context { now_ms: 2 * LATER, ..cx },
        );
        assert_eq!(held(&g, "s").len(), 2);
        let log = g.listed("s", &list(&["c:1"]), &[], Context { now_ms: 2 * LATER + 1, ..cx });
        assert!(g.held("s").is_empty() && log.len() == 2, "{log:?}");
    }

    #[test]
    fn a_suspected_fault_is_named() {
        let mut g = RemovalGuard::new(50, Duration::from_secs(60));
        let suspect = Some("came with this worker's resync after a session loss");
        let log = g.listed(
            "s",
            &list(&["a:1", "b:1"]),
            &[],
            Context { now_ms: 5, suspect, ..Default::default() },
        );
        assert!(log[0].contains("suspected registry fault: came with"), "{log:?}");
        assert_eq!(g.held("s")[0].why, "2 of 2 removed within 1 s; suspected registry fault: came with this worker's resync after a session loss");
    }

    #[test]
    fn a_burst_starts_with_a_removal_not_with_the_additions_before_it() {
        let mut g = RemovalGuard::new(50, Duration::from_secs(60));
        g.listed("s", &list(&["a:1"]), &list(&["a:1", "b:1"]), at(0));
        g.listed("s", &list(&["a:1", "b:1"]), &list(&["b:1"]), at(100));
        assert!(g.held("s").is_empty(), "1 of 2 is not more than 50%");
    }

    #[test]
    fn one_hundred_percent_is_off_and_a_new_service_holds_nothing() {
        let mut off = RemovalGuard::new(100, Duration::from_secs(60));
        off.listed("s", &list(&["a:1", "b:1"]), &[], at(0));
        assert!(off.held("s").is_empty());
        let mut on = RemovalGuard::new(50, Duration::from_secs(60));
        on.listed("s", &[], &list(&["a:1"]), at(0));
        assert!(on.held("s").is_empty());
        on.listed("s", &list(&["a:1"]), &[], at(LATER));
        assert_eq!(on.held("s").len(), 1, "its only instance removed: 100% > 50%");
    }
}
