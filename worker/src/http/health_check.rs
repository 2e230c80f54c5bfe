//! Active health checks: each worker probes every instance of a service with `GET path`
//! every `interval` (±10% jitter, so N workers do not probe in lockstep); `unhealthy` failures in
//! a row take an instance out, `healthy` successes bring it back. The verdict is kept in the
//! route table's per-instance state, so it survives registry changes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rand::Rng;

use crate::config::HealthCheck;
use crate::http::transport::Transport;
use crate::http::upstream::Upstream;
use crate::SharedTable;

/// Probes every instance of `service` every `interval`, on whatever table is current.
pub async fn run_checks(
    service: String,
    check: HealthCheck,
    table: SharedTable,
    client: Arc<Upstream>,
    transport: Option<Arc<Transport>>,
) {
    loop {
        let jitter = check.interval.as_millis() as u64 / 10;
        let wait =
            check.interval.as_millis() as u64 + rand::rng().random_range(0..=2 * jitter) - jitter;
        tokio::time::sleep(Duration::from_millis(wait.max(10))).await;
        let Some(svc) = table.load().get(&service).cloned() else { continue };
        let transport = transport.as_deref();
        let probes = svc.instances.iter().map(|i| probe(&client, transport, &i.address, &check));
        let results = futures::future::join_all(probes).await;
        for (idx, ok) in results.into_iter().enumerate() {
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
