//! The records the fleet's tree holds (see `store` for the layout): a release's manifest, an
//! audit entry, a staged rollout, a host's state; and a release's content-addressed id.

use serde::{Deserialize, Serialize};

/// A release's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `r-` + 16 hex digits of its SHA-256.
    pub id: String,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// Its length in bytes.
    pub size: usize,
    /// How many chunks hold it.
    pub chunks: usize,
    /// Who pushed it.
    pub author: String,
    /// Why.
    pub message: String,
    /// When (Unix ms).
    pub created_ms: u64,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Who did it.
    pub who: String,
    /// `push`, `rollout`, `rollback`.
    pub verb: String,
    /// What the channel served before (for a flip).
    pub from: Option<String>,
    /// The release concerned.
    pub to: String,
    /// The operator's words.
    pub why: String,
    /// Unix ms.
    pub at_ms: u64,
}

/// Who changes the tree, how and why: what an audit entry records beside the releases (named
/// fields: three strings in a tuple would swap unseen).
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// Who (user@host).
    pub who: &'a str,
    /// The verb (`rollout`, `rollback`, `canary`, `promote`, `abort` …).
    pub verb: &'a str,
    /// The operator's words, or the deciding command's.
    pub why: &'a str,
}

/// A staged rollout: its canary hosts serve `release` while `state` is `canary`; everyone
/// else follows `stable`. Whoever decides (the operator's `zkgate config rollout`, or a
/// later `promote`/`abort`) moves it on; if that process dies the rollout waits, it is never
/// stranded half-way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The release on trial.
    pub release: String,
    /// What `stable` served when it started.
    pub from: Option<String>,
    /// The hosts that serve it meanwhile.
    pub canary: Vec<String>,
    /// `canary`, `paused` (the canaries keep it; nothing is judged), `promoted` or
    /// `aborted`.
    pub state: String,
    /// When it started (Unix ms) and how long it bakes.
    pub started_ms: u64,
    /// Bake time, ms.
    pub bake_ms: u64,
    /// The canaries' 5xx share may exceed the others' by this much before it aborts.
    pub max_5xx_increase: f64,
    /// Likewise for the share of requests no route took (404).
    #[serde(default = "default_increase")]
    pub max_404_increase: f64,
    /// The canaries' p99 may be this many times the others' (above 100 ms) before it aborts.
    #[serde(default = "default_p99_ratio")]
    pub max_p99_ratio: f64,
}

fn default_increase() -> f64 {
    0.05
}

fn default_p99_ratio() -> f64 {
    3.0
}

impl Rollout {
    /// The release `host` should serve, given what `stable` serves.
    pub fn target_for<'a>(
        rollout: Option<&'a Rollout>,
        host: &str,
        stable: Option<&'a str>,
    ) -> Option<&'a str> {
        match rollout {
            Some(r)
                if (r.state == "canary" || r.state == "paused")
                    && r.canary.iter().any(|h| h == host) =>
            {
                Some(&r.release)
            }
            _ => stable,
        }
    }
}

/// What a host publishes about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostState {
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The release its workers serve (none: its own file).
    pub serving: Option<String>,
    /// The last release it refused, and why (the dotted key and message).
    pub rejected: Option<(String, String)>,
    /// The binary's version.
    pub version: String,
    /// Requests the host answered since it started, by status class (1xx..5xx), and when
    /// they were counted (Unix ms): what a rollout compares between hosts.
    #[serde(default)]
    pub answered: [u64; 5],
    /// When `answered` was read.
    #[serde(default)]
    pub at_ms: u64,
    /// Requests no route took (answered 4xx by the gateway), since it started.
    #[serde(default)]
    pub unrouted: u64,
    /// The request-duration histogram's counts per bucket (`metrics::BUCKETS`), and in all.
    #[serde(default)]
    pub durations: Vec<u64>,
    /// Requests timed.
    #[serde(default)]
    pub timed: u64,
    /// The release each live worker serves, by slot (`None`: the file): a host mid-reload
    /// serves two.
    #[serde(default)]
    pub workers: Vec<Option<String>>,
    /// When the host's last apply reached its last worker (Unix ms; 0: none since it started).
    #[serde(default)]
    pub applied_ms: u64,
}

impl HostState {
    /// Whether the host and every one of its workers serve `release`.
    pub fn serves(&self, release: &str) -> bool {
        self.serving.as_deref() == Some(release)
            && self.workers.iter().all(|w| w.as_deref() == Some(release))
    }
}

/// The id of a document: `r-` and 16 hex digits of its SHA-256.
pub fn release_id(text: &str) -> (String, String) {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    (format!("r-{}", &hex[..16]), hex)
}
