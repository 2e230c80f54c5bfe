//! # zkgate worker
//!
//! The data plane of one worker process: it knows nothing of `fork`. [`run`] builds a
//! current-thread tokio runtime (one event loop per process, so one per core), loads the route
//! table, serves HTTP on the sockets it was given and stops gracefully on SIGTERM.
//!
//! # Layout
//! Leaf types first; every dependency points up this list, never down.
//! - [`table`]: the immutable [`table::RouteTable`] (services → instances), swapped whole; the
//!   leaf type [`table::Instance`]; per-instance health state, kept by address.
//! - [`config`]: `gateway.toml` as typed sections, and every default in one place.
//! - [`balance`]: one file per load-balancing strategy behind the [`balance::Balancer`] trait.
//! - [`metrics`]: counters and worker status in the supervisor's shared memory region.
//! - [`http`]: the request path — accept, connection, proxy phases, forward and retry, router,
//!   headers, upstream client, tunnels, error answers, active health checks.
//! - [`discovery`]: the ZooKeeper session and watches, the task that builds route tables, the
//!   registry formats, the snapshot, and `zkgate register`.
//! - [`admin`]: the admin API (`/healthz`, `/readyz`, `/routes`, `/workers`, `/metrics`).
//!
//! `worker/README.md` draws the request path and the discovery pipeline with function names.

#![warn(missing_docs)]
// The one exception is the shared-memory region (metrics::region), which says why it is sound.
#![deny(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod config;
pub mod discovery;
pub mod http;
pub mod metrics;
pub mod table;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::http::connections::Connections;
use crate::table::{Clock, RouteTable};

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
    /// The admin socket (inherited like the others) and its bearer token.
    pub admin: Option<(std::net::TcpListener, Option<String>)>,
    /// The whole configuration; the worker reads its own sections.
    pub config: Arc<Config>,
    /// Where this worker writes its counters.
    pub metrics: metrics::Metrics,
    /// Configuration generation (tells a crash-restart from a reload in the metrics).
    pub generation: u64,
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    rt.block_on(serve(settings, lifecycle))
}

async fn serve(mut settings: Settings, lifecycle: Arc<dyn Lifecycle>) -> Result<(), Error> {
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    let mut quit = signal(SignalKind::quit()).map_err(Error::Signals)?;

    let config = settings.config.clone();
    // One clock for every table this worker builds: carried ejection deadlines keep their meaning.
    let clock = Clock::system();
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(RouteTable::statics(&config, &clock)));
    let metrics = settings.metrics;
    metrics.started(settings.generation);
    let router = http::router::Router::new(&config.header_routing, &config.routes);
    let connections = Arc::new(Connections::default());
    let proxy = Arc::new(http::proxy::Proxy::new(
        table.clone(),
        router,
        config.proxy.clone(),
        metrics,
        config.log.access,
        connections.clone(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server =
        http::server::Server::new(proxy, &config.proxy, stop_rx.clone(), metrics, connections);

    let mut accept_loops = Vec::new();
    for l in std::mem::take(&mut settings.listeners) {
        let l = tokio::net::TcpListener::from_std(l).map_err(Error::Listener)?;
        accept_loops.push(tokio::spawn(server.clone().accept_loop(l)));
    }
    let checks: Vec<_> = config
        .services
        .iter()
        .filter_map(|(n, s)| Some((n.clone(), s.health_check.clone()?)))
        .collect();
    if !checks.is_empty() {
        // Probes get their own pool, so they never queue behind client traffic.
        let checker = Arc::new(http::upstream::Upstream::new(&config.proxy));
        for (name, check) in checks {
            tokio::spawn(http::health_check::run_checks(
                name,
                check,
                table.clone(),
                checker.clone(),
            ));
        }
    }
    let mut ready = discovery::start(&config, settings.slot, table.clone(), clock, metrics);
    if let Some((listener, token)) = settings.admin.take() {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(Error::Listener)?;
        let admin = admin::Admin {
            table: table.clone(),
            metrics,
            ready: ready.clone(),
            token,
            slot: settings.slot,
        };
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
        config.server.shutdown_timeout
    );
    let _ = stop_tx.send(true);
    for l in accept_loops {
        let _ = l.await;
    }
    let drained = tokio::select! {
        _ = server.connections.wait_idle() => true,
        _ = tokio::time::sleep(config.server.shutdown_timeout) => false,
        _ = quit.recv() => false,
    };
    if !drained {
        log::warn!(
            "worker slot {}: {} connections still open at shutdown",
            settings.slot,
            server.connections.active()
        );
    }
    Ok(())
}
