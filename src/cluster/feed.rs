//! Change feeds: each shard's change events (`storage::events`), read from any of its
//! replicas and handed to this node's subscribers in commit order.
//!
//! A shard's events are the same on every replica at the same positions, so a reader may
//! switch replicas at any point — when the node it reads from dies, when leadership moves —
//! and continue from its position with no gap and no duplicate. Per shard and node one
//! [`Tail`] reads (long polls: this node's replica when it has one, else another node's),
//! and every subscriber of the shard takes its [`Chunk`]s from a broadcast. A subscriber
//! behind the tail — one that started from an older token, or fell more than
//! `FEED_BUFFER_CHUNKS` behind — reads what it misses itself, page by page as it consumes
//! them (`ShardStream`), then takes the broadcast again: a slow subscriber costs reads,
//! never memory. (A client too slow for its own connection is cut by the API layer.)
//!
//! A [`Token`] is where a subscriber stands on each of its shards; it resumes there, on
//! this node or any other.

use super::Cluster;
use crate::error::{Error, Result};
use crate::ids::ShardId;
use crate::limits;
use crate::replication::transport::{Request, Response};
use crate::storage::changeset::ChangeOp;
use crate::storage::events::{Page, Position, RawPart};
use crate::storage::replica::{Rows, Statement};
use rusqlite::types::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::broadcast;

/// Where a subscriber stands on each shard it follows. Printed as `s3:120.4,s5:88`;
/// clients treat it as opaque text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Token(pub BTreeMap<ShardId, Position>);

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (shard, position)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{shard}:{position}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Token {
    type Err = Error;
    fn from_str(text: &str) -> Result<Token> {
        let bad = || {
            Error::sql(
                crate::error::sqlstate::INVALID_PARAMETER_VALUE,
                format!("not a resume token: {text:?}"),
            )
        };
        let mut positions = BTreeMap::new();
        for item in text.split(',').filter(|s| !s.is_empty()) {
            let (shard, position) = item.split_once(':').ok_or_else(bad)?;
            let shard = shard
                .strip_prefix('s')
                .and_then(|n| n.parse().ok())
                .map(ShardId)
                .ok_or_else(bad)?;
            positions.insert(shard, position.parse().map_err(|_| bad())?);
        }
        if positions.is_empty() {
            return Err(bad());
        }
        Ok(Token(positions))
    }
}

/// One changed row, decoded: values in SQLite's stored form, columns as the table had them
/// when the change was made.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub shard: ShardId,
    /// This event's own position; the next one is `ordinal + 1`.
    pub position: Position,
    /// Commit time, µs since the Unix epoch (the leader's clock).
    pub time: u64,
    /// The cross-shard transaction that made it, if any.
    pub txn: Option<u64>,
    /// Which of its entry's transactions made it (0 unless group commit put several in one).
    pub group: u32,
    pub table: Arc<str>,
    pub columns: Arc<[String]>,
    /// The primary key's columns (indexes into `columns`).
    pub key: Arc<[u32]>,
    pub op: ChangeOp,
    /// Empty for an insert.
    pub old: Vec<Value>,
    /// Empty for a delete.
    pub new: Vec<Value>,
}

impl Event {
    /// Where a reader stands once it has this event.
    pub fn next(&self) -> Position {
        Position {
            index: self.position.index,
            ordinal: self.position.ordinal + 1,
        }
    }
}

/// Events of one shard between two positions: everything in `[from, through)` that is at
/// or after `from` (all of it, possibly nothing).
#[derive(Debug, Clone)]
pub struct Chunk {
    pub shard: ShardId,
    pub from: Position,
    pub through: Position,
    pub events: Vec<Event>,
}

/// Why a shard's stream ended.
#[derive(Debug, Clone)]
pub enum Stop {
    /// The events from this position on are no longer kept on any replica.
    Gone { shard: ShardId, floor: u64 },
    /// Reading failed in a way retrying here does not fix.
    Failed(Error),
}

/// A table as one part names it: its name, columns and primary-key column positions.
type PartTable = (Arc<str>, Arc<[String]>, Arc<[u32]>);

/// Decode a page's parts into the events at or after `from`.
pub fn decode(shard: ShardId, parts: &[RawPart], from: Position) -> Result<Vec<Event>> {
    let mut events = Vec::new();
    for part in parts {
        let stored = part.decode()?;
        let tables: Vec<PartTable> = stored
            .tables
            .into_iter()
            .map(|t| (t.name.into(), t.columns.into(), t.key.into()))
            .collect();
        for (i, change) in stored.changes.into_iter().enumerate() {
            let position = Position {
                index: part.index,
                ordinal: part.first + i as u32,
            };
            if position < from {
                continue;
            }
            let (table, columns, key) = tables
                .get(change.table as usize)
                .cloned()
                .ok_or_else(|| Error::Corrupt(format!("{shard}: event names no table")))?;
            events.push(Event {
                shard,
                position,
                time: part.time,
                txn: change.txn,
                group: change.group,
                table,
                columns,
                key,
                op: change.op,
                old: change.old.into_iter().map(Into::into).collect(),
                new: change.new.into_iter().map(Into::into).collect(),
            });
        }
    }
    if crate::planted::active("watch-drop-event") {
        events.retain(|e| !(e.position.ordinal == 0 && e.position.index % 23 == 5));
    }
    if crate::planted::active("watch-reorder") {
        // Adjacent events of different entries trade contents, keeping their positions.
        for i in 1..events.len() {
            let (a, b) = events.split_at_mut(i);
            let (x, y) = (&mut a[i - 1], &mut b[0]);
            if x.position.index % 3 == 1 && x.position.index != y.position.index {
                std::mem::swap(x, y);
                std::mem::swap(&mut x.position, &mut y.position);
            }
        }
    }
    Ok(events)
}

impl Cluster {
    /// `shard`'s events from `after` on, read from this node's replica `g` once it has
    /// applied an entry at or past `after` or `wait` has passed.
    pub async fn events_here(
        &self,
        g: &crate::replication::group::ShardGroup,
        after: Position,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Page> {
        let applied = g
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        if applied < after.index && !wait.is_zero() {
            // Timing out is fine: the page then says nothing new.
            let _ = g
                .raft
                .wait(Some(wait))
                .applied_index_at_least(Some(after.index), "new change events")
                .await;
        }
        g.replica.events(after, max_bytes).await
    }

    /// `shard`'s events from `after` on, from the replica on node `source`.
    async fn events_from(
        &self,
        source: crate::ids::NodeId,
        shard: ShardId,
        after: Position,
        wait: Duration,
    ) -> Result<Page> {
        if source == self.node {
            let g = self
                .group(shard)
                .ok_or_else(|| Error::Unavailable(format!("no replica of {shard} here")))?;
            return self
                .events_here(&g, after, limits::FEED_PAGE_BYTES, wait)
                .await;
        }
        let addr = self
            .addr_of(source)
            .ok_or_else(|| Error::Unavailable(format!("{source} has no known address")))?;
        let answer = self
            .client
            .call(
                &addr,
                Request::Events {
                    shard,
                    after,
                    max_bytes: limits::FEED_PAGE_BYTES as u32,
                    wait_ms: wait.as_millis() as u32,
                },
                wait + limits::CLUSTER_PEER_SILENCE,
            )
            .await
            .map_err(|e| {
                Error::Unavailable(format!("reading {shard}'s events on {source}: {e}"))
            })?;
        match answer {
            Response::Events(page) => page.map_err(Into::into),
            _ => Err(Error::internal("unexpected answer to an events read")),
        }
    }

    /// The nodes to read `shard`'s events from, best first: this node, the leader, the rest.
    fn event_sources(&self, shard: ShardId) -> Vec<crate::ids::NodeId> {
        let mut nodes = self.replicas_of(shard);
        if let Some(g) = self.group(shard) {
            for (n, _) in g.members() {
                if !nodes.contains(&n) {
                    nodes.push(n);
                }
            }
        }
        let leader = self.known_leader(shard);
        nodes.sort_by_key(|n| (*n != self.node, Some(*n) != leader));
        nodes
    }

    /// `shard`'s events from `after` on, from whichever replica answers (each in turn,
    /// starting at `*source`, which is left at the one that answered). A replica that no
    /// longer keeps them is passed over; when none does, [`Stop::Gone`].
    pub async fn read_events(
        &self,
        shard: ShardId,
        after: Position,
        wait: Duration,
        source: &mut usize,
    ) -> std::result::Result<Page, Stop> {
        let deadline = tokio::time::Instant::now() + limits::LEADER_WAIT;
        let mut gone: Option<u64> = None;
        let mut last_error = None;
        loop {
            let nodes = self.event_sources(shard);
            if nodes.is_empty() {
                return Err(Stop::Failed(Error::Unavailable(format!(
                    "{shard} has no replicas"
                ))));
            }
            for _ in 0..nodes.len() {
                let node = nodes[*source % nodes.len()];
                match self.events_from(node, shard, after, wait).await {
                    Ok(page) if after.index <= page.floor => {
                        gone = Some(gone.map_or(page.floor, |g| g.min(page.floor)));
                    }
                    Ok(page) => return Ok(page),
                    Err(e) => last_error = Some(e),
                }
                *source += 1;
            }
            if let (Some(floor), None) = (gone, &last_error) {
                return Err(Stop::Gone { shard, floor });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(match (gone, last_error) {
                    (Some(floor), _) => Stop::Gone { shard, floor },
                    (None, Some(e)) => Stop::Failed(e),
                    (None, None) => Stop::Failed(Error::Unavailable(format!(
                        "no replica of {shard} answered"
                    ))),
                });
            }
            gone = None;
            last_error = None;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A linearizable read on `shard`'s leader with the applied index its rows are as of.
    pub async fn read_at(&self, shard: ShardId, stmt: Statement) -> Result<(Rows, u64)> {
        self.route(
            shard,
            |g| {
                let stmt = stmt.clone();
                async move { g.read_at(stmt).await }
            },
            |addr| {
                let stmt = stmt.clone();
                async move {
                    match self
                        .call(
                            &addr,
                            Request::ReadAt {
                                shard,
                                stmt: stmt.into(),
                            },
                        )
                        .await?
                    {
                        Response::RowsAt(r) => {
                            r.map(|(rows, at)| (rows.into(), at)).map_err(Into::into)
                        }
                        _ => Err(Error::internal("unexpected answer to a read")),
                    }
                }
            },
        )
        .await
    }

    /// Where "now" is on `shard` for a new subscriber: after everything committed before
    /// the call (the leader's read index).
    pub async fn feed_start(&self, shard: ShardId) -> Result<Position> {
        Ok(Position::after_entry(self.read_index(shard).await?))
    }
}

/// What a tail broadcasts.
#[derive(Debug, Clone)]
enum Item {
    Chunk(Arc<Chunk>),
    Stop(Stop),
}

/// One shard's reader on this node, shared by its subscribers; stops when the last one
/// leaves.
struct Tail {
    tx: broadcast::Sender<Item>,
    /// Where the next chunk starts.
    next: Arc<Mutex<Position>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// This node's change feeds: one [`Tail`] per shard someone here subscribes to.
pub struct Feeds {
    cluster: Weak<Cluster>,
    tails: Mutex<HashMap<ShardId, Weak<Tail>>>,
}

impl Feeds {
    pub fn new(cluster: &Arc<Cluster>) -> Feeds {
        Feeds {
            cluster: Arc::downgrade(cluster),
            tails: Mutex::new(HashMap::new()),
        }
    }

    fn cluster(&self) -> Result<Arc<Cluster>> {
        self.cluster
            .upgrade()
            .ok_or_else(|| Error::Unavailable("the node is stopping".into()))
    }

    /// Follow `shard` from `from` on.
    pub fn follow(&self, shard: ShardId, from: Position) -> Result<ShardStream> {
        let cluster = self.cluster()?;
        let mut tails = self.tails.lock().expect("feed lock poisoned");
        let tail = match tails.get(&shard).and_then(Weak::upgrade) {
            // A tail that stopped (its shard's events from there were gone) is not joined.
            Some(t) if !t.task.is_finished() => t,
            _ => {
                let t = Arc::new(start_tail(cluster.clone(), shard, from));
                tails.insert(shard, Arc::downgrade(&t));
                tails.retain(|_, t| t.strong_count() > 0);
                t
            }
        };
        // Subscribing and reading where the tail stands at one moment: every chunk after
        // that position comes through `rx`.
        let next = tail.next.lock().expect("feed lock poisoned");
        let rx = tail.tx.subscribe();
        let catch_up_to = *next;
        drop(next);
        Ok(ShardStream {
            shard,
            cluster,
            tail,
            rx,
            position: from,
            catch_up_to,
            source: 0,
        })
    }
}

fn start_tail(cluster: Arc<Cluster>, shard: ShardId, from: Position) -> Tail {
    let (tx, _) = broadcast::channel(limits::FEED_BUFFER_CHUNKS);
    let next = Arc::new(Mutex::new(from));
    let task = tokio::spawn(run_tail(
        Arc::downgrade(&cluster),
        shard,
        tx.clone(),
        next.clone(),
    ));
    Tail { tx, next, task }
}

async fn run_tail(
    cluster: Weak<Cluster>,
    shard: ShardId,
    tx: broadcast::Sender<Item>,
    next: Arc<Mutex<Position>>,
) {
    let mut source = 0;
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let from = *next.lock().expect("feed lock poisoned");
        let page = c
            .read_events(shard, from, limits::FEED_WAIT, &mut source)
            .await;
        drop(c);
        let item = match page {
            Ok(page) => match decode(shard, &page.parts, from) {
                Ok(events) => Item::Chunk(Arc::new(Chunk {
                    shard,
                    from,
                    through: page.through,
                    events,
                })),
                Err(e) => Item::Stop(Stop::Failed(e)),
            },
            Err(Stop::Failed(e)) => {
                // Nobody could be reached for a while; subscribers keep waiting (their
                // progress stands still) while the tail tries again.
                tracing::debug!(%shard, error = %e, "change feed: no replica answered");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(stop) => Item::Stop(stop),
        };
        let mut position = next.lock().expect("feed lock poisoned");
        let stop = matches!(item, Item::Stop(_));
        if let Item::Chunk(chunk) = &item {
            *position = chunk.through;
        }
        // No receiver is fine: a subscriber may be between leaving and the tail stopping.
        let _ = tx.send(item);
        drop(position);
        if stop {
            return;
        }
    }
}

/// One subscriber's view of one shard: chunks in order, each starting where the last
/// ended.
pub struct ShardStream {
    pub shard: ShardId,
    cluster: Arc<Cluster>,
    tail: Arc<Tail>,
    rx: broadcast::Receiver<Item>,
    /// Everything before this was handed out.
    pub position: Position,
    /// The tail's position when this subscriber joined (or last fell behind it): chunks
    /// before it are read here.
    catch_up_to: Position,
    source: usize,
}

impl ShardStream {
    /// The next chunk (possibly without events: progress only).
    pub async fn next(&mut self) -> std::result::Result<Chunk, Stop> {
        loop {
            if self.position < self.catch_up_to {
                return self.read_behind().await;
            }
            let item = match self.rx.recv().await {
                Ok(item) => item,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Read what the broadcast no longer holds, then join it again.
                    let next = self.tail.next.lock().expect("feed lock poisoned");
                    self.rx = self.tail.tx.subscribe();
                    self.catch_up_to = *next;
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Stop::Failed(Error::Unavailable(
                        "the change feed stopped".into(),
                    )))
                }
            };
            let chunk = match item {
                Item::Chunk(c) => c,
                Item::Stop(stop) => return Err(stop),
            };
            if chunk.through <= self.position {
                continue; // all before where this subscriber stands
            }
            if chunk.from > self.position {
                // Chunks are contiguous and this subscriber joined at or after the tail's
                // position, so this cannot happen; refuse to skip events if it does.
                return Err(Stop::Failed(Error::internal(format!(
                    "{}: change feed gap from {} to {}",
                    self.shard, self.position, chunk.from
                ))));
            }
            let events = chunk
                .events
                .iter()
                .filter(|e| e.position >= self.position)
                .cloned()
                .collect();
            let out = Chunk {
                shard: self.shard,
                from: self.position,
                through: chunk.through,
                events,
            };
            self.position = chunk.through;
            return Ok(out);
        }
    }

    /// A chunk read directly from a replica: where this subscriber is behind the tail.
    async fn read_behind(&mut self) -> std::result::Result<Chunk, Stop> {
        let page = self
            .cluster
            .read_events(
                self.shard,
                self.position,
                limits::FEED_WAIT,
                &mut self.source,
            )
            .await?;
        let events = decode(self.shard, &page.parts, self.position).map_err(Stop::Failed)?;
        let chunk = Chunk {
            shard: self.shard,
            from: self.position,
            through: page.through.max(self.position),
            events,
        };
        self.position = chunk.through;
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_print_and_parse() {
        let token = Token(BTreeMap::from([
            (
                ShardId(3),
                Position {
                    index: 120,
                    ordinal: 4,
                },
            ),
            (ShardId(5), Position::after_entry(87)),
        ]));
        assert_eq!(token.to_string(), "s3:120.4,s5:88");
        assert_eq!("s3:120.4,s5:88".parse::<Token>().unwrap(), token);
        for bad in ["", "x", "s3", "3:1", "s3:x", "s3:1.x"] {
            assert!(bad.parse::<Token>().is_err(), "{bad}");
        }
    }
}
