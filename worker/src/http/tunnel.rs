//! Upgraded connections (WebSocket and other `Upgrade:` protocols): once the instance answers
//! `101 Switching Protocols`, bytes are copied both ways until either side closes. A tunnel
//! counts as an open connection, so a draining worker waits for it.

use http::{header, Request};

use crate::http::connections::ConnGuard;
use crate::http::upstream::error_chain;

/// Copies bytes both ways between an upgraded client connection and instance connection.
pub async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    address: String,
    _open: ConnGuard,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            log::warn!("instance {address}: upgrade failed: {}", error_chain(&e));
            return;
        }
    };
    let mut c = hyper_util::rt::TokioIo::new(client);
    let mut u = hyper_util::rt::TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
        log::debug!("instance {address}: upgraded connection closed: {e}");
    }
}

/// Whether the request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}
