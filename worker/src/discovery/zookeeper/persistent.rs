//! A session under one persistent recursive watch on the registry root (ZooKeeper >= 3.6):
//! one watch for the whole registry, every event relisting the service it names.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use zookeeper_client as zk;

use super::listing::Stamps;
use super::Watcher;
use crate::discovery::retry::retry;
use crate::discovery::snapshot::Listing;
use crate::discovery::update::Update;
use crate::metrics::ZkState;

impl Watcher {
    /// A session under one persistent recursive watch on the root: one watch for the whole
    /// registry, where one-shot watching costs one per service (and one per instance for the
    /// formats that read node data) on every worker of every host. The watch is added before
    /// the listing, so nothing changes unseen in between. Each event names a node; the service
    /// it belongs to is listed again (events queued meanwhile are folded into the same pass),
    /// and a change at the service level re-reads the root. After a reconnect the watch is added
    /// again and the registry resynced: zookeeper-client 0.11 does not restore persistent
    /// watches, and events during the disconnection are not replayed. `None`: the server has no
    /// persistent watches; the caller falls back to one-shot watches.
    pub(super) async fn persistent_session(
        self: &Arc<Self>,
        client: &zk::Client,
    ) -> Option<zk::SessionState> {
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
                    let seen = (&mut warned, &mut stamps);
                    if self.relist(client, (&root, &mut known), (services, at_root), seen).await.is_none() {
                        return Some(zk::SessionState::Expired);
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

    /// Lists again what a batch of events named: the root's children when a service node
    /// came or went (`known` updated, removals sent), then each named service still known.
    /// `None`: ZooKeeper stayed unreachable through the retries (the session is taken for lost).
    async fn relist(
        &self,
        client: &zk::Client,
        (root, known): (&str, &mut HashSet<String>),
        (mut services, at_root): (BTreeSet<String>, bool),
        (warned, stamps): (&mut HashMap<String, HashSet<String>>, &mut Stamps),
    ) -> Option<()> {
        if at_root {
            let what = format!("zookeeper: listing {root}");
            let names = retry(&what, || self.list_names(client, root)).await?;
            for gone in known.difference(&names) {
                self.report.removed(gone);
                self.send(Update::Removed(gone.clone()));
            }
            services.extend(names.difference(known).cloned());
            *known = names;
        }
        for name in services.into_iter().filter(|s| known.contains(s)) {
            let what = format!("service {name}: listing");
            let known_nodes = stamps.names(&name);
            let listing = retry(&what, || self.list_service_as(client, &name, false, known_nodes));
            let mut l = listing.await?;
            l.warn_malformed(&name, warned.entry(name.clone()).or_default());
            if let Some(at) = stamps.seen(&name, &l) {
                self.send(Update::Stamp(at));
            }
            if let Some(w) = l.withdrawals(&name) {
                self.send(w);
            }
            self.report.service(&name, l.nodes);
            self.send(Update::Service(name, l.instances));
        }
        Some(())
    }

    /// Which service an event's node belongs to; a change of the root's children (a service
    /// node created or deleted, or the root itself) sets `at_root`. Static services are left out.
    fn classify(
        &self,
        root: &str,
        path: &str,
        services: &mut BTreeSet<String>,
        at_root: &mut bool,
    ) {
        match node_of(root, path) {
            Node::Outside => {}
            Node::Root => *at_root = true,
            Node::Service(name, _) if self.skip.contains(name) => {}
            Node::Service(name, below) => {
                *at_root |= !below;
                services.insert(name.to_string());
            }
        }
    }

    /// The root's service names (none while it does not exist), static services left out.
    async fn list_names(
        &self,
        client: &zk::Client,
        root: &str,
    ) -> Result<HashSet<String>, zk::Error> {
        match client.list_children(root).await {
            Ok(names) => {
                if self.report.set_root(true) == Some(false) {
                    log::info!("zookeeper: registry root {root} exists now");
                }
                Ok(names.into_iter().filter(|n| !self.skip.contains(n)).collect())
            }
            Err(zk::Error::NoNode) => {
                if self.report.set_root(false) != Some(false) {
                    log::warn!(
                        "zookeeper: registry root {root} does not exist: nothing is routed from it until it is created (a typo in zookeeper.root?)"
                    );
                }
                Ok(HashSet::new())
            }
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
        let mut report = std::collections::BTreeMap::new();
        for (name, mut l) in ordered.into_iter().zip(listed) {
            l.warn_malformed(&name, warned.entry(name.clone()).or_default());
            if let Some(w) = l.withdrawals(&name) {
                self.send(w);
            }
            stamps.baseline(&name, &l);
            report.insert(name.clone(), l.nodes);
            full.insert(name, l.instances);
        }
        self.report.replace_all(report);
        self.metrics.zk_resync();
        self.send(Update::Full(full));
        Some(names)
    }
}

/// Where an event's path lies relative to the registry root.
#[derive(Debug, PartialEq, Eq)]
enum Node<'p> {
    /// Not under the root (another tree the recursive watch cannot send, or a sibling whose
    /// name merely starts like the root's: `/servicesX`).
    Outside,
    /// The root itself.
    Root,
    /// A service node (`false`) or a node below one (`true`: an instance, a Dubbo category).
    Service(&'p str, bool),
}

/// Classifies `path` against `root` (`/` or a path without a trailing `/`).
fn node_of<'p>(root: &str, path: &'p str) -> Node<'p> {
    let rest = match root {
        "/" => path.strip_prefix('/'),
        _ => path.strip_prefix(root).and_then(|r| match r.is_empty() {
            true => Some(""),
            false => r.strip_prefix('/'),
        }),
    };
    match rest {
        None => Node::Outside,
        Some("") => Node::Root,
        Some(rest) => match rest.split_once('/') {
            Some((service, _)) => Node::Service(service, true),
            None => Node::Service(rest, false),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_paths_are_classified_against_the_root() {
        assert_eq!(node_of("/services", "/services"), Node::Root);
        assert_eq!(node_of("/services", "/services/web"), Node::Service("web", false));
        assert_eq!(node_of("/services", "/services/web/10.0.0.1:80"), Node::Service("web", true));
        assert_eq!(
            node_of("/dubbo", "/dubbo/com.example.Api/providers/x"),
            Node::Service("com.example.Api", true)
        );
        assert_eq!(node_of("/services", "/servicesX/web"), Node::Outside, "a sibling, not below");
        assert_eq!(node_of("/services", "/other"), Node::Outside);
        assert_eq!(node_of("/", "/"), Node::Root);
        assert_eq!(node_of("/", "/web/i"), Node::Service("web", true));
    }
}
