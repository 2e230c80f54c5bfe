//! The admin listener: `/` (a live dashboard), `/healthz`, `/readyz`, `/routes`, `/workers`,
//! `/metrics`, `/registry` (every znode read and what became of it) and `/explain` (why a
//! request goes where it goes: see [`explain`]).
//!
//! Every worker serves it on its own SO_REUSEPORT copy of the admin socket, so any worker may
//! answer a scrape; `/metrics` and `/workers` read the shared region and are exact across
//! workers, `/routes` and `/readyz` describe the worker that answered (its pid and slot are in
//! the answer). Loopback by default; with a `token`, every request needs `Authorization: Bearer`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

mod explain;
mod fleet;

use crate::discovery::changes::Changes;
use crate::discovery::report::RegistryReport;
use crate::http::router::Router;
use crate::http::Body;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::table::SharedTable;
use crate::table::Source;

/// What the admin endpoints read.
pub struct Admin {
    /// The worker's route table.
    pub table: SharedTable,
    /// The shared metrics region.
    pub metrics: Metrics,
    /// The host's shared region (for health-check leases).
    pub host: crate::host::Host,
    /// `Some(source)` once routes are loaded.
    pub ready: watch::Receiver<Option<Source>>,
    /// Bearer token, if required.
    pub token: Option<String>,
    /// This worker's slot.
    pub slot: usize,
    /// Recent registry changes this worker applied.
    pub changes: Arc<Changes>,
    /// Every registry node this worker read, and what became of it, per source.
    pub reports: Vec<Arc<RegistryReport>>,
    /// The configuration (routes, the registry source).
    pub config: Arc<crate::config::Config>,
    /// The request router, to resolve `/explain?host=…&path=…` as a request would be.
    pub router: Router,
    /// The served certificates' names and expiry (Unix seconds), for `/metrics`.
    pub certificates: Vec<(String, i64)>,
    /// With `[fleet]`: the host's release cache (its last refusal and reverts, for `/config`).
    pub release_cache: Option<std::path::PathBuf>,
}

impl Admin {
    /// The names behind `/metrics`' edge series: routes, listeners, certificates, and the
    /// instances of the current table with their host-wide request and error counts.
    fn edge_labels(&self) -> crate::metrics::EdgeLabels {
        let table = self.table.load();
        let instances = table
            .iter()
            .flat_map(|s| {
                s.instances.iter().enumerate().map(|(i, inst)| {
                    let (requests, errors) = s.health.answered_counts(i);
                    (s.name.clone(), inst.address.clone(), requests, errors)
                })
            })
            .filter(|(.., requests, _)| *requests > 0)
            .collect();
        let server = &self.config.server;
        crate::metrics::EdgeLabels {
            routes: (0..self.config.routes.len()).map(|r| self.router.label(r)).collect(),
            listeners: server
                .listen
                .iter()
                .chain(&server.listen_tls)
                .map(|a| a.to_string())
                .collect(),
            certificates: self.certificates.clone(),
            instances,
        }
    }
}

/// Serves the admin API until shutdown.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: Shutdown) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(std::time::Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.recv() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let admin = admin.clone();
        let conn = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.answer(&req)) }
            }),
        );
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

impl Admin {
    /// Whether the request names a host the admin API answers to: a loopback name, the listen
    /// address, or one of `admin.allowed_hosts`. DNS rebinding (a page on `attacker.example`
    /// whose name turns into 127.0.0.1) arrives with the attacker's name and is refused.
    fn host_allowed<B>(&self, req: &Request<B>) -> bool {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        let Some(host) = host else { return false };
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(name, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    name
                } else {
                    host
                }
            }),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let listen = self.config.admin.as_ref().map(|a| a.listen.ip());
        name == "localhost"
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback() || Some(ip) == listen)
            || self
                .config
                .admin
                .as_ref()
                .is_some_and(|a| a.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(&name)))
    }

    /// With `admin.token`: the request's bearer token (or, for the dashboard page only,
    /// `?token=`) must match it; `Some` is the 401 to send when it does not.
    fn unauthorized<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        let token = self.token.as_ref()?;
        let header_token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        // A browser cannot send a bearer token when it opens the dashboard: the page (only
        // it) also takes `?token=`, and its scripts send the header.
        let query_token = (req.uri().path() == "/")
            .then(|| req.uri().query())
            .flatten()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
        let ok = header_token
            .or(query_token)
            .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()));
        if ok {
            return None;
        }
        let mut r = json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "missing or wrong bearer token"}),
        );
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(r)
    }

    fn answer<B>(&self, req: &Request<B>) -> Response<Body> {
        if !self.host_allowed(req) {
            return json(
                StatusCode::MISDIRECTED_REQUEST,
                serde_json::json!({"error": "this Host is not the admin API's (admin.allowed_hosts)"}),
            );
        }
        if let Some(refused) = self.unauthorized(req) {
            return refused;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return json(StatusCode::METHOD_NOT_ALLOWED, serde_json::json!({"error": "GET only"}));
        }
        match req.uri().path() {
            "/" => {
                let mut r = Response::new(full(DASHBOARD.to_string()));
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                // Inline script and style of its own, nothing from elsewhere.
                h.insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(
                        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
                    ),
                );
                r
            }
            "/grafana.json" => {
                let mut r = Response::new(full(GRAFANA.to_string()));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            "/healthz" => json(
                StatusCode::OK,
                serde_json::json!({
                    "status": "ok",
                    "version": env!("CARGO_PKG_VERSION"),
                    "pid": std::process::id(),
                    "supervisor": std::os::unix::process::parent_id(),
                }),
            ),
            "/readyz" => match *self.ready.borrow() {
                Some(source) => {
                    json(StatusCode::OK, serde_json::json!({"ready": true, "source": source}))
                }
                None => json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"ready": false})),
            },
            "/routes" => json(StatusCode::OK, self.routes()),
            "/registry" => json(StatusCode::OK, self.registry()),
            "/explain" => {
                let (status, body) =
                    explain::explain(self, &self.router, req.uri().query().unwrap_or(""));
                json(status, body)
            }
            "/workers" => json(StatusCode::OK, self.metrics.workers_json()),
            "/config" => json(StatusCode::OK, self.fleet_config()),
            "/metrics" => {
                let mut text = self.metrics.prometheus_with(&self.edge_labels());
                self.release_info(&mut text);
                let mut r = Response::new(full(text));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            _ => json(StatusCode::NOT_FOUND, serde_json::json!({"error": "not found"})),
        }
    }

    /// `/registry`: the source (hosts, root, format, session state, last sync) and every
    /// node read, with its outcome and why.
    fn registry(&self) -> serde_json::Value {
        let worker = self.metrics.workers_json();
        let me = worker["workers"]
            .as_array()
            .and_then(|w| w.iter().find(|w| w["slot"] == self.slot).cloned())
            .unwrap_or_default();
        let sources: Vec<serde_json::Value> = self
            .config
            .zookeeper
            .iter()
            .enumerate()
            .map(|(i, zk)| {
                let session = &me["sources"][i];
                let mut source = serde_json::json!({
                    "name": zk.source_name(i),
                    "hosts": zk.hosts,
                    "root": zk.root,
                    "format": zk.format.name(),
                    "prefix": zk.prefix,
                    "auth": zk.auth_parts().map(|(scheme, _)| scheme),
                    "session": self.metrics.for_source(i).zk_state().as_str(),
                    "last_sync_age_seconds": session["last_sync_age_seconds"],
                    "watches": session["watches"],
                });
                let report = self.reports.get(i).map(|r| r.json());
                if let (Some(obj), Some(serde_json::Value::Object(report))) =
                    (source.as_object_mut(), report)
                {
                    obj.extend(report);
                }
                source
            })
            .collect();
        serde_json::json!({
            "worker": {"pid": std::process::id(), "slot": self.slot},
            "sources": sources,
        })
    }

    /// The nodes of `service` as its source last read them (the prefix taken off).
    fn nodes(&self, service: &str) -> Vec<crate::discovery::report::NodeReport> {
        for (zk, report) in self.config.zookeeper.iter().zip(&self.reports) {
            if let Some(own) = service.strip_prefix(zk.prefix.as_str()) {
                let nodes = report.nodes(own);
                if !nodes.is_empty() {
                    return nodes;
                }
            }
        }
        Vec::new()
    }

    fn routes(&self) -> serde_json::Value {
        let table = self.table.load();
        let services: Vec<serde_json::Value> = table
            .services()
            .iter()
            .map(|s| {
                let instances: Vec<serde_json::Value> = s
                    .instances
                    .iter()
                    .enumerate()
                    .map(|(i, inst)| {
                        let (ejected_ms, ejections) = s.health.ejection(i);
                        let (state, why) = explain::instance_state(s, i);
                        serde_json::json!({
                            "address": inst.address,
                            "state": state,
                            "why": why,
                            "weight": inst.weight,
                            "ejected": s.health.ejected(i),
                            "ejected_for_ms": ejected_ms,
                            "ejections": ejections,
                            "healthy": !s.health.down(i),
                            "held": s.health.held(i),
                            "released": s.health.released(i),
                            "in_flight": s.health.active(i),
                            "in_flight_worker": s.health.local_active(i),
                            "host_wide": s.health.shared(i),
                        })
                    })
                    .collect();
                let holder = self
                    .host
                    .find_service_index(&s.name)
                    .and_then(|i| self.host.leases().holder(i));
                serde_json::json!({
                    "name": s.name,
                    "source": s.source,
                    "load_balance": s.policy.strategy,
                    "health_check_holder": holder,
                    "held": (0..s.instances.len()).filter(|i| s.health.held(*i) && !s.health.released(*i)).count(),
                    "instances": instances,
                })
            })
            .collect();
        serde_json::json!({
            "worker": {"pid": std::process::id(), "slot": self.slot},
            "ready": self.ready.borrow().is_some(),
            "zookeeper": self.metrics.zk_state().as_str(),
            "services": services,
            "changes": self.changes.recent().into_iter()
                .map(|(at_ms, change)| serde_json::json!({"at_ms": at_ms, "change": change}))
                .collect::<Vec<_>>(),
        })
    }
}

/// The live dashboard: one page, served from the binary, polling `/routes`, `/workers` and
/// `/metrics` once a second.
const DASHBOARD: &str = include_str!("dashboard.html");

/// A Grafana dashboard built on `/metrics` (traffic, client-side latency, instances, TLS,
/// auth, mirroring, tracing, discovery), to import as it is: served at `/grafana.json` so the
/// dashboard an operator imports always matches the metric names of the running binary.
const GRAFANA: &str = include_str!("grafana.json");

fn full(s: String) -> Body {
    Full::new(Bytes::from(s)).map_err(|never| match never {}).boxed()
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(format!("{v}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The credentials of `Authorization: Bearer <token>`; the scheme is case-insensitive
/// (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
