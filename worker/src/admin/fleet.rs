//! The admin listener's view of fleet configuration: `/config` (the release each worker
//! serves, the last apply, the last refusal) and the `zkgate_config_*` series of `/metrics`.

use std::fmt::Write as _;

use super::Admin;
use crate::fleet::apply::{last_rejection, reverted};

/// A label value as Prometheus' text format wants it.
fn label(v: &str) -> String {
    v.replace(['"', '\\', '\n'], "_")
}

impl Admin {
    /// `zkgate_config_release_info{cluster,host,release,slot}` (one per live worker: a
    /// dashboard sees a rollout converge host by host, worker by worker), the last apply's
    /// `zkgate_config_apply_seconds` and `zkgate_config_convergence_seconds`, and
    /// `zkgate_config_rejections_total`.
    pub(super) fn release_info(&self, out: &mut String) {
        let Some(fleet) = &self.config.fleet else { return };
        let (cluster, host) = (label(&fleet.cluster), label(&fleet.host_name()));
        let releases = self.host.releases();
        *out += "# HELP zkgate_config_release_info The fleet release each worker serves (\"file\": none, the local file alone).\n# TYPE zkgate_config_release_info gauge\n";
        for (slot, release) in releases.by_slot() {
            let release = release.as_deref().unwrap_or("file");
            let _ = writeln!(
                out,
                "zkgate_config_release_info{{cluster=\"{cluster}\",host=\"{host}\",release=\"{release}\",slot=\"{slot}\"}} 1"
            );
        }
        if let Some(c) = releases.converged() {
            let series = [
                ("apply_seconds", "From the host's decision to apply its last release to its last worker serving it.", c.apply_seconds),
                ("convergence_seconds", "From the flip of the pointer naming the host's last release (ZooKeeper's mtime) to its last worker serving it.", c.convergence_seconds),
            ];
            for (name, help, value) in series {
                let _ = write!(
                    out,
                    "# HELP zkgate_config_{name} {help}\n# TYPE zkgate_config_{name} gauge\nzkgate_config_{name}{{cluster=\"{cluster}\",host=\"{host}\",release=\"{}\"}} {value}\n",
                    c.release
                );
            }
        }
        let _ = write!(
            out,
            "# HELP zkgate_config_rejections_total Releases this host refused (its checks failed) or reverted (its workers crash-looped) since it started.\n# TYPE zkgate_config_rejections_total counter\nzkgate_config_rejections_total{{cluster=\"{cluster}\",host=\"{host}\"}} {}\n",
            releases.rejections()
        );
    }

    /// The configuration this worker serves (the fleet's release, or the file alone), what
    /// every worker of the host serves, the last apply and the last refusal.
    pub(super) fn fleet_config(&self) -> serde_json::Value {
        let fleet = self.config.fleet.as_ref();
        let releases = self.host.releases();
        let workers: Vec<serde_json::Value> = releases
            .by_slot()
            .into_iter()
            .map(|(slot, release)| serde_json::json!({"slot": slot, "release": release}))
            .collect();
        let cache = self.release_cache.as_deref();
        let rejected = cache.and_then(last_rejection);
        serde_json::json!({
            "worker": {"pid": std::process::id(), "slot": self.slot},
            "cluster": fleet.map(|f| f.cluster.clone()),
            "host": fleet.map(|f| f.host_name()),
            "labels": fleet.map(|f| f.labels.clone()),
            "release": self.config.release,
            "workers": workers,
            "last_apply": releases.converged().map(|c| serde_json::json!({
                "release": c.release,
                "apply_seconds": c.apply_seconds,
                "convergence_seconds": c.convergence_seconds,
            })),
            "rejections": releases.rejections(),
            "last_rejection": rejected.map(|(release, why)| serde_json::json!({"release": release, "why": why})),
            "reverted": cache.map(reverted).unwrap_or_default().into_iter().map(|(release, why)| serde_json::json!({"release": release, "why": why})).collect::<Vec<_>>(),
        })
    }
}
