//! Discovery: from the ZooKeeper registry to route tables.
//!
//! ```text
//! zookeeper::Watcher ── Update (Full / Service / Removed) ──▶ builder::Builder ──▶ RouteTable ──swap──▶ SharedTable
//!   (session, one-shot watches)        ▲                       (update::Registry,      └──▶ snapshot::write_snapshots
//! load_snapshot ─────────── Update::Snapshot ─┘                   TableBuilder)
//! ```
//! - [`update`]: the updates and the pure registry they are applied to.
//! - [`builder`]: the one task that applies updates in order and publishes tables.
//! - [`zookeeper`]: the session, the watches, reconnection and resync.
//! - [`retry`]: backoff with jitter and the one retry helper every ZooKeeper call uses.
//! - [`formats`]: the four registry formats (registrator, curator, serverset, nerve).
//! - [`snapshot`]: the on-disk copy of the last listing.
//! - [`register`]: `zkgate register`, the writer side of the formats.

pub mod builder;
pub mod formats;
pub mod register;
pub mod retry;
pub mod snapshot;
pub mod update;
pub mod zookeeper;

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::table::{Clock, Source};
use crate::SharedTable;
use builder::{Builder, Outputs, TableBuilder};
use update::Registry;
use update::Update;

/// Starts discovery when ZooKeeper is configured. The returned channel turns `Some(source)`
/// once routes are loaded: at once for static services, else from ZooKeeper or, when it does
/// not answer within `connect_timeout`, from the snapshot.
pub fn start(
    config: &Arc<Config>,
    slot: usize,
    table: SharedTable,
    clock: Clock,
    metrics: Metrics,
) -> watch::Receiver<Option<Source>> {
    let (ready_tx, ready_rx) = watch::channel(None);
    let Some(zk) = config.zookeeper.clone() else {
        let _ = ready_tx.send(Some(Source::Static));
        return ready_rx;
    };
    let (tx, rx) = mpsc::unbounded_channel();
    // One worker writes the snapshot: N workers writing the same file would only add fsyncs.
    let snapshot_tx = match (&config.cache.snapshot, slot) {
        (Some(path), 0) => {
            let (stx, srx) = watch::channel(Arc::default());
            tokio::spawn(snapshot::write_snapshots(path.clone(), srx));
            Some(stx)
        }
        _ => None,
    };
    let out = Outputs { table, ready: ready_tx, snapshot: snapshot_tx, metrics };
    let builder = Builder::new(
        Registry::new(zk.keep_last_on_empty),
        TableBuilder::new(config.clone(), clock),
        out,
    );
    tokio::spawn(builder.run(rx));
    let skip: HashSet<String> = config
        .services
        .iter()
        .filter(|(_, s)| s.instances.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    let connect_timeout = zk.connect_timeout;
    tokio::spawn(Arc::new(zookeeper::Watcher::new(zk, skip, tx.clone(), metrics)).run());
    let (mut waiting, snapshot) = (ready_rx.clone(), config.cache.snapshot.clone());
    tokio::spawn(async move {
        if tokio::time::timeout(connect_timeout, waiting.wait_for(Option::is_some)).await.is_err() {
            match snapshot {
                Some(path) => {
                    load_snapshot(&path, &tx);
                }
                None => log::warn!(
                    "zookeeper did not answer within {connect_timeout:?} and no [cache] snapshot is configured: not ready until it does"
                ),
            }
        }
    });
    ready_rx
}

/// Loads the snapshot into the builder (when ZooKeeper did not answer in time at start).
fn load_snapshot(path: &std::path::Path, tx: &mpsc::UnboundedSender<Update>) -> bool {
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
