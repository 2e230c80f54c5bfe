//! The ZooKeeper side of discovery for one worker: its session, the watches on the registry,
//! and the [`Update`]s they turn into.
//!
//! ```text
//! run ─ connect ─▶ session ─┬─ persistent_session: one persistent recursive watch on the root,
//!  ▲                        │    full_sync, then every event relists the service it names
//!  │                        └─ (server without persistent watches) initial_sync ─▶ watch_root,
//!  │                             one watch_service task per service, one-shot watches
//!  └──── session ended: new session, full resync
//! ```
//! Events are never counted (several changes collapse into one event): the node is listed
//! again and the full child set is diffed downstream. A disconnection keeps the table (the
//! session lives on, the client fails over to another ensemble member); an expired or closed
//! session is replaced by a new one and a full resync. Every listing also goes to the
//! [`RegistryReport`] (`GET /registry`): each node read, its outcome and why.
//!
//! - [`persistent`]: the session under one persistent recursive watch (ZooKeeper >= 3.6).
//! - [`oneshot`]: the fallback, one-shot watches per service and on the root.
//! - [`listing`]: listing one service or many, parsing its nodes, dating its changes.

mod listing;
mod oneshot;
mod persistent;

use std::collections::HashSet;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::sync::mpsc;
use zookeeper_client as zk;

use crate::config::ZkSettings;
use crate::discovery::report::RegistryReport;
use crate::discovery::retry::{retry, Backoff};
use crate::discovery::update::{Sourced, Update};
use crate::metrics::{Metrics, ZkState};

/// What ties one source's watcher to the rest of the worker.
pub struct Link {
    /// The source's position among the `[[zookeeper]]` entries.
    pub index: usize,
    /// Where its updates go.
    pub tx: mpsc::UnboundedSender<Sourced>,
    /// Its metrics view (`Metrics::for_source`).
    pub metrics: Metrics,
    /// Its nodes, for `/registry`.
    pub report: Arc<RegistryReport>,
    /// Other sources' namespaces inside this one's: their prefix and name. A service name in
    /// one of them is theirs, never this source's (file order decides nothing).
    pub foreign: Vec<(String, String)>,
}

/// The ZooKeeper side of discovery for one worker and one source.
pub struct Watcher {
    settings: ZkSettings,
    skip: HashSet<String>,
    /// Services reached over TLS (a Curator instance's `sslPort` is theirs).
    tls: HashSet<String>,
    /// This source's position among the `[[zookeeper]]` entries (its updates are tagged with it).
    index: usize,
    tx: mpsc::UnboundedSender<Sourced>,
    /// The metrics view for this source.
    metrics: Metrics,
    /// One-shot watches the service tasks hold now (for the watch gauge).
    watches: AtomicUsize,
    /// Every node read and what became of it (`GET /registry`).
    report: Arc<RegistryReport>,
    /// Other sources' namespaces inside this one's (see [`Link::foreign`]).
    foreign: Vec<(String, String)>,
}

impl Watcher {
    /// `skip`: services with static instances, never looked up.
    pub fn new(
        settings: ZkSettings,
        (skip, tls): (HashSet<String>, HashSet<String>),
        link: Link,
    ) -> Self {
        let Link { index, tx, metrics, report, foreign } = link;
        let watches = AtomicUsize::new(0);
        Watcher { settings, skip, tls, index, tx, metrics, watches, report, foreign }
    }

    /// Sends an update to the builder, tagged with this source and its names prefixed; a
    /// service whose name falls in another source's namespace is left out.
    fn send(&self, update: Update) {
        let update = match update {
            Update::Full(all) => Update::Full(
                all.into_iter().filter_map(|(k, v)| Some((self.own_name(&k)?, v))).collect(),
            ),
            Update::Service(n, list) => match self.own_name(&n) {
                Some(n) => Update::Service(n, list),
                None => return,
            },
            Update::Removed(n) => match self.own_name(&n) {
                Some(n) => Update::Removed(n),
                None => return,
            },
            Update::Withdrawn(n, list) => match self.own_name(&n) {
                Some(n) => Update::Withdrawn(n, list),
                None => return,
            },
            other => other,
        };
        let _ = self.tx.send(Sourced(self.index, update));
    }

    /// `name` as routes know it (this source's prefix before it); `None` when that falls in
    /// another source's namespace — the reason goes to `/registry`.
    fn own_name(&self, name: &str) -> Option<String> {
        let full = format!("{}{name}", self.settings.prefix);
        let Some((prefix, source)) =
            self.foreign.iter().find(|(p, _)| full.starts_with(p.as_str()))
        else {
            return Some(full);
        };
        let why = format!(
            "service name {full:?} is in source {source}'s namespace (prefix {prefix:?}): not taken from this source"
        );
        let node = crate::discovery::report::NodeReport {
            node: name.to_string(),
            outcome: crate::discovery::report::Outcome::Rejected,
            reason: Some(why),
            instance: None,
            mzxid: None,
            changed_unix_ms: None,
        };
        self.report.service(name, vec![node]);
        None
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
            self.metrics.set_zk_session(client.session_id().0);
            self.metrics.set_zk_state(ZkState::Connected);
            self.clone().session(client).await;
        }
    }

    /// A new session for this source (see [`connect`]).
    async fn connect(&self) -> Result<zk::Client, zk::Error> {
        connect(&self.settings).await
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

    /// The connection to the ensemble dropped; the session lives on while the client reconnects.
    pub(super) fn disconnected(&self) {
        self.metrics.set_zk_state(ZkState::Disconnected);
        log::warn!(
            "zookeeper: disconnected; serving the last known routes while the client reconnects"
        );
    }
}

/// A new session on the ensemble `settings` names; with `auth`, its credentials are added
/// before the first request, so nodes behind ZooKeeper ACLs (digest) can be read; with `tls`,
/// over TLS.
pub(crate) async fn connect(settings: &ZkSettings) -> Result<zk::Client, zk::Error> {
    let mut connector = zk::Client::connector()
        .with_session_timeout(settings.session_timeout)
        .with_connection_timeout(settings.connect_timeout)
        .with_fail_eagerly();
    if let Some((scheme, credentials)) = settings.auth_parts() {
        connector = connector.with_auth(scheme, credentials.as_bytes());
    }
    if let Some(tls) = &settings.tls {
        // Read at every session: renewed certificates are picked up by the next one.
        let (ca, identity) = tls.read().map_err(|e| {
            log::warn!("zookeeper {}: {e}", settings.hosts);
            zk::Error::BadArguments(&"zookeeper.tls: unreadable PEM file")
        })?;
        let mut options = zk::TlsOptions::new().with_pem_ca(&ca)?;
        if let Some((cert, key)) = identity {
            options = options.with_pem_identity(&cert, &key)?;
        }
        // Every host of the connect string over TLS (`tcp://host` would opt one out).
        return connector.with_tls(options).secure_connect(&settings.hosts).await;
    }
    connector.connect(&settings.hosts).await
}
