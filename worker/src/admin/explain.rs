//! `GET /explain`: why a request goes where it goes. `?service=NAME`, or `?host=…&path=…` (and
//! `header=name:value`, repeatable) to resolve the route first: the route that matched, the
//! balancer, and each instance with its state in words — routable, ejected (until when, after
//! what), held by the removal guard, released, unhealthy, ramping at weight w — plus the nodes
//! of the service the registry has that are not routed, and why (out of service, disabled by an
//! override, malformed). With `client=IP` and `header=origin:…`, what the route's edge rules
//! decide: `allow`/`deny`, its own answer (redirect, fixed answer), CORS. Reads this worker's
//! table and the host-wide instance state.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use serde_json::{json, Value};

use super::Admin;
use crate::config::RouteRule;
use crate::discovery::formats::url_decode;
use crate::discovery::report::Outcome;
use crate::http::edge::EdgeRules;
use crate::http::router::{request_host, HyperRequest, Router};
use crate::table::{wall_ms, Service, RAMP_SCALE};

/// The query's parameters, percent-decoded.
fn params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((url_decode(k)?, url_decode(v)?))
        })
        .collect()
}

/// The answer to `/explain?query`.
pub(super) fn explain(admin: &Admin, router: &Router, query: &str) -> (StatusCode, Value) {
    let params = params(query);
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let (service, route) = match get("service") {
        Some(name) => (name.to_string(), json!({"by": "service name"})),
        None => match resolve(admin, router, &params) {
            Ok(routed) => routed,
            Err(answer) => return answer,
        },
    };
    let table = admin.table.load();
    let Some(svc) = table.get(&service) else {
        return (
            StatusCode::NOT_FOUND,
            json!({
                "route": route,
                "service": service,
                "error": "no such service in this worker's route table",
                "registry": not_routed(admin, &service),
            }),
        );
    };
    let addresses =
        admin.config.services.get(&service).map(|s| json!({"allow": s.allow, "deny": s.deny}));
    // The limits a request to the service meets: each rule, and its per-consumer overrides.
    let limits: Vec<Value> = admin
        .config
        .rate_limits
        .iter()
        .filter(|r| r.service == service)
        .map(|r| json!({"rule": r, "per_second": r.rate.per_second}))
        .collect();
    let body = json!({
        "route": route,
        "service": service,
        "service_addresses": addresses,
        "rate_limits": limits,
        "source": svc.source,
        "load_balance": svc.policy.strategy,
        "slow_start_ms": svc.policy.slow_start_ms,
        "instances": instances(admin, svc),
        "not_routed": not_routed(admin, &service),
        "worker": {"pid": std::process::id(), "slot": admin.slot},
    });
    (StatusCode::OK, body)
}

/// The request `?host=…&path=…&header=name:value` describes (and `client=IP`), routed: its
/// service and what the route decides; `Err`: the answer when it is malformed or no route
/// takes it.
fn resolve(
    admin: &Admin,
    router: &Router,
    params: &[(String, String)],
) -> Result<(String, Value), (StatusCode, Value)> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let bad = |why: &str| (StatusCode::BAD_REQUEST, json!({"error": why}));
    let uri = get("path")
        .unwrap_or("/")
        .parse::<Uri>()
        .map_err(|_| bad("path is not a request target"))?;
    let mut headers = HeaderMap::new();
    if let Some(host) = get("host") {
        let v = HeaderValue::from_str(host).map_err(|_| bad("invalid host"))?;
        headers.insert(http::header::HOST, v);
    }
    for (_, h) in params.iter().filter(|(n, _)| n == "header") {
        let (name, value) = h.split_once(':').ok_or_else(|| bad("header is name:value"))?;
        match (HeaderName::try_from(name.trim()), HeaderValue::from_str(value.trim())) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => return Err(bad("invalid header")),
        }
    }
    let t = router
        .route(&uri, &headers)
        .map_err(|e| (StatusCode::NOT_FOUND, json!({"route": null, "error": e.to_string()})))?;
    let rule = t.rule.and_then(|i| admin.config.routes.get(i));
    let client = get("client").and_then(|c| c.parse().ok());
    let edge = rule.map(|r| edge(r, (&uri, &headers), client));
    let route = json!({
        "by": if rule.is_some() { "route" } else { "header routing" },
        "rule": t.rule,
        "path_prefix": rule.map(|r| r.path_prefix.clone()),
        "host": rule.and_then(|r| r.host.clone()),
        "forwarded_path": t.path.as_str(),
        "auth": rule.and_then(|r| r.auth.clone()),
        "edge": edge,
    });
    Ok((t.service, route))
}

/// What the route's edge rules decide for this request (`?client=IP`: the client's address
/// after `trusted_proxies`; `header=origin:…` for CORS): `allow`/`deny` and their verdict, the
/// route's own answer (a redirect with its location, a fixed answer), CORS and whether the
/// origin is allowed.
fn edge(rule: &RouteRule, (uri, headers): (&Uri, &HeaderMap), client: Option<IpAddr>) -> Value {
    let rules = EdgeRules::of(rule);
    let host = request_host(uri, headers);
    let req = HyperRequest { uri, headers, host: host.as_deref() };
    let own = rules.own.as_ref().map(|own| {
        let answer = own.answer(&req, ("http", 0));
        let location = answer.headers.get(http::header::LOCATION);
        json!({
            "status": answer.status.as_u16(),
            "location": location.and_then(|l| l.to_str().ok()),
        })
    });
    let origin = headers.get(http::header::ORIGIN).map(HeaderValue::as_bytes);
    let cors = rules.cors.as_ref().map(|c| {
        json!({
            "origins": rule.cors.as_ref().map(|c| &c.origins),
            "origin": origin.map(String::from_utf8_lossy),
            "origin_allowed": origin.map(|o| c.allows(o)),
        })
    });
    let accept = headers.get_all(http::header::ACCEPT_ENCODING).iter().map(HeaderValue::as_bytes);
    let compress = rules.compress.as_ref().map(|c| {
        json!({
            "settings": rule.compress,
            "coding": c.negotiate(accept).map(|c| c.token()),
        })
    });
    json!({
        "allow": rule.allow,
        "deny": rule.deny,
        "compress": compress,
        "client": client,
        "client_allowed": client.map(|ip| rules.addresses.admit(ip)),
        "answers_itself": own,
        "cors": cors,
    })
}

/// What instance `idx` of `svc` does now, and why, in an operator's words: `routable`, `held`
/// (by the removal guard, routed while its health check passes), `fallback` (held, used only
/// when no listed instance is routable), `released`, `ejected`, `unhealthy` or `idle`.
pub(crate) fn instance_state(svc: &Service, idx: usize) -> (&'static str, String) {
    let h = &svc.health;
    let (ejected_ms, ejections) = h.ejection(idx);
    let hold = h.hold(idx);
    let held_why = hold.map_or("", |h| &*h.why);
    if h.released(idx) {
        ("released", format!("removed by the registry ({held_why}), held, then found gone"))
    } else if h.ejected(idx) {
        let until = wall_ms() + ejected_ms;
        (
            "ejected",
            format!(
                "ejected by outlier detection until {until} (unix ms, {} s left; ejected {ejections} times)",
                ejected_ms.div_ceil(1000)
            ),
        )
    } else if h.down(idx) {
        ("unhealthy", "its active health check failed".to_string())
    } else if h.fallback(idx) {
        (
            "fallback",
            format!("held: {held_why}; no health check vouches for it, so it takes traffic only while no listed instance is routable"),
        )
    } else if hold.is_some() && h.passing(idx) {
        ("held", format!("held: {held_why}, health check passing"))
    } else if hold.is_some() {
        ("held", format!("held: {held_why}; its health check has not passed since: no traffic"))
    } else if svc.instances.get(idx).is_some_and(|i| i.weight == 0) {
        ("idle", "weight 0: takes no traffic".to_string())
    } else {
        ("routable", "listed, healthy, not ejected".to_string())
    }
}

/// Each instance of `svc`, its state and why.
fn instances(admin: &Admin, svc: &Service) -> Vec<Value> {
    let report = admin.nodes(&svc.name);
    svc.instances
        .iter()
        .enumerate()
        .map(|(i, inst)| {
            let h = &svc.health;
            let (state, why) = instance_state(svc, i);
            let mut v = json!({
                "address": inst.address,
                "state": state,
                "why": why,
                "weight": inst.weight,
                "in_flight": h.active(i),
            });
            if let Some(ramp) = &svc.ramp {
                let w = ramp.weights.get(i).copied().unwrap_or(0);
                if w < inst.weight.saturating_mul(RAMP_SCALE) {
                    v["ramping"] = json!({
                        "weight": f64::from(w) / f64::from(RAMP_SCALE),
                        "of": inst.weight,
                        "why": "slow start: its weight ramps up linearly from its registration",
                    });
                }
            }
            let node = report.iter().find(|n| {
                n.outcome == Outcome::Accepted && n.instance.as_deref() == Some(&inst.address)
            });
            if let Some(note) = node.and_then(|n| n.reason.as_ref()) {
                v["overridden"] = json!(note);
            }
            v
        })
        .collect()
}

/// The service's nodes the registry has that are not instances, and why.
fn not_routed(admin: &Admin, service: &str) -> Vec<Value> {
    admin
        .nodes(service)
        .into_iter()
        .filter(|n| n.outcome != Outcome::Accepted)
        .map(|n| {
            let state = match n.reason.as_deref() {
                Some(r) if r.contains("instance_status") => "out of service",
                Some(r) if r.contains("override") || r.contains("disabled") => {
                    "disabled by the registry"
                }
                Some(r) if r.starts_with("withdrawn:") => "withdrawn",
                _ if n.outcome == Outcome::Rejected => "rejected",
                _ => "excluded",
            };
            json!({"node": n.node, "state": state, "why": n.reason, "instance": n.instance})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded_and_repeatable() {
        let p = params("service=a%20b&header=x-v%3A+1&header=y:2&empty");
        assert_eq!(p[0], ("service".into(), "a b".into()));
        assert_eq!(p[1], ("header".into(), "x-v: 1".into()));
        assert_eq!(p[2], ("header".into(), "y:2".into()));
        assert_eq!(p[3], ("empty".into(), String::new()));
        assert!(params("x=%zz").is_empty(), "a bad escape is dropped");
    }
}
