//! # zkgate worker
//!
//! The data plane of one worker process: it knows nothing of `fork`. [`run`] builds a
//! current-thread tokio runtime (one event loop per process, so one per core), loads the route
//! table, serves HTTP on the sockets it was given and stops gracefully on SIGTERM.
//!
//! # Layout
//! - [`settings`]: the typed `[proxy]`, `[header_routing]`, `[[route]]`, `[services]` settings.
//! - [`routes`]: the immutable [`routes::RouteTable`] (services → instances), swapped whole.
//! - [`router`]: request → service and upstream path (header mode, `[[route]]` rules).
//! - [`balance`]: one file per load-balancing strategy behind the [`balance::Balancer`] trait.
//! - [`upstream`]: the pooled client to instances and its timeouts.
//! - [`headers`]: hop-by-hop removal, `X-Forwarded-*`, `Via`, `X-Request-Id`.
//! - [`proxy`]: the request path composed from the above, and the JSON error answers.
//! - [`server`]: accept loops, connection limits, graceful drain.
//! - [`admin`]: the admin API (`/healthz`, `/readyz`, `/routes`, `/workers`, `/metrics`).
//! - [`metrics`]: counters and worker status in the supervisor's shared memory region.
//! - [`health`]: passive outlier detection and active health checks.
//! - [`discovery`]: the ZooKeeper session, watches, and the task that builds route tables.
//! - [`formats`]: the four registry formats (registrator, curator, serverset, nerve).
//! - [`snapshot`]: the on-disk copy of discovered routes, for starts without ZooKeeper.
//! - [`register`]: `zkgate register`, the writer side of the formats.

#![warn(missing_docs)]

pub mod admin;
pub mod balance;
pub mod discovery;
pub mod formats;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod register;
pub mod router;
pub mod routes;
pub mod server;
pub mod settings;
pub mod snapshot;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::routes::{RouteTable, Service, Source};
use crate::settings::{CacheSettings, HeaderRouting, ProxySettings, RouteRule, Services, ZkSettings};

/// The route table as every request sees it: swapped whole, read without a lock.
pub type SharedTable = Arc<ArcSwap<RouteTable>>;

/// How often a worker tells its supervisor it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Everything one worker runs with, handed down by the binary.
#[derive(Debug)]
pub struct Settings {
    /// The worker's slot (for logs and metrics).
    pub slot: usize,
    /// Listening sockets inherited from the supervisor (non-blocking).
    pub listeners: Vec<std::net::TcpListener>,
    /// `[proxy]`.
    pub proxy: ProxySettings,
    /// `[header_routing]`.
    pub header_routing: HeaderRouting,
    /// `[[route]]`.
    pub routes: Vec<RouteRule>,
    /// `[services]`.
    pub services: Services,
    /// Longest graceful drain after SIGTERM.
    pub shutdown_timeout: Duration,
    /// `[zookeeper]`; `None` for static services only.
    pub zookeeper: Option<ZkSettings>,
    /// `[cache]`.
    pub cache: CacheSettings,
    /// The admin listener (inherited like the others) and its bearer token.
    pub admin: Option<(std::net::TcpListener, Option<String>)>,
    /// Where this worker writes its counters.
    pub metrics: metrics::Metrics,
    /// Configuration generation (tells a crash-restart from a reload in the metrics).
    pub generation: u64,
    /// Log one line per request at info level (target `access`).
    pub access_log: bool,
}

/// Events a worker reports to whoever runs it (the supervisor, through the binary).
pub trait Lifecycle: Send + Sync {
    /// The worker accepts connections and has routes loaded.
    fn ready(&self);
    /// The event loop is alive; called every second.
    fn heartbeat(&self);
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tokio runtime could not be built.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// An inherited socket could not be registered with the runtime.
    #[error("cannot use listening socket: {0}")]
    Listener(std::io::Error),
    /// A signal handler could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs a worker until SIGTERM/SIGINT (graceful) or SIGQUIT (immediate).
pub fn run(settings: Settings, lifecycle: Arc<dyn Lifecycle>) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Error::Runtime)?;
    rt.block_on(serve(settings, lifecycle))
}

/// Builds the table of services with static instances.
pub fn static_table(services: &Services, default: balance::Strategy) -> RouteTable {
    RouteTable::new(services.iter().filter_map(|(name, s)| {
        let instances = s.instances.clone()?;
        Some(Service::new(name.clone(), instances, Source::Static, s.load_balance.unwrap_or(default)))
    }))
}

/// Starts discovery when ZooKeeper is configured. The returned channel turns `Some(source)`
/// once routes are loaded: at once for static services, else from ZooKeeper or, when it does
/// not answer within `connect_timeout`, from the snapshot.
fn start_discovery(settings: &Settings, table: SharedTable) -> watch::Receiver<Option<Source>> {
    let (ready_tx, ready_rx) = watch::channel(None);
    let metrics = settings.metrics;
    let Some(zk) = settings.zookeeper.clone() else {
        let _ = ready_tx.send(Some(Source::Static));
        return ready_rx;
    };
    let (tx, rx) = mpsc::unbounded_channel();
    // One worker writes the snapshot: N workers writing the same file would only add fsyncs.
    let snapshot_tx = match (&settings.cache.snapshot, settings.slot) {
        (Some(path), 0) => {
            let (stx, srx) = watch::channel(Arc::default());
            tokio::spawn(discovery::write_snapshots(path.clone(), srx));
            Some(stx)
        }
        _ => None,
    };
    let registry = discovery::Registry::new(zk.keep_last_on_empty);
    let builder = discovery::TableBuilder::new(&settings.services, settings.proxy.load_balance);
    tokio::spawn(discovery::build_tables(rx, registry, builder, table, ready_tx, snapshot_tx, metrics));
    let skip = settings.services.iter().filter(|(_, s)| s.instances.is_some()).map(|(n, _)| n.clone()).collect();
    let connect_timeout = zk.connect_timeout;
    tokio::spawn(Arc::new(discovery::Watcher::new(zk, skip, tx.clone(), metrics)).run());
    let (mut waiting, snapshot) = (ready_rx.clone(), settings.cache.snapshot.clone());
    tokio::spawn(async move {
        if tokio::time::timeout(connect_timeout, waiting.wait_for(Option::is_some)).await.is_err() {
            match snapshot {
                Some(path) => {
                    discovery::load_snapshot(&path, &tx);
                }
                None => log::warn!("zookeeper did not answer within {connect_timeout:?} and no [cache] snapshot is configured: not ready until it does"),
            }
        }
    });
    ready_rx
}

async fn serve(mut settings: Settings, lifecycle: Arc<dyn Lifecycle>) -> Result<(), Error> {
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    let mut quit = signal(SignalKind::quit()).map_err(Error::Signals)?;

    let table: SharedTable =
        Arc::new(ArcSwap::from_pointee(static_table(&settings.services, settings.proxy.load_balance)));
    let metrics = settings.metrics;
    metrics.started(settings.generation);
    let router = router::Router::new(&settings.header_routing, &settings.routes);
    let connections = Arc::new(server::Connections::default());
    let proxy = Arc::new(proxy::Proxy::new(
        table.clone(),
        router,
        settings.proxy.clone(),
        settings.services.clone(),
        metrics,
        settings.access_log,
        connections.clone(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = server::Server::new(proxy, &settings.proxy, stop_rx.clone(), metrics, connections);

    let mut accept_loops = Vec::new();
    for l in std::mem::take(&mut settings.listeners) {
        let l = tokio::net::TcpListener::from_std(l).map_err(Error::Listener)?;
        accept_loops.push(tokio::spawn(server.clone().accept_loop(l)));
    }
    let checks: Vec<_> =
        settings.services.iter().filter_map(|(n, s)| Some((n.clone(), s.health_check.clone()?))).collect();
    if !checks.is_empty() {
        // Probes get their own pool, so they never queue behind client traffic.
        let checker = Arc::new(upstream::Upstream::new(&settings.proxy));
        for (name, check) in checks {
            tokio::spawn(health::run_checks(name, check, table.clone(), checker.clone()));
        }
    }
    let mut ready = start_discovery(&settings, table.clone());
    if let Some((listener, token)) = settings.admin.take() {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(Error::Listener)?;
        let admin = admin::Admin { table: table.clone(), metrics, ready: ready.clone(), token, slot: settings.slot };
        tokio::spawn(admin::serve(listener, Arc::new(admin), stop_rx.clone()));
    }
    let (slot, ready_table, ready_life) = (settings.slot, table.clone(), lifecycle.clone());
    tokio::spawn(async move {
        if let Ok(source) = ready.wait_for(Option::is_some).await.map(|s| *s) {
            let (services, instances) = ready_table.load().counts();
            metrics.set_routes(services, instances);
            log::info!(
                "worker slot {slot} (pid {}): ready with {services} services, {instances} instances ({source:?})",
                std::process::id()
            );
            ready_life.ready();
        }
    });
    let beat = lifecycle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tick.tick().await;
            beat.heartbeat();
            metrics.heartbeat();
        }
    });

    let fast = tokio::select! {
        _ = term.recv() => false,
        _ = int.recv() => false,
        _ = quit.recv() => true,
    };
    if fast {
        log::info!("worker slot {}: SIGQUIT: exiting now", settings.slot);
        return Ok(());
    }
    log::info!(
        "worker slot {}: draining {} connections (up to {:?})",
        settings.slot,
        server.connections.active(),
        settings.shutdown_timeout
    );
    let _ = stop_tx.send(true);
    for l in accept_loops {
        let _ = l.await;
    }
    let drained = tokio::select! {
        _ = server.connections.wait_idle() => true,
        _ = tokio::time::sleep(settings.shutdown_timeout) => false,
        _ = quit.recv() => false,
    };
    if !drained {
        log::warn!("worker slot {}: {} connections still open at shutdown", settings.slot, server.connections.active());
    }
    Ok(())
}
