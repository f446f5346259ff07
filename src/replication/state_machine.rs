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
    /// Snapshots received from a leader and installed, since the node started.
    pub installed: Arc<std::sync::atomic::AtomicU64>,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    storage_error(ErrorSubject::StateMachine, verb, e)
}

fn snap_err(e: impl std::fmt::Display) -> StorageError {
    storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e)
}

impl StateMachine {
    /// `dir` holds this replica's snapshot files; the newest valid one is picked up again.
    ///
    /// openraft 0.9 purges the log up to a received snapshot as soon as the last chunk is in,
    /// before the state machine has installed it (found by `tests/simulation.rs`). So a
    /// complete received file, or a kept snapshot, that is ahead of the replica is an install
    /// a crash interrupted: it is restored now, before openraft reads the state — otherwise
    /// the log would start after a gap the replica never filled.
    pub async fn new(replica: ReplicaHandle, dir: &Path) -> crate::error::Result<StateMachine> {
        std::fs::create_dir_all(dir)
            .map_err(|e| crate::error::Error::internal(format!("{}: {e}", dir.display())))?;
        let mut snapshots = Snapshots::default();
        // (last log id, seq, path) of every complete snapshot file.
        let mut found: Vec<(LogId, u64, PathBuf)> = Vec::new();
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
            let seq: Option<u64> = name
                .strip_prefix("snap-")
                .or_else(|| name.strip_prefix("receiving-"))
                .and_then(|n| n.strip_suffix(".db"))
                .and_then(|n| n.parse().ok());
            let state = match seq {
                Some(_) if complete_sqlite_file(&path) => replica::snapshot_state(&path).ok(),
                _ => None,
            };
            match (seq, state) {
                (Some(seq), Some((Some(last), _))) => found.push((last, seq, path)),
                // Being built or received when the node stopped, or not a snapshot.
                _ => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        found.sort_by_key(|(last, seq, _)| (last.index, *seq));
        if let Some((last_log_id, seq, path)) = found.pop() {
            for (_, _, older) in found {
                let _ = std::fs::remove_file(older);
            }
            let kept = dir.join(format!("snap-{seq}.db"));
            if path != kept {
                crate::storage::durable::sync_file(&path).map_err(crate::error::Error::internal)?;
                crate::storage::durable::rename(&path, &kept)
                    .map_err(crate::error::Error::internal)?;
            }
            let (_, membership) = replica::snapshot_state(&kept)?;
            let applied = replica.applied_state().await?.0.map(|l| l.index);
            if applied < Some(last_log_id.index) {
                tracing::warn!(shard = %replica.shard, snapshot = %kept.display(), ?applied, %last_log_id, "finishing a snapshot install that a crash interrupted");
                replica.restore(kept.clone()).await?;
            }
            let meta = Meta {
                last_log_id: Some(last_log_id),
                last_membership: membership,
                snapshot_id: seq.to_string(),
            };
            snapshots.current = Some((meta, kept));
            snapshots.seq = seq;
        }
        Ok(StateMachine {
            replica,
            dir: dir.to_path_buf(),
            snapshots: Arc::new(Mutex::new(snapshots)),
            receiving: None,
            installed: Arc::default(),
        })
    }
}

/// Whether `path` holds a whole SQLite database: as many pages as its header says (a
/// snapshot cut short by a crash mid-transfer has fewer).
fn complete_sqlite_file(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut header = [0u8; 100];
    if f.read_exact(&mut header).is_err() || &header[..16] != b"SQLite format 3\0" {
        return false;
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536u64,
        n => n as u64,
    };
    let pages = u32::from_be_bytes([header[28], header[29], header[30], header[31]]) as u64;
    // The page count is valid only if the header's change counter matches the
    // version-valid-for number (SQLite file format, section 1.3).
    let valid = header[24..28] == header[92..96];
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    valid && pages > 0 && len == page_size * pages
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
        // Contents synced by `snapshot_to`; now its name. Only then may openraft purge the
        // log it covers (it does once this returns), and the older snapshot go.
        crate::storage::durable::rename(&tmp, &path).map_err(snap_err)?;
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
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        let refused = self
            .replica
            .apply(entries)
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(indexes
            .into_iter()
            .map(|i| Applied {
                refused: refused.contains(&i),
            })
            .collect())
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
        drop(snapshot);
        let received = self
            .receiving
            .take()
            .ok_or_else(|| snap_err("install without a received snapshot"))?;
        // openraft purges the log up to the snapshot: the file and its name are durable
        // before the replica (synced only at checkpoints) takes it in.
        crate::storage::durable::sync_file(&received).map_err(snap_err)?;
        let seq: u64 = received
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("receiving-"))
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let path = self.dir.join(format!("snap-{seq}.db"));
        crate::storage::durable::rename(&received, &path).map_err(snap_err)?;
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
        self.installed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
