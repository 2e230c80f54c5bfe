//! Traffic limits checked before a request is forwarded: `[[rate_limit]]` token buckets (GCRA
//! on the shared region, so exact for the host whatever worker a request lands on; 429 with
//! `Retry-After`) and `[services.NAME] max_requests` (requests in flight across every worker;
//! beyond it a fast 503, never a queue). Both protocol sides (the engine and hyper's) ask here.

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use crate::auth::Identity;
use crate::config::{Config, RateKey};
use crate::host::admission::{Admission, InFlightGuard};
use crate::host::{monotonic_ns, RATE_RULES};
use crate::http::error::ProxyError;
use crate::http::router::RequestView;
use crate::metrics::Metrics;
use crate::table::Service;

/// One compiled `[[rate_limit]]`.
#[derive(Debug)]
struct Rule {
    /// Its place in the shared region (its position in the file).
    index: usize,
    per: RateKey,
    interval_ns: u64,
    /// GCRA's tolerance: `burst - 1` intervals ahead.
    tolerance_ns: u64,
    /// `overrides`: an identity's own (interval, tolerance).
    overrides: FxHashMap<Vec<u8>, (u64, u64)>,
}

/// The limits of every service that has some.
#[derive(Debug, Default)]
pub struct Limits {
    rates: FxHashMap<String, Vec<Rule>>,
    max_requests: FxHashMap<String, u32>,
    /// The shared-table row of every limited service, claimed at start (a canary's request
    /// counted against its primary looks the row up here, not in the table).
    rows: std::sync::OnceLock<FxHashMap<String, usize>>,
    /// In-flight counts of limited services without a row of their own in the shared table.
    local: std::sync::Mutex<FxHashMap<String, std::sync::Arc<std::sync::atomic::AtomicI32>>>,
}

impl Limits {
    /// Compiles the configuration's limits (rules beyond [`RATE_RULES`] are refused by `check`).
    pub fn from_config(config: &Config) -> Self {
        let mut rates: FxHashMap<String, Vec<Rule>> = FxHashMap::default();
        for (index, r) in config.rate_limits.iter().enumerate().take(RATE_RULES) {
            let ahead = |interval_ns: u64| {
                (interval_ns, interval_ns.saturating_mul(u64::from(r.burst.saturating_sub(1))))
            };
            let (interval_ns, tolerance_ns) = ahead(r.rate.interval_ns());
            let overrides = r
                .overrides
                .iter()
                .map(|(who, rate)| (who.as_bytes().to_vec(), ahead(rate.interval_ns())))
                .collect();
            rates.entry(r.service.clone()).or_default().push(Rule {
                index,
                per: r.per.clone(),
                interval_ns,
                tolerance_ns,
                overrides,
            });
        }
        let max_requests = config
            .services
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), s.max_requests?)))
            .collect();
        Limits { rates, max_requests, rows: Default::default(), local: Default::default() }
    }

    /// Claims the shared table's rows of every limited service now, before traffic to other
    /// services can fill the table: a limited service gets a row of its own whenever there is
    /// one to give.
    pub fn claim_rows(&self, metrics: &Metrics) {
        let names = self.rates.keys().chain(self.max_requests.keys());
        let rows = names.map(|n| (n.clone(), metrics.service_index(n))).collect();
        let _ = self.rows.set(rows);
    }

    /// Admits a request to `service`, or says why not. The guard (when the service has
    /// `max_requests`) counts the request in flight until dropped: hold it until the answer's
    /// body is done.
    ///
    /// `primary`: the service of the route when the request goes to its canary. A canary
    /// without limits of its own takes the primary's — its rate buckets and its
    /// `max_requests` count — so qualifying for the canary is no way around them.
    pub fn admit(
        &self,
        (metrics, admission): (&Metrics, &Admission),
        (service, primary): (&Service, Option<&str>),
        req: &impl RequestView,
        client: IpAddr,
    ) -> Result<Option<InFlightGuard>, ProxyError> {
        if self.rates.is_empty() && self.max_requests.is_empty() {
            return Ok(None);
        }
        let (name, idx) = self.limited(metrics, service, primary);
        if let Some(rules) = self.rates.get(name) {
            let now = monotonic_ns();
            // Rules keyed on the identity wait for auth (see `admit_identity`).
            for rule in rules.iter().filter(|r| r.per != RateKey::Identity) {
                let key = match &rule.per {
                    RateKey::Global | RateKey::Identity => 1,
                    RateKey::ClientIp => match client.to_canonical() {
                        IpAddr::V4(v4) => admission.key(rule.index, &[&v4.octets()]),
                        IpAddr::V6(v6) => admission.key(rule.index, &[&v6.octets()]),
                    },
                    RateKey::Header(name) => {
                        // One line, or none: with several, the client would choose which the
                        // bucket is keyed on while the instance reads another.
                        let mut lines = req.headers(name);
                        let first = lines.next();
                        if lines.next().is_some() {
                            return Err(ProxyError::Refused(
                                http::StatusCode::BAD_REQUEST,
                                "a rate-limited header sent on several lines",
                            ));
                        }
                        first.map_or(1, |v| admission.key(rule.index, &[v]))
                    }
                };
                rule.take(admission, key, (now, idx), name)?;
            }
        }
        let Some(max) = self.max_requests.get(name) else { return Ok(None) };
        let guard = match idx == crate::host::MAX_SERVICES - 1 {
            // No row of its own (the `_other` row is every such service's): counted apart.
            true => {
                let count = self.local.lock().unwrap_or_else(|p| p.into_inner());
                let count = match count.get(name) {
                    Some(c) => c.clone(),
                    None => {
                        drop(count);
                        log::warn!("service {name}: no row of its own in the host's table; its max_requests holds per worker");
                        let mut all = self.local.lock().unwrap_or_else(|p| p.into_inner());
                        all.entry(name.to_string()).or_default().clone()
                    }
                };
                admission.enter_local(count, *max)
            }
            false => admission.enter(idx, *max),
        };
        guard.map(Some).ok_or_else(|| ProxyError::Overloaded(name.to_string()))
    }
}

impl Limits {
    /// The service whose limits a request counts against (a canary without limits of its own:
    /// its primary), and its shared-table row.
    fn limited<'s>(
        &'s self,
        metrics: &Metrics,
        service: &'s Service,
        primary: Option<&'s str>,
    ) -> (&'s str, usize) {
        let own =
            |name: &str| self.rates.contains_key(name) || self.max_requests.contains_key(name);
        let name = match primary {
            Some(p) if p != service.name && !own(&service.name) => p,
            _ => service.name.as_str(),
        };
        let idx = match name == service.name {
            true => *service.stats.get_or_init(|| metrics.service_index(&service.name)),
            false => match self.rows.get().and_then(|r| r.get(name)) {
                Some(row) => *row,
                None => metrics.service_index(name),
            },
        };
        (name, idx)
    }

    /// The `per = "identity"` rules, once the route's auth spoke: each verified identity
    /// (`X-Auth-Subject`) has its own bucket; requests without one share one bucket that no
    /// identity's key can be (so an unauthenticated client never spends an identity's).
    pub fn admit_identity(
        &self,
        (metrics, admission): (&Metrics, &Admission),
        (service, primary): (&Service, Option<&str>),
        identity: Option<&Identity>,
    ) -> Result<(), ProxyError> {
        if self.rates.is_empty() {
            return Ok(());
        }
        let (name, idx) = self.limited(metrics, service, primary);
        let Some(rules) = self.rates.get(name) else { return Ok(()) };
        let subject = identity.and_then(|i| {
            i.headers.iter().find(|(n, _)| n == b"x-auth-subject").map(|(_, v)| v.as_slice())
        });
        let now = monotonic_ns();
        for rule in rules.iter().filter(|r| r.per == RateKey::Identity) {
            let key = match subject {
                Some(s) => admission.key(rule.index, &[b"identity\0", s]),
                None => admission.key(rule.index, &[b"anonymous\0"]),
            };
            let own = subject.and_then(|s| rule.overrides.get(s)).copied();
            let pace = own.unwrap_or((rule.interval_ns, rule.tolerance_ns));
            rule.take_at(admission, (key, pace), (now, idx), name)?;
        }
        Ok(())
    }
}

impl Rule {
    /// Takes one request from the bucket `key` of this rule (429 when it is empty).
    fn take(
        &self,
        admission: &Admission,
        key: u64,
        (now, idx): (u64, usize),
        service: &str,
    ) -> Result<(), ProxyError> {
        self.take_at(admission, (key, (self.interval_ns, self.tolerance_ns)), (now, idx), service)
    }

    /// As [`Rule::take`], at the pace `(interval, tolerance)` (an identity's override).
    fn take_at(
        &self,
        admission: &Admission,
        (key, (interval_ns, tolerance_ns)): (u64, (u64, u64)),
        (now, idx): (u64, usize),
        service: &str,
    ) -> Result<(), ProxyError> {
        admission
            .rate_limit((self.index, key), now, interval_ns, tolerance_ns, idx)
            .map_err(|wait| ProxyError::RateLimited(service.to_string(), wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_buckets_admit_burst_then_rate_and_are_shared_by_workers() {
        let host = crate::host::Host::local(0).started();
        let (a, b) = (host.admission(), host.for_slot(1).admission());
        let interval = 10_000_000; // 100/s
        let tolerance = interval * 4; // burst 5
        let mut now = 1_000_000_000;
        let admitted =
            |m: &Admission, now: u64| m.rate_limit((0, 42), now, interval, tolerance, 0).is_ok();
        // A burst of 5 at once, split between two workers: the sixth is refused.
        let burst: Vec<bool> =
            (0..6).map(|i| admitted(if i % 2 == 0 { &a } else { &b }, now)).collect();
        assert_eq!(burst, [true, true, true, true, true, false]);
        // Then one per interval.
        now += interval;
        assert!(admitted(&b, now));
        assert!(!admitted(&a, now));
        // Another key has its own bucket.
        assert!(a.rate_limit((0, 43), now, interval, tolerance, 0).is_ok());
    }

    #[test]
    fn bucket_keys_are_keyed_per_host_and_the_same_in_every_worker() {
        let host = crate::host::Host::local(0).started();
        let (a, b) = (host.admission(), host.for_slot(1).admission());
        let key = a.key(0, &[b"203.0.113.7"]);
        assert_eq!(key, b.key(0, &[b"203.0.113.7"]), "every worker of a host agrees");
        assert_ne!(key, a.key(1, &[b"203.0.113.7"]), "each rule has its own keys");
        let other = crate::host::Host::local(0).started().admission();
        assert_ne!(key, other.key(0, &[b"203.0.113.7"]), "another host draws another secret");
    }

    #[test]
    fn max_requests_counts_every_worker_and_releases_on_drop() {
        let a = crate::host::Host::local(0).started().admission();
        let first = a.enter(3, 2).expect("1 of 2");
        let second = a.enter(3, 2).expect("2 of 2");
        assert!(a.enter(3, 2).is_none(), "a third is refused");
        drop(first);
        assert!(a.enter(3, 2).is_some());
        drop(second);
    }
}
