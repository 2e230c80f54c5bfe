//! The fleet's releases in ZooKeeper, under `<root>/<cluster>`:
//!
//! ```text
//! blobs/<sha256>/c-00000…   a release's bytes, in chunks of CHUNK (ZooKeeper refuses requests
//!                           over 1 MiB); written once, never changed
//! releases/<id>             its manifest (JSON: sha256, size, chunks, author, message, created)
//! channels/stable           the release every host serves (its id), flipped by compare-and-set
//! rollout                   the staged rollout in progress (JSON: release, canary hosts, bake,
//!                           threshold, state), also by compare-and-set
//! audit/e-<seq>             append-only (JSON: who, verb, from, to, why, at), written in the
//!                           same multi as the change it records
//! hosts/<host>              ephemeral: labels, the release it serves, its last rejection
//! ```
//!
//! A release's id is `r-` and the first 16 hex digits of its SHA-256: content-addressed, so a
//! push of the same document stores nothing new. Every node is created with the source's ACLs
//! (ZooKeeper does not inherit them): the creator's only when the source authenticates, else
//! open.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use zookeeper_client as zk;

use crate::config::{FleetSettings, ZkSettings};
pub use crate::fleet::records::{release_id, AuditEntry, Change, HostState, Manifest, Rollout};

/// The largest chunk of a release's bytes one request carries.
pub const CHUNK: usize = 512 * 1024;

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// ZooKeeper refused or could not be reached.
    #[error("zookeeper {path}: {source}")]
    Zk {
        /// The node concerned.
        path: String,
        /// What ZooKeeper said.
        source: zk::Error,
    },
    /// The channel moved since it was read: someone else flipped it.
    #[error("conflict: channel {channel} moved meanwhile (it now serves {now}); read it again and retry")]
    Conflict {
        /// The channel.
        channel: String,
        /// What it points at now.
        now: String,
    },
    /// No such release.
    #[error("no release {0} in this cluster")]
    Unknown(String),
    /// A release's bytes do not hash to its id, or are cut short.
    #[error("release {0}: its bytes do not match its manifest ({1})")]
    Corrupt(String, String),
    /// A node holds something this version cannot read.
    #[error("{0}: {1}")]
    Malformed(String, String),
}

/// Milliseconds since the epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One session on the cluster's tree (a new one after [`Store::reconnect`]).
pub struct Store {
    client: std::sync::Mutex<zk::Client>,
    base: String,
    /// The source authenticates: nodes are its own (`creator_all`), else open.
    private: bool,
    /// Where the session was opened, to open another.
    source: ZkSettings,
    /// This session created the host's node ([`Store::publish`] then writes it in one request).
    own_node: AtomicBool,
}

impl Store {
    /// A session on the ensemble of `source`, for `fleet`'s cluster.
    pub async fn connect(source: &ZkSettings, fleet: &FleetSettings) -> Result<Self, StoreError> {
        let client = crate::discovery::zookeeper::connect(source)
            .await
            .map_err(|source| StoreError::Zk { path: fleet.base(), source })?;
        Ok(Store {
            client: std::sync::Mutex::new(client),
            base: fleet.base(),
            private: source.auth.is_some(),
            source: source.clone(),
            own_node: AtomicBool::new(false),
        })
    }

    /// Replaces the session with a new one (after an outage expired it): what a long-running
    /// command (a rollout's bake) does rather than give up.
    pub async fn reconnect(&self) -> Result<(), StoreError> {
        let client = crate::discovery::zookeeper::connect(&self.source)
            .await
            .map_err(|source| StoreError::Zk { path: self.base.clone(), source })?;
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = client;
        self.own_node.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// The session's client (a cheap handle).
    fn client(&self) -> zk::Client {
        self.client.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn acls(&self) -> zk::Acls<'static> {
        match self.private {
            true => zk::Acls::creator_all(),
            false => zk::Acls::anyone_all(),
        }
    }

    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.base)
    }

    fn err(path: &str) -> impl FnOnce(zk::Error) -> StoreError + '_ {
        move |source| StoreError::Zk { path: path.to_string(), source }
    }

    /// Creates the tree (idempotent).
    pub async fn init(&self) -> Result<(), StoreError> {
        let acls = self.acls();
        let persistent = zk::CreateMode::Persistent.with_acls(acls);
        for dir in ["blobs", "releases", "channels", "audit", "hosts"] {
            let path = self.path(dir);
            self.client().mkdir(&path, &persistent).await.map_err(Self::err(&path))?;
        }
        for node in ["channels/stable", "rollout"] {
            let path = self.path(node);
            match self.client().create(&path, b"", &persistent).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(Self::err(&path)(e)),
            }
        }
        Ok(())
    }

    /// Freezes the channels: no rollout, rollback or promotion until [`Store::unlock`]
    /// (a change freeze, an incident). `Err(NodeExists)` as a conflict when already locked.
    pub async fn lock(&self, who: &str, why: &str) -> Result<(), StoreError> {
        let path = self.path("lock");
        let persistent = zk::CreateMode::Persistent.with_acls(self.acls());
        let text = format!("{who}: {why}");
        match self.client().create(&path, text.as_bytes(), &persistent).await {
            Ok(_) => Ok(()),
            Err(zk::Error::NodeExists) => Err(StoreError::Conflict {
                channel: "lock".into(),
                now: self.locked().await?.unwrap_or_default(),
            }),
            Err(e) => Err(Self::err(&path)(e)),
        }
    }

    /// Lifts the freeze.
    pub async fn unlock(&self) -> Result<(), StoreError> {
        let path = self.path("lock");
        match self.client().delete(&path, None).await {
            Ok(()) | Err(zk::Error::NoNode) => Ok(()),
            Err(e) => Err(Self::err(&path)(e)),
        }
    }

    /// Who froze the channels and why, when they are.
    pub async fn locked(&self) -> Result<Option<String>, StoreError> {
        let path = self.path("lock");
        match self.client().get_data(&path).await {
            Ok((data, _)) => Ok(Some(String::from_utf8_lossy(&data).into_owned())),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(Self::err(&path)(e)),
        }
    }

    /// The staged rollout, if one was ever started, and the version to change it from.
    pub async fn rollout(&self) -> Result<(Option<Rollout>, i32), StoreError> {
        let path = self.path("rollout");
        let (data, stat) = self.client().get_data(&path).await.map_err(Self::err(&path))?;
        if data.is_empty() {
            return Ok((None, stat.version));
        }
        let r = serde_json::from_slice(&data)
            .map_err(|e| StoreError::Malformed(path, e.to_string()))?;
        Ok((Some(r), stat.version))
    }

    /// Writes the rollout if it is still at `version`, with its audit entry, in one multi.
    pub async fn set_rollout(
        &self,
        rollout: &Rollout,
        version: i32,
        Change { who, verb, why }: Change<'_>,
    ) -> Result<(), StoreError> {
        let path = self.path("rollout");
        let entry = AuditEntry {
            who: who.into(),
            verb: verb.into(),
            from: rollout.from.clone(),
            to: rollout.release.clone(),
            why: why.into(),
            at_ms: now_ms(),
        };
        let audit = self.path("audit/e-");
        let sequential = zk::CreateMode::PersistentSequential.with_acls(self.acls());
        let client = self.client();
        let mut multi = client.new_multi_writer();
        multi.add_set_data(&path, &rollout.bytes(), Some(version)).map_err(Self::err(&path))?;
        multi.add_create(&audit, &entry.bytes(), &sequential).map_err(Self::err(&audit))?;
        match multi.commit().await {
            Ok(_) => Ok(()),
            Err(e) if zk::Error::from(e.clone()) == zk::Error::BadVersion => {
                Err(StoreError::Conflict { channel: "rollout".into(), now: "another state".into() })
            }
            Err(e) => Err(Self::err(&path)(e.into())),
        }
    }

    /// The rollout as it is now, when it last changed (ZooKeeper's mtime, Unix ms), and a
    /// watch that fires when it changes.
    pub async fn watch_rollout(
        &self,
    ) -> Result<(Option<Rollout>, u64, zk::OneshotWatcher), StoreError> {
        let path = self.path("rollout");
        let (data, stat, watcher) =
            self.client().get_and_watch_data(&path).await.map_err(Self::err(&path))?;
        let rollout = serde_json::from_slice(&data).ok();
        Ok((rollout, stat.mtime as u64, watcher))
    }

    /// Stores `text` as a release (its chunks first, then its manifest and the audit entry in
    /// one multi); returns its manifest and whether it is new.
    pub async fn push(
        &self,
        text: &str,
        author: &str,
        message: &str,
    ) -> Result<(Manifest, bool), StoreError> {
        let (id, sha256) = release_id(text);
        if let Ok(existing) = self.manifest(&id).await {
            return Ok((existing, false));
        }
        let persistent = zk::CreateMode::Persistent.with_acls(self.acls());
        let blob = self.path(&format!("blobs/{sha256}"));
        match self.client().create(&blob, b"", &persistent).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(Self::err(&blob)(e)),
        }
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(CHUNK).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let path = format!("{blob}/c-{i:05}");
            match self.client().create(&path, chunk, &persistent).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(Self::err(&path)(e)),
            }
        }
        let manifest = Manifest {
            id: id.clone(),
            sha256,
            size: text.len(),
            chunks: chunks.len(),
            author: author.to_string(),
            message: message.to_string(),
            created_ms: now_ms(),
        };
        let entry = AuditEntry {
            who: author.to_string(),
            verb: "push".into(),
            from: None,
            to: id.clone(),
            why: message.to_string(),
            at_ms: now_ms(),
        };
        let release = self.path(&format!("releases/{id}"));
        let audit = self.path("audit/e-");
        let sequential = zk::CreateMode::PersistentSequential.with_acls(self.acls());
        let client = self.client();
        let mut multi = client.new_multi_writer();
        multi.add_create(&release, &manifest.bytes(), &persistent).map_err(Self::err(&release))?;
        multi.add_create(&audit, &entry.bytes(), &sequential).map_err(Self::err(&audit))?;
        match multi.commit().await {
            Ok(_) => Ok((manifest, true)),
            // Pushed by someone else meanwhile: the same bytes, the same release.
            Err(e) if zk::Error::from(e.clone()) == zk::Error::NodeExists => {
                Ok((self.manifest(&id).await?, false))
            }
            Err(e) => Err(Self::err(&release)(e.into())),
        }
    }

    /// A release's manifest.
    pub async fn manifest(&self, id: &str) -> Result<Manifest, StoreError> {
        let path = self.path(&format!("releases/{id}"));
        match self.client().get_data(&path).await {
            Ok((data, _)) => serde_json::from_slice(&data)
                .map_err(|e| StoreError::Malformed(path, e.to_string())),
            Err(zk::Error::NoNode) => Err(StoreError::Unknown(id.to_string())),
            Err(e) => Err(Self::err(&path)(e)),
        }
    }

    /// A release's text, its hash checked.
    pub async fn fetch(&self, id: &str) -> Result<String, StoreError> {
        let m = self.manifest(id).await?;
        let mut bytes = Vec::with_capacity(m.size);
        for i in 0..m.chunks {
            let path = self.path(&format!("blobs/{}/c-{i:05}", m.sha256));
            let (chunk, _) = self.client().get_data(&path).await.map_err(|e| match e {
                zk::Error::NoNode => StoreError::Corrupt(id.to_string(), format!("{path} is gone")),
                e => Self::err(&path)(e),
            })?;
            bytes.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| StoreError::Corrupt(id.to_string(), "not UTF-8".into()))?;
        let (got, _) = release_id(&text);
        if got != m.id || text.len() != m.size {
            return Err(StoreError::Corrupt(id.to_string(), format!("it hashes to {got}")));
        }
        Ok(text)
    }

    /// What `channel` serves, and the version to flip it from.
    pub async fn channel(&self, channel: &str) -> Result<(Option<String>, i32), StoreError> {
        let path = self.path(&format!("channels/{channel}"));
        let (data, stat) = self.client().get_data(&path).await.map_err(Self::err(&path))?;
        let id = String::from_utf8_lossy(&data).trim().to_string();
        Ok(((!id.is_empty()).then_some(id), stat.version))
    }

    /// Points `channel` at `to` if it is still at `version` (compare-and-set), with its audit
    /// entry in the same multi: one of two concurrent flips wins, the other gets
    /// [`StoreError::Conflict`], and the history holds each change exactly once.
    pub async fn flip(
        &self,
        channel: &str,
        (to, version): (&str, i32),
        Change { who, verb, why }: Change<'_>,
    ) -> Result<(), StoreError> {
        self.manifest(to).await?;
        let path = self.path(&format!("channels/{channel}"));
        let from = self.channel(channel).await.ok().and_then(|(id, _)| id);
        let entry = AuditEntry {
            who: who.into(),
            verb: verb.into(),
            from,
            to: to.into(),
            why: why.into(),
            at_ms: now_ms(),
        };
        let audit = self.path("audit/e-");
        let sequential = zk::CreateMode::PersistentSequential.with_acls(self.acls());
        let client = self.client();
        let mut multi = client.new_multi_writer();
        multi.add_set_data(&path, to.as_bytes(), Some(version)).map_err(Self::err(&path))?;
        multi.add_create(&audit, &entry.bytes(), &sequential).map_err(Self::err(&audit))?;
        match multi.commit().await {
            Ok(_) => Ok(()),
            Err(e) if zk::Error::from(e.clone()) == zk::Error::BadVersion => {
                let now = self.channel(channel).await?.0.unwrap_or_else(|| "nothing".into());
                Err(StoreError::Conflict { channel: channel.into(), now })
            }
            Err(e) => Err(Self::err(&path)(e.into())),
        }
    }

    /// Every audit entry, oldest first.
    pub async fn history(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let dir = self.path("audit");
        let mut names = self.client().list_children(&dir).await.map_err(Self::err(&dir))?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let path = format!("{dir}/{name}");
            let (data, _) = self.client().get_data(&path).await.map_err(Self::err(&path))?;
            out.push(
                serde_json::from_slice(&data)
                    .map_err(|e| StoreError::Malformed(path, e.to_string()))?,
            );
        }
        Ok(out)
    }

    /// Publishes this host's state in its ephemeral node, owned by this session: a node left
    /// by an earlier session of the host (the lease holder before a reload) is replaced, or it
    /// would vanish when that session expires, with what was written into it.
    pub async fn publish(&self, host: &str, state: &HostState) -> Result<(), StoreError> {
        let path = self.path(&format!("hosts/{host}"));
        let data = state.bytes();
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(self.acls());
        let client = self.client();
        if self.own_node.load(Ordering::Relaxed) {
            // This session's node (the common case, each second of a rollout): one request.
            match client.set_data(&path, &data, None).await {
                Ok(_) => return Ok(()),
                Err(zk::Error::NoNode) => self.own_node.store(false, Ordering::Relaxed),
                Err(e) => return Err(Self::err(&path)(e)),
            }
        }
        for _ in 0..3 {
            match client.create(&path, &data, &ephemeral).await {
                Ok(_) => {
                    self.own_node.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(Self::err(&path)(e)),
            }
            let stat = match client.check_stat(&path).await.map_err(Self::err(&path))? {
                Some(stat) => stat,
                None => continue, // gone meanwhile: create it
            };
            if stat.ephemeral_owner == client.session_id().0 {
                self.own_node.store(true, Ordering::Relaxed);
                let set = client.set_data(&path, &data, Some(stat.version)).await;
                return set.map(|_| ()).map_err(Self::err(&path));
            }
            // The node of an earlier session of this host (the worker that held the lease
            // before a reload): it goes when that session expires, taking whatever was written
            // into it. Replace it with one of this session.
            match client.delete(&path, Some(stat.version)).await {
                Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {}
                Err(e) => return Err(Self::err(&path)(e)),
            }
        }
        Err(StoreError::Malformed(path, "another session keeps replacing this host's node: is another host configured with the same [fleet] host name?".into()))
    }

    /// Every host that published its state, by name.
    pub async fn hosts(&self) -> Result<Vec<(String, HostState)>, StoreError> {
        let dir = self.path("hosts");
        let mut names = self.client().list_children(&dir).await.map_err(Self::err(&dir))?;
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let path = format!("{dir}/{name}");
            // A host that left between the listing and the read is simply gone.
            let Ok((data, _)) = self.client().get_data(&path).await else { continue };
            let state = serde_json::from_slice(&data).unwrap_or_default();
            out.push((name, state));
        }
        Ok(out)
    }

    /// What `channel` serves now, when it last moved (ZooKeeper's mtime, Unix ms), and a
    /// watch that fires when it changes.
    pub async fn watch_channel(
        &self,
        channel: &str,
    ) -> Result<(Option<String>, u64, zk::OneshotWatcher), StoreError> {
        let path = self.path(&format!("channels/{channel}"));
        let (data, stat, watcher) =
            self.client().get_and_watch_data(&path).await.map_err(Self::err(&path))?;
        let id = String::from_utf8_lossy(&data).trim().to_string();
        Ok(((!id.is_empty()).then_some(id), stat.mtime as u64, watcher))
    }
}

/// A record the tree stores (manifest, audit entry, rollout, host state), written as JSON.
trait Record: Serialize {
    /// Its bytes.
    fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl<T: Serialize> Record for T {}
