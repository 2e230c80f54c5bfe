//! Fleet releases on this host: which release each worker serves, what the host is applying,
//! how long the last apply took to reach every worker, and how many releases it refused. The
//! watcher (one worker) writes what it applies; each worker writes what it serves once ready;
//! any worker answering a scrape reads all of it. The supervisor adds its reverts.

use std::sync::atomic::Ordering;

use super::{alive, Host};

/// The release view.
#[derive(Debug, Clone, Copy)]
pub struct Releases {
    pub(super) host: Host,
}

/// A release id (`r-` and 16 hex digits) as one word; 0 is the host's own file.
fn encode(id: Option<&str>) -> u64 {
    id.and_then(|id| id.strip_prefix("r-"))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or(0)
}

/// The id a word stands for (`None`: the file).
pub(crate) fn decode(word: u64) -> Option<String> {
    (word != 0).then(|| format!("r-{word:016x}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The last apply that reached every worker of the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Converged {
    /// The release.
    pub release: String,
    /// From the host's decision to apply it (the watch event) to its last worker serving it.
    pub apply_seconds: f64,
    /// From the flip of the pointer that named it (the ZooKeeper node's mtime) to the last
    /// worker serving it.
    pub convergence_seconds: f64,
    /// When the last worker started serving it (Unix ms).
    pub at_ms: u64,
}

impl Releases {
    /// The watcher decided to apply `id` now, after the pointer naming it moved at `flip_ms`
    /// (Unix ms, ZooKeeper's mtime).
    pub fn applying(&self, id: &str, flip_ms: u64) {
        let f = &self.host.region.fleet;
        f.decided_ms.store(now_ms(), Ordering::Relaxed);
        f.flip_ms.store(flip_ms, Ordering::Relaxed);
        f.applying.store(encode(Some(id)), Ordering::Release);
    }

    /// This worker is ready and serves `id` (`None`: the file). The last worker of the host to
    /// serve the release being applied records how long the apply took.
    pub fn serving(&self, id: Option<&str>) {
        let region = self.host.region;
        let word = encode(id);
        region.workers[self.host.slot].release.store(word, Ordering::Release);
        let f = &region.fleet;
        if word == 0 || f.applying.load(Ordering::Acquire) != word {
            return;
        }
        if self.by_slot().iter().any(|(_, r)| encode(r.as_deref()) != word) {
            return; // a slot still serves another release: not converged yet
        }
        let decided = f.decided_ms.load(Ordering::Relaxed);
        if f.converged.load(Ordering::Acquire) == word
            && f.converged_at_ms.load(Ordering::Relaxed) >= decided
        {
            return; // recorded by another worker already
        }
        let now = now_ms();
        f.apply_ms.store(now.saturating_sub(decided), Ordering::Relaxed);
        let flip = f.flip_ms.load(Ordering::Relaxed);
        f.convergence_ms.store(now.saturating_sub(flip), Ordering::Relaxed);
        f.converged_at_ms.store(now, Ordering::Relaxed);
        f.converged.store(word, Ordering::Release);
    }

    /// A release was refused (its checks failed) or reverted on this host.
    pub fn rejected(&self) {
        self.host.region.fleet.rejections.fetch_add(1, Ordering::Relaxed);
    }

    /// Releases refused or reverted on this host since it started.
    pub fn rejections(&self) -> u64 {
        self.host.region.fleet.rejections.load(Ordering::Relaxed)
    }

    /// The release each live worker serves, by slot (`None`: the file).
    pub fn by_slot(&self) -> Vec<(usize, Option<String>)> {
        let region = self.host.region;
        region
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| {
                let pid = w.pid.load(Ordering::Relaxed);
                pid != 0 && !w.is_retired() && alive(pid)
            })
            .map(|(i, w)| (i, decode(w.release.load(Ordering::Acquire))))
            .collect()
    }

    /// The last apply that reached every worker, if any.
    pub fn converged(&self) -> Option<Converged> {
        let f = &self.host.region.fleet;
        let release = decode(f.converged.load(Ordering::Acquire))?;
        Some(Converged {
            release,
            apply_seconds: f.apply_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            convergence_seconds: f.convergence_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            at_ms: f.converged_at_ms.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_a_word() {
        assert_eq!(
            decode(encode(Some("r-00ff00ff00ff00ff"))).as_deref(),
            Some("r-00ff00ff00ff00ff")
        );
        assert_eq!(encode(None), 0);
        assert_eq!(encode(Some("not-a-release")), 0);
        assert_eq!(decode(0), None);
    }

    #[test]
    fn the_last_worker_to_serve_the_release_records_the_apply() {
        let host = Host::local(0);
        for slot in 0..2 {
            crate::metrics::Metrics::new(host.for_slot(slot)).started(1);
        }
        let r = host.releases();
        r.applying("r-0000000000000001", now_ms() - 1500);
        host.for_slot(0).releases().serving(Some("r-0000000000000001"));
        assert_eq!(r.converged(), None, "slot 1 still serves the file");
        host.for_slot(1).releases().serving(Some("r-0000000000000001"));
        let c = r.converged().expect("converged");
        assert_eq!(c.release, "r-0000000000000001");
        assert!(c.convergence_seconds >= 1.5 && c.apply_seconds < 1.0, "{c:?}");
        assert_eq!(r.by_slot().len(), 2);
        r.rejected();
        assert_eq!(r.rejections(), 1);
    }
}
