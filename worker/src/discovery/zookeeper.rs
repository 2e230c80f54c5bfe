//! The ZooKeeper side of discovery for one worker: its session, the one-shot watches on the
//! registry, and the [`Update`]s they turn into.
//!
//! ```text
//! run ─ connect ─▶ session ─▶ initial_sync ─▶ watch_root ─┬─ relist root ─▶ reconcile (start/stop service tasks)
//!  ▲                                                      └─ session state (disconnected / reconnected / ended)
//!  └──────────── session ended: new session, full resync ◀─┘
//! one watch_service task per service: wait for its watch ─▶ list_service ─▶ Update::Service
//! ```
//! Every watch is one-shot: after an event the node is listed again with a new watch and the
//! full child set is diffed downstream; events are never counted (several changes collapse into
//! one event). A disconnection keeps the table (the session lives on, the client fails over to
//! another ensemble member and restores its watches); an expired or closed session is replaced
//! by a new one and a full resync.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zookeeper_client as zk;

use crate::config::ZkSettings;
use crate::discovery::retry::{retry, Backoff};
use crate::discovery::snapshot::Listing;
use crate::discovery::update::Update;
use crate::metrics::{Metrics, ZkState};
use crate::table::Instance;

/// The ZooKeeper side of discovery for one worker.
pub struct Watcher {
    settings: ZkSettings,
    skip: HashSet<String>,
    /// Services reached over TLS (a Curator instance's `sslPort` is theirs).
    tls: HashSet<String>,
    tx: mpsc::UnboundedSender<Update>,
    metrics: Metrics,
    /// One-shot watches the service tasks hold now (for the watch gauge).
    watches: AtomicUsize,
}

/// One listing of a service, and the watches that fire when it changes.
struct Listed {
    instances: Vec<Instance>,
    watches: Vec<zk::OneshotWatcher>,
    /// Nodes that did not parse: full path, and why.
    malformed: Vec<(String, String)>,
    /// The most recently changed node read (its mzxid and mtime), for the discovery lag; `None`
    /// when no node data was read (the registrator format keeps everything in node names: see
    /// [`Watcher::date_new_nodes`]).
    newest: Option<(i64, i64)>,
    /// The instance node names listed.
    children: Vec<String>,
}

/// The newest change each service's listing has shown, so that a relisting stamps only a
/// change that is new: its node's mtime is when ZooKeeper recorded it (a removal leaves no node
/// to date, so it carries no stamp).
#[derive(Default)]
struct Stamps(HashMap<String, i64>, HashMap<String, HashSet<String>>);

impl Stamps {
    /// Records `service`'s newest node; returns its mtime when it is newer than the last seen
    /// (never for the first listing: that is a baseline, not a change).
    fn seen(&mut self, service: &str, newest: Option<(i64, i64)>) -> Option<u64> {
        let (mzxid, mtime) = newest?;
        let last = self.0.insert(service.to_string(), mzxid);
        match last {
            Some(last) if mzxid > last => Some(mtime.max(0) as u64),
            Some(last) => {
                self.0.insert(service.to_string(), last.max(mzxid));
                None
            }
            None => None,
        }
    }
}

impl Listed {
    /// Warns about each malformed node once: `warned` holds the nodes warned about in the
    /// previous listing, so a relisting does not warn again but a node broken anew does.
    fn warn_malformed(&self, service: &str, warned: &mut HashSet<String>) {
        for (node, why) in &self.malformed {
            if !warned.contains(node) {
                log::warn!("service {service}: skipping {node}: {why}");
            }
        }
        *warned = self.malformed.iter().map(|(node, _)| node.clone()).collect();
    }
}

/// The per-service watch tasks of one session; dropping it stops them all.
#[derive(Default)]
struct ServiceTasks(HashMap<String, JoinHandle<()>>);

impl Drop for ServiceTasks {
    fn drop(&mut self) {
        for t in self.0.values() {
            t.abort();
        }
    }
}

impl Watcher {
    /// `skip`: services with static instances, never looked up.
    pub fn new(
        settings: ZkSettings,
        (skip, tls): (HashSet<String>, HashSet<String>),
        tx: mpsc::UnboundedSender<Update>,
        metrics: Metrics,
    ) -> Self {
        Watcher { settings, skip, tls, tx, metrics, watches: AtomicUsize::new(0) }
    }

    /// Runs forever: connect, sync, watch; on session loss, reconnect and resync.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Backoff::default();
        let mut failing = false;
        loop {
            let client = match self.connect().await {
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
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            log::info!(
                "zookeeper {}: session 0x{:x} established",
                self.settings.hosts,
                client.session_id().0
            );
            failing = false;
            backoff.reset();
            self.metrics.set_zk_state(ZkState::Connected);
            self.clone().session(client).await;
        }
    }

    async fn connect(&self) -> Result<zk::Client, zk::Error> {
        zk::Client::connector()
            .with_session_timeout(self.settings.session_timeout)
            .with_connection_timeout(self.settings.connect_timeout)
            .with_fail_eagerly()
            .connect(&self.settings.hosts)
            .await
    }

    /// One session: initial sync, then watch until the session ends — under one persistent
    /// recursive watch where the server has them (ZooKeeper ≥ 3.6), else one-shot watches per
    /// service.
    async fn session(self: Arc<Self>, client: zk::Client) {
        if let Some(end) = self.persistent_session(&client).await {
            self.metrics.set_zk_state(ZkState::Lost);
            log::warn!("zookeeper: session ended ({end}); opening a new session and resyncing, routes kept meanwhile");
            return;
        }
        let what = format!("zookeeper: listing {}", self.settings.root);
        let Some((names, root_watch)) = retry(&what, || self.list_root(&client)).await else {
            return;
        };
        let Some(mut tasks) = self.clone().initial_sync(&client, names).await else { return };
        let end = self.watch_root(&client, root_watch, &mut tasks).await;
        self.metrics.set_zk_state(ZkState::Lost);
        log::warn!("zookeeper: session ended ({end}); opening a new session and resyncing, routes kept meanwhile");
    }

    /// A session under one persistent recursive watch on the root: one watch for the whole
    /// registry, where one-shot watching costs one per service (and one per instance for the
    /// formats that read node data) on every worker of every host. The watch is added before
    /// the listing, so nothing changes unseen in between. Each event names a node; the service
    /// it belongs to is listed again (events queued meanwhile are folded into the same pass),
    /// and a change at the service level re-reads the root. After a reconnect the watch is added
    /// again and the registry resynced: zookeeper-client 0.11 does not restore persistent
    /// watches, and events during the disconnection are not replayed. `None`: the server has no
    /// persistent watches; the caller falls back to one-shot watches.
    async fn persistent_session(self: &Arc<Self>, client: &zk::Client) -> Option<zk::SessionState> {
        let root = self.settings.root.trim_end_matches('/').to_string();
        let root = if root.is_empty() { "/".to_string() } else { root };
        let mode = zk::AddWatchMode::PersistentRecursive;
        let mut watcher = match client.watch(&root, mode).await {
            Ok(w) => w,
            Err(e) => {
                log::info!("zookeeper: no persistent recursive watch ({e}); watching each service");
                return None;
            }
        };
        log::info!("zookeeper: one persistent recursive watch on {root}");
        self.metrics.set_zk_watches(1);
        let mut warned: HashMap<String, HashSet<String>> = HashMap::new();
        let mut stamps = Stamps::default();
        let Some(mut known) = self.full_sync(client, (&mut warned, &mut stamps)).await else {
            return Some(zk::SessionState::Expired);
        };
        let mut state = client.state_watcher();
        loop {
            tokio::select! {
                event = watcher.changed() => {
                    let (mut services, mut at_root) = (BTreeSet::new(), false);
                    let mut next = Some(event);
                    while let Some(ev) = next.take() {
                        if ev.event_type == zk::EventType::Session {
                            if ev.session_state.is_terminated() {
                                return Some(ev.session_state);
                            }
                        } else {
                            self.classify(&root, &ev.path, &mut services, &mut at_root);
                        }
                        next = futures::FutureExt::now_or_never(watcher.changed());
                    }
                    self.metrics.zk_event();
                    if at_root {
                        let what = format!("zookeeper: listing {root}");
                        let Some(names) = retry(&what, || self.list_names(client, &root)).await else {
                            return Some(zk::SessionState::Expired);
                        };
                        for gone in known.difference(&names) {
                            let _ = self.tx.send(Update::Removed(gone.clone()));
                        }
                        services.extend(names.difference(&known).cloned());
                        known = names;
                    }
                    for name in services.into_iter().filter(|s| known.contains(s)) {
                        let what = format!("service {name}: listing");
                        let listing = retry(&what, || self.list_service_as(client, &name, false));
                        let Some(mut l) = listing.await else {
                            return Some(zk::SessionState::Expired);
                        };
                        self.date_new_nodes(client, &name, &mut l, &mut stamps).await;
                        l.warn_malformed(&name, warned.entry(name.clone()).or_default());
                        if let Some(at) = stamps.seen(&name, l.newest) {
                            let _ = self.tx.send(Update::Stamp(at));
                        }
                        let _ = self.tx.send(Update::Service(name, l.instances));
                    }
                }
                s = state.changed() => match s {
                    zk::SessionState::Disconnected => self.disconnected(),
                    zk::SessionState::SyncConnected => {
                        self.metrics.set_zk_state(ZkState::Connected);
                        watcher = match client.watch(&root, mode).await {
                            Ok(w) => w,
                            Err(e) => {
                                log::warn!("zookeeper: cannot watch {root} again after reconnecting ({e})");
                                return Some(zk::SessionState::Disconnected);
                            }
                        };
                        let Some(names) = self.full_sync(client, (&mut warned, &mut stamps)).await else {
                            return Some(zk::SessionState::Expired);
                        };
                        known = names;
                        log::info!("zookeeper: reconnected; session kept, watch added again and registry resynced");
                    }
                    s if s.is_terminated() => return Some(s),
                    _ => {}
                },
            }
        }
    }

    /// The connection to the ensemble dropped; the session lives on while the client reconnects.
    fn disconnected(&self) {
        self.metrics.set_zk_state(ZkState::Disconnected);
        log::warn!(
            "zookeeper: disconnected; serving the last known routes while the client reconnects"
        );
    }

    /// Which service an event's node belongs to; a change of the root's children (a service
    /// node created or deleted, or the root itself) sets `at_root`.
    fn classify(
        &self,
        root: &str,
        path: &str,
        services: &mut BTreeSet<String>,
        at_root: &mut bool,
    ) {
        let rest = match root {
            "/" => path.strip_prefix('/'),
            _ => path.strip_prefix(root).and_then(|r| {
                if r.is_empty() {
                    Some("")
                } else {
                    r.strip_prefix('/')
                }
            }),
        };
        let Some(rest) = rest else { return };
        if rest.is_empty() {
            *at_root = true;
            return;
        }
        let (service, below) = match rest.split_once('/') {
            Some((s, b)) => (s, Some(b)),
            None => (rest, None),
        };
        if self.skip.contains(service) {
            return;
        }
        if below.is_none() {
            *at_root = true;
        }
        services.insert(service.to_string());
    }

    /// The root's service names (none while it does not exist), static services left out.
    async fn list_names(
        &self,
        client: &zk::Client,
        root: &str,
    ) -> Result<HashSet<String>, zk::Error> {
        match client.list_children(root).await {
            Ok(names) => Ok(names.into_iter().filter(|n| !self.skip.contains(n)).collect()),
            Err(zk::Error::NoNode) => Ok(HashSet::new()),
            Err(e) => Err(e),
        }
    }

    /// Lists every service without one-shot watches (pipelined) and sends one
    /// [`Update::Full`]. Returns the service names; `None`: the session ended meanwhile.
    async fn full_sync(
        &self,
        client: &zk::Client,
        (warned, stamps): (&mut HashMap<String, HashSet<String>>, &mut Stamps),
    ) -> Option<HashSet<String>> {
        let root = self.settings.root.trim_end_matches('/');
        let root = if root.is_empty() { "/" } else { root };
        let what = format!("zookeeper: listing {root}");
        let names = retry(&what, || self.list_names(client, root)).await?;
        let ordered: Vec<String> = names.iter().cloned().collect();
        let what = format!("zookeeper: listing {} services", ordered.len());
        let listed = retry(&what, || self.list_many(client, &ordered)).await?;
        let mut full = Listing::new();
        for (name, l) in ordered.into_iter().zip(listed) {
            l.warn_malformed(&name, warned.entry(name.clone()).or_default());
            // A resync's listing is a new baseline: what changed while the session was away
            // has no one moment to measure from.
            stamps.0.insert(name.clone(), l.newest.map_or(0, |(z, _)| z));
            stamps.1.insert(name.clone(), l.children.iter().cloned().collect());
            full.insert(name, l.instances);
        }
        self.metrics.zk_resync();
        let _ = self.tx.send(Update::Full(full));
        Some(names)
    }

    /// Lists every service (pipelined), sends one [`Update::Full`], then starts a watch task per
    /// service on the watches the listing set. `None`: the session ended during the sync.
    async fn initial_sync(
        self: Arc<Self>,
        client: &zk::Client,
        names: Vec<String>,
    ) -> Option<ServiceTasks> {
        let mut listed: FuturesUnordered<_> = names
            .into_iter()
            .map(|name| async {
                let what = format!("service {name}: listing");
                let l = retry(&what, || self.list_service(client, &name)).await;
                (name, l)
            })
            .collect();
        let mut full = Listing::new();
        let mut first = Vec::new();
        while let Some((name, l)) = listed.next().await {
            let l = l?;
            let mut warned = HashSet::new();
            l.warn_malformed(&name, &mut warned);
            full.insert(name.clone(), l.instances);
            first.push((name, l.watches, (warned, Some(l.newest.map_or(0, |(z, _)| z)))));
        }
        drop(listed);
        self.metrics.zk_resync();
        let _ = self.tx.send(Update::Full(full));
        let mut tasks = ServiceTasks::default();
        for (name, watches, warned) in first {
            let task = tokio::spawn(self.clone().watch_service(
                client.clone(),
                name.clone(),
                Some(watches),
                warned,
            ));
            tasks.0.insert(name, task);
        }
        Some(tasks)
    }

    /// Follows the service list and the session state until the session ends; returns why.
    async fn watch_root(
        self: &Arc<Self>,
        client: &zk::Client,
        root_watch: zk::OneshotWatcher,
        tasks: &mut ServiceTasks,
    ) -> zk::SessionState {
        let mut state = client.state_watcher();
        let mut root_event = Box::pin(root_watch.changed());
        let what = format!("zookeeper: listing {}", self.settings.root);
        loop {
            tokio::select! {
                event = &mut root_event => {
                    if event.event_type == zk::EventType::Session && event.session_state.is_terminated() {
                        return event.session_state;
                    }
                    let Some((names, w)) = retry(&what, || self.list_root(client)).await else {
                        return zk::SessionState::Expired;
                    };
                    root_event = Box::pin(w.changed());
                    self.metrics.zk_event();
                    self.reconcile(client, names, tasks);
                }
                s = state.changed() => match s {
                    zk::SessionState::Disconnected => self.disconnected(),
                    zk::SessionState::SyncConnected => {
                        self.metrics.set_zk_state(ZkState::Connected);
                        log::info!("zookeeper: reconnected; session kept, watches restored");
                    }
                    s if s.is_terminated() => return s,
                    _ => {}
                },
            }
        }
    }

    /// Stops the watch tasks of services gone from the root (reporting their removal) and
    /// starts one for each new service.
    fn reconcile(
        self: &Arc<Self>,
        client: &zk::Client,
        names: Vec<String>,
        tasks: &mut ServiceTasks,
    ) {
        let names: HashSet<String> = names.into_iter().collect();
        tasks.0.retain(|name, task| {
            let keep = names.contains(name);
            if !keep {
                task.abort();
                let _ = self.tx.send(Update::Removed(name.clone()));
            }
            keep
        });
        for name in names {
            if let std::collections::hash_map::Entry::Vacant(slot) = tasks.0.entry(name) {
                let name = slot.key().clone();
                slot.insert(tokio::spawn(self.clone().watch_service(
                    client.clone(),
                    name,
                    None,
                    (HashSet::new(), None),
                )));
            }
        }
    }

    /// Lists the root's children (service names) with a watch. A missing root is an empty
    /// registry, watched for creation.
    async fn list_root(
        &self,
        client: &zk::Client,
    ) -> Result<(Vec<String>, zk::OneshotWatcher), zk::Error> {
        let root = &self.settings.root;
        match children_or_creation(client, root).await? {
            Children::Listed(names, w) => {
                Ok((names.into_iter().filter(|n| !self.skip.contains(n)).collect(), w))
            }
            Children::Missing(w) => {
                log::warn!("zookeeper: registry root {root} does not exist yet; watching for it");
                Ok((Vec::new(), w))
            }
        }
    }

    /// Lists one service with watches: its children, and each child's data where the format
    /// needs it. A missing service node is an empty service, watched for creation. Malformed
    /// nodes are left out and reported in [`Listed::malformed`].
    async fn list_service(&self, client: &zk::Client, name: &str) -> Result<Listed, zk::Error> {
        self.list_service_as(client, name, true).await
    }

    /// [`Self::list_service`], with one-shot watches (`watch`) or without (under the
    /// persistent recursive watch, which already covers every node).
    async fn list_service_as(
        &self,
        client: &zk::Client,
        name: &str,
        watch: bool,
    ) -> Result<Listed, zk::Error> {
        let path = self.service_path(name);
        let mut watches = Vec::new();
        let children = if watch {
            match children_or_creation(client, &path).await? {
                Children::Listed(children, w) => {
                    watches.push(w);
                    children
                }
                Children::Missing(w) => {
                    return Ok(Listed {
                        instances: Vec::new(),
                        watches: vec![w],
                        malformed: Vec::new(),
                        newest: None,
                        children: Vec::new(),
                    })
                }
            }
        } else {
            match client.list_children(&path).await {
                Ok(children) => children,
                Err(zk::Error::NoNode) => Vec::new(),
                Err(e) => return Err(e),
            }
        };
        let format = self.settings.format;
        let children: Vec<String> =
            children.into_iter().filter(|c| format.accepts_name(c)).collect();
        let mut newest = None;
        let data: Vec<Option<Vec<u8>>> = if format.needs_data() {
            let reads = children.iter().map(|c| {
                let p = format!("{path}/{c}");
                async move {
                    match watch {
                        true => {
                            client.get_and_watch_data(&p).await.map(|(d, st, w)| (d, st, Some(w)))
                        }
                        false => client.get_data(&p).await.map(|(d, st)| (d, st, None)),
                    }
                }
            });
            let mut out = Vec::new();
            for r in futures::future::join_all(reads).await {
                match r {
                    Ok((data, stat, w)) => {
                        watches.extend(w);
                        newest = newest_of(newest, &stat);
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
        let mut listed = self.parse_listing(name, &path, &children, data, watches);
        listed.newest = newest;
        Ok(listed)
    }

    /// Instances (and malformed nodes) from a service's children and their data.
    fn parse_listing(
        &self,
        name: &str,
        path: &str,
        children: &[String],
        data: Vec<Option<Vec<u8>>>,
        watches: Vec<zk::OneshotWatcher>,
    ) -> Listed {
        let mut instances = Vec::new();
        let mut malformed = Vec::new();
        for (child, data) in children.iter().zip(data) {
            let Some(data) = data else { continue };
            let endpoint = self.settings.serverset_endpoint.as_deref();
            match self.settings.format.parse(child, &data, endpoint, self.tls.contains(name)) {
                Ok(Some(i)) => instances.push(i),
                Ok(None) => {}
                Err(why) => malformed.push((format!("{path}/{child}"), why)),
            }
        }
        Listed { instances, watches, malformed, newest: None, children: children.to_vec() }
    }

    /// Lists many services without watches, a few round trips in all: ZooKeeper's multi-read
    /// (3.6+) takes [`MULTI_READ`] children listings (then node data reads) per request, where
    /// one request per service made a 10 000-service sync cost 10 000 round trips.
    async fn list_many(
        &self,
        client: &zk::Client,
        names: &[String],
    ) -> Result<Vec<Listed>, zk::Error> {
        let paths: Vec<String> = names.iter().map(|n| self.service_path(n)).collect();
        let format = self.settings.format;
        let mut all_children: Vec<Vec<String>> = Vec::with_capacity(names.len());
        for chunk in paths.chunks(MULTI_READ) {
            let mut reader = client.new_multi_reader();
            for p in chunk {
                reader.add_get_children(p)?;
            }
            for result in reader.commit().await? {
                all_children.push(match result {
                    zk::MultiReadResult::Children { children } => {
                        children.into_iter().filter(|c| format.accepts_name(c)).collect()
                    }
                    zk::MultiReadResult::Error { err: zk::Error::NoNode } => Vec::new(),
                    zk::MultiReadResult::Error { err } => return Err(err),
                    _ => Vec::new(),
                });
            }
        }
        let mut all_data: Vec<Vec<Option<Vec<u8>>>> =
            all_children.iter().map(|c| c.iter().map(|_| Some(Vec::new())).collect()).collect();
        let mut newest: Vec<Option<(i64, i64)>> = vec![None; names.len()];
        if format.needs_data() {
            let nodes: Vec<(usize, usize, String)> = all_children
                .iter()
                .enumerate()
                .flat_map(|(s, cs)| {
                    let path = &paths[s];
                    cs.iter().enumerate().map(move |(c, child)| (s, c, format!("{path}/{child}")))
                })
                .collect();
            for chunk in nodes.chunks(MULTI_READ) {
                let mut reader = client.new_multi_reader();
                for (_, _, p) in chunk {
                    reader.add_get_data(p)?;
                }
                for ((s, c, _), result) in chunk.iter().zip(reader.commit().await?) {
                    all_data[*s][*c] = match result {
                        zk::MultiReadResult::Data { data, stat } => {
                            newest[*s] = newest_of(newest[*s], &stat);
                            Some(data)
                        }
                        // Vanished between the listing and the read: the next event lists again.
                        _ => None,
                    };
                }
            }
        }
        Ok(names
            .iter()
            .zip(paths.iter().zip(all_children.iter().zip(all_data)))
            .zip(newest)
            .map(|((name, (path, (children, data))), newest)| {
                let mut listed = self.parse_listing(name, path, children, data, Vec::new());
                listed.newest = newest;
                listed
            })
            .collect())
    }

    /// Dates the nodes new since `service`'s last listing when the format reads no node data
    /// (registrator: everything is in the name), so its changes have a discovery lag too: their
    /// stats are read at once (one round trip, additions only; a removal has no node to date).
    async fn date_new_nodes(
        &self,
        client: &zk::Client,
        service: &str,
        l: &mut Listed,
        stamps: &mut Stamps,
    ) {
        if self.settings.format.needs_data() {
            return;
        }
        let now: HashSet<String> = l.children.iter().cloned().collect();
        let Some(before) = stamps.1.insert(service.to_string(), now) else { return };
        let path = self.service_path(service);
        let new = l.children.iter().filter(|c| !before.contains(*c));
        let stats =
            futures::future::join_all(new.map(|c| client.check_stat(&format!("{path}/{c}")))).await;
        for stat in stats.into_iter().flatten().flatten() {
            l.newest = newest_of(l.newest, &stat);
        }
    }

    /// The node a service's instances are children of.
    fn service_path(&self, name: &str) -> String {
        let path = format!("{}/{name}", self.settings.root.trim_end_matches('/'));
        match self.settings.format.instances_dir() {
            Some(sub) => format!("{path}/{sub}"),
            None => path,
        }
    }

    /// Watches one service until its task is aborted or the session ends.
    async fn watch_service(
        self: Arc<Self>,
        client: zk::Client,
        name: String,
        mut watches: Option<Vec<zk::OneshotWatcher>>,
        (mut warned, baseline): (HashSet<String>, Option<i64>),
    ) {
        let what = format!("service {name}: listing");
        let mut stamps = Stamps::default();
        if let Some(z) = baseline {
            stamps.0.insert(name.clone(), z);
        }
        loop {
            if let Some(ws) = watches.take() {
                let n = ws.len();
                let total = self.watches.fetch_add(n, Ordering::Relaxed) + n;
                self.metrics.set_zk_watches(total + 1);
                let mut fired: FuturesUnordered<_> = ws.into_iter().map(|w| w.changed()).collect();
                let event = fired.next().await;
                self.watches.fetch_sub(n, Ordering::Relaxed);
                match event {
                    Some(ev)
                        if ev.event_type == zk::EventType::Session
                            && ev.session_state.is_terminated() =>
                    {
                        return
                    }
                    Some(_) => {}
                    None => return,
                }
            }
            let Some(mut l) = retry(&what, || self.list_service(&client, &name)).await else {
                return;
            };
            self.date_new_nodes(&client, &name, &mut l, &mut stamps).await;
            l.warn_malformed(&name, &mut warned);
            self.metrics.zk_event();
            if let Some(at) = stamps.seen(&name, l.newest) {
                let _ = self.tx.send(Update::Stamp(at));
            }
            let _ = self.tx.send(Update::Service(name.clone(), l.instances));
            watches = Some(l.watches);
        }
    }
}

/// The newer of `newest` and the node `stat` describes, as (mzxid, mtime).
fn newest_of(newest: Option<(i64, i64)>, stat: &zk::Stat) -> Option<(i64, i64)> {
    match newest {
        Some((z, _)) if z >= stat.mzxid => newest,
        _ => Some((stat.mzxid, stat.mtime)),
    }
}

/// Reads per multi-read request (a few hundred kilobytes of answer at most).
const MULTI_READ: usize = 1000;

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
