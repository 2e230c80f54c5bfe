//! Active health checks, once per host: each worker runs a task per checked service, but only
//! the one holding the service's lease in the shared region (see `host::leases`) probes; the
//! others read the verdicts it writes to the host-wide instance table. The holder renews the
//! lease every round; when it dies or hangs, the lease runs out one probe timeout after its
//! next round was due, and the first worker to look (every quarter interval) takes over. So the
//! probe count does not depend on the worker count. `unhealthy` failures in a row take an
//! instance out, `healthy` successes bring it back; a failed probe of an instance the removal
//! guard holds releases it at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use crate::config::{Config, HealthCheck};
use crate::host::Host;
use crate::http::client::dial::Dialer;
use crate::http::client::transport::{Transport, Transports};
use crate::http::client::upstream::Upstream;
use crate::table::SharedTable;

/// Active health checks, one task per checked service (the lease holder probes for the
/// host). Probes get their own pool, so they never queue behind client traffic.
pub fn start(config: &Config, (table, host): (&SharedTable, Host), transports: &Transports) {
    let checks: Vec<_> = config
        .services
        .iter()
        .filter_map(|(n, s)| Some((n.clone(), s.health_check.clone()?)))
        .collect();
    if checks.is_empty() {
        return;
    }
    let dialer = Dialer::new(config.proxy.connect_timeout, config.own_addresses());
    let checker = Arc::new(Upstream::new(&config.proxy, Arc::new(dialer)));
    for (name, check) in checks {
        let transport = transports.get(&name).cloned();
        let shared = (table.clone(), host);
        let run = run_checks(name, check, shared, checker.clone(), transport);
        tokio::spawn(run);
    }
}

/// Probes every instance of `service` every `interval`, on whatever table is current, while
/// this worker holds the service's lease.
pub async fn run_checks(
    service: String,
    check: HealthCheck,
    (table, host): (SharedTable, Host),
    client: Arc<Upstream>,
    transport: Option<Arc<Transport>>,
) {
    let lease = host.service_index(&service);
    let hold_ms = (check.interval + check.timeout).as_millis() as u64;
    let look = (check.interval / 4).max(Duration::from_millis(10));
    let mut next_round = tokio::time::Instant::now() + check.interval;
    loop {
        // A holder probes on a fixed rhythm; the others look at the lease four times as often.
        let holding = host.leases().holder(lease) == Some(std::process::id());
        let wake =
            if holding { next_round } else { (tokio::time::Instant::now() + look).min(next_round) };
        tokio::time::sleep_until(wake).await;
        if tokio::time::Instant::now() < next_round && !lease_free(host, lease) {
            continue;
        }
        next_round = tokio::time::Instant::now() + check.interval;
        if !host.leases().hold(lease, hold_ms) {
            continue;
        }
        let Some(svc) = table.load().get(&service).cloned() else { continue };
        let transport = transport.as_deref();
        let probes = svc.instances.iter().map(|i| probe(&client, transport, &i.address, &check));
        let results = futures::future::join_all(probes).await;
        for (idx, ok) in results.into_iter().enumerate() {
            if !ok && svc.health.release(idx) {
                log::warn!(
                    "service {service}: held instance {} released: its health check failed",
                    svc.instances[idx]
                );
            }
            match svc.health.probe(idx, ok, &check) {
                Some(true) => {
                    log::info!(
                        "service {service}: instance {} healthy again (health check)",
                        svc.instances[idx]
                    )
                }
                Some(false) => log::warn!(
                    "service {service}: instance {} unhealthy after {} failed health checks",
                    svc.instances[idx],
                    check.unhealthy
                ),
                None => {}
            }
        }
    }
}

/// Whether nobody holds the lease now (its holder ran out or is gone).
fn lease_free(host: Host, lease: usize) -> bool {
    host.leases().holder(lease).is_none_or(|pid| !crate::host::alive(pid))
}

/// One probe: a 2xx or 3xx answer within `timeout` is healthy.
async fn probe(
    client: &Upstream,
    transport: Option<&Transport>,
    address: &str,
    check: &HealthCheck,
) -> bool {
    let Ok(uri) = http::Uri::try_from(check.path.as_str()) else { return false };
    let mut req = http::Request::new(Empty::<Bytes>::new().map_err(|never| match never {}).boxed());
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    headers.insert(http::header::USER_AGENT, http::HeaderValue::from_static("zkgate-health-check"));
    if let Ok(host) = http::HeaderValue::from_str(address) {
        headers.insert(http::header::HOST, host);
    }
    match tokio::time::timeout(check.timeout, client.send(transport, address, req)).await {
        Ok(Ok((resp, mut lease))) => {
            let ok = resp.status().is_success() || resp.status().is_redirection();
            // Read the body so the connection can be reused.
            if resp.into_body().collect().await.is_ok() {
                lease.reusable();
            }
            ok
        }
        _ => false,
    }
}
