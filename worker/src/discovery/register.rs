//! `zkgate register`: keeps one instance registered in ZooKeeper, written exactly as the
//! configured format's own registrator writes it, for as long as it runs.
//!
//! The node is ephemeral, so it disappears with the session if this process dies; on a clean
//! stop it is deleted at once. It never gives up: after a session expiry, or while ZooKeeper is
//! unreachable, it retries with jittered backoff and registers again; only TERM/INT end it.

use std::future::Future;

use zookeeper_client as zk;

use crate::config::ZkSettings;
use crate::discovery::formats::join_host_port;
use crate::discovery::retry::Backoff;

/// Registers `host:port` under `service` until `stop` resolves, then deregisters. Never gives
/// up: an unreachable ensemble, a lost connection or an expired session are retried with
/// jittered backoff (warned about once when they start and once when they end), and the node is
/// created again in every new session.
pub async fn register(
    settings: &ZkSettings,
    service: &str,
    host: &str,
    port: u16,
    weight: u32,
    stop: impl Future<Output = ()>,
) {
    let mut dir = format!("{}/{service}", settings.root.trim_end_matches('/'));
    if let Some(sub) = settings.format.instances_dir() {
        dir = format!("{dir}/{sub}");
    }
    let address = join_host_port(host, port);
    tokio::pin!(stop);
    let mut backoff = Backoff::default();
    let mut failing = false;
    loop {
        let attempt = async {
            let client = connect(settings).await.map_err(|e| format!("connect: {e}"))?;
            let created = create_node(&client, settings, &dir, service, host, port, weight).await?;
            Ok::<_, String>((client, created))
        };
        let (client, created) = tokio::select! {
            _ = &mut stop => return,
            r = attempt => match r {
                Ok(registered) => registered,
                Err(e) => {
                    if !failing {
                        log::warn!("service {service}: cannot register {address} in zookeeper {} ({e}); retrying until it can", settings.hosts);
                        failing = true;
                    }
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            },
        };
        if std::mem::take(&mut failing) {
            log::info!("service {service}: zookeeper reachable again");
        }
        backoff.reset();
        log::info!(
            "service {service}: registered {address} as {created} ({:?} format)",
            settings.format
        );
        if !hold(&client, service, &created, &mut stop).await {
            continue; // the session ended: register again in a new one
        }
        deregister(&client, settings, service, &dir, &created).await;
        return;
    }
}

async fn connect(settings: &ZkSettings) -> Result<zk::Client, zk::Error> {
    zk::Client::connector()
        .with_session_timeout(settings.session_timeout)
        .with_connection_timeout(settings.connect_timeout)
        .connect(&settings.hosts)
        .await
}

/// Creates the instance node (and its service node) as the format's registrator would.
async fn create_node(
    client: &zk::Client,
    settings: &ZkSettings,
    dir: &str,
    service: &str,
    host: &str,
    port: u16,
    weight: u32,
) -> Result<String, String> {
    let anyone = zk::Acls::anyone_all();
    let persistent = zk::CreateMode::Persistent.with_acls(anyone);
    client.mkdir(dir, &persistent).await.map_err(|e| format!("create {dir}: {e}"))?;
    let (name, data, sequential) = settings.format.encode(service, host, port, weight);
    let mode =
        if sequential { zk::CreateMode::EphemeralSequential } else { zk::CreateMode::Ephemeral };
    let path = format!("{dir}/{name}");
    let options = mode.with_acls(anyone);
    match client.create(&path, &data, &options).await {
        Ok((_, seq)) if sequential => Ok(format!("{path}{seq}")),
        Ok(_) => Ok(path),
        // A previous session's node not yet expired: replace it with ours.
        Err(zk::Error::NodeExists) if !sequential => {
            client.delete(&path, None).await.map_err(|e| format!("replace {path}: {e}"))?;
            client
                .create(&path, &data, &options)
                .await
                .map_err(|e| format!("create {path}: {e}"))?;
            Ok(path)
        }
        Err(e) => Err(format!("create {path}: {e}")),
    }
}

/// Keeps the session until `stop` (returns true) or until it ends (false). A lost connection
/// is warned about once; the node lives as long as the session does.
async fn hold(
    client: &zk::Client,
    service: &str,
    created: &str,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let mut state = client.state_watcher();
    loop {
        tokio::select! {
            _ = stop.as_mut() => return true,
            s = state.changed() => match s {
                zk::SessionState::Disconnected => log::warn!(
                    "service {service}: disconnected from zookeeper; {created} stays while the session lives, reconnecting"
                ),
                zk::SessionState::SyncConnected => {
                    log::info!("service {service}: reconnected; {created} still registered")
                }
                s if s.is_terminated() => {
                    log::warn!("service {service}: session ended ({s}); registering again");
                    return false;
                }
                _ => {}
            },
        }
    }
}

/// Deletes the node, and the service node with its last instance (as Registrator does). Bounded
/// by `connect_timeout`: if ZooKeeper is away, the node goes with the session.
async fn deregister(
    client: &zk::Client,
    settings: &ZkSettings,
    service: &str,
    dir: &str,
    created: &str,
) {
    let work = async {
        match client.delete(created, None).await {
            Ok(()) | Err(zk::Error::NoNode) => {
                log::info!("service {service}: deregistered {created}")
            }
            Err(e) => log::warn!(
                "service {service}: deregistering {created}: {e} (the node goes with the session)"
            ),
        }
        match client.delete(dir, None).await {
            Ok(()) => log::info!("service {service}: removed {dir} (no instance left)"),
            Err(zk::Error::NotEmpty | zk::Error::NoNode) => {}
            Err(e) => log::debug!("service {service}: removing {dir}: {e}"),
        }
    };
    if tokio::time::timeout(settings.connect_timeout, work).await.is_err() {
        log::warn!("service {service}: zookeeper did not answer; {created} goes with the session");
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
    // Gateways read IP literals only from a registry (a name would make every worker resolve
    // what the registry says): registering a name would register nothing anyone routes to.
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| format!("invalid address {address:?}: the host must be an IP address"))?;
    if port == 0 || ip.is_unspecified() || ip.is_multicast() {
        return Err(format!(
            "invalid address {address:?}: not an address instances can be reached at"
        ));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_a_gateway_will_route_to_can_be_registered() {
        assert_eq!(split_address("10.0.0.5:8080"), Ok(("10.0.0.5".into(), 8080)));
        assert_eq!(split_address("[::1]:80"), Ok(("::1".into(), 80)));
        for bad in ["backend.local:80", "10.0.0.5", "0.0.0.0:80", "10.0.0.5:0"] {
            assert!(split_address(bad).is_err(), "{bad}");
        }
    }
}
