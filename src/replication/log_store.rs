//! The Raft log on `fjall`: one keyspace per shard (`log_s<N>`) keyed by big-endian log
//! index, plus the shard's vote, committed id and last purged id in a shared `raft_meta`
//! keyspace. Every append is one write batch followed by an fsync of the shared journal,
//! coalesced across the node's groups (`Syncer`): the log is the durable copy of every
//! acknowledged write (SQLite replicas run with `synchronous=OFF`).
//!
//! Invariant: `last_purged_log_id` is persisted before entries are removed, so a restart never
//! sees a gap it cannot explain (openraft 0.9 crash-loops otherwise).

// openraft's `StorageError` is large by its design; these helpers only pass it through.
#![allow(clippy::result_large_err)]

use super::{storage_error, Entry, LogId, StorageError, TypeConfig};
use crate::ids::ShardId;
use crate::limits;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The node-wide log database. One per data dir; shared by all groups of the node.
#[derive(Clone)]
pub struct LogDb {
    db: Database,
    meta: Keyspace,
    syncer: Arc<Syncer>,
}

/// Coalesces fsyncs of the node's one log journal: an append that finds an fsync under way
/// waits for it and, if that fsync did not cover its write, issues the next — so N groups
/// appending at once pay for one or two fsyncs, not N.
///
/// Invariant: a ticket is taken after its write is in the journal, and an fsync covers
/// every ticket taken before it started (`upto` is read just before `persist`).
#[derive(Default)]
struct Syncer {
    written: AtomicU64,
    synced: Mutex<u64>,
}

impl Syncer {
    /// Make everything written to `db` so far durable. Blocking: call off the async workers.
    fn sync(&self, db: &Database) -> fjall::Result<()> {
        let mine = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self.synced.lock().expect("syncer lock poisoned");
        if *synced >= mine {
            return Ok(());
        }
        let upto = self.written.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        db.persist(PersistMode::SyncData)?;
        crate::metrics::timeline::fsync(started.elapsed());
        *synced = upto;
        Ok(())
    }
}

impl LogDb {
    pub fn open(path: &std::path::Path) -> crate::error::Result<Self> {
        let db = Database::builder(path).open().map_err(|e| {
            crate::error::Error::internal(format!("opening raft log at {}: {e}", path.display()))
        })?;
        let meta = db
            .keyspace("raft_meta", KeyspaceCreateOptions::default)
            .map_err(|e| crate::error::Error::internal(format!("opening raft meta: {e}")))?;
        Ok(LogDb {
            db,
            meta,
            syncer: Arc::default(),
        })
    }

    /// The keyspace holding one life (placement `epoch`) of `shard`'s log.
    fn keyspace_name(shard: ShardId, epoch: u64) -> String {
        if epoch == 0 {
            format!("log_s{}", shard.0)
        } else {
            format!("log_s{}_e{epoch}", shard.0)
        }
    }

    /// Delete one life of the log of `shard` (its group is stopped for good: the shard was
    /// retired, or the replica moved away).
    pub fn remove(&self, shard: ShardId, epoch: u64) -> crate::error::Result<()> {
        let fail = |e: fjall::Error| {
            crate::error::Error::internal(format!("removing the log of {shard}: {e}"))
        };
        let name = Self::keyspace_name(shard, epoch);
        let prefix = format!("{}/", crate::ids::replica_name(shard, epoch));
        if self.db.keyspace_exists(&name) {
            let log = self
                .db
                .keyspace(&name, KeyspaceCreateOptions::default)
                .map_err(fail)?;
            self.db.delete_keyspace(log).map_err(fail)?;
        }
        let mut batch = self.db.batch();
        for guard in self.meta.prefix(prefix) {
            let key = guard.key().map_err(fail)?;
            batch.remove(&self.meta, key);
        }
        batch.commit().map_err(fail)?;
        self.db.persist(PersistMode::SyncData).map_err(fail)
    }

    /// The log store of one shard's group (placement `epoch` of its replica here).
    pub fn store(&self, shard: ShardId, epoch: u64) -> crate::error::Result<LogStore> {
        let log = self
            .db
            .keyspace(&Self::keyspace_name(shard, epoch), || {
                KeyspaceCreateOptions::default().max_memtable_size(limits::LOG_MEMTABLE_BYTES)
            })
            .map_err(|e| crate::error::Error::internal(format!("opening log of {shard}: {e}")))?;
        Ok(LogStore {
            db: self.db.clone(),
            meta: self.meta.clone(),
            log,
            shard,
            name: crate::ids::replica_name(shard, epoch),
            syncer: self.syncer.clone(),
        })
    }
}

#[derive(Clone)]
pub struct LogStore {
    db: Database,
    meta: Keyspace,
    log: Keyspace,
    shard: ShardId,
    /// Prefix of this life's keys in `raft_meta` (`replica_name`).
    name: String,
    syncer: Arc<Syncer>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    storage_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    storage_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

impl LogStore {
    fn meta_key(&self, name: &str) -> String {
        format!("{}/{name}", self.name)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StorageError> {
        match self.meta.get(self.meta_key(name)).map_err(read_err)? {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(&bytes).map(Some).map_err(read_err),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<(), StorageError> {
        let bytes = postcard::to_stdvec(value).map_err(write_err)?;
        self.meta
            .insert(self.meta_key(name), bytes)
            .map_err(write_err)?;
        self.sync()
    }

    fn sync(&self) -> Result<(), StorageError> {
        let (db, syncer) = (self.db.clone(), self.syncer.clone());
        tokio::task::block_in_place(move || syncer.sync(&db)).map_err(write_err)
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        match self.log.last_key_value() {
            None => Ok(None),
            Some(guard) => {
                let (_, value) = guard.into_inner().map_err(read_err)?;
                Ok(Some(postcard::from_bytes(&value).map_err(read_err)?))
            }
        }
    }

    /// Remove every entry whose index lies in `range`, in one batch.
    fn remove_range(&self, range: impl RangeBounds<[u8; 8]>) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        for guard in self.log.range(range) {
            let key = guard.key().map_err(read_err)?;
            batch.remove(&self.log, key);
        }
        batch.commit().map_err(write_err)?;
        self.sync()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        // Only entries that continue from the start of the range without a gap: openraft
        // sends what it gets after `prev_log_id` as if it started right after it, so entries
        // from further on (the start was purged meanwhile by a snapshot) would make a
        // malformed append. An empty answer makes it try again (and find the purge).
        let mut expected = match range.start_bound() {
            Bound::Included(i) => Some(*i),
            Bound::Excluded(i) => Some(i + 1),
            Bound::Unbounded => None,
        };
        let mut entries = Vec::new();
        for guard in self.log.range((start, end)) {
            let (_, value) = guard.into_inner().map_err(read_err)?;
            let entry: Entry = postcard::from_bytes(&value).map_err(read_err)?;
            if expected.is_some_and(|i| entry.log_id.index != i) {
                break;
            }
            expected = Some(entry.log_id.index + 1);
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta("purged")?;
        let last_log_id = match self.last_entry()? {
            Some(entry) => Some(entry.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.put_meta("vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own: a lost committed id is re-learned from the leader or from a
        // quorum; it only speeds up re-applying on restart.
        let bytes = postcard::to_stdvec(&committed).map_err(write_err)?;
        self.meta
            .insert(self.meta_key("committed"), bytes)
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = self.db.batch();
        for entry in entries {
            let bytes = postcard::to_stdvec(&entry).map_err(write_err)?;
            batch.insert(&self.log, index_key(entry.log_id.index), bytes);
        }
        let (db, syncer) = (self.db.clone(), self.syncer.clone());
        // The fsync blocks; keep it off the async workers without reordering appends.
        let result = tokio::task::block_in_place(move || -> Result<(), fjall::Error> {
            batch.commit()?;
            syncer.sync(&db)
        });
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(shard = %self.shard, %log_id, "truncating log");
        self.remove_range(index_key(log_id.index)..)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(shard = %self.shard, %log_id, "purging log");
        self.put_meta("purged", &log_id)?;
        self.remove_range(..=index_key(log_id.index))
    }
}
