//! The disk snapshot of discovered routes: written atomically after changes, read by a worker
//! that cannot reach ZooKeeper at start so it serves the last known table at once.
//!
//! Atomic means: a temp file in the same directory, fsync, rename over the old file, fsync the
//! directory. A reader sees the old snapshot or the new one, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use tokio::sync::watch;

use crate::table::instance::Instance;

/// Discovered services and their instances.
pub type Listing = BTreeMap<String, Vec<Instance>>;

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    services: BTreeMap<String, Vec<Entry>>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    address: String,
    weight: u32,
}

/// Why a snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file system said no.
    #[error("{path}: {source}")]
    Io {
        /// The snapshot file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a snapshot we wrote.
    #[error("{path}: not a zkgate snapshot: {reason}")]
    Invalid {
        /// The snapshot file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Reads a snapshot; every address is validated again (the file may have been edited).
pub fn load(path: &Path) -> Result<Listing, SnapshotError> {
    let text =
        std::fs::read(path).map_err(|source| SnapshotError::Io { path: path.into(), source })?;
    let file: File = serde_json::from_slice(&text)
        .map_err(|e| SnapshotError::Invalid { path: path.into(), reason: e.to_string() })?;
    if file.version != 1 {
        return Err(SnapshotError::Invalid {
            path: path.into(),
            reason: format!("unknown version {}", file.version),
        });
    }
    let mut out = Listing::new();
    for (service, entries) in file.services {
        let mut list = Vec::new();
        for e in entries {
            Instance::validate(&e.address)
                .map_err(|reason| SnapshotError::Invalid { path: path.into(), reason })?;
            list.push(Instance::weighted(e.address, e.weight));
        }
        out.insert(service, list);
    }
    Ok(out)
}

/// Writes a snapshot atomically.
pub fn write(path: &Path, listing: &Listing) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.into(), source };
    let file = File {
        version: 1,
        services: listing
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.iter()
                        .map(|i| Entry { address: i.address.clone(), weight: i.weight })
                        .collect(),
                )
            })
            .collect(),
    };
    let body = serde_json::to_vec_pretty(&file).map_err(|e| io(std::io::Error::other(e)))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Writes the snapshot whenever the listing changes; a slow disk only delays the file.
pub async fn write_snapshots(path: std::path::PathBuf, mut rx: watch::Receiver<Arc<Listing>>) {
    while rx.changed().await.is_ok() {
        let listing = rx.borrow_and_update().clone();
        let p = path.clone();
        match tokio::task::spawn_blocking(move || write(&p, &listing)).await {
            Ok(Ok(())) => log::debug!("snapshot written to {}", path.display()),
            Ok(Err(e)) => log::warn!("cannot write route snapshot: {e}"),
            Err(e) => log::warn!("snapshot writer: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_snapshot_reads_back_and_garbage_is_refused() {
        let dir = std::env::temp_dir().join(format!("zkgate-snap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routes.json");
        let mut l = Listing::new();
        l.insert("svc".into(), vec![Instance::weighted("10.0.0.1:80", 3)]);
        write(&path, &l).unwrap();
        assert_eq!(load(&path).unwrap(), l);
        std::fs::write(
            &path,
            "{\"version\":1,\"services\":{\"x\":[{\"address\":\"nope\",\"weight\":1}]}}",
        )
        .unwrap();
        assert!(matches!(load(&path), Err(SnapshotError::Invalid { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
