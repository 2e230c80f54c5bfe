//! Forwarding one request to a service: pick an instance, send, record the outcome for outlier
//! detection, and retry on another instance when that is safe ([`Replay`]: a refused connection
//! for any bodiless request; a reset or EOF before any response for idempotent ones) — within
//! `retries` and the retry budget.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Response;
use hyper::body::Incoming;
use tokio::sync::Semaphore;

use crate::balance::PickContext;
use crate::config::ProxySettings;
use crate::http::client::dial::Dialer;
use crate::http::client::inflight::InFlight;
use crate::http::client::pool::{IdleSet, Lease};
use crate::http::client::upstream::{BodySent, Upstream, UpstreamError};
use crate::http::client::wire::Wire;
use crate::http::error::ProxyError;
use crate::metrics::Metrics;
use crate::table::Service;

/// Fewest retries allowed at once whatever the budget, so a quiet worker can still retry.
const MIN_RETRY_CONCURRENCY: usize = 3;

/// Sends requests to instances; one per worker.
pub struct Forwarder {
    upstream: Upstream,
    /// Opens connections to instances (both sides).
    dialer: Arc<Dialer>,
    /// The engine's idle connections to instances (plain TCP and TLS, see `h1`).
    engine: Arc<IdleSet<Wire>>,
    settings: ProxySettings,
    metrics: Metrics,
    /// Requests being handled by this worker (the retry budget is a share of them).
    active: AtomicUsize,
    /// Requests on their second or later attempt.
    retrying: AtomicUsize,
    /// `max_upstream_connections` permits: one per attempt in flight.
    upstream_slots: Arc<Semaphore>,
}

/// What the attempts of one request learned, for metrics and the access log.
#[derive(Debug, Default)]
pub struct Attempts {
    /// The instance that answered last (or failed last): its index in the service.
    pub instance: Option<usize>,
    /// Time until the last attempt's response head.
    pub latency: Option<Duration>,
    /// Attempts made (instances tried).
    pub made: u32,
}

/// A response from an instance, with what it keeps alive while its body streams.
pub struct Answered<'s, R> {
    /// The instance's response (hyper's, or the engine's head and connection).
    pub response: R,
    /// The instance that answered.
    pub address: &'s str,
    /// Counts the request in flight at the instance until the body is done.
    pub inflight: InFlight,
}

/// What an attempt returns: its status is what outlier detection judges.
pub trait Answer {
    /// The response status.
    fn status(&self) -> http::StatusCode;
}

impl Answer for (Response<Incoming>, Lease) {
    fn status(&self) -> http::StatusCode {
        self.0.status()
    }
}

impl Forwarder {
    /// A forwarder with the proxy's timeouts and retry policy, connecting through `dialer`.
    pub fn new(settings: &ProxySettings, metrics: Metrics, dialer: Arc<Dialer>) -> Self {
        Forwarder {
            upstream: Upstream::new(settings, dialer.clone()),
            dialer,
            engine: IdleSet::new(settings.idle_timeout, settings.max_connections_per_instance),
            settings: settings.clone(),
            metrics,
            active: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            upstream_slots: Arc::new(Semaphore::new(settings.max_upstream_connections)),
        }
    }

    /// Counts a request as active for as long as the guard lives (a guard, not a decrement at
    /// the end: hyper drops the request's future when the client leaves).
    pub fn active(&self) -> CountGuard<'_> {
        CountGuard::new(&self.active)
    }

    /// The client to instances (the hyper path's attempts go through it).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// How connections to instances are opened.
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// The engine's idle connections to instances.
    pub fn engine_pool(&self) -> &IdleSet<Wire> {
        &self.engine
    }

    /// The proxy's settings.
    pub fn settings(&self) -> &ProxySettings {
        &self.settings
    }

    /// Sends the request to an instance of `service`, retrying when `replay` allows. `attempt`
    /// makes one attempt on an instance address, given when it starts: the exchange, and — for
    /// a request with a body — what tells when the body has been handed over (the timers start
    /// there).
    pub async fn forward<'s, R: Answer, Fut>(
        &self,
        service: &'s Arc<Service>,
        key: Option<u64>,
        replay: Replay,
        mut attempt: impl FnMut(&'s str, Instant) -> (Fut, Option<Arc<BodySent>>),
        attempts: &mut Attempts,
    ) -> Result<Answered<'s, R>, ProxyError>
    where
        Fut: Future<Output = Result<R, UpstreamError>>,
    {
        let mut tried = Tried::default();
        // Attempts charged to `retries` and the budget: a held instance found gone is not.
        let mut charged = 0;
        let mut avoid_held = false;
        let mut _retry: Option<CountGuard<'_>> = None;
        loop {
            // Bounded whatever the clients do (one h2 connection may carry many streams).
            let Ok(slot) = self.upstream_slots.clone().try_acquire_owned() else {
                return Err(ProxyError::Refused(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connection limit reached",
                ));
            };
            let idx = self.pick(service, key, tried.as_slice(), avoid_held)?;
            tried.push(idx);
            charged += 1;
            let address: &'s str = &service.instances[idx].address;
            let inflight = InFlight::start(service.clone(), idx, slot);
            attempts.instance = Some(idx);
            attempts.made += 1;
            let sent = Instant::now();
            let give_up_when_slow =
                replay == Replay::IfNoResponse && self.may_retry(service, charged);
            let (exchange, body_sent) = attempt(address, sent);
            // Pinned here and lent to `timed`: a future moved into it and pinned there would
            // be stored twice in this request's state (its argument, then its pinned local).
            let exchange = std::pin::pin!(exchange);
            let timing = (sent, give_up_when_slow);
            let result = self.timed(service, idx, exchange, body_sent, timing).await;
            attempts.latency = Some(sent.elapsed());
            // A held instance (removed by the registry, kept by the removal guard) that cannot
            // be reached has proved gone: released for every worker, and the request goes to a
            // listed instance free of charge.
            if let Err(e @ UpstreamError::Connect(_)) = &result {
                if service.health.held(idx) && replay.allows(e) {
                    if service.health.release(idx) {
                        log::warn!(
                            "service {}: held instance {address} released: {e}",
                            service.name
                        );
                    }
                    charged -= 1;
                    avoid_held = true;
                    continue;
                }
            }
            self.record(service, idx, result.as_ref().map(Answer::status));
            match result {
                Ok(response) => {
                    return Ok(Answered { response, address, inflight });
                }
                Err(e) if replay.allows(&e) && self.may_retry(service, charged) => {
                    log::warn!(
                        "service {}: instance {address}: {e}; retrying on another instance",
                        service.name
                    );
                    _retry.get_or_insert_with(|| CountGuard::new(&self.retrying));
                    self.metrics.retry();
                }
                Err(e) => return Err(ProxyError::Upstream(service.name.clone(), e)),
            }
        }
    }

    /// Times one attempt. A request still unanswered after `slow_after` counts as a failure of
    /// its instance right then: a hung instance is found in seconds, not at `request_timeout`,
    /// nor never when its clients give up first. Then an attempt that may be retried
    /// (`give_up_when_slow`: idempotent, bodiless, within the budget) is abandoned for another
    /// instance, as nginx's `proxy_next_upstream timeout` does; any other keeps waiting.
    async fn timed<R>(
        &self,
        service: &Service,
        idx: usize,
        mut response: Pin<&mut impl Future<Output = Result<R, UpstreamError>>>,
        body_sent: Option<Arc<BodySent>>,
        (sent, give_up_when_slow): (Instant, bool),
    ) -> Result<R, UpstreamError> {
        let timeout = self.settings.request_timeout;
        // A request that may go to another instance gives this one at most half its deadline,
        // so the retry fits in what is left (nginx's proxy_next_upstream timeout within
        // proxy_next_upstream_timeout): with slow_after >= request_timeout, a hung instance
        // would otherwise answer every such request 504 at request_timeout.
        let configured = self.settings.outlier.slow_after;
        let slow_after = match give_up_when_slow && !configured.is_zero() {
            true => configured.min(timeout / 2),
            false => configured,
        };
        // The instance is judged from the moment the whole request is in its hands: both
        // deadlines count from the end of the body (from the attempt's start for a request
        // without one: no clock read more).
        let mut from = sent;
        if let Some(body) = &body_sent {
            tokio::select! {
                r = &mut response => return r,
                _ = body.wait() => from = Instant::now(),
            }
        }
        // One timer per attempt: first at slow_after (when set and shorter), then moved on to
        // request_timeout.
        let slow = !slow_after.is_zero() && slow_after < timeout;
        let first = if slow { slow_after } else { timeout };
        let timer = tokio::time::sleep_until((from + first).into());
        tokio::pin!(timer);
        tokio::select! {
            r = &mut response => return r,
            _ = &mut timer => {}
        }
        if !slow {
            return Err(UpstreamError::Timeout(timeout));
        }
        log::info!(
            "service {}: instance {}: no response after {slow_after:?}; counted as a failure",
            service.name,
            service.instances[idx]
        );
        self.count_failure(service, idx);
        if give_up_when_slow {
            return Err(UpstreamError::Slow(slow_after));
        }
        let deadline = timer.deadline() + (timeout - slow_after);
        timer.as_mut().reset(deadline);
        tokio::select! {
            r = &mut response => r,
            _ = &mut timer => Err(UpstreamError::Timeout(timeout)),
        }
    }

    /// Picks among available listed instances not tried yet; when none is, among the held
    /// fallbacks (instances the registry removed en masse, of a service without a health
    /// check: a last resort, never beside a listed one); when none is available (all ejected
    /// or unhealthy), among every listed instance not tried yet: a degraded answer beats a 503
    /// (Envoy's panic mode). `least_request` compares the host's in-flight counts; the
    /// connection limit is this worker's. `avoid_held`: a held instance of this request proved
    /// gone, so the others held with it are passed over too.
    fn pick(
        &self,
        service: &Service,
        key: Option<u64>,
        tried: &[usize],
        avoid_held: bool,
    ) -> Result<usize, ProxyError> {
        let limit = self.settings.max_connections_per_instance;
        let full = |i: usize| service.health.local_active(i) >= limit;
        let unavailable = |i: usize| {
            tried.contains(&i)
                || !service.health.available(i)
                || full(i)
                || (avoid_held && service.health.held(i))
        };
        let listed_only = |i: usize| unavailable(i) || service.health.fallback(i);
        let already_tried = |i: usize| tried.contains(&i) || full(i) || service.health.held(i);
        let load = |i: usize| service.health.active(i);
        let balancer = &service.balancer;
        balancer
            .pick(&PickContext { key, skip: &listed_only, load: &load })
            .or_else(|| balancer.pick(&PickContext { key, skip: &unavailable, load: &load }))
            .or_else(|| balancer.pick(&PickContext { key, skip: &already_tried, load: &load }))
            .ok_or_else(|| ProxyError::NoInstance(service.name.clone()))
    }

    /// Whether one more attempt is allowed: within `retries`, and within the retry budget (a
    /// share of the worker's active requests) so a dying service is not hammered.
    fn may_retry(&self, service: &Service, attempts: usize) -> bool {
        if attempts > self.settings.retries || attempts >= service.instances.len() {
            return false;
        }
        let active = self.active.load(Ordering::Relaxed);
        let budget =
            ((active as f64 * self.settings.retry_budget) as usize).max(MIN_RETRY_CONCURRENCY);
        self.retrying.load(Ordering::Relaxed) < budget
    }

    /// Feeds the outcome of one attempt to outlier detection. Failures the client caused (a
    /// body too large or malformed) say nothing about the instance.
    fn record(
        &self,
        service: &Service,
        idx: usize,
        result: Result<http::StatusCode, &UpstreamError>,
    ) {
        let failed = match result {
            Ok(status) => status.is_server_error(),
            // Client faults say nothing of the instance; a slow attempt was counted already.
            Err(
                UpstreamError::BodyTooLarge | UpstreamError::ClientBody(_) | UpstreamError::Slow(_),
            ) => return,
            Err(_) => true,
        };
        service.health.answered(idx, failed);
        if failed {
            self.count_failure(service, idx);
        } else {
            service.health.success(idx);
        }
    }

    /// One failure of instance `idx`; ejects it after enough in a row.
    fn count_failure(&self, service: &Service, idx: usize) {
        if let Some(span) = service.health.failure(idx, &self.settings.outlier) {
            self.metrics.ejection();
            log::warn!(
                "service {}: instance {} ejected for {}s after {} consecutive failures",
                service.name,
                service.instances[idx],
                span.as_secs(),
                self.settings.outlier.consecutive_failures
            );
        }
    }
}

/// Instances already tried for one request: inline for the first few (no allocation on the
/// common path), a vector beyond.
#[derive(Default)]
struct Tried {
    inline: [usize; 4],
    len: usize,
    more: Vec<usize>,
}

impl Tried {
    fn push(&mut self, idx: usize) {
        if self.len < self.inline.len() {
            self.inline[self.len] = idx;
            self.len += 1;
        } else {
            if self.more.is_empty() {
                self.more.extend_from_slice(&self.inline);
            }
            self.more.push(idx);
        }
    }

    fn as_slice(&self) -> &[usize] {
        match self.more.is_empty() {
            true => &self.inline[..self.len],
            false => &self.more,
        }
    }
}

/// When a request may be sent again to another instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// It has a body (streamed, gone) or is an upgrade: never.
    Never,
    /// No body, but not idempotent (a bodiless POST): only when nothing was sent (connect
    /// failure).
    IfNothingSent,
    /// No body and idempotent (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE): also
    /// after a reset or EOF before any response — never after response bytes, never after a
    /// timeout (the instance may still be working on it).
    IfNoResponse,
}

impl Replay {
    /// The policy for a request.
    pub fn for_request(method: &http::Method, bodiless: bool) -> Self {
        use http::Method;
        let idempotent = matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        match (bodiless, idempotent) {
            (false, _) => Replay::Never,
            (true, false) => Replay::IfNothingSent,
            (true, true) => Replay::IfNoResponse,
        }
    }

    fn allows(self, e: &UpstreamError) -> bool {
        match e {
            UpstreamError::Connect(_) => self != Replay::Never,
            UpstreamError::Reset(_) | UpstreamError::Slow(_) => self == Replay::IfNoResponse,
            _ => false,
        }
    }
}

/// Counts a request in a counter (active, or retrying) for as long as it lives.
pub struct CountGuard<'a>(&'a AtomicUsize);

impl<'a> CountGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        CountGuard(counter)
    }
}

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_instances_spill_from_inline_to_the_heap_in_order() {
        let mut tried = Tried::default();
        assert!(tried.as_slice().is_empty());
        for i in [7, 3, 9, 1] {
            tried.push(i);
        }
        assert_eq!(tried.as_slice(), [7, 3, 9, 1]);
        assert!(tried.more.is_empty(), "four fit inline");
        tried.push(4);
        tried.push(2);
        assert_eq!(tried.as_slice(), [7, 3, 9, 1, 4, 2]);
    }

    #[test]
    fn only_what_is_safe_is_replayed() {
        let connect = UpstreamError::Connect("refused".into());
        let reset = UpstreamError::Reset("eof".into());
        let timeout = UpstreamError::Timeout(Duration::from_secs(1));
        let get = Replay::for_request(&http::Method::GET, true);
        assert!(get.allows(&connect) && get.allows(&reset) && !get.allows(&timeout));
        let post = Replay::for_request(&http::Method::POST, true);
        assert!(post.allows(&connect) && !post.allows(&reset));
        let upload = Replay::for_request(&http::Method::PUT, false);
        assert!(!upload.allows(&connect) && !upload.allows(&reset));
    }
}
