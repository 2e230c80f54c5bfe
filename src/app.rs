//! The glue between the supervisor and the worker: the [`supervisor::App`] the binary runs.
//!
//! The supervisor calls [`Gateway::run_worker`] in each forked child and [`Gateway::reload`] on
//! SIGHUP; this is the only place that knows both crates.

use std::path::PathBuf;
use std::sync::Arc;

use supervisor::{ControlPipe, WorkerContext, EXIT_FATAL};

use crate::config::Config;

/// The gateway as the supervisor sees it: a configuration file and its last good parse.
pub struct Gateway {
    /// Where the configuration is re-read from on reload.
    pub path: PathBuf,
    /// The configuration new workers start with.
    pub config: Config,
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

impl supervisor::App for Gateway {
    fn run_worker(&self, ctx: WorkerContext) -> i32 {
        let c = &self.config;
        let settings = worker::Settings {
            slot: ctx.slot,
            listeners: ctx.listeners,
            proxy: c.proxy.clone(),
            header_routing: c.header_routing.clone(),
            routes: c.routes.clone(),
            services: c.services.clone(),
            shutdown_timeout: c.server.shutdown_timeout,
            zookeeper: c.zookeeper.clone(),
            cache: c.cache.clone(),
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
        let config = Config::load(&self.path).map_err(|e| e.to_string())?;
        log::info!("reload: {} is valid", self.path.display());
        self.config = config;
        Ok(self.config.supervisor_settings())
    }

    fn status(&self) -> String {
        let instances: usize = self.config.services.values().filter_map(|s| s.instances.as_ref()).map(Vec::len).sum();
        format!("{} services, {instances} static instances", self.config.services.len())
    }
}
