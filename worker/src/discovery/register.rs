//! `zkgate register`: keeps one instance registered in ZooKeeper, written exactly as the
//! configured format's own registrator writes it, for as long as it runs.
//!
//! The node is ephemeral, so it disappears with the session if this process dies; on a clean
//! stop it is deleted at once. After a session expiry it is created again in a new session.

use std::future::Future;

use zookeeper_client as zk;

use crate::config::ZkSettings;
use crate::discovery::formats::join_host_port;

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// ZooKeeper could not be reached or refused an operation.
    #[error("zookeeper {hosts}: {what}: {source}")]
    Zk {
        /// The connect string.
        hosts: String,
        /// What was being done.
        what: String,
        /// The client's error.
        source: zk::Error,
    },
}

/// Registers `host:port` under `service` until `stop` resolves, then deregisters.
pub async fn register(
    settings: &ZkSettings,
    service: &str,
    host: &str,
    port: u16,
    weight: u32,
    stop: impl Future<Output = ()>,
) -> Result<(), RegisterError> {
    let err = |what: String| {
        let hosts = settings.hosts.clone();
        move |source| RegisterError::Zk { hosts, what, source }
    };
    let dir = format!("{}/{service}", settings.root.trim_end_matches('/'));
    tokio::pin!(stop);
    loop {
        let client = zk::Client::connector()
            .with_session_timeout(settings.session_timeout)
            .with_connection_timeout(settings.connect_timeout)
            .connect(&settings.hosts)
            .await
            .map_err(err("connect".into()))?;
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        client.mkdir(&dir, &persistent).await.map_err(err(format!("create {dir}")))?;
        let (name, data, sequential) = settings.format.encode(service, host, port, weight);
        let mode = if sequential {
            zk::CreateMode::EphemeralSequential
        } else {
            zk::CreateMode::Ephemeral
        };
        let path = format!("{dir}/{name}");
        let created =
            match client.create(&path, &data, &mode.with_acls(zk::Acls::anyone_all())).await {
                Ok((_, seq)) if sequential => format!("{path}{seq}"),
                Ok(_) => path.clone(),
                // A previous session's node not yet expired: replace it with ours.
                Err(zk::Error::NodeExists) if !sequential => {
                    client.delete(&path, None).await.map_err(err(format!("replace {path}")))?;
                    client
                        .create(&path, &data, &mode.with_acls(zk::Acls::anyone_all()))
                        .await
                        .map_err(err(format!("create {path}")))?;
                    path.clone()
                }
                Err(e) => return Err(err(format!("create {path}"))(e)),
            };
        log::info!(
            "service {service}: registered {} as {created} ({:?} format)",
            join_host_port(host, port),
            settings.format
        );
        let mut state = client.state_watcher();
        loop {
            tokio::select! {
                _ = &mut stop => {
                    match client.delete(&created, None).await {
                        Ok(()) | Err(zk::Error::NoNode) => log::info!("service {service}: deregistered {created}"),
                        Err(e) => log::warn!("service {service}: deregistering {created}: {e} (the node goes with the session)"),
                    }
                    // As Registrator does: the service node goes with its last instance.
                    match client.delete(&dir, None).await {
                        Ok(()) => log::info!("service {service}: removed {dir} (no instance left)"),
                        Err(zk::Error::NotEmpty | zk::Error::NoNode) => {}
                        Err(e) => log::debug!("service {service}: removing {dir}: {e}"),
                    }
                    return Ok(());
                }
                s = state.changed() => {
                    if s.is_terminated() {
                        log::warn!("service {service}: session ended ({s}); registering again");
                        break;
                    }
                }
            }
        }
    }
}

/// Parses `--address`: `host:port` (IPv6 in brackets).
pub fn split_address(address: &str) -> Result<(String, u16), String> {
    let auth: http::uri::Authority =
        address.parse().map_err(|e| format!("invalid address {address:?}: {e}"))?;
    let port = auth
        .port_u16()
        .ok_or_else(|| format!("invalid address {address:?}: a port is required"))?;
    let host = auth.host().trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((host, port))
}
