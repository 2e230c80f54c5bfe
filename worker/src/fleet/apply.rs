//! The host's side of fleet configuration: one worker per host (the lease pattern the health
//! prober uses) follows the cluster's `stable` channel. When it names a release this host does
//! not serve, that worker takes it from the host's cache or fetches it (one read of its bytes
//! per host, its hash checked), has the binary check it against this host (the same checks as
//! `zkgate check`, host-local files included), caches it, and asks for the zero-loss reload:
//! every worker is replaced by one that serves the new release, never a mix. A release that
//! fails the checks never serves: the host keeps what it has and publishes the rejection in
//! its ephemeral host node.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, FleetSettings, ZkSettings};
use crate::discovery::retry::Backoff;
use crate::fleet::store::{HostState, Rollout, Store, StoreError};
use crate::host::Host;
use crate::metrics::Metrics;

/// Checks a release's text as this host would serve it; `Err` says which key and why.
pub type Validate = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the binary lends the host's watcher.
#[derive(Clone)]
pub struct Hooks {
    /// Checks a release's text as this host would serve it (the file with the release's
    /// sections): `Err` names the key and what is wrong.
    pub validate: Validate,
    /// Asks the supervisor for the zero-loss reload (it re-reads the file and the cache).
    pub reload: Arc<dyn Fn() + Send + Sync>,
    /// The host's release cache (a directory).
    pub cache: PathBuf,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").field("cache", &self.cache).finish_non_exhaustive()
    }
}

/// The lease row one worker per host holds to watch the channel (never released by the
/// service-row sweep: see `sweep_service_rows`).
pub const LEASE: &str = "zkgate:fleet";

/// How long a lease holds without renewal.
const LEASE_MS: u64 = 3_000;

/// The most a host waits before it reads a release's bytes after a flip.
const FETCH_JITTER: Duration = Duration::from_millis(500);

/// How often the lease holder renews it and publishes the host's answer counts.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// The file naming the release the host serves, in the cache directory.
pub const CURRENT: &str = "current";

/// A cached release's file.
pub fn cached(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("{id}.toml"))
}

/// The file naming the release served before the current one (absent: the host's own file),
/// what a host reverts to by itself.
pub const PREVIOUS: &str = "previous";

/// The releases this host reverted by itself (a line each: id, a tab, why): never applied
/// here again. Deleting the file lets the host try them again.
pub const REVERTED: &str = "reverted";

/// Writes `bytes` to `path` aside, then renames it: a crash leaves the old or the new file,
/// never half of one.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Removes `path`; one already gone is no error.
fn remove_if_any(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The release the cache names as current, if any.
fn current_id(cache: &Path) -> Option<String> {
    let id = std::fs::read_to_string(cache.join(CURRENT)).ok()?;
    Some(id.trim().to_string()).filter(|id| !id.is_empty())
}

/// Writes `text` as release `id` into the cache and makes it current; the release it replaces
/// becomes the one to revert to.
pub fn cache_release(cache: &Path, id: &str, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(cache)?;
    write_whole(&cached(cache, id), text.as_bytes())?;
    match current_id(cache) {
        Some(was) if was == id => {}
        Some(was) => write_whole(&cache.join(PREVIOUS), was.as_bytes())?,
        None => remove_if_any(&cache.join(PREVIOUS))?,
    }
    write_whole(&cache.join(CURRENT), id.as_bytes())
}

/// Release `id` failed on this host after it was applied (`why`): records it as reverted and
/// makes the release served before it current again (or none: the host's file serves).
/// Returns what serves now. The previous release becomes the last one to fall back on, so a
/// chain of failures ends at the file, never in a loop.
pub fn revert(cache: &Path, id: &str, why: &str) -> std::io::Result<Option<String>> {
    use std::io::Write;
    let line = format!("{id}\t{}\n", why.replace(['\t', '\n'], " "));
    let mut log =
        std::fs::OpenOptions::new().create(true).append(true).open(cache.join(REVERTED))?;
    log.write_all(line.as_bytes())?;
    record_rejection(cache, id, why)?;
    let previous = std::fs::read_to_string(cache.join(PREVIOUS)).ok();
    let back = previous
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty() && p != id && cached(cache, p).exists());
    remove_if_any(&cache.join(PREVIOUS))?;
    match &back {
        Some(p) => write_whole(&cache.join(CURRENT), p.as_bytes())?,
        None => remove_if_any(&cache.join(CURRENT))?,
    }
    Ok(back)
}

/// The file holding the last release this host refused or reverted, and why (id, a tab,
/// why): what `/config` and the host's node show across reloads.
pub const REJECTED: &str = "rejected";

/// Records `id` as the last release refused on this host.
pub fn record_rejection(cache: &Path, id: &str, why: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(cache)?;
    let line = format!("{id}\t{}", why.replace(['\t', '\n'], " "));
    write_whole(&cache.join(REJECTED), line.as_bytes())
}

/// Forgets the last refusal when it names `id` (now applied).
pub fn clear_rejection(cache: &Path, id: &str) -> std::io::Result<()> {
    match last_rejection(cache) {
        Some((refused, _)) if refused == id => remove_if_any(&cache.join(REJECTED)),
        _ => Ok(()),
    }
}

/// The last release refused or reverted on this host, and why.
pub fn last_rejection(cache: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(cache.join(REJECTED)).ok()?;
    let (id, why) = text.trim_end().split_once('\t')?;
    Some((id.to_string(), why.to_string()))
}

/// The releases this host reverted by itself, oldest first: (id, why).
pub fn reverted(cache: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(cache.join(REVERTED)).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, why)| (id.to_string(), why.to_string()))
        .collect()
}

/// Starts the host's watcher when the configuration has `[fleet]`.
pub fn start(config: &Config, (host, metrics): (Host, Metrics), hooks: Hooks) {
    let Some(fleet) = config.fleet.clone() else { return };
    let source = match &fleet.zookeeper {
        Some(name) => config.zookeeper.iter().enumerate().find(|(i, z)| z.source_name(*i) == *name),
        None => config.zookeeper.iter().enumerate().next(),
    };
    let Some((_, source)) = source else {
        log::warn!("fleet {}: no [[zookeeper]] source holds the releases", fleet.cluster);
        return;
    };
    let watcher = Watcher {
        fleet,
        source: source.clone(),
        serving: config.release.clone(),
        // The last refusal (or revert) stays published after the reload that followed it.
        rejected: last_rejection(&hooks.cache),
        refused: None,
        hooks,
        host,
        metrics,
    };
    tokio::spawn(watcher.run());
}

struct Watcher {
    fleet: FleetSettings,
    source: ZkSettings,
    /// The release this worker's configuration holds.
    serving: Option<String>,
    /// The last release refused or reverted on this host, and why (what it publishes).
    rejected: Option<(String, String)>,
    /// The release this watcher refused (not checked again until the next reload).
    refused: Option<String>,
    hooks: Hooks,
    host: Host,
    metrics: Metrics,
}

impl Watcher {
    /// Waits for the host's lease, then follows the channel while it holds it; a lost
    /// session or lease starts over.
    async fn run(mut self) {
        let lease = self.host.service_index(LEASE);
        let mut backoff = Backoff::default();
        loop {
            if !self.host.leases().hold(lease, LEASE_MS) {
                tokio::time::sleep(Duration::from_millis(LEASE_MS / 3)).await;
                continue;
            }
            match self.follow(lease).await {
                Ok(()) => backoff = Backoff::default(),
                Err(e) => {
                    log::warn!("fleet {}: {e}; retrying", self.fleet.cluster);
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// One session: publish the host, then apply what `stable` (or, on a canary host, the
    /// staged rollout) names until the lease is lost; while a rollout is under way the host's
    /// answer counts are published every [`STATS_EVERY`] for it to compare, otherwise only
    /// when what the host serves or refused changes.
    async fn follow(&mut self, lease: usize) -> Result<(), StoreError> {
        let store = Store::connect(&self.source, &self.fleet).await?;
        let host = self.fleet.host_name();
        store.publish(&host, &self.state()).await?;
        let mut published = self.workers();
        loop {
            let (stable, stable_ms, stable_changed) = store.watch_channel("stable").await?;
            let (rollout, rollout_ms, rollout_changed) = store.watch_rollout().await?;
            let target = Rollout::target_for(rollout.as_ref(), &host, stable.as_deref());
            // When the pointer that names the target moved: where convergence is timed from.
            let flip_ms = match target == stable.as_deref() {
                true => stable_ms,
                false => rollout_ms,
            };
            // Answer counts matter only while a rollout is judged: a thousand hosts writing
            // their node every second for nothing would be a thousand writes a second.
            let judged =
                rollout.as_ref().is_some_and(|r| r.state == "canary" || r.state == "paused");
            if let Some(id) = target.filter(|t| self.wants(t)).map(str::to_string) {
                if self.apply(&store, &id, flip_ms).await {
                    // Replaced shortly by a worker serving it; keep the lease meanwhile.
                    self.serving = Some(id);
                }
                published = self.workers();
                store.publish(&host, &self.state()).await?;
            }
            let (a, b) = (stable_changed.changed(), rollout_changed.changed());
            tokio::pin!(a);
            tokio::pin!(b);
            loop {
                tokio::select! {
                    _ = &mut a => break,
                    _ = &mut b => break,
                    _ = tokio::time::sleep(STATS_EVERY) => {
                        if !self.host.leases().hold(lease, LEASE_MS) {
                            return Ok(());
                        }
                        // Also once a reload's workers all serve what the host applied.
                        if judged || self.workers() != published {
                            published = self.workers();
                            store.publish(&host, &self.state()).await?;
                        }
                    }
                }
            }
        }
    }

    /// Whether `id` is a release to apply: not the one served, not one this watcher refused
    /// already (a reload, after the host was fixed, checks it again), not one reverted here.
    fn wants(&self, id: &str) -> bool {
        self.serving.as_deref() != Some(id)
            && self.refused.as_deref() != Some(id)
            && !reverted(&self.hooks.cache).iter().any(|(r, _)| r == id)
    }

    /// Takes release `id` (from the cache when the host had it: a rollback reads nothing),
    /// checks it, caches it and asks for the reload. `false`: refused, the reason kept.
    async fn apply(&mut self, store: &Store, id: &str, flip_ms: u64) -> bool {
        let cluster = &self.fleet.cluster;
        let text = match std::fs::read_to_string(cached(&self.hooks.cache, id)) {
            Ok(text) => Ok(text),
            Err(_) => {
                // A flip reaches every host at once: spread the reads of the bytes (a rollback
                // to a cached release reads nothing and waits for nothing).
                let jitter = rand::random::<u64>() % FETCH_JITTER.as_millis() as u64;
                tokio::time::sleep(Duration::from_millis(jitter)).await;
                store.fetch(id).await.map_err(|e| e.to_string())
            }
        };
        let checked = text.and_then(|t| (self.hooks.validate)(&t).map(|()| t));
        let outcome = checked.and_then(|t| {
            cache_release(&self.hooks.cache, id, &t)
                .map_err(|e| format!("cannot cache it in {}: {e}", self.hooks.cache.display()))
        });
        match outcome {
            Ok(()) => {
                log::info!(
                    "fleet {cluster}: applying release {id} (was {}): reloading",
                    self.serving.as_deref().unwrap_or("the file")
                );
                self.host.releases().applying(id, flip_ms);
                // Refused here once (a file the host lacked then), served now: no longer its
                // rejection, or a rollout of it would read the old refusal as a new one.
                if self.rejected.as_ref().is_some_and(|(refused, _)| refused == id) {
                    self.rejected = None;
                    if let Err(e) = clear_rejection(&self.hooks.cache, id) {
                        log::warn!("fleet {cluster}: cannot clear the refusal of {id}: {e}");
                    }
                }
                (self.hooks.reload)();
                true
            }
            Err(why) => {
                log::warn!("fleet {cluster}: release {id} refused on this host: {why}");
                self.host.releases().rejected();
                if let Err(e) = record_rejection(&self.hooks.cache, id, &why) {
                    log::warn!("fleet {cluster}: cannot record the refusal of {id}: {e}");
                }
                self.refused = Some(id.to_string());
                self.rejected = Some((id.to_string(), why));
                false
            }
        }
    }

    /// The release each live worker of the host serves, by slot.
    fn workers(&self) -> Vec<Option<String>> {
        self.host.releases().by_slot().into_iter().map(|(_, r)| r).collect()
    }

    fn state(&self) -> HostState {
        let (unrouted, durations, timed) = self.metrics.unrouted_and_durations();
        HostState {
            unrouted,
            durations,
            timed,
            labels: self.fleet.labels.clone(),
            serving: self.serving.clone(),
            rejected: self.rejected.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            answered: self.metrics.answered_by_class(),
            workers: self.workers(),
            applied_ms: self.host.releases().converged().map_or(0, |c| c.at_ms),
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current(cache: &Path) -> Option<String> {
        current_id(cache)
    }

    #[test]
    fn a_revert_goes_back_one_release_then_to_the_file_and_remembers_why() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("zkgate-releases");
        cache_release(&cache, "r-1", "a").unwrap();
        cache_release(&cache, "r-2", "b").unwrap();
        cache_release(&cache, "r-2", "b").unwrap(); // applied again: r-1 stays the one before
        assert_eq!(current(&cache).as_deref(), Some("r-2"));
        assert_eq!(revert(&cache, "r-2", "crashed\tthrice\n").unwrap().as_deref(), Some("r-1"));
        assert_eq!(current(&cache).as_deref(), Some("r-1"));
        // r-1 fails too: nothing before it is known, the host's file serves.
        assert_eq!(revert(&cache, "r-1", "hung").unwrap(), None);
        assert_eq!(current(&cache), None);
        let why = reverted(&cache);
        assert_eq!(why, [("r-2".into(), "crashed thrice ".into()), ("r-1".into(), "hung".into())]);
        assert_eq!(last_rejection(&cache), Some(("r-1".into(), "hung".into())));
        clear_rejection(&cache, "r-2").unwrap();
        assert!(last_rejection(&cache).is_some(), "another release's refusal stays");
        clear_rejection(&cache, "r-1").unwrap();
        assert_eq!(last_rejection(&cache), None);
        // From the file, a release's previous is the file again.
        cache_release(&cache, "r-3", "c").unwrap();
        assert_eq!(revert(&cache, "r-3", "x").unwrap(), None);
    }
}
