//! What unit tests of the request path build on: a proxy made from a configuration's text as a
//! worker makes it (static routes, a local host region, the `[auth.*]` sections loaded).

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::host::Host;
use crate::http::connections::Connections;
use crate::http::proxy::{Proxy, Shared};
use crate::http::router::Router;
use crate::table::{RouteTable, Source, Tracker};

/// A worker's proxy for the configuration `text` (its routes loaded, as from the file).
pub(crate) fn proxy(text: &str) -> Proxy {
    let config: Config = toml::from_str(text).unwrap();
    let host = Host::local(0);
    let tracker = Tracker::host(host.instances());
    let table = Arc::new(ArcSwap::from_pointee(RouteTable::statics(&config, &tracker)));
    let (_ready_tx, ready) = tokio::sync::watch::channel(Some(Source::Static));
    let shared = Shared {
        table,
        ready,
        host,
        connections: Arc::new(Connections::new(16)),
        transports: Arc::new(
            crate::http::client::transport::Transports::from_config(&config).unwrap(),
        ),
        auth: crate::auth::Auth::from_config(&config).unwrap_or_else(|(auth, _)| auth),
    };
    let router = Router::new(&config.header_routing, &config.routes);
    Proxy::new(shared, router, &config, "zkgate-test")
}
