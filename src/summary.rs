//! `zkgate check`'s one-screen summary of a configuration, and its warnings.

use std::time::Duration;

use worker::config::{Config, Workers};
use worker::tls::Certificates;

/// A one-screen summary, for `zkgate check`: warnings first, then each part of the file.
pub fn summary(config: &Config, tls: Option<&Certificates>) -> String {
    let parts = [
        warnings(config),
        listeners(config),
        rate_limits(config),
        certificates(tls),
        processes(config),
        routing(config),
        edge(config),
        registries(config),
        services(config),
    ];
    parts.concat()
}

/// Settings that pass `check` but will not do what the operator likely means.
fn warnings(config: &Config) -> String {
    let mut out = String::new();
    let p = &config.proxy;
    if !p.outlier.slow_after.is_zero() && p.outlier.slow_after >= p.request_timeout {
        out += &format!(
            "warning     proxy.outlier.slow_after ({}) >= proxy.request_timeout ({}): a hung instance is judged only at the deadline; retryable requests give it request_timeout / 2, others get 504\n",
            human(p.outlier.slow_after),
            human(p.request_timeout)
        );
    }
    // Two rows are taken before any service: `_unrouted`, and `_other` is the last.
    let rows = worker::host::MAX_SERVICES - 2;
    let named = config.named_services().len();
    if named > rows {
        out += &format!(
            "warning     {named} services named, the host's service table has {rows} rows: the rest count as _other and their max_requests per worker\n"
        );
    }
    out
}

fn listeners(config: &Config) -> String {
    let s = &config.server;
    let list =
        |l: &[std::net::SocketAddr]| l.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
    let redirect = if s.https_redirect { " (every request redirected to HTTPS)" } else { "" };
    let mut out = format!("listen      {}{redirect}\n", list(&s.listen));
    if !s.listen_tls.is_empty() {
        out += &format!("listen_tls  {}\n", list(&s.listen_tls));
    }
    out
}

fn rate_limits(config: &Config) -> String {
    let mut out = String::new();
    for r in &config.rate_limits {
        let per = match &r.per {
            worker::config::RateKey::ClientIp => "client_ip".to_string(),
            worker::config::RateKey::Global => "global".to_string(),
            worker::config::RateKey::Identity => "identity (after auth)".to_string(),
            worker::config::RateKey::Header(h) => format!("header:{h}"),
        };
        let overrides: Vec<String> = r
            .overrides
            .iter()
            .map(|(who, rate)| format!("{who} {:.3}/s", rate.per_second))
            .collect();
        let overrides = match overrides.is_empty() {
            true => String::new(),
            false => format!(", overrides: {}", overrides.join(", ")),
        };
        out += &format!(
            "rate_limit  {}: {:.3}/s per {per}, burst {}{overrides}\n",
            r.service, r.rate.per_second, r.burst
        );
    }
    out
}

fn certificates(tls: Option<&Certificates>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut out = String::new();
    for (i, cert) in tls.iter().flat_map(|t| &t.list).enumerate() {
        let days = (cert.not_after - now).div_euclid(86_400);
        let expiry = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(cert.not_after.max(0) as u64),
        );
        let left = if days < 0 { "EXPIRED".to_string() } else { format!("{days} days left") };
        out += &format!(
            "tls         {} [{}] expires {expiry} ({left}){}\n",
            cert.path.display(),
            cert.names.join(", "),
            if i == 0 { ", default" } else { "" }
        );
    }
    if let Some(client) = tls.and_then(|t| t.client.as_ref()) {
        let how = if client.required { "required" } else { "optional" };
        out += &format!("tls         client certificates {how} (client_ca)\n");
    }
    out
}

fn processes(config: &Config) -> String {
    let s = &config.server;
    let workers = match s.workers {
        Workers::Auto => format!("{} (auto: one per CPU)", s.workers.resolve()),
        Workers::Count(n) => n.to_string(),
        Workers::PerCore(k) => format!("{} ({k} per CPU on this machine)", s.workers.resolve()),
    };
    format!(
        "workers     {workers}, backlog {}, shutdown_timeout {}, worker_timeout {}\nproxy       {}, connect {}, request {}, retries {}\n",
        s.backlog,
        human(s.shutdown_timeout),
        human(s.worker_timeout),
        config_name(&config.proxy.load_balance),
        human(config.proxy.connect_timeout),
        human(config.proxy.request_timeout),
        config.proxy.retries
    )
}

/// A route's edge rules as `check` shows them; nothing for a route without any.
fn edge_extras(r: &worker::config::RouteRule) -> String {
    let mut extras = String::new();
    if !r.allow.is_empty() || !r.deny.is_empty() {
        extras += &format!(
            " (allow {}, deny {})",
            list_or(&toml_list(&r.allow), "any"),
            list_or(&toml_list(&r.deny), "none")
        );
    }
    if let Some(c) = &r.cors {
        extras += &format!(
            " (cors {} methods {}{}, max_age {})",
            c.origins.join(" "),
            c.methods.join(","),
            if c.credentials { ", credentials" } else { "" },
            human(c.max_age)
        );
    }
    if let Some(c) = &r.compress {
        extras += &format!(
            " (compress {} at level {}, from {} bytes: {})",
            c.codings.join(" "),
            c.level,
            c.min_bytes,
            c.types.join(" ")
        );
    }
    if let Some(d) = &r.redirect {
        extras += &format!(" (redirect {} {})", d.status, d.to);
    }
    if let Some(a) = &r.answer {
        let body = match (&a.body_file, &a.body) {
            (Some(f), _) => f.display().to_string(),
            (None, Some(b)) => format!("{} bytes inline", b.len()),
            (None, None) => "no body".into(),
        };
        extras += &format!(" (answer {} {}, {body})", a.status, a.content_type);
    }
    extras
}

/// The blocks of an `allow`/`deny` list as written back.
fn toml_list(blocks: &worker::config::AddressBlocks) -> Vec<String> {
    match toml::Value::try_from(blocks) {
        Ok(toml::Value::Array(a)) => {
            a.iter().filter_map(|v| v.as_str().map(String::from)).collect()
        }
        _ => Vec::new(),
    }
}

fn list_or(items: &[String], none: &str) -> String {
    match items.is_empty() {
        true => none.to_string(),
        false => items.join(" "),
    }
}

fn routing(config: &Config) -> String {
    let h = &config.header_routing;
    let mut out = match h.enabled {
        true => format!(
            "header      {} with headers {} + {}\n",
            h.mount, h.service_header, h.path_header
        ),
        false => "header      routing disabled\n".to_string(),
    };
    for r in &config.routes {
        let mut extras = String::new();
        if r.strip_prefix {
            extras += " (prefix stripped)";
        }
        if let Some(a) = &r.auth {
            extras += &format!(" (auth {a})");
        }
        if let Some(m) = &r.mirror {
            extras += &format!(" (mirror {}% to {})", m.percent, m.service);
        }
        extras += &edge_extras(r);
        out += &format!(
            "route       {}{} -> {}{extras}\n",
            r.host.as_deref().unwrap_or("*"),
            r.path_prefix,
            r.service
        );
    }
    out
}

/// `[auth.NAME]` sections and `[tracing]`.
fn edge(config: &Config) -> String {
    let mut out = String::new();
    for (name, a) in &config.auth {
        out += &match a {
            worker::config::AuthSettings::Jwt(j) => format!(
                "auth        {name}: jwt {} {}, algorithms {}\n",
                j.jwks.as_ref().map_or_else(String::new, |p| p.display().to_string()),
                j.jwks_url.as_deref().unwrap_or(""),
                j.algorithms.join(", ")
            ),
            worker::config::AuthSettings::Basic(b) => {
                format!("auth        {name}: basic {}\n", b.htpasswd.display())
            }
            worker::config::AuthSettings::Key(k) => format!(
                "auth        {name}: key {}, header {}{}\n",
                k.keys.display(),
                k.header,
                k.query.as_ref().map_or_else(String::new, |q| format!(" or query {q}"))
            ),
        };
    }
    if let Some(t) = &config.tracing {
        out += &format!(
            "tracing     sample {}, export {}\n",
            t.sample,
            t.otlp_endpoint.as_deref().unwrap_or("none")
        );
    }
    out
}

fn registries(config: &Config) -> String {
    let mut out = String::new();
    for (i, zk) in config.zookeeper.iter().enumerate() {
        out += &format!(
            "zookeeper   {}{}{} {} root {} format {}, session {}, keep_last_on_empty {}, removal_guard {}% (hold {})\n",
            zk.source_name(i),
            if zk.prefix.is_empty() { String::new() } else { format!(" (prefix {:?})", zk.prefix) },
            if zk.auth.is_some() { " (auth)" } else { "" },
            zk.hosts,
            zk.root,
            config_name(&zk.format),
            human(zk.session_timeout),
            zk.keep_last_on_empty,
            zk.removal_guard,
            human(zk.removal_hold)
        );
    }
    if let Some(a) = &config.admin {
        out += &format!(
            "admin       {}{}\n",
            a.listen,
            if a.token.is_some() { " (bearer token)" } else { "" }
        );
    }
    match (&config.cache.snapshot, config.zookeeper.first()) {
        (Some(s), Some(_)) => out += &format!("snapshot    {}\n", s.display()),
        (Some(s), None) => {
            out += &format!("snapshot    {} (unused without [zookeeper])\n", s.display())
        }
        _ => {}
    }
    out
}

fn services(config: &Config) -> String {
    let mut out = String::new();
    for (name, svc) in &config.services {
        let instances: Vec<String> = svc
            .instances
            .iter()
            .flatten()
            .map(|i| match i.weight {
                1 => i.address.clone(),
                w => format!("{} (weight {w})", i.address),
            })
            .collect();
        let lb = config_name(&svc.load_balance.unwrap_or(config.proxy.load_balance));
        let mut check = svc
            .health_check
            .as_ref()
            .map(|h| format!(", health check {}", h.path))
            .unwrap_or_default();
        if !svc.allow.is_empty() || !svc.deny.is_empty() {
            check += &format!(
                ", allow {}, deny {}",
                list_or(&toml_list(&svc.allow), "any"),
                list_or(&toml_list(&svc.deny), "none")
            );
        }
        out += &match svc.instances {
            Some(_) => {
                format!("service     {name}: {lb}{check}, static: {}\n", instances.join(", "))
            }
            None => format!("service     {name}: {lb}{check}, discovered\n"),
        };
    }
    out
}

/// How a value is written in gateway.toml (`round_robin`, not `RoundRobin`).
fn config_name<T: serde::Serialize>(v: &T) -> String {
    toml::Value::try_from(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// A duration as it is written in gateway.toml.
fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
