//! # zkgate worker
//!
//! The data plane of one worker process: it knows nothing of `fork`. [`run`] builds a
//! current-thread tokio runtime (one event loop per process, so one per core), loads the route
//! table, serves HTTP on the sockets it was given and stops gracefully on SIGTERM. Discovery has
//! a thread and event loop of its own, so registry churn never takes the request loop's turns.
//!
//! # Layout
//! Leaf types first; every dependency points up this list, never down (`scripts/import-cycles`
//! checks it).
//! - [`instance`]: the leaf type [`instance::Instance`] (address, weight).
//! - [`shutdown`]: the worker's stop, as each task sees it.
//! - [`balance`]: one file per load-balancing strategy behind the [`balance::Balancer`] trait,
//!   and the [`balance::Strategy`] names `load_balance` takes.
//! - [`config`]: `gateway.toml` as typed sections, and every default in one place.
//! - [`host`]: what the host's workers share — the supervisor's memory region, its layout and
//!   its views: rate limits and `max_requests`, host-wide instance state (failures, ejection,
//!   health verdicts, in flight), health-check leases.
//! - [`outbound`]: the gateway's own HTTP requests (a JWKS fetch, an OTLP export).
//! - [`auth`]: `[auth.NAME]` sections — JWT over a JWKS and htpasswd basic auth — checked for
//!   the routes that name them.
//! - [`table`]: the immutable [`table::RouteTable`] (services → instances), swapped whole;
//!   per-instance state, kept by address in the host's instance table.
//! - [`metrics`]: counters and worker status, the region's counters view.
//! - [`tls`]: certificates chosen by SNI, client certificates, the rustls server
//!   configuration, shared session tickets.
//! - [`trace`]: W3C trace context (B3 read too) and spans exported over OTLP/HTTP.
//! - [`http`]: the request path — one pipeline of phases (route, limits, auth), two protocol
//!   sides (the HTTP/1.1 engine `h1`; `hyper` for HTTP/2), the one header policy, the client
//!   to instances.
//! - [`discovery`]: one ZooKeeper session per registry source and its persistent watch
//!   (one-shot watches as the fallback), the task that builds route tables (with the removal
//!   guard), the registry formats and governance (Spring status, Dubbo overrides, slow start),
//!   the per-node report, the snapshot, recent changes, and `zkgate register`.
//! - [`fleet`]: the fleet's releases in ZooKeeper, and the host's watcher that applies them.
//! - [`admin`]: the dashboard and the admin API (`/`, `/healthz`, `/readyz`, `/routes`,
//!   `/workers`, `/metrics`, `/registry`, `/explain`).
//!
//! `worker/README.md` draws the request path and the discovery pipeline with function names.

#![warn(missing_docs)]
// The one exception is the shared-memory region (host::region), which says why it is sound.
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod balance;
pub mod config;
pub mod discovery;
pub mod fleet;
pub mod host;
pub mod http;
pub mod instance;
pub mod metrics;
pub mod outbound;
pub mod shutdown;
pub mod table;
pub mod tls;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::http::client::transport::{TransportError, Transports};
use crate::http::connections::Connections;
use crate::table::{RouteTable, Tracker};

pub use table::SharedTable;

/// How often a worker tells its supervisor it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Every this many heartbeats, the host-wide entries of the table are marked as in use.
const TOUCH_EVERY: u64 = 60;

/// Everything one worker runs with, handed down by the binary.
#[derive(Debug)]
pub struct Settings {
    /// The worker's slot (for logs and metrics).
    pub slot: usize,
    /// Sockets inherited from the supervisor (non-blocking), listening or only bound: the
    /// worker calls `listen` on them once its routes are loaded.
    pub listeners: Vec<std::net::TcpListener>,
    /// TLS sockets (inherited like the others), served with `tls`.
    pub tls_listeners: Vec<std::net::TcpListener>,
    /// Certificates, when there are TLS sockets.
    pub tls: Option<tls::Tls>,
    /// The admin socket (inherited like the others) and its bearer token.
    pub admin: Option<(std::net::TcpListener, Option<String>)>,
    /// The whole configuration; the worker reads its own sections.
    pub config: Arc<Config>,
    /// The host's shared region: counters, limits, instance state.
    pub host: host::Host,
    /// Configuration generation (tells a crash-restart from a reload in the metrics).
    pub generation: u64,
    /// This gateway's pseudonym in `Via`, the same in every worker of one gateway and unique
    /// per gateway: a request arriving with it has looped (508).
    pub via: String,
    /// Another worker serves this slot meanwhile (a reload's replacement): accept nothing
    /// until the routes are loaded, however long ZooKeeper takes.
    pub replacing: bool,
    /// With `[fleet]`: what the host's release watcher borrows from the binary.
    pub fleet: Option<fleet::apply::Hooks>,
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
    /// The TLS configuration could not be built.
    #[error("{0}")]
    Tls(tls::TlsError),
    /// A service's transport toward its instances could not be built.
    #[error("{0}")]
    Transport(TransportError),
}

/// Runs a worker until SIGTERM/SIGINT (graceful) or SIGQUIT (immediate).
pub fn run(settings: Settings, lifecycle: Arc<dyn Lifecycle>) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    rt.block_on(serve(settings, lifecycle))
}

/// How a worker was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// TERM or INT: finish what is in flight.
    Graceful,
    /// QUIT: exit now.
    Fast,
}

/// The signals a worker obeys.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, Error> {
        let install = |kind| signal(kind).map_err(Error::Signals);
        Ok(Signals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            quit: install(SignalKind::quit())?,
        })
    }

    async fn next(&mut self) -> Stop {
        tokio::select! {
            _ = self.term.recv() => Stop::Graceful,
            _ = self.int.recv() => Stop::Graceful,
            _ = self.quit.recv() => Stop::Fast,
        }
    }
}

async fn serve(mut settings: Settings, lifecycle: Arc<dyn Lifecycle>) -> Result<(), Error> {
    let mut signals = Signals::install()?;
    let (slot, config) = (settings.slot, settings.config.clone());
    let host = settings.host.started();
    let metrics = metrics::Metrics::new(host);
    metrics.started(settings.generation);
    // Instance state lives in the host's table: what any worker learned (ejections, verdicts,
    // in-flight counts) holds for this one from its first request.
    let tracker = Tracker::host(host.instances());
    let table: SharedTable =
        Arc::new(ArcSwap::from_pointee(RouteTable::statics(&config, &tracker)));
    let changes = Arc::new(discovery::changes::Changes::default());
    let reports: Vec<Arc<discovery::report::RegistryReport>> =
        config.zookeeper.iter().map(|_| Arc::default()).collect();
    let shared = (table.clone(), changes.clone(), reports.clone());
    let ready =
        discovery::start(&config, slot, shared, tracker, metrics).map_err(Error::Runtime)?;
    let (stop, shutdown) = shutdown::channel();
    let connections = Arc::new(Connections::new(config.proxy.max_connections));
    let transports = Arc::new(Transports::from_config(&config).map_err(Error::Transport)?);
    let auth = load_auth(&config);
    let shared = http::proxy::Shared {
        table: table.clone(),
        ready: ready.clone(),
        host,
        connections: connections.clone(),
        transports: transports.clone(),
        auth,
    };
    let router = http::router::Router::new(&config.header_routing, &config.routes)
        .with_paths(config.proxy.path_normalization);
    let proxy = Arc::new(http::proxy::Proxy::new(shared, router, &config, &settings.via));
    let server =
        http::server::Server::new(proxy, &config.proxy, shutdown.clone(), metrics, connections);
    http::health_check::start(&config, (&table, host), &transports);
    if let Some(hooks) = settings.fleet.clone() {
        fleet::apply::start(&config, (host, metrics), hooks);
    }
    if let Some(admin_socket) = settings.admin.take() {
        let parts = (table.clone(), changes, reports, ready.clone());
        start_admin(admin_socket, &settings, parts, (metrics, host), shutdown.clone())?;
    }
    let rows = (config.named_services(), config.server.service_row_ttl);
    start_heartbeat(lifecycle.clone(), metrics, table.clone(), rows);

    // Accept nothing before the routes are loaded: until then the slot's queue waits in the
    // kernel (or, for a reload's replacement, the old worker keeps serving).
    let unready_limit = match settings.replacing {
        false => config.zookeeper.iter().map(|zk| zk.connect_timeout).max(),
        true => None,
    };
    let loaded = tokio::select! {
        stop = signals.next() => {
            log::info!("worker slot {slot}: stopped before accepting ({stop:?})");
            return Ok(());
        }
        loaded = routes_loaded(ready.clone(), unready_limit) => loaded,
    };
    if !loaded {
        log::warn!(
            "worker slot {slot}: no routes after {unready_limit:?} (zookeeper silent, no snapshot): accepting anyway; discovered services answer 503 with Retry-After until they load"
        );
    }
    let accept_loops = start_accepting(&mut settings, &server, host)?;
    let release = config.release.clone();
    tokio::spawn(report_ready((slot, release), ready, table, metrics, lifecycle));

    if signals.next().await == Stop::Fast {
        log::info!("worker slot {slot}: SIGQUIT: exiting now");
        return Ok(());
    }
    drain(&server, (stop, accept_loops), &mut signals, (slot, config.server.shutdown_timeout))
        .await;
    Ok(())
}

/// The `[auth.NAME]` sections, loaded and refreshing; a section that did not load is logged
/// and its routes answer 503 until a reload loads it.
fn load_auth(config: &Config) -> auth::Auth {
    let auth = auth::Auth::from_config(config).unwrap_or_else(|(auth, errors)| {
        for e in errors {
            log::error!("{e}: its routes answer 503 until a reload loads it");
        }
        auth
    });
    auth.start_refreshing();
    auth
}

/// The admin API on its socket (listening from now on), with what it reports on.
fn start_admin(
    (listener, token): (std::net::TcpListener, Option<String>),
    settings: &Settings,
    (table, changes, reports, ready): AdminParts,
    (metrics, host): (metrics::Metrics, host::Host),
    stop: shutdown::Shutdown,
) -> Result<(), Error> {
    let config = &settings.config;
    listen(&listener, config.server.backlog).map_err(Error::Listener)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(Error::Listener)?;
    let certificates = settings.tls.iter().flat_map(|t| &t.certificates.list);
    let admin = admin::Admin {
        table,
        metrics,
        host,
        ready,
        token,
        slot: settings.slot,
        changes,
        reports,
        config: config.clone(),
        router: http::router::Router::new(&config.header_routing, &config.routes)
            .with_paths(config.proxy.path_normalization),
        certificates: certificates.map(|c| (c.names.join(","), c.not_after)).collect(),
        release_cache: settings.fleet.as_ref().map(|f| f.cache.clone()),
    };
    tokio::spawn(admin::serve(listener, Arc::new(admin), stop));
    Ok(())
}

/// What the admin API reads: the table, recent changes, the registry reports, readiness.
type AdminParts = (
    SharedTable,
    Arc<discovery::changes::Changes>,
    Vec<Arc<discovery::report::RegistryReport>>,
    tokio::sync::watch::Receiver<Option<table::Source>>,
);

/// Starts listening on every data socket (plain, then TLS) and an accept loop on each.
fn start_accepting(
    settings: &mut Settings,
    server: &Arc<http::server::Server>,
    host: host::Host,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Error> {
    let tls = match (&settings.tls, settings.tls_listeners.is_empty()) {
        (Some(tls), false) => Some(tokio_rustls::TlsAcceptor::from(
            tls.certificates.server_config(host).map_err(Error::Tls)?,
        )),
        _ => None,
    };
    let plain = std::mem::take(&mut settings.listeners).into_iter().map(|l| (l, None));
    let secure = std::mem::take(&mut settings.tls_listeners).into_iter().map(|l| (l, tls.clone()));
    let mut accept_loops = Vec::new();
    for (index, (l, tls)) in plain.chain(secure).enumerate() {
        listen(&l, settings.config.server.backlog).map_err(Error::Listener)?;
        let l = tokio::net::TcpListener::from_std(l).map_err(Error::Listener)?;
        accept_loops.push(tokio::spawn(server.clone().accept_loop(l, tls, index)));
    }
    Ok(accept_loops)
}

/// A graceful stop: accept loops end (taking what is queued), then open connections finish,
/// for at most `shutdown_timeout` or until a second signal.
async fn drain(
    server: &http::server::Server,
    (stop, accept_loops): (shutdown::Trigger, Vec<tokio::task::JoinHandle<()>>),
    signals: &mut Signals,
    (slot, shutdown_timeout): (usize, Duration),
) {
    log::info!(
        "worker slot {slot}: draining {} connections (up to {shutdown_timeout:?})",
        server.connections.active()
    );
    stop.fire();
    for l in accept_loops {
        let _ = l.await;
    }
    // Connections first, then what their requests left running (mirror copies, spans).
    let done = async {
        server.connections.wait_idle().await;
        server.background_done().await;
    };
    let drained = tokio::select! {
        _ = done => true,
        _ = tokio::time::sleep(shutdown_timeout) => false,
        _ = signals.next() => false,
    };
    if !drained {
        log::warn!(
            "worker slot {slot}: {} connections still open at shutdown (or mirror copies and spans still in flight)",
            server.connections.active()
        );
    }
}

/// Starts listening (idempotent: the supervisor may already have): a socket of a slot added at
/// runtime joins the port's reuseport group only now, when this worker can serve it.
fn listen(listener: &std::net::TcpListener, backlog: i32) -> std::io::Result<()> {
    socket2::SockRef::from(listener).listen(backlog)
}

/// Resolves `true` once routes are loaded, or `false` when `limit` passes first.
async fn routes_loaded(
    mut ready: tokio::sync::watch::Receiver<Option<table::Source>>,
    limit: Option<Duration>,
) -> bool {
    let wait = async { ready.wait_for(Option::is_some).await.is_ok() };
    match limit {
        Some(limit) => tokio::time::timeout(limit, wait).await.unwrap_or(false),
        None => wait.await,
    }
}

/// Tells the supervisor this worker is ready once its routes are loaded (it accepts already).
async fn report_ready(
    (slot, release): (usize, Option<String>),
    mut ready: tokio::sync::watch::Receiver<Option<table::Source>>,
    table: SharedTable,
    metrics: metrics::Metrics,
    lifecycle: Arc<dyn Lifecycle>,
) {
    if let Ok(source) = ready.wait_for(Option::is_some).await.map(|s| *s) {
        let (services, instances) = table.load().counts();
        metrics.set_routes(services, instances);
        let source = source.map_or_else(String::new, |s| format!(" ({s})"));
        log::info!(
            "worker slot {slot} (pid {}): ready with {}, {}{source}",
            std::process::id(),
            table::count(services, "service"),
            table::count(instances, "instance"),
        );
        lifecycle.ready();
        metrics.host().releases().serving(release.as_deref());
    }
}

/// Marks the services this worker has in the host's name table, and releases the rows of
/// services no worker has had for a while (see `host::names`).
fn sweep_service_rows(
    metrics: &metrics::Metrics,
    table: &RouteTable,
    (named, ttl): &(std::collections::BTreeSet<String>, Duration),
) {
    let in_use = |s: &str| {
        named.contains(s)
            || s == metrics::UNROUTED
            || s == fleet::apply::LEASE
            || table.get(s).is_some()
            || table.held().iter().any(|h| &*h.name == s)
    };
    for service in metrics.host().sweep_service_rows(&in_use, *ttl) {
        log::info!(
            "service {service}: gone from every worker's route table for {ttl:?} (server.service_row_ttl), its shared row (counters, limits) released"
        );
    }
}

/// Tells the supervisor (and `/workers`) every second that the event loop is alive; marks the
/// host-wide entries of the current table, and its services' rows, as in use (so none is
/// reused under it) and reports the instances the removal guard holds.
fn start_heartbeat(
    lifecycle: Arc<dyn Lifecycle>,
    metrics: metrics::Metrics,
    table: SharedTable,
    rows: (std::collections::BTreeSet<String>, Duration),
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        let mut holding = std::collections::HashSet::new();
        let mut ticks: u64 = 0;
        loop {
            tick.tick().await;
            lifecycle.heartbeat();
            metrics.heartbeat();
            let now = host::monotonic_ms();
            let table = table.load();
            // Marking every entry visits every instance: once a minute is plenty (entries are
            // reused only after ten minutes unseen), and spares the event loop a stall a second.
            ticks += 1;
            if ticks % TOUCH_EVERY == 1 {
                for s in table.iter() {
                    s.health.touch(now);
                }
            }
            sweep_service_rows(&metrics, &table, &rows);
            let mut now_holding = std::collections::HashSet::new();
            for s in table.held() {
                let n = (0..s.instances.len())
                    .filter(|i| s.health.held(*i) && !s.health.released(*i))
                    .count();
                if n > 0 || holding.contains(&s.name) {
                    metrics.set_held(*s.stats.get_or_init(|| metrics.service_index(&s.name)), n);
                }
                if n > 0 {
                    now_holding.insert(s.name.clone());
                }
            }
            for done in holding.difference(&now_holding) {
                metrics.set_held(metrics.service_index(done), 0);
            }
            holding = now_holding;
        }
    });
}
