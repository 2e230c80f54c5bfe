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
//! - [`priority`]: the discovery thread yields to the request loop (`SCHED_BATCH`, nice +5).
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
pub mod priority;
pub mod register;
pub mod report;
pub mod retry;
pub mod snapshot;
pub mod update;
pub mod urlcode;
pub mod zookeeper;

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::table::SharedTable;
use crate::table::{Source, Tracker};
use builder::{Builder, Outputs, TableBuilder};
use changes::Changes;
use report::RegistryReport;
use update::Update;
use update::{Registries, Registry, Sourced};

/// Starts discovery when ZooKeeper is configured: one session per registry source (each
/// `[[zookeeper]]` entry), all feeding one builder. The returned channel turns `Some(source)`
/// once routes are loaded: at once for static services or when a snapshot is configured (serve
/// stale at once), else when every source's first listing arrived. ZooKeeper's listing always
/// replaces the snapshot's section of its source.
///
/// Discovery runs on its own thread with its own event loop: the sessions, the listings and
/// the table builds never take a turn on the loop that serves requests, which only ever loads
/// the table the builder swapped in. At 100 changes a second each change held the request loop
/// for ~0.6 ms and the snapshot's copy of a 100 000-instance registry far longer; on a thread
/// of its own the kernel preempts that work for a request instead of queueing the request
/// behind it. Err: the discovery thread or its runtime could not be started.
pub fn start(
    config: &Arc<Config>,
    slot: usize,
    shared: (SharedTable, Arc<Changes>, Vec<Arc<RegistryReport>>),
    tracker: Tracker,
    metrics: Metrics,
) -> std::io::Result<watch::Receiver<Option<Source>>> {
    let (ready_tx, ready_rx) = watch::channel(None);
    if config.zookeeper.is_empty() {
        let _ = ready_tx.send(Some(Source::Static));
        return Ok(ready_rx);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let config = config.clone();
    std::thread::Builder::new().name(format!("discovery-{slot}")).spawn(move || {
        priority::yield_to_requests();
        rt.block_on(async move {
            let builder = spawn_all(&config, slot, shared, (tracker, metrics), ready_tx);
            // The builder ends when every sender is gone, which the watchers never let happen:
            // the thread lives as long as the worker.
            let _ = builder.await;
        })
    })?;
    Ok(ready_rx)
}

/// Spawns the builder, the snapshot writer and one watcher per source on the discovery
/// thread's runtime; returns the builder's task.
fn spawn_all(
    config: &Arc<Config>,
    slot: usize,
    (table, changes, reports): (SharedTable, Arc<Changes>, Vec<Arc<RegistryReport>>),
    (tracker, metrics): (Tracker, Metrics),
    ready_tx: watch::Sender<Option<Source>>,
) -> tokio::task::JoinHandle<()> {
    let names: Vec<String> =
        config.zookeeper.iter().enumerate().map(|(i, zk)| zk.source_name(i)).collect();
    metrics.set_sources(&names);
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(path) = &config.cache.snapshot {
        // Queued before the watchers start, so it can never arrive after ZooKeeper's listing.
        load_snapshot(path, &names, &tx);
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
    let registries = Registries::new(
        config.zookeeper.iter().map(|zk| Registry::new(zk.keep_last_on_empty)).collect(),
    );
    let tables = TableBuilder::new(config.clone(), tracker);
    let builder = tokio::spawn(Builder::new(registries, names, tables, out).run(rx));
    for (i, zk) in config.zookeeper.iter().enumerate() {
        // Static services are never looked up; names are this source's own (prefix removed).
        let own = |n: &String| n.strip_prefix(zk.prefix.as_str()).map(str::to_string);
        let skip: HashSet<String> = config
            .services
            .iter()
            .filter(|(_, s)| s.instances.is_some())
            .filter_map(|(n, _)| own(n))
            .collect();
        let tls =
            config.services.iter().filter(|(_, s)| s.tls()).filter_map(|(n, _)| own(n)).collect();
        let report = reports.get(i).cloned().unwrap_or_default();
        // Other sources' namespaces inside this one's (the unprefixed source's: every other).
        let foreign = config
            .zookeeper
            .iter()
            .enumerate()
            .filter(|(j, other)| *j != i && other.prefix != zk.prefix)
            .filter(|(_, other)| other.prefix.starts_with(zk.prefix.as_str()))
            .map(|(j, other)| (other.prefix.clone(), other.source_name(j)))
            .collect();
        let link = zookeeper::Link {
            index: i,
            tx: tx.clone(),
            metrics: metrics.for_source(i),
            report,
            foreign,
        };
        let watcher = zookeeper::Watcher::new(zk.clone(), (skip, tls), link);
        tokio::spawn(Arc::new(watcher).run());
    }
    builder
}

/// Queues each source's section of the snapshot for the builder: the worker serves it until
/// that source's ZooKeeper answers.
fn load_snapshot(path: &std::path::Path, names: &[String], tx: &mpsc::UnboundedSender<Sourced>) {
    match snapshot::load(path, &names[0]) {
        Ok(sections) => {
            for (i, name) in names.iter().enumerate() {
                let Some(listing) = sections.get(name) else { continue };
                let n: usize = listing.values().map(Vec::len).sum();
                log::info!(
                    "{name}: serving {} services, {n} instances from snapshot {} until zookeeper answers",
                    listing.len(),
                    path.display()
                );
                let _ = tx.send(Sourced(i, Update::Snapshot(listing.clone())));
            }
        }
        Err(e) => log::warn!("no usable route snapshot ({e}); waiting for zookeeper"),
    }
}
