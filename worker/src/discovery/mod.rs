//! Discovery: from the ZooKeeper registry to route tables.
//!
//! ```text
//! zookeeper::Watcher ── Update (Full / Service / Removed) ──▶ builder::Builder ──▶ RouteTable ──swap──▶ SharedTable
//!   (session, one-shot watches)        ▲                       (update::Registry,      └──▶ snapshot::write_snapshots
//! load_snapshot (at start) ─ Update::Snapshot ─┘                   TableBuilder)
//! ```
//! - [`update`]: the updates and the pure registry they are applied to.
//! - [`builder`]: the one task that applies updates in order and publishes tables.
//! - [`guard`]: the removal guard, holding what one listing removes en masse.
//! - [`zookeeper`]: the session, the watches, reconnection and resync.
//! - [`retry`]: backoff with jitter and the one retry helper every ZooKeeper call uses.
//! - [`formats`]: the four registry formats (registrator, curator, serverset, nerve).
//! - [`snapshot`]: the on-disk copy of the last listing.
//! - [`report`]: every node read and what became of it, for `GET /registry`.
//! - [`register`]: `zkgate register`, the writer side of the formats.

pub mod builder;
pub mod changes;
pub mod formats;
pub mod guard;
pub mod register;
pub mod report;
pub mod retry;
pub mod snapshot;
pub mod update;
pub mod zookeeper;

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::table::{Source, Tracker};
use crate::SharedTable;
use builder::{Builder, Outputs, TableBuilder};
use changes::Changes;
use report::RegistryReport;
use update::Registry;
use update::Update;

/// Starts discovery when ZooKeeper is configured. The returned channel turns `Some(source)`
/// once routes are loaded: at once for static services or when a snapshot is configured (serve
/// stale at once), else when ZooKeeper's first listing arrives. ZooKeeper's listing always
/// replaces the snapshot's.
pub fn start(
    config: &Arc<Config>,
    slot: usize,
    (table, changes, report): (SharedTable, Arc<Changes>, Arc<RegistryReport>),
    tracker: Tracker,
    metrics: Metrics,
) -> watch::Receiver<Option<Source>> {
    let (ready_tx, ready_rx) = watch::channel(None);
    let Some(zk) = config.zookeeper.clone() else {
        let _ = ready_tx.send(Some(Source::Static));
        return ready_rx;
    };
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(path) = &config.cache.snapshot {
        // Queued before the watcher starts, so it can never arrive after ZooKeeper's listing.
        load_snapshot(path, &tx);
    }
    // One worker writes the snapshot: N workers writing the same file would only add fsyncs.
    let snapshot_tx = match (&config.cache.snapshot, slot) {
        (Some(path), 0) => {
            let (stx, srx) = watch::channel(Arc::default());
            tokio::spawn(snapshot::write_snapshots(path.clone(), srx));
            Some(stx)
        }
        _ => None,
    };
    let out = Outputs { table, ready: ready_tx, snapshot: snapshot_tx, metrics, changes };
    let registry = Registry::new(zk.keep_last_on_empty);
    tokio::spawn(Builder::new(registry, TableBuilder::new(config.clone(), tracker), out).run(rx));
    let skip: HashSet<String> = config
        .services
        .iter()
        .filter(|(_, s)| s.instances.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    let tls = config.services.iter().filter(|(_, s)| s.tls()).map(|(n, _)| n.clone()).collect();
    let watcher = zookeeper::Watcher::new(zk, (skip, tls), (tx, metrics, report));
    tokio::spawn(Arc::new(watcher).run());
    ready_rx
}

/// Queues the snapshot for the builder: the worker serves it until ZooKeeper answers.
fn load_snapshot(path: &std::path::Path, tx: &mpsc::UnboundedSender<Update>) {
    match snapshot::load(path) {
        Ok(listing) => {
            let n: usize = listing.values().map(Vec::len).sum();
            log::info!(
                "serving {} services, {n} instances from snapshot {} until zookeeper answers",
                listing.len(),
                path.display()
            );
            let _ = tx.send(Update::Snapshot(listing));
        }
        Err(e) => log::warn!("no usable route snapshot ({e}); waiting for zookeeper"),
    }
}
