//! openraft's state machine = the shard's SQLite replica. Entries are applied on the replica
//! thread; snapshots are SQLite files made with `VACUUM INTO` from a read transaction and
//! installed with the backup API (one atomic write transaction).

use super::{storage_error, Applied, Entry, LogId, Membership, StorageError, TypeConfig};
use crate::storage::replica::{self, ReplicaHandle};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

type Meta = SnapshotMeta<u64, super::NodeInfo>;

/// The newest snapshot file of this replica and its metadata.
#[derive(Default)]
struct Snapshots {
    current: Option<(Meta, PathBuf)>,
    seq: u64,
}

pub struct StateMachine {
    replica: ReplicaHandle,
    dir: PathBuf,
    snapshots: Arc<Mutex<Snapshots>>,
    receiving: Option<PathBuf>,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    storage_error(ErrorSubject::StateMachine, verb, e)
}

fn snap_err(e: impl std::fmt::Display) -> StorageError {
    storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e)
}

impl StateMachine {
    /// `dir` holds this replica's snapshot files; the newest valid one is picked up again.
    pub fn new(replica: ReplicaHandle, dir: &Path) -> crate::error::Result<StateMachine> {
        std::fs::create_dir_all(dir)
            .map_err(|e| crate::error::Error::internal(format!("{}: {e}", dir.display())))?;
        let mut snapshots = Snapshots::default();
        let mut newest: Option<(u64, PathBuf)> = None;
        for entry in std::fs::read_dir(dir)
            .map_err(crate::error::Error::internal)?
            .flatten()
        {
            let path = entry.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if let Some(seq) = name
                .strip_prefix("snap-")
                .and_then(|n| n.strip_suffix(".db"))
                .and_then(|n| n.parse().ok())
            {
                if newest.as_ref().is_none_or(|(s, _)| seq > *s) {
                    newest = Some((seq, path));
                }
            } else {
                // A snapshot being received or built when the node stopped.
                let _ = std::fs::remove_file(&path);
            }
        }
        if let Some((seq, path)) = newest {
            if let Ok((Some(last_log_id), membership)) = replica::snapshot_state(&path) {
                let meta = Meta {
                    last_log_id: Some(last_log_id),
                    last_membership: membership,
                    snapshot_id: seq.to_string(),
                };
                snapshots.current = Some((meta, path));
                snapshots.seq = seq;
            }
        }
        Ok(StateMachine {
            replica,
            dir: dir.to_path_buf(),
            snapshots: Arc::new(Mutex::new(snapshots)),
            receiving: None,
        })
    }
}

pub struct SnapshotBuilder {
    source: PathBuf,
    dir: PathBuf,
    snapshots: Arc<Mutex<Snapshots>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let seq = {
            let mut s = self.snapshots.lock().expect("snapshot lock poisoned");
            s.seq += 1;
            s.seq
        };
        let tmp = self.dir.join(format!("building-{seq}.db"));
        let source = self.source.clone();
        let tmp2 = tmp.clone();
        let (last_log_id, membership) =
            tokio::task::spawn_blocking(move || replica::snapshot_to(&source, &tmp2))
                .await
                .map_err(snap_err)?
                .map_err(snap_err)?;
        let path = self.dir.join(format!("snap-{seq}.db"));
        std::fs::rename(&tmp, &path).map_err(snap_err)?;
        let meta = Meta {
            last_log_id,
            last_membership: membership,
            snapshot_id: seq.to_string(),
        };
        let old = self
            .snapshots
            .lock()
            .expect("snapshot lock poisoned")
            .current
            .replace((meta.clone(), path.clone()));
        if let Some((_, old_path)) = old {
            if old_path != path {
                let _ = std::fs::remove_file(old_path);
            }
        }
        tracing::info!(snapshot = %path.display(), last_log_id = ?meta.last_log_id, "built snapshot");
        let file = tokio::fs::File::open(&path).await.map_err(snap_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        self.replica
            .applied_state()
            .await
            .map_err(|e| sm_err(ErrorVerb::Read, e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let n = entries.len();
        self.replica
            .apply(entries)
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(vec![Applied; n])
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            source: self.replica.path.clone(),
            dir: self.dir.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let seq = {
            let mut s = self.snapshots.lock().expect("snapshot lock poisoned");
            s.seq += 1;
            s.seq
        };
        let path = self.dir.join(format!("receiving-{seq}.db"));
        let file = tokio::fs::File::create(&path).await.map_err(snap_err)?;
        self.receiving = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        snapshot.sync_all().await.map_err(snap_err)?;
        drop(snapshot);
        let received = self
            .receiving
            .take()
            .ok_or_else(|| snap_err("install without a received snapshot"))?;
        let seq: u64 = received
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("receiving-"))
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let path = self.dir.join(format!("snap-{seq}.db"));
        std::fs::rename(&received, &path).map_err(snap_err)?;
        self.replica.restore(path.clone()).await.map_err(snap_err)?;
        let old = self
            .snapshots
            .lock()
            .expect("snapshot lock poisoned")
            .current
            .replace((meta.clone(), path.clone()));
        if let Some((_, old_path)) = old {
            if old_path != path {
                let _ = std::fs::remove_file(old_path);
            }
        }
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self
            .snapshots
            .lock()
            .expect("snapshot lock poisoned")
            .current
            .clone();
        match current {
            None => Ok(None),
            Some((meta, path)) => {
                let file = tokio::fs::File::open(&path).await.map_err(snap_err)?;
                Ok(Some(Snapshot {
                    meta,
                    snapshot: Box::new(file),
                }))
            }
        }
    }
}
