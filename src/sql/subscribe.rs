//! Subscriptions: one table's committed changes (optionally only rows matching a SQL
//! condition), from now, from a resume token, or after a snapshot of the matching rows.
//!
//! A subscription follows each of the table's shards (`cluster::feed`) and merges them as
//! they come: per shard in commit order, a transaction's changes on a shard together. Its
//! [`Token`] moves as changes are handed out, so resuming from the token of the last change
//! a client received — on any node — gives every later change exactly once.
//!
//! A snapshot reads each shard's matching rows on its leader together with the log index
//! they are as of, and the shard's stream starts right after that index: no change is
//! both in the snapshot and delivered, and none is in neither.

use super::scratch::RowFilter;
use super::translate;
use super::Engine;
use crate::catalog::{Catalog, Table};
use crate::cluster::feed::{Chunk, Event, ShardStream, Stop, Token};
use crate::error::{sqlstate, Error, Result};
use crate::ids::ShardId;
use crate::limits;
use crate::storage::changeset::ChangeOp;
use crate::storage::events::Position;
use crate::storage::replica::{Statement, StatementKind};
use crate::types::PgType;
use futures::stream::{BoxStream, SelectAll, StreamExt};
use rusqlite::types::Value;
use std::sync::Arc;

/// What to follow.
#[derive(Debug, Clone)]
pub struct Request {
    pub table: String,
    /// A SQL condition on the table's row (PostgreSQL syntax, no subqueries).
    pub condition: Option<String>,
    /// Only rows whose `key_column` (text) starts with this (the key-value API's prefix).
    pub key_prefix: Option<(String, String)>,
    /// Resume from this token instead of now.
    pub from: Option<Token>,
    /// First the matching rows as of one point per shard, then every change after it.
    pub snapshot: bool,
}

/// A table's columns with their declared types.
pub type Columns = Arc<[(String, PgType)]>;

/// One change as a subscriber sees it.
#[derive(Debug, Clone)]
pub struct Change {
    pub shard: ShardId,
    pub table: Arc<str>,
    pub op: ChangeOp,
    pub columns: Columns,
    /// The primary key's columns (indexes into `columns`).
    pub key: Arc<[u32]>,
    /// Empty for an insert.
    pub old: Vec<Value>,
    /// Empty for a delete.
    pub new: Vec<Value>,
    /// The transaction: the same text on every change it made, on every shard.
    pub txn: String,
    /// Commit time, µs since the Unix epoch.
    pub time: u64,
    /// Where the subscription stands once this change is delivered.
    pub token: Token,
}

/// The rows a snapshot starts with.
pub struct Snapshot {
    pub columns: Columns,
    pub rows: Vec<Vec<Value>>,
}

/// Why a subscription ended; the API layer turns each into an error code.
#[derive(Debug, Clone)]
pub enum End {
    /// The token asks for changes no replica keeps any more: resubscribe with a snapshot.
    Expired(String),
    /// The table was dropped or laid out anew; its old positions mean nothing now.
    TableChanged(String),
    Failed(Error),
}

pub struct Subscription {
    engine: Arc<Engine>,
    table: Table,
    shards: Vec<ShardId>,
    streams: SelectAll<BoxStream<'static, std::result::Result<Chunk, Stop>>>,
    token: Token,
    filter: Option<RowFilter>,
    key_prefix: Option<(usize, String)>,
    /// The column list events last carried, with its types.
    typed: Option<(Arc<[String]>, Columns)>,
    catalog: tokio::sync::watch::Receiver<Arc<Catalog>>,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::sql(sqlstate::INVALID_PARAMETER_VALUE, message)
}

/// The SQLite query `SELECT * FROM <table> WHERE <condition>`, translated as a client's
/// query would be. The condition must be one expression over the row alone.
fn row_query(table: &Table, condition: Option<&str>, catalog: &Catalog) -> Result<String> {
    let quoted = format!("\"{}\"", table.name.replace('"', "\"\""));
    let Some(condition) = condition.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(format!("SELECT * FROM {quoted}"));
    };
    let expr = translate::parse_condition(condition)?;
    let stmts = translate::parse(&format!("SELECT * FROM {quoted} WHERE {expr}"))?;
    let [stmt] = <[_; 1]>::try_from(stmts)
        .map_err(|_| invalid("a subscription's condition must be one expression"))?;
    let translated = translate::translate(stmt, catalog, &[])?;
    if !matches!(translated.kind, translate::Kind::Read) {
        return Err(invalid(
            "a subscription's condition must be a row condition",
        ));
    }
    Ok(translated.sql)
}

impl Subscription {
    /// Open a subscription: where each shard starts, and the snapshot if asked for.
    pub async fn open(
        engine: &Arc<Engine>,
        request: Request,
    ) -> Result<(Subscription, Option<Snapshot>)> {
        let cluster = &engine.cluster;
        let catalog = cluster.catalog();
        let table = catalog.table(&request.table).cloned().ok_or_else(|| {
            Error::sql(
                sqlstate::UNDEFINED_TABLE,
                format!("relation \"{}\" does not exist", request.table),
            )
        })?;
        if crate::storage::events::UNRECORDED_TABLES.contains(&table.name.as_str()) {
            return Err(Error::sql(
                sqlstate::WRONG_OBJECT_TYPE,
                format!(
                    "changes of {} are not kept; subscribe to files with {{\"files\": prefix}}",
                    table.name
                ),
            ));
        }
        let shards = catalog.shards_of(&table)?;
        let query = row_query(&table, request.condition.as_deref(), &catalog)?;
        let filter = match request.condition.as_deref().map(str::trim) {
            Some(c) if !c.is_empty() => Some(RowFilter::new(&table, &query)?),
            _ => None,
        };
        let key_prefix = match &request.key_prefix {
            None => None,
            Some((column, prefix)) => Some((
                table
                    .columns
                    .iter()
                    .position(|c| &c.name == column)
                    .ok_or_else(|| Error::internal(format!("{} has no {column}", table.name)))?,
                prefix.clone(),
            )),
        };
        let columns: Columns = table
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.ty))
            .collect::<Vec<_>>()
            .into();

        let mut start = Token::default();
        let mut snapshot = None;
        if request.snapshot {
            if request.from.is_some() {
                return Err(invalid(
                    "a subscription starts from a token or with a snapshot, not both",
                ));
            }
            let reads = shards.iter().map(|&shard| {
                let stmt = Statement {
                    sql: query.clone(),
                    params: Vec::new(),
                    kind: StatementKind::Dml,
                    refs: Vec::new(),
                    cancel: Default::default(),
                };
                async move { (shard, cluster.read_at(shard, stmt).await) }
            });
            let mut rows = Vec::new();
            for (shard, read) in futures::future::join_all(reads).await {
                let (r, applied) = read?;
                start.0.insert(shard, Position::after_entry(applied));
                rows.extend(r.rows.into_iter().filter(|row| match &key_prefix {
                    Some((i, prefix)) => has_prefix(&row[*i], prefix),
                    None => true,
                }));
                if rows.len() > limits::SUBSCRIPTION_SNAPSHOT_ROWS_MAX {
                    return Err(Error::sql(
                        sqlstate::PROGRAM_LIMIT_EXCEEDED,
                        format!(
                            "the snapshot has more than {} rows; subscribe with a narrower \
                             condition",
                            limits::SUBSCRIPTION_SNAPSHOT_ROWS_MAX
                        ),
                    ));
                }
            }
            snapshot = Some(Snapshot {
                columns: columns.clone(),
                rows,
            });
        } else if let Some(token) = request.from {
            let mut given: Vec<ShardId> = token.0.keys().copied().collect();
            given.sort();
            let mut ours = shards.clone();
            ours.sort();
            if given != ours {
                return Err(invalid(format!(
                    "the token is not for {}'s shards ({}); was the table recreated? \
                     Resubscribe with a snapshot",
                    table.name,
                    ours.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            start = token;
        } else {
            let starts = shards
                .iter()
                .map(|&shard| async move { (shard, cluster.feed_start(shard).await) });
            for (shard, position) in futures::future::join_all(starts).await {
                start.0.insert(shard, position?);
            }
        }

        let mut streams = SelectAll::new();
        for (&shard, &from) in &start.0 {
            let stream = engine.feeds.follow(shard, from)?;
            streams.push(
                futures::stream::unfold(stream, |mut s: ShardStream| async move {
                    let next = s.next().await;
                    Some((next, s))
                })
                .boxed(),
            );
        }
        Ok((
            Subscription {
                engine: engine.clone(),
                shards,
                streams,
                token: start,
                filter,
                key_prefix,
                typed: None,
                catalog: cluster.catalog_watch(),
                table,
            },
            snapshot,
        ))
    }

    /// Where the subscription stands: every change before it has been handed out.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The next changes (possibly none: the token moved without a matching change).
    pub async fn next(&mut self) -> std::result::Result<Vec<Change>, End> {
        let chunk = loop {
            tokio::select! {
                item = self.streams.next() => match item {
                    Some(Ok(chunk)) => break chunk,
                    Some(Err(Stop::Gone { shard, floor })) => {
                        return Err(End::Expired(format!(
                            "changes of {} on {shard} before entry {} are no longer kept \
                             (the token is older than the change window); resubscribe with \
                             a snapshot",
                            self.table.name,
                            floor + 1
                        )))
                    }
                    Some(Err(Stop::Failed(e))) => return Err(End::Failed(e)),
                    None => return Err(End::Failed(Error::internal("no shards to follow"))),
                },
                changed = self.catalog.changed() => {
                    if changed.is_err() {
                        return Err(End::Failed(Error::Unavailable("the node is stopping".into())));
                    }
                    self.check_layout()?;
                }
            }
        };
        let mut changes = Vec::new();
        for event in &chunk.events {
            if *event.table != *self.table.name || !self.wanted(event).map_err(End::Failed)? {
                continue;
            }
            self.token.0.insert(chunk.shard, event.next());
            changes.push(self.change(event));
        }
        self.token.0.insert(chunk.shard, chunk.through);
        Ok(changes)
    }

    /// The table must still be the one subscribed to, on the same shards.
    fn check_layout(&mut self) -> std::result::Result<(), End> {
        let catalog = self.catalog.borrow_and_update().clone();
        let shards = catalog
            .table(&self.table.name)
            .and_then(|t| catalog.shards_of(t).ok());
        match shards {
            Some(s) if s == self.shards => Ok(()),
            Some(_) => Err(End::TableChanged(format!(
                "{} was laid out on other shards; resubscribe with a snapshot",
                self.table.name
            ))),
            None => Err(End::TableChanged(format!(
                "{} was dropped",
                self.table.name
            ))),
        }
    }

    fn wanted(&self, event: &Event) -> Result<bool> {
        let rows = [&event.old, &event.new];
        let rows = rows.iter().filter(|r| !r.is_empty());
        if let Some((i, prefix)) = &self.key_prefix {
            let column = &self.table.columns[*i].name;
            let Some(at) = event.columns.iter().position(|c| c == column) else {
                return Ok(false);
            };
            return Ok(rows.clone().any(|r| has_prefix(&r[at], prefix)));
        }
        match &self.filter {
            None => Ok(true),
            Some(filter) => {
                for row in rows {
                    if filter.matches(&event.columns, row)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }

    fn change(&mut self, event: &Event) -> Change {
        let columns = match &self.typed {
            Some((names, typed)) if *names == event.columns => typed.clone(),
            _ => {
                let catalog = self.engine.cluster.catalog();
                let table = catalog.table(&self.table.name).unwrap_or(&self.table);
                let typed: Columns = event
                    .columns
                    .iter()
                    .map(|name| {
                        let ty = table.column(name).map_or(PgType::Text, |c| c.ty);
                        (name.clone(), ty)
                    })
                    .collect::<Vec<_>>()
                    .into();
                self.typed = Some((event.columns.clone(), typed.clone()));
                typed
            }
        };
        Change {
            shard: event.shard,
            table: event.table.clone(),
            op: event.op,
            columns,
            key: event.key.clone(),
            old: event.old.clone(),
            new: event.new.clone(),
            txn: match event.txn {
                Some(id) => format!("t{id}"),
                None if event.group == 0 => format!("{}/{}", event.shard, event.position.index),
                None => format!("{}/{}.{}", event.shard, event.position.index, event.group),
            },
            time: event.time,
            token: self.token.clone(),
        }
    }
}

fn has_prefix(value: &Value, prefix: &str) -> bool {
    match value {
        Value::Text(s) => s.starts_with(prefix),
        _ => false,
    }
}
