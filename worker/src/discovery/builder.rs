//! The one task that turns [`Update`]s into route tables: applies them in order, coalesces
//! bursts, swaps each new table in, reports readiness once a listing (ZooKeeper's or the
//! snapshot) is loaded, and feeds the snapshot writer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::discovery::changes::Changes;
use crate::discovery::guard::{self, RemovalGuard};
use crate::discovery::snapshot::Sections;
use crate::discovery::update::{Registries, Sourced, Update};
use crate::metrics::Metrics;
use crate::table::SharedTable;
use crate::table::{Hold, Instance, Policy, RouteTable, Service, ServiceMap, Source, Tracker};

/// Turns a registry listing into services, reusing what did not change.
pub struct TableBuilder {
    config: Arc<Config>,
    tracker: Tracker,
    statics: HashMap<String, Arc<Service>>,
    current: HashMap<String, Arc<Service>>,
    /// Every service of the table, kept up to date change by change: the next table is a copy
    /// of it (pointer copies), never a rebuild over every service.
    all: ServiceMap,
    /// Instances over `all`, kept up to date the same way.
    instances: usize,
    /// Instances the registry removed en masse, held on terms until they prove gone.
    guard: RemovalGuard,
    /// Services with an instance in its slow start: rebuilt every [`RAMP_STEP`] until done.
    ramping: HashSet<String>,
}

/// The snapshot is written at most this often (changes in between go in the next one).
pub const SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a service whose instances ramp up (slow start) gets its weights recomputed.
pub const RAMP_STEP: std::time::Duration = std::time::Duration::from_millis(500);

impl TableBuilder {
    /// Starts from the static services of `config`, which discovery never overrides.
    pub fn new(config: Arc<Config>, tracker: Tracker) -> Self {
        let statics: HashMap<String, Arc<Service>> = RouteTable::statics(&config, &tracker)
            .services()
            .into_iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        // One guard for every source, set by the first `[[zookeeper]]` entry.
        let guard = match config.zookeeper.first() {
            Some(zk) => RemovalGuard::new(zk.removal_guard, zk.removal_hold),
            None => RemovalGuard::new(100, std::time::Duration::ZERO),
        };
        let all: ServiceMap =
            statics.iter().map(|(k, v)| (Arc::from(k.as_str()), Arc::clone(v))).collect();
        let instances = statics.values().map(|s| s.instances.len()).sum();
        TableBuilder {
            config,
            tracker,
            statics,
            all,
            instances,
            current: HashMap::new(),
            guard,
            ramping: HashSet::new(),
        }
    }

    /// Rebuilds the services in `changed` from `registry` (and the instances the removal guard
    /// holds); others keep their balancer. A rebuilt service keeps the health and in-flight
    /// state of every instance address it already had.
    pub fn build(&mut self, registries: &Registries, changed: &HashSet<String>) -> RouteTable {
        let source = registries.source().unwrap_or(Source::Zookeeper);
        for name in changed {
            let held = self.guard.held(name);
            let listed = match registries.instances(name) {
                None if !held.is_empty() => Some(&[] as &[Instance]),
                l => l.map(Vec::as_slice),
            };
            match listed {
                Some(list) if !self.statics.contains_key(name) => {
                    let mut list = list.to_vec();
                    let known: HashSet<&str> = list.iter().map(|i| i.address.as_str()).collect();
                    let kept: Vec<Instance> = held
                        .iter()
                        .filter(|h| !known.contains(h.instance.address.as_str()))
                        .map(|h| h.instance.clone())
                        .collect();
                    list.extend(kept);
                    list.retain(|i| {
                        let own = self.config.is_own_address(&i.address);
                        if own {
                            log::warn!(
                                "service {name}: skipping instance {}: it is this gateway's own address (a request loop)",
                                i.address
                            );
                        }
                        !own
                    });
                    if let Some(weights) = self.config.services.get(name).map(|s| &s.weights) {
                        for i in &mut list {
                            if let Some(w) = weights.get(&i.address) {
                                i.weight = *w;
                            }
                        }
                    }
                    let policy = Policy::for_service(&self.config, name);
                    let previous = self.current.get(name).map(Arc::as_ref);
                    let service = Service::with_held(
                        name.clone(),
                        list,
                        (source, policy),
                        &self.tracker,
                        previous,
                        &self.holds(name),
                    );
                    match service.ramp {
                        Some(_) => self.ramping.insert(name.clone()),
                        None => self.ramping.remove(name),
                    };
                    let service = Arc::new(service);
                    self.instances += service.instances.len();
                    if let Some(old) = self.all.insert(Arc::from(name.as_str()), service.clone()) {
                        self.instances -= old.instances.len();
                    }
                    self.current.insert(name.clone(), service);
                }
                _ if !self.statics.contains_key(name) => {
                    self.ramping.remove(name);
                    self.current.remove(name);
                    if let Some(old) = self.all.remove(name.as_str()) {
                        self.instances -= old.instances.len();
                    }
                }
                _ => {}
            }
        }
        let held = self.guard.services().filter_map(|n| self.current.get(n).cloned()).collect();
        RouteTable::from_map(self.all.clone(), self.instances, held)
    }

    /// The terms each instance the guard holds for `name` serves on: while the service's
    /// active health check passes, or — without one — as its fallback.
    fn holds(&self, name: &str) -> HashMap<String, Hold> {
        let checked = self.config.services.get(name).is_some_and(|s| s.health_check.is_some());
        self.guard
            .held(name)
            .iter()
            .map(|h| (h.instance.address.clone(), Hold { checked, why: h.why.as_str().into() }))
            .collect()
    }
}

/// One service's listing changed: what the removal guard is shown once the batch is applied.
struct Listed {
    name: String,
    before: Vec<Instance>,
    after: Vec<Instance>,
    /// It came with this worker's resync of the whole registry (after a session loss).
    resync: bool,
    /// Its source's `keep_last_on_empty = false`.
    empty_is_empty: bool,
}

/// Where the builder's results go.
pub struct Outputs {
    /// The table requests read.
    pub table: SharedTable,
    /// `Some(source)` once routes are loaded.
    pub ready: watch::Sender<Option<Source>>,
    /// The snapshot writer, when this worker writes it: each source's listing by name.
    pub snapshot: Option<watch::Sender<Arc<Sections>>>,
    /// Route counts go to the metrics.
    pub metrics: Metrics,
    /// Recent changes, for the admin API.
    pub changes: Arc<Changes>,
}

/// Applies updates and publishes tables.
pub struct Builder {
    registries: Registries,
    /// Each source's name (the snapshot's sections).
    names: Vec<String>,
    /// The snapshot lags the table: changes wait for the next write.
    snapshot_dirty: bool,
    /// When the snapshot was last handed to the writer.
    snapshot_sent: Option<std::time::Instant>,
    tables: TableBuilder,
    out: Outputs,
}

impl Builder {
    /// A builder over empty registries, one per source, named `names`.
    pub fn new(
        registries: Registries,
        names: Vec<String>,
        tables: TableBuilder,
        out: Outputs,
    ) -> Self {
        Builder { registries, names, tables, out, snapshot_dirty: false, snapshot_sent: None }
    }

    /// Runs until every sender is gone. Everything already queued when a batch starts goes into
    /// one table (a burst of events costs one build). Holds of the removal guard end on time
    /// even when the registry is quiet.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Sourced>) {
        loop {
            let now = self.tables.tracker.clock().now_ms();
            let hold = self.tables.guard.next_deadline().map(|d| d.saturating_sub(now));
            let ramp = (!self.tables.ramping.is_empty()).then(|| RAMP_STEP.as_millis() as u64);
            let snapshot = self.snapshot_wait().map(|w| w.as_millis() as u64);
            let first = match hold.into_iter().chain(ramp).chain(snapshot).min() {
                Some(wait) => {
                    tokio::select! {
                        u = rx.recv() => u,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(wait)) => {
                            self.expire_holds();
                            self.step_ramps();
                            self.flush_snapshot();
                            continue;
                        }
                    }
                }
                None => rx.recv().await,
            };
            let Some(first) = first else { return };
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            self.apply(batch);
        }
    }

    /// Ends the removal guard's holds that ran out and swaps in the table without them.
    pub fn expire_holds(&mut self) {
        let now = self.tables.tracker.clock().now_ms();
        let (lines, changed) = self.tables.guard.expire(now);
        self.log(lines);
        if !changed.is_empty() {
            self.publish(&changed);
        }
    }

    /// Rebuilds the services whose instances ramp up, with their weights as of now.
    pub fn step_ramps(&mut self) {
        if !self.tables.ramping.is_empty() {
            let ramping = self.tables.ramping.clone();
            self.publish(&ramping);
        }
    }

    fn log(&self, lines: Vec<String>) {
        for l in lines {
            log::info!("{l}");
            self.out.changes.push(&l);
        }
    }

    fn publish(&mut self, changed: &HashSet<String>) {
        let built = self.tables.build(&self.registries, changed);
        let (services, instances) = built.counts();
        self.out.table.store(Arc::new(built));
        self.out.metrics.set_routes(services, instances);
    }

    /// Applies one batch of updates: logs each change, swaps in a new table if anything
    /// changed (the removal guard holding what one listing removed en masse), marks the worker
    /// ready, hands a live listing to the snapshot writer, and measures the lag of the changes
    /// ZooKeeper stamped.
    pub fn apply(&mut self, batch: Vec<impl Into<Sourced>>) {
        let mut changed = HashSet::new();
        let mut live = HashSet::new();
        let mut stamps = Vec::new();
        let mut listed = Vec::new();
        for Sourced(source, update) in batch.into_iter().map(Into::into) {
            let Some(registry) = self.registries.get_mut(source) else { continue };
            if !matches!(update, Update::Snapshot(_)) {
                live.insert(source);
            }
            let mut before: HashMap<String, Vec<Instance>> = match update {
                Update::Stamp(at) => {
                    stamps.push(at);
                    continue;
                }
                Update::Withdrawn(name, withdrawals) => {
                    self.tables.guard.withdrawn(&name, withdrawals.clone());
                    registry.apply(Update::Withdrawn(name, withdrawals));
                    continue;
                }
                Update::Service(ref name, _) | Update::Removed(ref name) => registry
                    .listing()
                    .get(name)
                    .map(|l| (name.clone(), l.clone()))
                    .into_iter()
                    .collect(),
                Update::Full(_) | Update::Snapshot(_) => {
                    registry.listing().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
                }
            };
            // ZooKeeper's first listing replaces the snapshot's whole: a snapshot is no
            // evidence that an instance it names still lives.
            let guarded = registry.source() == Some(Source::Zookeeper);
            let resync = matches!(update, Update::Full(_));
            let (lines, names) = registry.apply(update);
            for name in names.iter().filter(|_| guarded) {
                let Some(before) = before.remove(name) else { continue };
                let after = registry.listing().get(name).cloned().unwrap_or_default();
                let empty_is_empty = !registry.keeps_last_on_empty();
                listed.push(Listed { name: name.clone(), before, after, resync, empty_is_empty });
            }
            self.log(lines);
            changed.extend(names);
        }
        self.guard(listed);
        if !changed.is_empty() || self.out.table.load().counts().0 == 0 {
            self.publish(&changed);
            let wall = crate::table::wall_ms();
            for at in stamps {
                // ZooKeeper's clock may run ahead of ours: negative skew counts as no lag.
                let lag = wall.saturating_sub(at);
                self.out.metrics.discovery_lag(std::time::Duration::from_millis(lag));
            }
        }
        for source in &live {
            if self.registries.get(*source).and_then(|r| r.source()) == Some(Source::Zookeeper) {
                self.out.metrics.for_source(*source).synced();
            }
        }
        let out = &self.out;
        let ready = *out.ready.borrow();
        if ready.is_none() || (!live.is_empty() && ready == Some(Source::Snapshot)) {
            if let Some(src) = self.registries.source() {
                let _ = out.ready.send(Some(src));
            }
        }
        // The snapshot: every source's section, once one is live (a snapshot is never written
        // back from itself alone).
        let any_live = (0..self.names.len())
            .any(|i| self.registries.get(i).and_then(|r| r.source()) == Some(Source::Zookeeper));
        if out.snapshot.is_some() && (!changed.is_empty() || !live.is_empty()) && any_live {
            self.snapshot_dirty = true;
            self.flush_snapshot();
        }
    }

    /// Shows the removal guard what this batch changed, naming the faults the gateway can see:
    /// a removal that came with this worker's own resync (after a session loss), or a batch
    /// that took most of several services at once (fleets do not die service by service in
    /// the same instant; registries and scripts fail that way).
    fn guard(&mut self, listed: Vec<Listed>) {
        let now_ms = self.tables.tracker.clock().now_ms();
        let guard = &self.tables.guard;
        let mass = listed.iter().filter(|l| guard.beyond_share(&l.before, &l.after)).count();
        let mass_why = format!("{mass} services lost most of their instances at once");
        for l in listed {
            let suspect = match (l.resync, mass > 1) {
                (true, _) => Some(
                    "came with this worker's resync of the registry after its session was lost",
                ),
                (false, true) => Some(mass_why.as_str()),
                (false, false) => None,
            };
            let cx = guard::Context { now_ms, empty_is_empty: l.empty_is_empty, suspect };
            let lines = self.tables.guard.listed(&l.name, &l.before, &l.after, cx);
            self.log(lines);
        }
    }

    /// How long until the pending snapshot may be handed over (`None`: nothing pending).
    fn snapshot_wait(&self) -> Option<std::time::Duration> {
        if !self.snapshot_dirty {
            return None;
        }
        Some(
            self.snapshot_sent.map_or(std::time::Duration::ZERO, |at| {
                SNAPSHOT_EVERY.saturating_sub(at.elapsed())
            }),
        )
    }

    /// Hands the listings to the snapshot writer, at most once per [`SNAPSHOT_EVERY`]: copying
    /// a 100 000-instance registry on every change would cost every change in proportion to
    /// the registry.
    fn flush_snapshot(&mut self) {
        let (Some(tx), Some(std::time::Duration::ZERO)) =
            (&self.out.snapshot, self.snapshot_wait())
        else {
            return;
        };
        let sections: Sections =
            self.names.iter().cloned().zip(self.registries.listings().cloned()).collect();
        let _ = tx.send(Arc::new(sections));
        self.snapshot_dirty = false;
        self.snapshot_sent = Some(std::time::Instant::now());
    }
}

#[cfg(test)]
#[path = "builder_tests.rs"]
mod tests;
