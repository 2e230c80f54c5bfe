//! The fallback session for servers without persistent watches: a one-shot watch on the root
//! (service nodes come and go) and one task per service re-listing it with new watches each time
//! one fires.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::task::JoinHandle;
use zookeeper_client as zk;

use super::listing::{children_or_creation, Children, Listed, Stamps};
use super::Watcher;
use crate::discovery::retry::retry;
use crate::discovery::snapshot::Listing;
use crate::discovery::update::Update;
use crate::metrics::ZkState;

/// The per-service watch tasks of one session; dropping it stops them all.
#[derive(Default)]
pub(super) struct ServiceTasks(HashMap<String, JoinHandle<()>>);

impl Drop for ServiceTasks {
    fn drop(&mut self) {
        for t in self.0.values() {
            t.abort();
        }
    }
}

impl Watcher {
    /// Lists every service (pipelined), sends one [`Update::Full`], then starts a watch task per
    /// service on the watches the listing set. `None`: the session ended during the sync.
    pub(super) async fn initial_sync(
        self: Arc<Self>,
        client: &zk::Client,
        names: Vec<String>,
    ) -> Option<ServiceTasks> {
        let mut listed: FuturesUnordered<_> = names
            .into_iter()
            .map(|name| async {
                let what = format!("service {name}: listing");
                let l = retry(&what, || self.list_service(client, &name, None)).await;
                (name, l)
            })
            .collect();
        let mut full = Listing::new();
        let mut first = Vec::new();
        let mut report = std::collections::BTreeMap::new();
        while let Some((name, l)) = listed.next().await {
            let mut l = l?;
            if let Some(w) = l.withdrawals(&name) {
                self.send(w);
            }
            let mut warned = HashSet::new();
            l.warn_malformed(&name, &mut warned);
            let mut stamps = Stamps::default();
            stamps.baseline(&name, &l);
            full.insert(name.clone(), l.instances);
            report.insert(name.clone(), l.nodes);
            first.push((name, l.watches, (warned, stamps)));
        }
        drop(listed);
        self.report.replace_all(report);
        self.metrics.zk_resync();
        self.send(Update::Full(full));
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
    pub(super) async fn watch_root(
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
                self.report.removed(name);
                self.send(Update::Removed(name.clone()));
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
                    (HashSet::new(), Stamps::default()),
                )));
            }
        }
    }

    /// Lists the root's children (service names) with a watch. A missing root is an empty
    /// registry, watched for creation.
    pub(super) async fn list_root(
        &self,
        client: &zk::Client,
    ) -> Result<(Vec<String>, zk::OneshotWatcher), zk::Error> {
        let root = &self.settings.root;
        match children_or_creation(client, root).await? {
            Children::Listed(names, w) => {
                if self.report.set_root(true) == Some(false) {
                    log::info!("zookeeper: registry root {root} exists now");
                }
                Ok((names.into_iter().filter(|n| !self.skip.contains(n)).collect(), w))
            }
            Children::Missing(w) => {
                if self.report.set_root(false) != Some(false) {
                    log::warn!(
                        "zookeeper: registry root {root} does not exist: nothing is routed from it until it is created (a typo in zookeeper.root?); watching for it"
                    );
                }
                Ok((Vec::new(), w))
            }
        }
    }

    /// Lists one service with watches: its children, and each child's data where the format
    /// needs it. A missing service node is an empty service, watched for creation. Malformed
    /// nodes are left out and reported in [`Listed::malformed`].
    async fn list_service(
        &self,
        client: &zk::Client,
        name: &str,
        known: Option<&HashSet<String>>,
    ) -> Result<Listed, zk::Error> {
        self.list_service_as(client, name, true, known).await
    }

    /// Watches one service until its task is aborted or the session ends.
    async fn watch_service(
        self: Arc<Self>,
        client: zk::Client,
        name: String,
        mut watches: Option<Vec<zk::OneshotWatcher>>,
        (mut warned, mut stamps): (HashSet<String>, Stamps),
    ) {
        let what = format!("service {name}: listing");
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
            let known = stamps.names(&name);
            let Some(mut l) = retry(&what, || self.list_service(&client, &name, known)).await
            else {
                return;
            };
            l.warn_malformed(&name, &mut warned);
            self.metrics.zk_event();
            if let Some(at) = stamps.seen(&name, &l) {
                self.send(Update::Stamp(at));
            }
            if let Some(w) = l.withdrawals(&name) {
                self.send(w);
            }
            self.report.service(&name, l.nodes);
            self.send(Update::Service(name.clone(), l.instances));
            watches = Some(l.watches);
        }
    }
}
