//! `zkgate check`'s one-screen summary of a configuration, and its warnings.

use std::time::Duration;

use worker::config::{Config, Workers};
use worker::tls::Certificates;

/// A one-screen summary, for `zkgate check`.
pub fn summary(config: &Config, tls: Option<&Certificates>) -> String {
    let mut out = String::new();
    let p = &config.proxy;
    if !p.outlier.slow_after.is_zero() && p.outlier.slow_after >= p.request_timeout {
        out += &format!(
            "warning     proxy.outlier.slow_after ({}) >= proxy.request_timeout ({}): a hung instance is judged only at the deadline; retryable requests give it request_timeout / 2, others get 504\n",
            human(p.outlier.slow_after),
            human(p.request_timeout)
        );
    }
    let s = &config.server;
    let listen: Vec<String> = s.listen.iter().map(|a| a.to_string()).collect();
    out += &format!("listen      {}\n", listen.join(", "));
    if !s.listen_tls.is_empty() {
        let listen: Vec<String> = s.listen_tls.iter().map(|a| a.to_string()).collect();
        out += &format!("listen_tls  {}\n", listen.join(", "));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for r in &config.rate_limits {
        let per = match &r.per {
            worker::config::RateKey::ClientIp => "client_ip".to_string(),
            worker::config::RateKey::Global => "global".to_string(),
            worker::config::RateKey::Header(h) => format!("header:{h}"),
        };
        out += &format!(
            "rate_limit  {}: {:.3}/s per {per}, burst {}\n",
            r.service, r.rate.per_second, r.burst
        );
    }
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
    let workers = match s.workers {
        Workers::Auto => format!("{} (auto: one per CPU)", s.workers.resolve()),
        Workers::Count(n) => n.to_string(),
        Workers::PerCore(k) => format!("{} ({k} per CPU on this machine)", s.workers.resolve()),
    };
    out += &format!(
        "workers     {workers}, backlog {}, shutdown_timeout {}, worker_timeout {}\n",
        s.backlog,
        human(s.shutdown_timeout),
        human(s.worker_timeout)
    );
    out += &format!(
        "proxy       {}, connect {}, request {}, retries {}\n",
        config_name(&config.proxy.load_balance),
        human(config.proxy.connect_timeout),
        human(config.proxy.request_timeout),
        config.proxy.retries
    );
    let h = &config.header_routing;
    if h.enabled {
        out += &format!(
            "header      {} with headers {} + {}\n",
            h.mount, h.service_header, h.path_header
        );
    } else {
        out += "header      routing disabled\n";
    }
    for r in &config.routes {
        out += &format!(
            "route       {}{} -> {}{}\n",
            r.host.as_deref().unwrap_or("*"),
            r.path_prefix,
            r.service,
            if r.strip_prefix { " (prefix stripped)" } else { "" }
        );
    }
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
    for (name, svc) in &config.services {
        let instances: Vec<String> = svc
            .instances
            .iter()
            .flatten()
            .map(|i| {
                if i.weight == 1 {
                    i.address.clone()
                } else {
                    format!("{} (weight {})", i.address, i.weight)
                }
            })
            .collect();
        let lb = config_name(&svc.load_balance.unwrap_or(config.proxy.load_balance));
        let check = svc
            .health_check
            .as_ref()
            .map(|h| format!(", health check {}", h.path))
            .unwrap_or_default();
        if svc.instances.is_some() {
            out += &format!("service     {name}: {lb}{check}, static: {}\n", instances.join(", "));
        } else {
            out += &format!("service     {name}: {lb}{check}, discovered\n");
        }
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
