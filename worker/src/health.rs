//! Instance health, per worker: passive outlier detection (ejection after consecutive failures)
//! and optional active HTTP health checks. State lives in atomics next to the balancer, so the
//! request path reads it without a lock.
//!
//! Ejection follows Envoy: after `consecutive_failures` connect errors or 5xx answers an instance
//! is ejected for `base_ejection × times ejected` (capped at `max_ejection`); no more than
//! `max_ejection_percent` of a service is ejected at once (at least one may be); and when no
//! instance is available the proxy spreads over all of them (panic mode) rather than answer 503.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::settings::duration;
use crate::upstream::Upstream;
use crate::SharedTable;

/// `[proxy.outlier]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSettings {
    /// Consecutive failures (connect error, timeout or 5xx) that eject an instance; 0 disables.
    pub consecutive_failures: u32,
    /// First ejection time; the n-th ejection lasts n times this.
    #[serde(with = "duration")]
    pub base_ejection: Duration,
    /// Longest ejection.
    #[serde(with = "duration")]
    pub max_ejection: Duration,
    /// Most of a service (in percent) that may be ejected at once.
    pub max_ejection_percent: u32,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// `health_check = { path, interval, timeout, healthy, unhealthy }` of a service.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path probed with GET; a 2xx or 3xx answer is healthy.
    pub path: String,
    /// Time between probes of one instance (each worker adds ±10% jitter).
    #[serde(default = "five_seconds", with = "duration")]
    pub interval: Duration,
    /// Time a probe may take.
    #[serde(default = "one_second", with = "duration")]
    pub timeout: Duration,
    /// Consecutive successes that bring an unhealthy instance back.
    #[serde(default = "two")]
    pub healthy: u32,
    /// Consecutive failures that take an instance out.
    #[serde(default = "three")]
    pub unhealthy: u32,
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}

#[derive(Debug, Default)]
struct InstanceState {
    failures: AtomicU32,
    ejections: AtomicU32,
    /// Milliseconds since `ServiceHealth::epoch`; 0 = not ejected.
    ejected_until: AtomicU64,
    /// Taken out by the active health check.
    down: AtomicBool,
    probe_fails: AtomicU32,
    probe_oks: AtomicU32,
}

/// Health of one service's instances, index-aligned with its instance list.
#[derive(Debug)]
pub struct ServiceHealth {
    epoch: Instant,
    states: Vec<InstanceState>,
}

impl ServiceHealth {
    /// Every instance healthy.
    pub fn new(instances: usize) -> Self {
        ServiceHealth { epoch: Instant::now(), states: (0..instances).map(|_| InstanceState::default()).collect() }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether instance `idx` may take traffic now.
    pub fn available(&self, idx: usize) -> bool {
        let Some(s) = self.states.get(idx) else { return false };
        !s.down.load(Ordering::Relaxed) && s.ejected_until.load(Ordering::Relaxed) <= self.now_ms()
    }

    /// Whether `idx` is ejected now (for `/routes`).
    pub fn ejected(&self, idx: usize) -> bool {
        self.states.get(idx).is_some_and(|s| s.ejected_until.load(Ordering::Relaxed) > self.now_ms())
    }

    /// Whether the health check has taken `idx` out.
    pub fn down(&self, idx: usize) -> bool {
        self.states.get(idx).is_some_and(|s| s.down.load(Ordering::Relaxed))
    }

    /// A request to `idx` succeeded.
    pub fn success(&self, idx: usize) {
        if let Some(s) = self.states.get(idx) {
            if s.failures.load(Ordering::Relaxed) != 0 {
                s.failures.store(0, Ordering::Relaxed);
            }
        }
    }

    /// A request to `idx` failed. Returns how long it is now ejected for, if it was ejected.
    pub fn failure(&self, idx: usize, policy: &OutlierSettings) -> Option<Duration> {
        let s = self.states.get(idx)?;
        let n = s.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if policy.consecutive_failures == 0 || n < policy.consecutive_failures || self.ejected(idx) {
            return None;
        }
        let total = self.states.len();
        let ejected_now = (0..total).filter(|i| self.ejected(*i)).count();
        let allowed = (total * policy.max_ejection_percent as usize / 100).max(1);
        if ejected_now >= allowed {
            return None;
        }
        let times = s.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let span = policy.base_ejection.saturating_mul(times).min(policy.max_ejection);
        s.ejected_until.store(self.now_ms() + span.as_millis() as u64, Ordering::Relaxed);
        s.failures.store(0, Ordering::Relaxed);
        Some(span)
    }

    /// Records one probe result; returns `Some(true/false)` when the instance changed state.
    fn probe(&self, idx: usize, ok: bool, check: &HealthCheck) -> Option<bool> {
        let s = self.states.get(idx)?;
        if ok {
            s.probe_fails.store(0, Ordering::Relaxed);
            let n = s.probe_oks.fetch_add(1, Ordering::Relaxed) + 1;
            if s.down.load(Ordering::Relaxed) && n >= check.healthy {
                s.down.store(false, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            s.probe_oks.store(0, Ordering::Relaxed);
            let n = s.probe_fails.fetch_add(1, Ordering::Relaxed) + 1;
            if !s.down.load(Ordering::Relaxed) && n >= check.unhealthy {
                s.down.store(true, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }
}

/// Probes every instance of `service` every `interval` (with jitter, so N workers do not probe
/// in lockstep), on the instances of whatever table is current.
pub async fn run_checks(service: String, check: HealthCheck, table: SharedTable, client: Arc<Upstream>) {
    loop {
        let jitter = check.interval.as_millis() as u64 / 10;
        let wait = check.interval.as_millis() as u64 + rand::rng().random_range(0..=2 * jitter) - jitter;
        tokio::time::sleep(Duration::from_millis(wait.max(10))).await;
        let Some(svc) = table.load().get(&service).cloned() else { continue };
        let probes = svc.instances.iter().map(|i| probe(&client, &i.address, &check));
        let results = futures::future::join_all(probes).await;
        for (idx, ok) in results.into_iter().enumerate() {
            match svc.health.probe(idx, ok, &check) {
                Some(true) => {
                    log::info!("service {service}: instance {} healthy again (health check)", svc.instances[idx])
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

async fn probe(client: &Upstream, address: &str, check: &HealthCheck) -> bool {
    let Ok(uri) = format!("http://{address}{}", check.path).parse::<http::Uri>() else { return false };
    let mut req = http::Request::new(Empty::<Bytes>::new().map_err(|never| match never {}).boxed());
    *req.uri_mut() = uri;
    req.headers_mut().insert(http::header::USER_AGENT, http::HeaderValue::from_static("zkgate-health-check"));
    match tokio::time::timeout(check.timeout, client.send(req)).await {
        Ok(Ok(resp)) => {
            let ok = resp.status().is_success() || resp.status().is_redirection();
            // Read the body so the pooled connection can be reused.
            let _ = resp.into_body().collect().await;
            ok
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierSettings {
        OutlierSettings { consecutive_failures: 3, base_ejection: Duration::from_millis(50), ..Default::default() }
    }

    #[test]
    fn consecutive_failures_eject_and_ejection_grows_then_expires() {
        let h = ServiceHealth::new(4);
        assert_eq!(h.failure(0, &policy()), None);
        h.success(0);
        assert_eq!(h.failure(0, &policy()), None);
        assert_eq!(h.failure(0, &policy()), None);
        assert_eq!(h.failure(0, &policy()), Some(Duration::from_millis(50)));
        assert!(!h.available(0) && h.ejected(0));
        std::thread::sleep(Duration::from_millis(70));
        assert!(h.available(0), "ejection expires");
        for _ in 0..2 {
            assert_eq!(h.failure(0, &policy()), None);
        }
        assert_eq!(h.failure(0, &policy()), Some(Duration::from_millis(100)), "second ejection is longer");
    }

    #[test]
    fn never_more_than_max_ejection_percent_but_at_least_one() {
        let h = ServiceHealth::new(4);
        let mut ejected = 0;
        for idx in 0..4 {
            for _ in 0..3 {
                if h.failure(idx, &policy()).is_some() {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 2, "50% of 4");
        let single = ServiceHealth::new(1);
        let n = (0..3).filter_map(|_| single.failure(0, &policy())).count();
        assert_eq!(n, 1);
    }

    #[test]
    fn probes_take_an_instance_out_and_back() {
        let h = ServiceHealth::new(1);
        let c = HealthCheck {
            path: "/h".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy: 2,
            unhealthy: 3,
        };
        assert_eq!(h.probe(0, false, &c), None);
        assert_eq!(h.probe(0, false, &c), None);
        assert_eq!(h.probe(0, false, &c), Some(false));
        assert!(!h.available(0));
        assert_eq!(h.probe(0, true, &c), None);
        assert_eq!(h.probe(0, true, &c), Some(true));
        assert!(h.available(0));
    }
}
