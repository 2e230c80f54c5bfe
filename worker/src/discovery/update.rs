//! What the ZooKeeper side reports ([`Update`]) and the registry as this worker knows it
//! ([`Registry`]): the rules for applying updates, and the log line each change deserves.
//! Pure: no ZooKeeper, no I/O, so unit tests drive it directly.

use std::collections::{HashMap, HashSet};

use crate::discovery::snapshot::Listing;
use crate::table::{count, Instance, Source};

/// What the ZooKeeper side reports to the builder.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A complete listing of the registry, after connecting or resyncing.
    Full(Listing),
    /// The snapshot, loaded because ZooKeeper was unreachable at start.
    Snapshot(Listing),
    /// One service's current instances.
    Service(String, Vec<Instance>),
    /// A service node is gone.
    Removed(String),
    /// The next listing of a service leaves these registrations out on purpose — their own
    /// status withdrew them (address, why) — so the removal guard never holds them. Sent just
    /// before that listing (its [`Update::Service`] or [`Update::Full`]).
    Withdrawn(String, Vec<(String, String)>),
    /// The next update carries a znode change ZooKeeper recorded at this wall-clock time (ms
    /// since the epoch, the znode's mtime): the builder measures its discovery lag.
    Stamp(u64),
}

/// An update from registry source `.0` (its position among the `[[zookeeper]]` entries).
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced(pub usize, pub Update);

impl From<Update> for Sourced {
    fn from(u: Update) -> Self {
        Sourced(0, u)
    }
}

impl From<(usize, Update)> for Sourced {
    fn from((s, u): (usize, Update)) -> Self {
        Sourced(s, u)
    }
}

/// Every source's registry. A service name held by two sources is routed from the first
/// (`check` refuses sources that could collide, unless prefixes tell them apart).
#[derive(Debug, Default)]
pub struct Registries {
    all: Vec<Registry>,
}

impl Registries {
    /// One registry per source.
    pub fn new(all: Vec<Registry>) -> Self {
        Registries { all }
    }

    /// Source `i`'s registry.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Registry> {
        self.all.get_mut(i)
    }

    /// Source `i`'s registry.
    pub fn get(&self, i: usize) -> Option<&Registry> {
        self.all.get(i)
    }

    /// A service's instances, from the first source that lists it.
    pub fn instances(&self, name: &str) -> Option<&Vec<Instance>> {
        self.all.iter().find_map(|r| r.listing().get(name))
    }

    /// Where the routes come from: `None` until every source has a listing (its own or the
    /// snapshot's); the snapshot while any source serves from it; else ZooKeeper.
    pub fn source(&self) -> Option<Source> {
        let sources: Vec<Option<Source>> = self.all.iter().map(Registry::source).collect();
        if sources.is_empty() || sources.iter().any(Option::is_none) {
            return None;
        }
        match sources.contains(&Some(Source::Snapshot)) {
            true => Some(Source::Snapshot),
            false => Some(Source::Zookeeper),
        }
    }

    /// Every source's listing, in order.
    pub fn listings(&self) -> impl Iterator<Item = &Listing> {
        self.all.iter().map(Registry::listing)
    }
}

/// The registry as this worker knows it, and the rules for applying updates to it. Pure: no
/// ZooKeeper, no I/O, so unit tests drive it directly.
#[derive(Debug, Default)]
pub struct Registry {
    services: Listing,
    source: Option<Source>,
    keep_last_on_empty: bool,
    /// Addresses the next listing of each service withdraws on purpose: `keep_last_on_empty`
    /// never keeps them (it keeps what a registry may have lost, not what it took out).
    withdrawing: HashMap<String, HashSet<String>>,
}

impl Registry {
    /// An empty registry.
    pub fn new(keep_last_on_empty: bool) -> Self {
        Registry {
            services: Listing::new(),
            source: None,
            keep_last_on_empty,
            withdrawing: HashMap::new(),
        }
    }

    /// Whether a service the registry empties keeps its last instances.
    pub fn keeps_last_on_empty(&self) -> bool {
        self.keep_last_on_empty
    }

    /// Where the current listing came from (`None` until the first one).
    pub fn source(&self) -> Option<Source> {
        self.source
    }

    /// The current listing.
    pub fn listing(&self) -> &Listing {
        &self.services
    }

    /// Applies an update; returns the log lines describing what changed, and the names of the
    /// services that changed.
    pub fn apply(&mut self, update: Update) -> (Vec<String>, HashSet<String>) {
        let mut log = Vec::new();
        let mut changed = HashSet::new();
        match update {
            Update::Full(all) if self.services.is_empty() => {
                // First load: one summary line, not one per service (a registry may hold 10 000).
                self.source = Some(Source::Zookeeper);
                let n: usize = all.values().map(Vec::len).sum();
                log.push(format!(
                    "zookeeper: loaded {}, {}",
                    count(all.len(), "service"),
                    count(n, "instance")
                ));
                changed.extend(all.keys().cloned());
                self.services = all
                    .into_iter()
                    .map(|(k, mut v)| {
                        v.sort();
                        v.dedup_by(|a, b| a.address == b.address);
                        (k, v)
                    })
                    .collect();
            }
            Update::Full(all) => {
                // keep_last_on_empty is about the registry emptying a service; a service only
                // the snapshot knew was simply not in the live registry any more.
                let keep = self.keep_last_on_empty && self.source != Some(Source::Snapshot);
                self.source = Some(Source::Zookeeper);
                self.replace_all(all, keep, &mut log, &mut changed);
            }
            Update::Snapshot(all) => {
                if self.source == Some(Source::Zookeeper) {
                    return (log, changed); // ZooKeeper answered first: the snapshot is older.
                }
                self.source = Some(Source::Snapshot);
                self.replace_all(all, self.keep_last_on_empty, &mut log, &mut changed);
            }
            Update::Service(name, list) => {
                if self.set(&name, list, self.keep_last_on_empty, &mut log) {
                    changed.insert(name);
                }
            }
            Update::Stamp(_) => {}
            Update::Withdrawn(name, withdrawals) => {
                let addresses = withdrawals.into_iter().map(|(a, _)| a).collect();
                self.withdrawing.insert(name, addresses);
            }
            Update::Removed(name) => {
                if self.services.contains_key(&name)
                    && self.set(&name, Vec::new(), self.keep_last_on_empty, &mut log)
                {
                    changed.insert(name);
                }
            }
        }
        (log, changed)
    }

    /// Replaces the whole listing; `keep`: services gone or emptied keep their last list.
    fn replace_all(
        &mut self,
        all: Listing,
        keep: bool,
        log: &mut Vec<String>,
        changed: &mut HashSet<String>,
    ) {
        let gone: Vec<String> =
            self.services.keys().filter(|k| !all.contains_key(*k)).cloned().collect();
        for name in gone {
            if keep {
                log.push(format!(
                    "service {name}: gone from the registry; keeping its last {} instances (keep_last_on_empty)",
                    self.services[&name].len()
                ));
            } else {
                self.services.remove(&name);
                log.push(format!("service {name}: removed"));
                changed.insert(name);
            }
        }
        for (name, list) in all {
            if self.set(&name, list, keep, log) {
                changed.insert(name);
            }
        }
    }

    /// Sets one service's list; returns whether it changed.
    fn set(
        &mut self,
        name: &str,
        mut list: Vec<Instance>,
        keep: bool,
        log: &mut Vec<String>,
    ) -> bool {
        list.sort();
        list.dedup_by(|a, b| a.address == b.address);
        let withdrawing = self.withdrawing.remove(name).unwrap_or_default();
        let old = self.services.get(name);
        if old == Some(&list) {
            return false;
        }
        if list.is_empty() && keep {
            if let Some(old) = old.filter(|o| !o.is_empty()) {
                // Kept: what the registry may have lost; never what it withdrew on purpose.
                let kept: Vec<Instance> =
                    old.iter().filter(|i| !withdrawing.contains(&i.address)).cloned().collect();
                if kept.len() == old.len() {
                    log.push(format!(
                        "service {name}: no instances left in the registry; keeping the last {} (keep_last_on_empty)",
                        old.len()
                    ));
                    return false;
                }
                if !kept.is_empty() {
                    log.push(format!(
                        "service {name}: no instances left in the registry; keeping the last {} not withdrawn on purpose (keep_last_on_empty)",
                        kept.len()
                    ));
                }
                list = kept;
            }
        }
        let before: HashSet<&str> =
            old.map(|o| o.iter().map(|i| i.address.as_str()).collect()).unwrap_or_default();
        let after: HashSet<&str> = list.iter().map(|i| i.address.as_str()).collect();
        let mut diff: Vec<String> = list
            .iter()
            .filter(|i| !before.contains(i.address.as_str()))
            .map(|i| format!("+{}", i.address))
            .collect();
        if let Some(old) = old {
            diff.extend(
                old.iter()
                    .filter(|i| !after.contains(i.address.as_str()))
                    .map(|i| format!("-{}", i.address)),
            );
        }
        if diff.is_empty() {
            diff.push(if old.is_none() { "appeared".into() } else { "weights changed".into() });
        }
        log.push(format!("service {name}: {} ({})", diff.join(" "), count(list.len(), "instance")));
        self.services.insert(name.to_string(), list);
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A registry listing from `(service, [address…])` pairs.
    pub(crate) fn listing(pairs: &[(&str, &[&str])]) -> Listing {
        pairs
            .iter()
            .map(|(s, a)| (s.to_string(), a.iter().map(|x| Instance::new(*x)).collect()))
            .collect()
    }

    fn svc(name: &str, addrs: &[&str]) -> Update {
        Update::Service(name.into(), addrs.iter().map(|a| Instance::new(*a)).collect())
    }

    #[test]
    fn changes_are_logged_once_as_a_diff() {
        let mut r = Registry::new(true);
        let (log, changed) =
            r.apply(Update::Full(listing(&[("svc1", &["10.0.0.1:80", "10.0.0.2:80"])])));
        assert_eq!(log, ["zookeeper: loaded 1 service, 2 instances"]);
        assert!(changed.contains("svc1"));
        let (log, _) = r.apply(Update::Full(listing(&[("svc1", &["10.0.0.1:80"]), ("svc2", &[])])));
        assert_eq!(
            log,
            ["service svc1: -10.0.0.2:80 (1 instance)", "service svc2: appeared (0 instances)"]
        );
        r.apply(svc("svc1", &["10.0.0.1:80", "10.0.0.2:80"]));
        let (log, _) = r.apply(svc("svc1", &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]));
        assert_eq!(log, ["service svc1: +10.0.0.3:80 (3 instances)"]);
        let (log, changed) = r.apply(svc("svc1", &["10.0.0.3:80", "10.0.0.2:80", "10.0.0.1:80"]));
        assert!(log.is_empty() && changed.is_empty(), "same set in another order is no change");
        let (log, _) = r.apply(svc("svc1", &["10.0.0.3:80"]));
        assert_eq!(log, ["service svc1: -10.0.0.1:80 -10.0.0.2:80 (1 instance)"]);
    }

    #[test]
    fn keep_last_on_empty_keeps_the_last_list_and_false_empties_it() {
        let mut keep = Registry::new(true);
        keep.apply(svc("a", &["10.0.0.1:80"]));
        keep.apply(Update::Removed("a".into()));
        keep.apply(svc("a", &[]));
        assert_eq!(keep.listing()["a"].len(), 1);
        keep.apply(Update::Full(Listing::new()));
        assert_eq!(keep.listing()["a"].len(), 1);

        let mut strict = Registry::new(false);
        strict.apply(svc("a", &["10.0.0.1:80"]));
        strict.apply(Update::Removed("a".into()));
        assert!(strict.listing()["a"].is_empty(), "known service with no instance: 503");
        strict.apply(Update::Full(Listing::new()));
        assert!(!strict.listing().contains_key("a"), "gone after a resync: 404");
    }

    #[test]
    fn keep_last_on_empty_never_keeps_what_the_registry_withdrew_on_purpose() {
        let mut r = Registry::new(true);
        r.apply(svc("a", &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]));
        let stopping = |a: &str| (a.to_string(), "status STOPPING".to_string());
        // Every member drained: empty is what the registry meant.
        r.apply(Update::Withdrawn(
            "a".into(),
            vec![stopping("10.0.0.1:80"), stopping("10.0.0.2:80"), stopping("10.0.0.3:80")],
        ));
        let (_, changed) = r.apply(svc("a", &[]));
        assert!(changed.contains("a") && r.listing()["a"].is_empty());
        // One drained, the others' nodes gone: the others are kept, the drained one is not.
        r.apply(svc("a", &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]));
        r.apply(Update::Withdrawn("a".into(), vec![stopping("10.0.0.1:80")]));
        let (log, _) = r.apply(svc("a", &[]));
        assert_eq!(r.listing()["a"].len(), 2, "{log:?}");
        // A withdrawal applies to the listing it came with only.
        let (_, changed) = r.apply(svc("a", &[]));
        assert!(changed.is_empty() && r.listing()["a"].len() == 2);
    }

    #[test]
    fn zookeepers_first_listing_replaces_the_snapshot_whole() {
        let mut r = Registry::new(true);
        r.apply(Update::Snapshot(listing(&[("old", &["10.0.0.9:80"]), ("a", &["10.0.0.8:80"])])));
        r.apply(Update::Full(listing(&[("a", &["10.0.0.1:80"])])));
        assert!(!r.listing().contains_key("old"), "a service gone while we were down is gone");
        assert_eq!(r.listing()["a"][0].address, "10.0.0.1:80");
        r.apply(Update::Full(Listing::new()));
        assert_eq!(r.listing()["a"].len(), 1, "keep_last_on_empty applies between live listings");
    }

    #[test]
    fn a_snapshot_never_overrides_a_live_listing() {
        let mut r = Registry::new(true);
        r.apply(Update::Full(listing(&[("a", &["10.0.0.1:80"])])));
        r.apply(Update::Snapshot(listing(&[("a", &["10.0.0.9:80"])])));
        assert_eq!(r.listing()["a"][0].address, "10.0.0.1:80");
        assert_eq!(r.source(), Some(Source::Zookeeper));
    }
}
