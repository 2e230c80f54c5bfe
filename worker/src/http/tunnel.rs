//! Upgraded connections (WebSocket and other `Upgrade:` protocols): once the instance answers
//! `101 Switching Protocols`, bytes are copied both ways until either side closes. A tunnel
//! counts as an open connection, so a draining worker waits for it, holds a `max_connections`
//! permit, and closes after `idle_timeout` without a byte either way.

use http::{header, Request};

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;

use crate::http::client::upstream::error_chain;
use crate::http::connections::{Activity, ConnGuard, Tracked};

/// Copies bytes both ways between an upgraded client connection and instance connection,
/// until either side closes or nothing moves either way for `idle_timeout`. `_open` counts the
/// tunnel as an open connection and holds its `max_connections` permit.
pub async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    address: String,
    _open: (ConnGuard, OwnedSemaphorePermit),
    idle_timeout: Duration,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            log::warn!("instance {address}: upgrade failed: {}", error_chain(&e));
            return;
        }
    };
    let client = hyper_util::rt::TokioIo::new(client);
    let upstream = hyper_util::rt::TokioIo::new(upstream);
    pipe(client, upstream, &address, idle_timeout).await;
}

/// Copies bytes both ways until either side closes or nothing moves for `idle_timeout`: the
/// tunnel of both protocol sides (hyper's upgrades, and the engine's).
pub async fn pipe<C, U>(client: C, upstream: U, address: &str, idle_timeout: Duration)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity::default());
    let mut c = Tracked::new(client, activity.clone());
    let mut u = Tracked::new(upstream, activity.clone());
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut c, &mut u) => {
            if let Err(e) = r {
                log::debug!("instance {address}: upgraded connection closed: {e}");
            }
        }
        _ = activity.idle_reaches(idle_timeout) => {
            log::info!("instance {address}: upgraded connection idle for {idle_timeout:?}: closed");
        }
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
