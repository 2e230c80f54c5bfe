//! The disk snapshot of discovered routes: written atomically after changes, read by a worker
//! that cannot reach ZooKeeper at start so it serves the last known table at once. One section
//! per registry source (by its name); a file from before sections (version 1) is the first
//! source's.
//!
//! Atomic means: a temp file in the same directory, fsync, rename over the old file, fsync the
//! directory. A reader sees the old snapshot or the new one, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use tokio::sync::watch;

use crate::instance::Instance;

/// Discovered services and their instances.
pub type Listing = BTreeMap<String, Vec<Instance>>;

/// Each registry source's listing, by source name.
pub type Sections = BTreeMap<String, Listing>;

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    /// Version 1: the one source's services.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    services: BTreeMap<String, Vec<Entry>>,
    /// Version 2: each source's services.
    #[serde(default)]
    sources: BTreeMap<String, BTreeMap<String, Vec<Entry>>>,
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
/// `first`: the name of the first source, whose section a version 1 file is.
pub fn load(path: &Path, first: &str) -> Result<Sections, SnapshotError> {
    let text =
        std::fs::read(path).map_err(|source| SnapshotError::Io { path: path.into(), source })?;
    let file: File = serde_json::from_slice(&text)
        .map_err(|e| SnapshotError::Invalid { path: path.into(), reason: e.to_string() })?;
    let sections = match file.version {
        1 => BTreeMap::from([(first.to_string(), file.services)]),
        2 => file.sources,
        v => {
            return Err(SnapshotError::Invalid {
                path: path.into(),
                reason: format!("unknown version {v}"),
            })
        }
    };
    let mut out = Sections::new();
    for (source, services) in sections {
        let mut listing = Listing::new();
        for (service, entries) in services {
            let mut list = Vec::new();
            for e in entries {
                Instance::validate(&e.address)
                    .map_err(|reason| SnapshotError::Invalid { path: path.into(), reason })?;
                list.push(Instance::weighted(e.address, e.weight));
            }
            listing.insert(service, list);
        }
        out.insert(source, listing);
    }
    Ok(out)
}

/// Writes a snapshot atomically.
pub fn write(path: &Path, sections: &Sections) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.into(), source };
    let entries = |listing: &Listing| {
        listing
            .iter()
            .map(|(k, v)| {
                let list = v
                    .iter()
                    .map(|i| Entry { address: i.address.clone(), weight: i.weight })
                    .collect();
                (k.clone(), list)
            })
            .collect()
    };
    let file = File {
        version: 2,
        services: BTreeMap::new(),
        sources: sections.iter().map(|(name, l)| (name.clone(), entries(l))).collect(),
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
pub async fn write_snapshots(path: std::path::PathBuf, mut rx: watch::Receiver<Arc<Sections>>) {
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
        let sections = Sections::from([("zk0".to_string(), l.clone()), ("b".to_string(), l)]);
        write(&path, &sections).unwrap();
        assert_eq!(load(&path, "zk0").unwrap(), sections);
        // A file from before sections is the first source's.
        std::fs::write(
            &path,
            "{\"version\":1,\"services\":{\"x\":[{\"address\":\"10.0.0.1:80\",\"weight\":1}]}}",
        )
        .unwrap();
        assert_eq!(load(&path, "zk0").unwrap()["zk0"]["x"][0].address, "10.0.0.1:80");
        std::fs::write(
            &path,
            "{\"version\":1,\"services\":{\"x\":[{\"address\":\"nope\",\"weight\":1}]}}",
        )
        .unwrap();
        assert!(matches!(load(&path, "zk0"), Err(SnapshotError::Invalid { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
