//! The result cache: SELECT results kept on the node that ran them (`moka`, bounded by
//! bytes, each entry with its TTL), for tables that ask for it (`WITH (cache_ttl = '60s')`,
//! `ALTER TABLE ... SET (cache_ttl = ...)`) or sessions that do (`SET cairn.cache_ttl`).
//!
//! **Guarantee.** A linearizable session never gets a cached result older than a change
//! that committed before its query began. An entry records, per shard it read, the read
//! index it was computed at (it saw every commit up to there). This node follows each such
//! shard's change events (a [`Watch`] on the shard's feed) and keeps, per table, the log
//! index of its last change. A lookup asks each shard for its read index now (what the
//! query would have read), waits until the watch has seen the events up to it, and serves
//! the entry only if no table it read changed after the entry's index. When the watch
//! cannot catch up in time (`RESULT_CACHE_CATCH_UP_WAIT`) the query just runs.
//!
//! Sessions reading at `bounded` staleness get an entry no older than their bound, and at
//! `any` any entry the watches know no change for — without asking the leaders. Entries
//! are always computed at linearizable consistency (a miss costs a linearizable read), so
//! one entry serves every consistency level.
//!
//! Not cached: statements in a transaction block (they hold their shards' writers and see
//! their own writes), and statements calling volatile functions (`now()`, `random()`,
//! sequences, ...), or reading anything but tables (system catalogs).

use super::session::Output;
use crate::catalog::Catalog;
use crate::cluster::feed::ShardStream;
use crate::cluster::Cluster;
use crate::error::Result;
use crate::ids::ShardId;
use crate::limits;
use crate::metrics::CacheMetrics;
use crate::storage::events::Position;
use rusqlite::types::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What an entry is found by: the statement as translated (normalised), its parameters,
/// and the layout of the tables it reads (a schema change makes a new key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    sql: String,
    params: String,
    layout: String,
}

/// A cached result.
struct Entry {
    output: Output,
    /// Per shard read: the read index the result was computed at.
    as_of: BTreeMap<ShardId, u64>,
    /// The tables read, with their shards.
    tables: Vec<(String, Vec<ShardId>)>,
    created: Instant,
    ttl: Duration,
    bytes: u32,
}

/// A statement the cache may answer: what it reads and for how long a result holds.
#[derive(Debug, Clone)]
pub struct Cacheable {
    key: Key,
    pub ttl: Duration,
    tables: Vec<(String, Vec<ShardId>)>,
}

impl Cacheable {
    pub fn shards(&self) -> Vec<ShardId> {
        let mut all: Vec<ShardId> = self
            .tables
            .iter()
            .flat_map(|(_, s)| s.iter().copied())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Functions whose result changes from one call to the next: a statement calling one is
/// never cached.
const VOLATILE: &[&str] = &[
    "now(",
    "random(",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "current_timestamp",
    "current_time",
    "current_date",
    "localtime",
    "gen_random_uuid",
    "nextval",
    "currval",
    "setval",
    "lastval",
    "cairn_clock_us",
    "cairn_kv_version",
    "pg_backend_pid",
    "set_config",
    "current_setting",
    "txid_current",
];

/// Whether (and how long) the cache may answer a SELECT reading `tables` (names as written
/// in the statement), with the session's `cairn.cache_ttl` if set.
pub fn cacheable(
    catalog: &Catalog,
    sql: &str,
    statement_text: &str,
    tables: &[String],
    params: &[Value],
    session_ttl: Option<Duration>,
) -> Option<Cacheable> {
    if tables.is_empty() {
        return None;
    }
    let lower = format!("{} {}", sql.to_lowercase(), statement_text.to_lowercase());
    if VOLATILE.iter().any(|f| lower.contains(f)) {
        return None;
    }
    let mut ttl = session_ttl;
    let mut read = Vec::new();
    let mut layout = String::new();
    for name in tables {
        let table = catalog.table(name)?;
        if crate::storage::events::UNRECORDED_TABLES.contains(&table.name.as_str()) {
            // No events to tell the cache it changed.
            return None;
        }
        if session_ttl.is_none() {
            let t = catalog.cache_ttl(&table.name)?;
            ttl = Some(ttl.map_or(t, |x: Duration| x.min(t)));
        }
        let shards = catalog.shards_of(table).ok()?;
        layout.push_str(&format!("{}:{:?}:{:?};", table.name, shards, table.ddl));
        read.push((table.name.clone(), shards));
    }
    read.sort();
    read.dedup();
    Some(Cacheable {
        key: Key {
            sql: sql.to_string(),
            params: format!("{params:?}"),
            layout,
        },
        ttl: ttl.filter(|t| !t.is_zero())?,
        tables: read,
    })
}

/// What this node knows of one shard's changes: per table, the log index of its last
/// change, from `start` on.
struct Watch {
    start: Position,
    state: Mutex<WatchState>,
    seen: tokio::sync::watch::Sender<Position>,
    dead: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct WatchState {
    changed: HashMap<String, u64>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().expect("watch lock poisoned").take() {
            task.abort();
        }
    }
}

impl Watch {
    /// The last change to `table` this watch saw (0: none since it started).
    fn changed(&self, table: &str) -> u64 {
        let state = self.state.lock().expect("watch lock poisoned");
        state.changed.get(table).copied().unwrap_or(0)
    }

    async fn follow(self: Arc<Watch>, mut stream: ShardStream) {
        loop {
            match stream.next().await {
                Ok(chunk) => {
                    let mut state = self.state.lock().expect("watch lock poisoned");
                    for e in &chunk.events {
                        let last = state.changed.entry(e.table.to_string()).or_default();
                        *last = (*last).max(e.position.index);
                    }
                    drop(state);
                    self.seen.send_replace(chunk.through);
                }
                Err(stop) => {
                    tracing::debug!(shard = %stream.shard, ?stop, "result cache: watch ended");
                    self.dead.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

/// The node's result cache.
pub struct ResultCache {
    entries: moka::sync::Cache<Key, Arc<Entry>>,
    watches: Mutex<HashMap<ShardId, Arc<Watch>>>,
    metrics: CacheMetrics,
}

/// Each entry lives for its own TTL.
struct PerEntry;

impl moka::Expiry<Key, Arc<Entry>> for PerEntry {
    fn expire_after_create(&self, _: &Key, entry: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// A result's size in bytes, roughly.
fn weight(output: &Output) -> usize {
    let values: usize = output
        .rows
        .iter()
        .flatten()
        .map(|v| match v {
            Value::Text(s) => s.len() + 24,
            Value::Blob(b) => b.len() + 24,
            _ => 16,
        })
        .sum();
    256 + values + output.rows.len() * 24
}

impl ResultCache {
    pub fn new(metrics: CacheMetrics) -> ResultCache {
        let (evicted, bytes) = (metrics.evictions.clone(), metrics.bytes.clone());
        let entries = moka::sync::Cache::builder()
            .max_capacity(limits::RESULT_CACHE_BYTES)
            .weigher(|_: &Key, e: &Arc<Entry>| e.bytes)
            .expire_after(PerEntry)
            .eviction_listener(move |_, e: Arc<Entry>, cause| {
                bytes.dec_by(e.bytes as i64);
                if cause == moka::notification::RemovalCause::Size {
                    evicted.inc();
                }
            })
            .build();
        ResultCache {
            entries,
            watches: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The watch of `shard`, started if there is none (or it ended).
    async fn watch(
        &self,
        cluster: &Arc<Cluster>,
        feeds: &crate::cluster::feed::Feeds,
        shard: ShardId,
    ) -> Result<Arc<Watch>> {
        if let Some(w) = self
            .watches
            .lock()
            .expect("watches lock poisoned")
            .get(&shard)
        {
            if !w.dead.load(Ordering::SeqCst) {
                return Ok(w.clone());
            }
        }
        let start = cluster.feed_start(shard).await?;
        let stream = feeds.follow(shard, start)?;
        let watch = Arc::new(Watch {
            start,
            state: Mutex::new(WatchState::default()),
            seen: tokio::sync::watch::Sender::new(start),
            dead: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(watch.clone().follow(stream));
        *watch.task.lock().expect("watch lock poisoned") = Some(task);
        let mut watches = self.watches.lock().expect("watches lock poisoned");
        match watches.get(&shard) {
            // Another lookup started one meanwhile: use it, drop ours.
            Some(w) if !w.dead.load(Ordering::SeqCst) => Ok(w.clone()),
            _ => {
                watches.insert(shard, watch.clone());
                Ok(watch)
            }
        }
    }

    /// Each shard's read index now, once this node's watches have seen every change up to
    /// it; None when they could not catch up in time (then the cache is not used).
    pub async fn now(
        &self,
        cluster: &Arc<Cluster>,
        feeds: &crate::cluster::feed::Feeds,
        shards: &[ShardId],
    ) -> Result<Option<BTreeMap<ShardId, u64>>> {
        let deadline = tokio::time::Instant::now() + limits::RESULT_CACHE_CATCH_UP_WAIT;
        let one = |shard: ShardId| async move {
            let watch = self.watch(cluster, feeds, shard).await?;
            let index = cluster.read_index(shard).await?;
            let target = Position::after_entry(index);
            let mut seen = watch.seen.subscribe();
            let caught_up = tokio::time::timeout_at(deadline, seen.wait_for(|p| *p >= target))
                .await
                .is_ok_and(|r| r.is_ok());
            let fresh = caught_up && !watch.dead.load(Ordering::SeqCst);
            Ok::<_, crate::error::Error>(fresh.then_some((shard, index)))
        };
        let each = futures::future::try_join_all(shards.iter().map(|&s| one(s))).await?;
        Ok(each.into_iter().collect::<Option<BTreeMap<_, _>>>())
    }

    /// The cached result for `c` if it still holds: no table it read changed after it, and
    /// (given a bound) it is at most `max_age` old.
    pub fn get(&self, c: &Cacheable, max_age: Option<Duration>) -> Option<Output> {
        let entry = self.entries.get(&c.key)?;
        let fresh =
            self.still_valid(&entry) && max_age.is_none_or(|m| entry.created.elapsed() <= m);
        if !fresh {
            self.entries.invalidate(&c.key);
            self.metrics.invalidations.inc();
            return None;
        }
        Some(entry.output.clone())
    }

    fn still_valid(&self, entry: &Entry) -> bool {
        let watches = self.watches.lock().expect("watches lock poisoned");
        entry.tables.iter().all(|(table, shards)| {
            shards.iter().all(|shard| {
                let (Some(watch), Some(&as_of)) = (watches.get(shard), entry.as_of.get(shard))
                else {
                    return false;
                };
                // The watch must cover every change after the entry's index.
                !watch.dead.load(Ordering::SeqCst)
                    && watch.start.index <= as_of + 1
                    && watch.changed(table) <= as_of
            })
        })
    }

    /// Keep `output`, computed at (at least) the read indexes `as_of`.
    pub fn put(&self, c: &Cacheable, as_of: BTreeMap<ShardId, u64>, output: &Output) {
        let bytes = weight(output);
        if bytes > limits::RESULT_CACHE_ENTRY_BYTES_MAX {
            return;
        }
        let entry = Arc::new(Entry {
            output: output.clone(),
            as_of,
            tables: c.tables.clone(),
            created: Instant::now(),
            ttl: c.ttl,
            bytes: bytes as u32,
        });
        self.metrics.bytes.inc_by(bytes as i64);
        self.entries.insert(c.key.clone(), entry);
    }

    pub fn hit(&self) {
        self.metrics.hits.inc();
    }

    pub fn miss(&self) {
        self.metrics.misses.inc();
    }

    /// Would `c` be answered from the cache now (as far as this node knows, without asking
    /// the leaders)? For EXPLAIN.
    pub fn holds(&self, c: &Cacheable) -> bool {
        self.entries
            .get(&c.key)
            .is_some_and(|e| self.still_valid(&e))
    }
}
