//! The glue between the supervisor and the worker: the [`supervisor::App`] the binary runs.
//!
//! The supervisor calls [`Gateway::run_worker`] in each forked child and [`Gateway::reload`] on
//! SIGHUP; this is the only place that knows both crates.

use std::path::PathBuf;
use std::sync::Arc;

use supervisor::{ControlPipe, WorkerContext, EXIT_FATAL};

use crate::config::{self, Config};

/// The gateway as the supervisor sees it: a configuration file and its last good parse.
pub struct Gateway {
    /// Where the configuration is re-read from on reload.
    pub path: PathBuf,
    /// The configuration new workers start with.
    pub config: Arc<Config>,
    /// The shared metrics region, mapped by the supervisor before the first fork.
    pub shared: Option<supervisor::SharedMemory>,
    /// How the supervisor's sockets are laid out. Fixed at start: sockets are not reopened on
    /// reload.
    pub sockets: Layout,
    /// The certificates of the TLS sockets (re-read on reload).
    tls: Option<worker::tls::Tls>,
    /// This gateway's `Via` pseudonym, drawn once before the first fork so every worker (and
    /// every reload) shares it.
    via: String,
    /// The admin token at start, kept for the admin socket if a reload removes `[admin]` (the
    /// socket stays until restart, and must not become open to anyone).
    start_token: Option<String>,
    /// Where the admin socket was bound at start: it is not reopened on reload.
    admin_bound: Option<std::net::SocketAddr>,
}

/// The supervisor's sockets, in order: plain, TLS, then the admin socket if any.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Plain data sockets (`server.listen`).
    pub plain: usize,
    /// TLS data sockets (`server.listen_tls`).
    pub tls: usize,
    /// An admin socket last.
    pub admin: bool,
}

impl Gateway {
    /// A gateway for `config`, read from `path`, with its checked certificates.
    pub fn new(
        path: PathBuf,
        config: Config,
        certificates: Option<worker::tls::Certificates>,
    ) -> anyhow::Result<Self> {
        let sockets = Layout {
            plain: config.server.listen.len(),
            tls: config.server.listen_tls.len(),
            admin: config.admin.is_some(),
        };
        // Session-ticket keys are drawn per period by the workers, in the shared region: every
        // worker (and every reload's workers) resumes every other's sessions.
        let tls = certificates.map(|c| worker::tls::Tls { certificates: Arc::new(c) });
        let start_token = config.admin.as_ref().and_then(|a| a.token.clone());
        let admin_bound = config.admin.as_ref().map(|a| a.listen);
        // A random pseudonym per running gateway (std's RandomState is seeded from the OS).
        use std::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let via = format!("zkgate-{:08x}", random as u32);
        let config = Arc::new(config);
        Ok(Gateway { path, config, shared: None, sockets, tls, start_token, admin_bound, via })
    }
}

impl Gateway {
    /// The host's shared region as slot `slot` sees it (`None` before the supervisor mapped
    /// it): the one door to it. Its invariants are checked here, once, not at each use: the
    /// supervisor mapped it before the first fork, page aligned, zero-filled, at least
    /// `Host::size()` bytes, and never unmaps it; every field is an atomic, so any process or
    /// thread may hold a handle.
    fn host(&self, slot: usize) -> Option<worker::host::Host> {
        let region = self.shared?;
        assert!(region.len() >= worker::host::Host::size(), "shared region too small");
        assert!((region.as_ptr() as usize).is_multiple_of(4096), "shared region not page aligned");
        // SAFETY: checked just above (size, alignment); mapped zero-filled (a valid Region:
        // all atomics) and never unmapped, per `supervisor::SharedMemory`.
        Some(unsafe { worker::host::Host::from_raw(region.as_ptr(), slot) })
    }
}

/// Reports worker readiness and heartbeats on the supervisor's control pipe.
struct PipeLifecycle(ControlPipe);

impl worker::Lifecycle for PipeLifecycle {
    fn ready(&self) {
        self.0.ready();
    }

    fn heartbeat(&self) {
        self.0.heartbeat();
    }
}

impl Gateway {
    /// With `[fleet]`: how the host's release watcher checks a release (the file with its
    /// sections, through `check`'s code), where it caches them, and how it asks for a reload.
    fn fleet_hooks(&self) -> Option<worker::fleet::apply::Hooks> {
        self.config.fleet.as_ref()?;
        let path = self.path.clone();
        let validate = move |release: &str| {
            let text = config::read(&path).map_err(|e| e.to_string())?;
            let config = config::load_release(&path, &text, release).map_err(|e| e.to_string())?;
            config::load_tls(&path, &config).map(|_| ()).map_err(|e| e.to_string())
        };
        Some(worker::fleet::apply::Hooks {
            validate: Arc::new(validate),
            reload: Arc::new(supervisor::request_reload),
            cache: crate::fleet::cache_dir(&self.path, &self.config),
        })
    }
}

/// A reload may not move the admin socket: it is bound once, before the first fork. A file
/// that names another address is refused whole, so the socket that stays never takes the new
/// file's token (or lack of one): `check` judged that token against the new address, not the
/// one still bound. Adding `[admin]` where there was none takes effect on restart.
fn admin_unmoved(
    bound: Option<std::net::SocketAddr>,
    wanted: Option<&worker::config::AdminSettings>,
) -> Result<(), String> {
    match (bound, wanted) {
        (Some(bound), Some(a)) if a.listen != bound => Err(format!(
            "admin.listen changed from {bound} to {}: the admin socket is bound once and moves on restart only; reload refused (the running workers keep the current configuration)",
            a.listen
        )),
        (None, Some(a)) => {
            log::warn!("reload: [admin] on {} takes effect on restart only", a.listen);
            Ok(())
        }
        _ => Ok(()),
    }
}

impl supervisor::App for Gateway {
    fn run_worker(&self, ctx: WorkerContext) -> i32 {
        let c = &self.config;
        let mut listeners = ctx.listeners;
        // The supervisor opened the admin socket last (see config::supervisor_settings); the
        // token comes from the current configuration.
        let admin_socket = if self.sockets.admin { listeners.pop() } else { None };
        listeners.truncate(self.sockets.plain + self.sockets.tls);
        let tls_listeners = listeners.split_off(self.sockets.plain);
        let token = match &c.admin {
            Some(a) => a.token.clone(),
            None => self.start_token.clone(),
        };
        let admin = admin_socket.map(|l| (l, token));
        let host = self.host(ctx.slot).unwrap_or_else(|| worker::host::Host::local(ctx.slot));
        let settings = worker::Settings {
            slot: ctx.slot,
            listeners,
            tls_listeners,
            tls: self.tls.clone(),
            admin,
            config: self.config.clone(),
            host,
            generation: ctx.generation,
            replacing: ctx.replacing,
            via: self.via.clone(),
            fleet: self.fleet_hooks(),
        };
        match worker::run(settings, Arc::new(PipeLifecycle(ctx.control))) {
            Ok(()) => 0,
            Err(e) => {
                log::error!("worker slot {}: {e}", ctx.slot);
                EXIT_FATAL
            }
        }
    }

    fn reload(&mut self) -> Result<supervisor::Settings, String> {
        let config = config::load(&self.path).map_err(|e| e.to_string())?;
        let certificates = config::load_tls(&self.path, &config).map_err(|e| e.to_string())?;
        admin_unmoved(self.admin_bound, config.admin.as_ref())?;
        log::info!("reload: {} is valid", self.path.display());
        if config.server.listen_tls != self.config.server.listen_tls {
            log::warn!("reload: server.listen_tls takes effect on restart only; keeping the current sockets");
        }
        // Certificates are re-read on every reload; ticket keys stay in the region (sessions
        // survive).
        if let (Some(tls), Some(certificates)) = (&mut self.tls, certificates) {
            tls.certificates = Arc::new(certificates);
        }
        if self.sockets.admin && config.admin.is_none() {
            log::warn!("reload: [admin] was removed; the admin listener stays (with its first token) until restart");
        }
        self.config = Arc::new(config);
        Ok(config::supervisor_settings(&self.config))
    }

    fn generation_failed(&mut self, why: &str) -> bool {
        let (Some(fleet), Some(id)) = (&self.config.fleet, &self.config.release) else {
            return false; // the host's own file: nothing to go back to
        };
        let cache = crate::fleet::cache_dir(&self.path, &self.config);
        match worker::fleet::apply::revert(&cache, id, why) {
            Ok(back) => {
                if let Some(host) = self.host(0) {
                    host.releases().rejected();
                }
                log::error!(
                    "fleet {}: release {id} reverted on this host ({why}); back to {}",
                    fleet.cluster,
                    back.as_deref().unwrap_or("the local file")
                );
                true
            }
            Err(e) => {
                log::error!(
                    "fleet {}: release {id} failed ({why}) but cannot be reverted in {}: {e}",
                    fleet.cluster,
                    cache.display()
                );
                false
            }
        }
    }

    fn shared_memory_size(&self) -> usize {
        worker::host::Host::size()
    }

    fn attach_shared(&mut self, region: supervisor::SharedMemory) {
        self.shared = Some(region);
    }

    fn handover(&self) -> Vec<u8> {
        self.host(0).map(worker::tls::tickets::handover).unwrap_or_default()
    }

    fn adopt_handover(&mut self, state: &[u8]) {
        if let Some(host) = self.host(0) {
            let keys = worker::tls::tickets::adopt(host, state);
            log::info!(
                "upgrade: {keys} TLS session-ticket key(s) taken over from the previous binary"
            );
        }
    }

    fn slot_retired(&mut self, slot: usize) {
        if let Some(host) = self.host(slot) {
            // The supervisor writes only the retired slot's row.
            worker::metrics::Metrics::new(host).retire();
        }
    }

    fn status(&self) -> String {
        self.host(0).map(|h| worker::metrics::Metrics::new(h).status_line()).unwrap_or_default()
    }
}
