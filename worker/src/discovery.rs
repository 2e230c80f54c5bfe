//! Discovery: the worker's own ZooKeeper session, the watches on the registry, and the one task
//! that turns what they report into route tables.
//!
//! ```text
//! session loop ── Full / Service / Removed ──▶ builder task ──▶ RouteTable ──swap──▶ SharedTable
//!   root watch (service list)                    (coalesces bursts,            └──▶ snapshot writer
//!   one watch task per service                    logs each change once)
//! ```
//! Every watch is one-shot: after an event the node is listed again with a new watch and the
//! full child set is diffed; events are never counted (several changes collapse into one
//! event). All updates go through one channel so tables are built in order. A disconnection
//! keeps the table (the session lives on, the client fails over to another ensemble member and
//! restores its watches); an expired or closed session is replaced by a new one and a full
//! resync. A node that does not parse is skipped with one warning naming its path.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use zookeeper_client as zk;

use crate::balance::Strategy;
use crate::metrics::{Metrics, ZkState};
use crate::routes::{Instance, RouteTable, Service, Source};
use crate::settings::{Services, ZkSettings};
use crate::snapshot::{self, Listing};
use crate::SharedTable;

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
}

/// The registry as this worker knows it, and the rules for applying updates to it. Pure: no
/// ZooKeeper, no I/O, so unit tests drive it directly.
#[derive(Debug, Default)]
pub struct Registry {
    services: Listing,
    source: Option<Source>,
    keep_last_on_empty: bool,
}

impl Registry {
    /// An empty registry.
    pub fn new(keep_last_on_empty: bool) -> Self {
        Registry { services: Listing::new(), source: None, keep_last_on_empty }
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
                log.push(format!("zookeeper: loaded {} services, {n} instances", all.len()));
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
                self.source = Some(Source::Zookeeper);
                self.replace_all(all, &mut log, &mut changed);
            }
            Update::Snapshot(all) => {
                if self.source == Some(Source::Zookeeper) {
                    return (log, changed); // ZooKeeper answered first: the snapshot is older.
                }
                self.source = Some(Source::Snapshot);
                self.replace_all(all, &mut log, &mut changed);
            }
            Update::Service(name, list) => {
                if self.set(&name, list, &mut log) {
                    changed.insert(name);
                }
            }
            Update::Removed(name) => {
                if self.services.contains_key(&name) && self.set(&name, Vec::new(), &mut log) {
                    changed.insert(name);
                }
            }
        }
        (log, changed)
    }

    fn replace_all(&mut self, all: Listing, log: &mut Vec<String>, changed: &mut HashSet<String>) {
        let gone: Vec<String> = self.services.keys().filter(|k| !all.contains_key(*k)).cloned().collect();
        for name in gone {
            if self.keep_last_on_empty {
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
            if self.set(&name, list, log) {
                changed.insert(name);
            }
        }
    }

    /// Sets one service's list; returns whether it changed.
    fn set(&mut self, name: &str, mut list: Vec<Instance>, log: &mut Vec<String>) -> bool {
        list.sort();
        list.dedup_by(|a, b| a.address == b.address);
        let old = self.services.get(name);
        if old == Some(&list) {
            return false;
        }
        if list.is_empty() && self.keep_last_on_empty {
            if let Some(old) = old.filter(|o| !o.is_empty()) {
                log.push(format!(
                    "service {name}: no instances left in the registry; keeping the last {} (keep_last_on_empty)",
                    old.len()
                ));
                return false;
            }
        }
        let before: HashSet<&str> = old.map(|o| o.iter().map(|i| i.address.as_str()).collect()).unwrap_or_default();
        let after: HashSet<&str> = list.iter().map(|i| i.address.as_str()).collect();
        let mut diff: Vec<String> =
            list.iter().filter(|i| !before.contains(i.address.as_str())).map(|i| format!("+{}", i.address)).collect();
        if let Some(old) = old {
            diff.extend(old.iter().filter(|i| !after.contains(i.address.as_str())).map(|i| format!("-{}", i.address)));
        }
        if diff.is_empty() {
            diff.push(if old.is_none() { "appeared".into() } else { "weights changed".into() });
        }
        log.push(format!("service {name}: {} ({} instances)", diff.join(" "), list.len()));
        self.services.insert(name.to_string(), list);
        true
    }
}

/// What the builder needs to turn a listing into services.
pub struct TableBuilder {
    statics: HashMap<String, Arc<Service>>,
    strategies: HashMap<String, Strategy>,
    weights: HashMap<String, std::collections::BTreeMap<String, u32>>,
    default: Strategy,
    current: HashMap<String, Arc<Service>>,
}

impl TableBuilder {
    /// Starts from the static services, which discovery never overrides.
    pub fn new(services: &Services, default: Strategy) -> Self {
        let statics = crate::static_table(services, default)
            .services()
            .into_iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        let strategies = services.iter().filter_map(|(n, s)| s.load_balance.map(|lb| (n.clone(), lb))).collect();
        let weights = services
            .iter()
            .filter(|(_, s)| !s.weights.is_empty())
            .map(|(n, s)| (n.clone(), s.weights.clone()))
            .collect();
        TableBuilder { statics, strategies, weights, default, current: HashMap::new() }
    }

    /// Rebuilds the services in `changed` from `registry`; others keep their balancer state.
    pub fn build(&mut self, registry: &Registry, changed: &HashSet<String>) -> RouteTable {
        let source = registry.source().unwrap_or(Source::Zookeeper);
        for name in changed {
            match registry.listing().get(name) {
                Some(list) if !self.statics.contains_key(name) => {
                    let strategy = self.strategies.get(name).copied().unwrap_or(self.default);
                    let mut list = list.clone();
                    if let Some(weights) = self.weights.get(name) {
                        for i in &mut list {
                            if let Some(w) = weights.get(&i.address) {
                                i.weight = *w;
                            }
                        }
                    }
                    self.current.insert(name.clone(), Arc::new(Service::new(name.clone(), list, source, strategy)));
                }
                _ => {
                    self.current.remove(name);
                }
            }
        }
        let mut all = self.current.clone();
        all.extend(self.statics.iter().map(|(k, v)| (k.clone(), v.clone())));
        RouteTable::from_map(all)
    }
}

/// Runs the builder: applies updates in order, coalescing bursts, swaps tables in, reports
/// readiness once a listing (ZooKeeper or snapshot) is loaded, and feeds the snapshot writer.
pub async fn build_tables(
    mut rx: mpsc::UnboundedReceiver<Update>,
    mut registry: Registry,
    mut builder: TableBuilder,
    table: SharedTable,
    ready: watch::Sender<Option<Source>>,
    snapshot: Option<watch::Sender<Arc<Listing>>>,
    metrics: Metrics,
) {
    while let Some(first) = rx.recv().await {
        let mut changed = HashSet::new();
        let mut from_zk = false;
        let mut next = Some(first);
        // Coalesce: everything already queued goes into this one table.
        while let Some(update) = next {
            from_zk |= !matches!(update, Update::Snapshot(_));
            let (lines, names) = registry.apply(update);
            for l in lines {
                log::info!("{l}");
            }
            changed.extend(names);
            next = rx.try_recv().ok();
        }
        if !changed.is_empty() || table.load().counts().0 == 0 {
            let built = builder.build(&registry, &changed);
            let (services, instances) = built.counts();
            table.store(Arc::new(built));
            metrics.set_routes(services, instances);
        }
        if ready.borrow().is_none() || (from_zk && *ready.borrow() == Some(Source::Snapshot)) {
            if let Some(src) = registry.source() {
                let _ = ready.send(Some(src));
            }
        }
        if let (Some(tx), true, Some(Source::Zookeeper)) =
            (&snapshot, !changed.is_empty() || from_zk, registry.source())
        {
            let _ = tx.send(Arc::new(registry.listing().clone()));
        }
    }
}

/// Writes the snapshot whenever the listing changes; a slow disk only delays the file.
pub async fn write_snapshots(path: std::path::PathBuf, mut rx: watch::Receiver<Arc<Listing>>) {
    while rx.changed().await.is_ok() {
        let listing = rx.borrow_and_update().clone();
        let p = path.clone();
        match tokio::task::spawn_blocking(move || snapshot::write(&p, &listing)).await {
            Ok(Ok(())) => log::debug!("snapshot written to {}", path.display()),
            Ok(Err(e)) => log::warn!("cannot write route snapshot: {e}"),
            Err(e) => log::warn!("snapshot writer: {e}"),
        }
    }
}

/// Reconnect delays: 100 ms doubling to 5 s, each with ±50% jitter so that N workers on H hosts
/// do not reconnect in lockstep.
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = 100u64.saturating_mul(1 << self.0.min(6)).min(5000);
        self.0 += 1;
        Duration::from_millis(rand::rng().random_range(base / 2..=base + base / 2))
    }
}

fn terminal(e: &zk::Error) -> bool {
    matches!(e, zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::AuthFailed)
}

/// The ZooKeeper side of discovery for one worker.
pub struct Watcher {
    settings: ZkSettings,
    skip: HashSet<String>,
    tx: mpsc::UnboundedSender<Update>,
    metrics: Metrics,
}

/// One listing of a service, and the watches that fire when it changes.
struct Listed {
    instances: Vec<Instance>,
    watches: Vec<zk::OneshotWatcher>,
    /// Nodes already warned about, so a relisting does not warn again.
    warned: HashSet<String>,
}

impl Watcher {
    /// `skip`: services with static instances, never looked up.
    pub fn new(
        settings: ZkSettings,
        skip: HashSet<String>,
        tx: mpsc::UnboundedSender<Update>,
        metrics: Metrics,
    ) -> Self {
        Watcher { settings, skip, tx, metrics }
    }

    /// Runs forever: connect, sync, watch; on session loss, reconnect and resync.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Backoff(0);
        let mut failing = false;
        loop {
            let client = zk::Client::connector()
                .with_session_timeout(self.settings.session_timeout)
                .with_connection_timeout(self.settings.connect_timeout)
                .with_fail_eagerly()
                .connect(&self.settings.hosts)
                .await;
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    self.metrics.set_zk_state(ZkState::Lost);
                    if !failing {
                        log::warn!(
                            "zookeeper {}: cannot connect ({e}); serving the last known routes, retrying",
                            self.settings.hosts
                        );
                        failing = true;
                    }
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            };
            log::info!("zookeeper {}: session 0x{:x} established", self.settings.hosts, client.session_id().0);
            failing = false;
            backoff = Backoff(0);
            self.metrics.set_zk_state(ZkState::Connected);
            self.clone().session(client).await;
        }
    }

    /// One session: initial sync, then watch until the session ends.
    async fn session(self: Arc<Self>, client: zk::Client) {
        let mut state = client.state_watcher();
        let mut backoff = Backoff(0);
        let root = self.settings.root.clone();
        // Initial sync: the whole registry, with watches, then one Full update.
        let (names, root_watch) = loop {
            match self.list_root(&client).await {
                Ok(x) => break x,
                Err(e) if terminal(&e) => return,
                Err(e) => {
                    log::warn!("zookeeper: listing {root}: {e}; retrying");
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        };
        let mut full = Listing::new();
        let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut listed: FuturesUnordered<_> =
            names.iter().map(|n| self.list_service_until_ok(&client, n.clone())).collect();
        let mut first = Vec::new();
        while let Some((name, result)) = listed.next().await {
            match result {
                Some(l) => {
                    full.insert(name.clone(), l.instances.clone());
                    first.push((name, Some(l)));
                }
                None => return, // session ended during the sync
            }
        }
        drop(listed);
        self.metrics.zk_resync();
        let _ = self.tx.send(Update::Full(full));
        for (name, l) in first {
            let (watches, warned) = l.map(|l| (Some(l.watches), l.warned)).unwrap_or_default();
            let task = tokio::spawn(self.clone().watch_service(client.clone(), name.clone(), watches, warned));
            tasks.insert(name, task);
        }
        let mut root_event = Box::pin(root_watch.changed());
        let end = loop {
            tokio::select! {
                event = &mut root_event => {
                    if event.event_type == zk::EventType::Session && event.session_state.is_terminated() {
                        break event.session_state;
                    }
                    let (names, w) = loop {
                        match self.list_root(&client).await {
                            Ok(x) => break x,
                            Err(e) if terminal(&e) => { return abort_all(tasks); }
                            Err(e) => {
                                log::warn!("zookeeper: listing {root}: {e}; retrying");
                                tokio::time::sleep(backoff.next()).await;
                            }
                        }
                    };
                    root_event = Box::pin(w.changed());
                    self.metrics.zk_event();
                    let names: HashSet<String> = names.into_iter().collect();
                    tasks.retain(|name, task| {
                        let keep = names.contains(name);
                        if !keep {
                            task.abort();
                            let _ = self.tx.send(Update::Removed(name.clone()));
                        }
                        keep
                    });
                    for name in names {
                        if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(name) {
                            let name = slot.key().clone();
                            slot.insert(tokio::spawn(self.clone().watch_service(client.clone(), name, None, HashSet::new())));
                        }
                    }
                }
                s = state.changed() => match s {
                    zk::SessionState::Disconnected => {
                        self.metrics.set_zk_state(ZkState::Disconnected);
                        log::warn!("zookeeper: disconnected; serving the last known routes while the client reconnects");
                    }
                    zk::SessionState::SyncConnected => {
                        self.metrics.set_zk_state(ZkState::Connected);
                        log::info!("zookeeper: reconnected; session kept, watches restored");
                    }
                    s if s.is_terminated() => break s,
                    _ => {}
                },
            }
        };
        self.metrics.set_zk_state(ZkState::Lost);
        log::warn!("zookeeper: session ended ({end}); opening a new session and resyncing, routes kept meanwhile");
        abort_all(tasks);
    }

    /// Lists the root's children (service names) with a watch. A missing root is an empty
    /// registry, watched for creation.
    async fn list_root(&self, client: &zk::Client) -> Result<(Vec<String>, zk::OneshotWatcher), zk::Error> {
        let root = &self.settings.root;
        match children_or_creation(client, root).await? {
            Children::Listed(names, w) => Ok((names.into_iter().filter(|n| !self.skip.contains(n)).collect(), w)),
            Children::Missing(w) => {
                log::warn!("zookeeper: registry root {root} does not exist yet; watching for it");
                Ok((Vec::new(), w))
            }
        }
    }

    async fn list_service_until_ok(&self, client: &zk::Client, name: String) -> (String, Option<Listed>) {
        let mut backoff = Backoff(0);
        let mut warned = HashSet::new();
        loop {
            match self.list_service(client, &name, &mut warned).await {
                Ok(l) => return (name, Some(l)),
                Err(e) if terminal(&e) => return (name, None),
                Err(e) => {
                    log::warn!("service {name}: listing failed: {e}; retrying");
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    }

    /// Lists one service with watches: its children, and each child's data where the format
    /// needs it. A missing service node is an empty service, watched for creation.
    async fn list_service(
        &self,
        client: &zk::Client,
        name: &str,
        warned: &mut HashSet<String>,
    ) -> Result<Listed, zk::Error> {
        let path = format!("{}/{name}", self.settings.root.trim_end_matches('/'));
        let (children, watch) = match children_or_creation(client, &path).await? {
            Children::Listed(children, w) => (children, w),
            Children::Missing(w) => {
                return Ok(Listed { instances: Vec::new(), watches: vec![w], warned: HashSet::new() });
            }
        };
        let format = self.settings.format;
        let children: Vec<String> = children.into_iter().filter(|c| format.accepts_name(c)).collect();
        let mut watches = vec![watch];
        let mut instances = Vec::new();
        let mut bad = HashSet::new();
        let data: Vec<Option<Vec<u8>>> = if format.needs_data() {
            let reads = children.iter().map(|c| {
                let p = format!("{path}/{c}");
                async move { (client.get_and_watch_data(&p).await, p) }
            });
            let mut out = Vec::new();
            for (r, _p) in futures::future::join_all(reads).await {
                match r {
                    Ok((data, _stat, w)) => {
                        watches.push(w);
                        out.push(Some(data));
                    }
                    // Vanished between the listing and the read: the children watch fires too.
                    Err(zk::Error::NoNode) => out.push(None),
                    Err(e) => return Err(e),
                }
            }
            out
        } else {
            children.iter().map(|_| Some(Vec::new())).collect()
        };
        for (child, data) in children.iter().zip(data) {
            let Some(data) = data else { continue };
            let node = format!("{path}/{child}");
            match format.parse(child, &data, self.settings.serverset_endpoint.as_deref()) {
                Ok(Some(i)) => instances.push(i),
                Ok(None) => {}
                Err(why) => {
                    if !warned.contains(&node) {
                        log::warn!("service {name}: skipping {node}: {why}");
                    }
                    bad.insert(node);
                }
            }
        }
        *warned = bad.clone();
        Ok(Listed { instances, watches, warned: bad })
    }

    /// Watches one service until its task is aborted or the session ends.
    async fn watch_service(
        self: Arc<Self>,
        client: zk::Client,
        name: String,
        mut watches: Option<Vec<zk::OneshotWatcher>>,
        mut warned: HashSet<String>,
    ) {
        let mut backoff = Backoff(0);
        loop {
            if let Some(ws) = watches.take() {
                let mut fired: FuturesUnordered<_> = ws.into_iter().map(|w| w.changed()).collect();
                match fired.next().await {
                    Some(ev) if ev.event_type == zk::EventType::Session && ev.session_state.is_terminated() => return,
                    Some(_) => {}
                    None => return,
                }
            }
            match self.list_service(&client, &name, &mut warned).await {
                Ok(l) => {
                    backoff = Backoff(0);
                    self.metrics.zk_event();
                    let _ = self.tx.send(Update::Service(name.clone(), l.instances));
                    watches = Some(l.watches);
                }
                Err(e) if terminal(&e) => return,
                Err(e) => {
                    log::warn!("service {name}: listing failed: {e}; retrying");
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    }
}

/// A node's children with a children watch, or, while the node does not exist, a watch that
/// fires when it is created.
enum Children {
    Listed(Vec<String>, zk::OneshotWatcher),
    Missing(zk::OneshotWatcher),
}

/// Lists `path` with a watch. A missing node gets an existence watch instead; if the node
/// appears between the two calls, it is listed again, because an existence watch on a node that
/// already exists would not fire for its children.
async fn children_or_creation(client: &zk::Client, path: &str) -> Result<Children, zk::Error> {
    loop {
        match client.list_and_watch_children(path).await {
            Ok((children, w)) => return Ok(Children::Listed(children, w)),
            Err(zk::Error::NoNode) => {
                if let (None, w) = client.check_and_watch_stat(path).await? {
                    return Ok(Children::Missing(w));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn abort_all(tasks: HashMap<String, tokio::task::JoinHandle<()>>) {
    for t in tasks.into_values() {
        t.abort();
    }
}

/// Loads the snapshot into the builder (when ZooKeeper did not answer in time at start).
pub fn load_snapshot(path: &std::path::Path, tx: &mpsc::UnboundedSender<Update>) -> bool {
    match snapshot::load(path) {
        Ok(listing) => {
            let n: usize = listing.values().map(Vec::len).sum();
            log::warn!(
                "zookeeper unreachable at start: serving {} services, {n} instances from snapshot {}",
                listing.len(),
                path.display()
            );
            let _ = tx.send(Update::Snapshot(listing));
            true
        }
        Err(e) => {
            log::error!("zookeeper unreachable at start and no usable snapshot: {e}");
            false
        }
    }
}

/// A registry listing from `(service, [address…])` pairs, for tests.
#[cfg(test)]
fn listing(pairs: &[(&str, &[&str])]) -> Listing {
    pairs.iter().map(|(s, a)| (s.to_string(), a.iter().map(|x| Instance::new(*x)).collect())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, addrs: &[&str]) -> Update {
        Update::Service(name.into(), addrs.iter().map(|a| Instance::new(*a)).collect())
    }

    #[test]
    fn changes_are_logged_once_as_a_diff() {
        let mut r = Registry::new(true);
        let (log, changed) = r.apply(Update::Full(listing(&[("svc1", &["10.0.0.1:80", "10.0.0.2:80"])])));
        assert_eq!(log, ["zookeeper: loaded 1 services, 2 instances"]);
        assert!(changed.contains("svc1"));
        let (log, _) = r.apply(Update::Full(listing(&[("svc1", &["10.0.0.1:80"]), ("svc2", &[])])));
        assert_eq!(log, ["service svc1: -10.0.0.2:80 (1 instances)", "service svc2: appeared (0 instances)"]);
        r.apply(svc("svc1", &["10.0.0.1:80", "10.0.0.2:80"]));
        let (log, _) = r.apply(svc("svc1", &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]));
        assert_eq!(log, ["service svc1: +10.0.0.3:80 (3 instances)"]);
        let (log, changed) = r.apply(svc("svc1", &["10.0.0.3:80", "10.0.0.2:80", "10.0.0.1:80"]));
        assert!(log.is_empty() && changed.is_empty(), "same set in another order is no change");
        let (log, _) = r.apply(svc("svc1", &["10.0.0.3:80"]));
        assert_eq!(log, ["service svc1: -10.0.0.1:80 -10.0.0.2:80 (1 instances)"]);
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
    fn a_snapshot_never_overrides_a_live_listing() {
        let mut r = Registry::new(true);
        r.apply(Update::Full(listing(&[("a", &["10.0.0.1:80"])])));
        r.apply(Update::Snapshot(listing(&[("a", &["10.0.0.9:80"])])));
        assert_eq!(r.listing()["a"][0].address, "10.0.0.1:80");
        assert_eq!(r.source(), Some(Source::Zookeeper));
    }

    #[test]
    fn configured_weights_override_a_discovered_services_weights() {
        let mut services = Services::new();
        let weights = [("10.0.0.2:80".to_string(), 5)].into_iter().collect();
        services.insert("a".into(), crate::settings::ServiceSettings { weights, ..Default::default() });
        let mut b = TableBuilder::new(&services, Strategy::Weighted);
        let mut r = Registry::new(true);
        let (_, ch) = r.apply(Update::Full(listing(&[("a", &["10.0.0.1:80", "10.0.0.2:80"])])));
        let t = b.build(&r, &ch);
        let w: Vec<u32> = t.get("a").unwrap().instances.iter().map(|i| i.weight).collect();
        assert_eq!(w, [1, 5]);
    }

    #[test]
    fn the_builder_keeps_static_services_and_unchanged_balancers() {
        let mut services = Services::new();
        services.insert(
            "static".into(),
            crate::settings::ServiceSettings {
                instances: Some(vec![Instance::new("127.0.0.1:1")]),
                ..Default::default()
            },
        );
        let mut b = TableBuilder::new(&services, Strategy::RoundRobin);
        let mut r = Registry::new(true);
        let (_, ch) = r.apply(Update::Full(listing(&[
            ("a", &["10.0.0.1:80"]),
            ("b", &["10.0.0.2:80"]),
            ("static", &["10.9.9.9:80"]),
        ])));
        let t1 = b.build(&r, &ch);
        assert_eq!(t1.get("static").unwrap().instances[0].address, "127.0.0.1:1", "static wins");
        let (_, ch) = r.apply(svc("a", &["10.0.0.3:80"]));
        let t2 = b.build(&r, &ch);
        assert_eq!(t2.get("a").unwrap().instances[0].weight, 1);
        assert!(Arc::ptr_eq(t1.get("b").unwrap(), t2.get("b").unwrap()), "unchanged service reused");
        assert_eq!(t2.get("a").unwrap().instances[0].address, "10.0.0.3:80");
    }
}
