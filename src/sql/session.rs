//! A client's session: settings, the open transaction, and statement execution.
//!
//! Transactions: `BEGIN` only marks the session; each shard's writer is taken by the first
//! statement that touches the shard (drivers often send BEGIN eagerly) and held until
//! COMMIT/ROLLBACK, so a transaction is serializable on each shard it touches. COMMIT
//! commits each shard in turn (atomic per shard; across shards see README, Isolation). An
//! error inside a transaction fails it: further statements get 25P02 until ROLLBACK (COMMIT
//! then rolls back), as in PostgreSQL. DDL inside a transaction runs through the
//! transaction's shard leases and changes the catalog at COMMIT; until then only this
//! session sees it.

use super::ddl::{self, Planned};
use super::plan::{self, Plan};
use super::scratch;
use super::translate::{self, Kind, SavepointOp, Translated};
use crate::catalog::{meta, Catalog, Change, Job};
use crate::cluster::{Cluster, Lease, MetaTxn};
use crate::error::{sqlstate, Error, Result};
use crate::ids::ShardId;
use crate::limits;
use crate::replication::group::ReadConsistency;
use crate::storage::cancel::{self, Cancel};
use crate::storage::replica::{ResultColumn, Rows, Statement, StatementKind};
use crate::types::PgType;
pub use crate::units::duration as parse_duration;
use rusqlite::types::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

/// What every session of a node shares.
pub struct Engine {
    pub cluster: Arc<Cluster>,
    pub metrics: crate::metrics::Metrics,
    describer: scratch::Describer,
    /// Serial values reserved from cluster-wide sequences: table → (next, end); and
    /// positions of sequences (`seq:<name>`, see `sequences`).
    pub(super) sequences: tokio::sync::Mutex<HashMap<String, (i64, i64)>>,
    /// The node's catalog with PostgreSQL's system tables added (`system::augment`), for
    /// the catalog it was made from.
    with_system: std::sync::Mutex<Option<(Arc<Catalog>, Arc<Catalog>)>>,
    /// This node's change feeds (subscriptions).
    pub feeds: crate::cluster::feed::Feeds,
    /// This node's result cache.
    pub cache: super::cache::ResultCache,
    /// How files are kept (`sql::files`).
    pub files: super::files::Settings,
    /// The `cairn dev` supervisor that started this node (`api::dev`), if one did.
    pub dev_supervisor: Option<std::net::SocketAddr>,
}

impl Engine {
    pub fn new(
        cluster: Arc<Cluster>,
        files: super::files::Settings,
        dev_supervisor: Option<std::net::SocketAddr>,
    ) -> Arc<Engine> {
        let metrics = crate::metrics::Metrics::new(&cluster);
        Arc::new(Engine {
            files,
            dev_supervisor,
            cache: super::cache::ResultCache::new(metrics.cache.clone()),
            metrics,
            feeds: crate::cluster::feed::Feeds::new(&cluster),
            cluster,
            describer: scratch::Describer::default(),
            sequences: tokio::sync::Mutex::new(HashMap::new()),
            with_system: std::sync::Mutex::new(None),
        })
    }

    /// `base` with the system tables added (cached until the catalog changes).
    fn with_system_tables(&self, base: Arc<Catalog>) -> Arc<Catalog> {
        let mut cached = self.with_system.lock().expect("system catalog lock");
        if let Some((from, augmented)) = &*cached {
            if Arc::ptr_eq(from, &base) {
                return augmented.clone();
            }
        }
        let augmented = Arc::new(super::system::augment(&base));
        *cached = Some((base, augmented.clone()));
        augmented
    }

    pub fn session(self: &Arc<Self>) -> Session {
        Session {
            engine: self.clone(),
            settings: BTreeMap::new(),
            txn: None,
            copy: None,
            cancel: Cancel::default(),
            in_flight: false,
            cache_fill: false,
            sequence_values: Default::default(),
            user: None,
        }
    }

    /// `n` values for the serial column of `table`, from the node's reserved block (a meta
    /// write reserves a new block when it runs out).
    pub async fn serial_values(&self, table: &str, n: usize) -> Result<Vec<i64>> {
        let mut cache = self.sequences.lock().await;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let entry = cache.get_mut(table).filter(|(next, end)| next < end);
            match entry {
                Some((next, _)) => {
                    out.push(*next);
                    *next += 1;
                }
                None => {
                    let want = limits::SEQUENCE_BLOCK.max((n - out.len()) as i64);
                    let mt = MetaTxn::begin(&self.cluster).await?;
                    let first = mt
                        .next(&format!("serial:{}", table.to_lowercase()), want)
                        .await;
                    let first = match first {
                        Ok(f) => f,
                        Err(e) => {
                            mt.rollback().await;
                            return Err(e);
                        }
                    };
                    mt.commit().await?;
                    cache.insert(table.to_string(), (first, first + want));
                }
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub ty: PgType,
    /// A numeric column's display scale, where the statement fixes one.
    pub scale: Option<u32>,
    /// The declared modifier of the column the values come from (`varchar(20)`,
    /// `numeric(10,2)`), for clients that read it from the row description.
    pub typmod: Option<crate::types::Typmod>,
}

impl Field {
    /// A value of this column in PostgreSQL's text form (None for NULL).
    pub fn text(&self, value: &Value) -> Result<Option<String>> {
        let scaled = match (self.scale, self.ty) {
            (Some(scale), PgType::Numeric) => {
                crate::types::numeric_with_scale(value, scale).map(Value::Text)
            }
            _ => None,
        };
        let bytes = crate::types::encode(
            scaled.as_ref().unwrap_or(value),
            self.ty,
            crate::types::Format::Text,
        )?;
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }
}

/// How a statement changed the session's transaction state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnEvent {
    None,
    Started,
    Ended,
}

/// A statement's result, independent of the wire format.
#[derive(Debug, Clone)]
pub struct Output {
    /// Result columns; empty for commands that return no rows.
    pub fields: Vec<Field>,
    pub rows: Vec<Vec<Value>>,
    /// The command tag: `SELECT 3`, `INSERT 0 1`, `CREATE TABLE`, ...
    pub tag: String,
    pub rows_affected: u64,
    pub returns_rows: bool,
    pub txn: TxnEvent,
    /// A notice for the client (e.g. "there is no transaction in progress").
    pub notice: Option<String>,
    /// `COPY ... TO STDOUT`: the columns, and each row as one chunk of copy data.
    pub copy_out: Option<(usize, Vec<Vec<u8>>)>,
    /// `COPY ... FROM STDIN` started: the client sends rows of this many columns next
    /// ([`Session::copy_data`], then [`Session::copy_done`] or [`Session::copy_fail`]).
    pub copy_in: Option<(usize, bool)>,
}

impl Output {
    fn command(tag: &str, txn: TxnEvent) -> Output {
        Output {
            fields: Vec::new(),
            rows: Vec::new(),
            tag: tag.to_string(),
            rows_affected: 0,
            returns_rows: false,
            txn,
            notice: None,
            copy_in: None,
            copy_out: None,
        }
    }
}

/// A `COPY FROM STDIN` in progress.
struct CopyState {
    table: crate::catalog::Table,
    columns: Vec<(String, PgType)>,
    parser: super::copy::Parser,
    /// Rows parsed and not yet inserted.
    rows: Vec<Vec<Value>>,
    inserted: u64,
    /// The first error; later data is read and dropped until the client ends the copy.
    error: Option<Error>,
}

/// A translated statement, kept by the extended protocol between Parse and Execute.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub translated: Translated,
}

impl Prepared {
    pub fn param_types(&self) -> &[PgType] {
        &self.translated.param_types
    }

    pub fn kind(&self) -> &Kind {
        &self.translated.kind
    }
}

struct OpenTxn {
    /// The shards this transaction holds, by id.
    leases: BTreeMap<ShardId, Lease>,
    failed: bool,
    /// The catalog as this transaction sees it once its own DDL changed it: the node's
    /// catalog it was built from, and that plus `changes`.
    catalog: std::sync::Mutex<Option<(Arc<Catalog>, Arc<Catalog>)>>,
    /// Catalog changes of the transaction's DDL, made at COMMIT.
    changes: Vec<Change>,
    /// Each table the transaction's DDL changes, with its committed definition when the
    /// transaction first changed it: COMMIT refuses (40001) if another schema change got
    /// there first, instead of overwriting it.
    bases: BTreeMap<String, Option<String>>,
    /// When it began (µs since the epoch): older transactions win lock conflicts.
    priority: u64,
    /// Savepoints in force, oldest first. Every shard the transaction holds has them all
    /// (a shard taken later is given them on the spot), so ROLLBACK TO undoes everywhere.
    savepoints: Vec<String>,
    /// Opened by the session for one statement or script (not by BEGIN).
    implicit: bool,
}

impl OpenTxn {
    /// BEGIN: ended by the client.
    fn explicit() -> OpenTxn {
        OpenTxn::new(false)
    }

    /// Opened by the session around one statement or script, and ended by it.
    fn implicit() -> OpenTxn {
        OpenTxn::new(true)
    }

    fn new(implicit: bool) -> OpenTxn {
        let micros = crate::storage::functions::now_micros().max(1);
        OpenTxn {
            leases: BTreeMap::new(),
            failed: false,
            catalog: std::sync::Mutex::new(None),
            changes: Vec::new(),
            bases: BTreeMap::new(),
            // Low bits random: two transactions starting in one microsecond still differ.
            priority: (micros << 8) | (rand::random::<u8>() as u64),
            savepoints: Vec::new(),
            implicit,
        }
    }
}

pub struct Session {
    engine: Arc<Engine>,
    settings: BTreeMap<String, String>,
    txn: Option<OpenTxn>,
    copy: Option<CopyState>,
    /// The running statement's cancel token (see [`Session::new_statement`]).
    cancel: Cancel,
    /// A statement is running. Still set when the next one starts, the last was abandoned
    /// half-way (its future dropped): see [`Session::recover_abandoned`].
    in_flight: bool,
    /// The running statement fills the result cache: it reads at linearizable consistency
    /// whatever the session's setting (cleared when any statement starts, so an abandoned
    /// one cannot leave it set).
    cache_fill: bool,
    /// This session's last sequence values (currval, lastval).
    sequence_values: super::sequences::SessionValues,
    /// The user it logged in as (none: the cluster has no users, nothing is checked).
    user: Option<String>,
}

fn failed_txn() -> Error {
    Error::sql(
        sqlstate::IN_FAILED_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

fn merge(results: Vec<Rows>) -> Rows {
    let mut out = Rows::default();
    for (i, r) in results.into_iter().enumerate() {
        if i == 0 {
            out.columns = r.columns;
        }
        out.rows.extend(r.rows);
        out.changes += r.changes;
    }
    out
}

/// Settings every PostgreSQL driver or tool may ask for with SHOW.
fn default_setting(name: &str) -> Option<String> {
    // `SHOW TRANSACTION ISOLATION LEVEL` and `SHOW TIME ZONE` name settings in words.
    let name = match name {
        "transaction isolation level" => "transaction_isolation",
        "time zone" => "timezone",
        n => n,
    };
    let cairn = match name {
        "cairn.read_consistency" => Some("linearizable"),
        "cairn.max_staleness" => Some("500ms"),
        _ => None,
    };
    cairn
        .or_else(|| {
            super::system::SETTINGS
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        })
        .map(str::to_string)
}

impl Session {
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    pub fn transaction_failed(&self) -> bool {
        self.txn.as_ref().is_some_and(|t| t.failed)
    }

    pub fn setting(&self, name: &str) -> Option<String> {
        self.settings
            .get(name)
            .cloned()
            .or_else(|| default_setting(name))
    }

    fn read_consistency(&self) -> ReadConsistency {
        if self.cache_fill {
            return ReadConsistency::Linearizable;
        }
        match self.setting("cairn.read_consistency").as_deref() {
            Some("any") => ReadConsistency::Any,
            Some("bounded") => {
                let bound = self
                    .setting("cairn.max_staleness")
                    .and_then(|s| parse_duration(&s));
                ReadConsistency::Bounded(bound.unwrap_or(std::time::Duration::from_millis(500)))
            }
            _ => ReadConsistency::Linearizable,
        }
    }

    /// The catalog as this session sees it: the node's, with its transaction's own DDL
    /// applied on top.
    fn catalog(&self) -> Arc<Catalog> {
        let base = self
            .engine
            .with_system_tables(self.engine.cluster.catalog());
        let Some(txn) = self.txn.as_ref().filter(|t| !t.changes.is_empty()) else {
            return base;
        };
        let mut cached = txn.catalog.lock().expect("catalog cache lock");
        if let Some((from, view)) = &*cached {
            if Arc::ptr_eq(from, &base) {
                return view.clone();
            }
        }
        let mut view = (*base).clone();
        for change in &txn.changes {
            view.apply(change);
        }
        let view = Arc::new(view);
        *cached = Some((base, view.clone()));
        view
    }

    /// Translate against the session's catalog. A statement naming a table this node has
    /// not heard of yet (created through another node a moment ago) waits for the catalog
    /// to catch up once, then tries again.
    async fn translate(
        &self,
        stmt: sqlparser::ast::Statement,
        given: &[Option<PgType>],
    ) -> Result<Translated> {
        self.engine.cluster.serving()?;
        let mut stmt = stmt;
        super::system::rewrite(&mut stmt);
        if let Some(stand_in) = super::system::empty_stand_in(&stmt) {
            stmt = stand_in;
        }
        let mut t = translate::translate(stmt.clone(), &self.catalog(), given)?;
        if matches!(t.kind, Kind::Ddl(_)) && t.sql.is_empty() {
            // Its text, for the node's event once it is done.
            t.sql = stmt.to_string();
        }
        if matches!(t.kind, Kind::Read | Kind::Write) && self.names_unknown_table(&t) {
            self.engine.cluster.sync(ShardId::META).await?;
            return translate::translate(stmt, &self.catalog(), given);
        }
        Ok(t)
    }

    fn names_unknown_table(&self, t: &Translated) -> bool {
        let Some(stmt) = &t.stmt else {
            return false;
        };
        let catalog = self.catalog();
        let ctes = plan::cte_names(stmt);
        let mut unknown = false;
        let _ = sqlparser::ast::visit_relations(stmt.as_ref(), |n| {
            let name = translate::object_name(n);
            if catalog.table(&name).is_none()
                && !ctes.contains(&name.to_lowercase())
                && !super::srf::is_table_function(&name)
            {
                unknown = true;
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        unknown
    }

    /// Translate one statement for later execution (the extended protocol's Parse).
    /// `None` for an empty statement.
    pub async fn prepare(&self, sql: &str, given: &[Option<PgType>]) -> Result<Option<Prepared>> {
        let mut stmts = translate::parse(sql)?;
        if stmts.len() > 1 {
            return Err(Error::sql(
                sqlstate::SYNTAX_ERROR,
                "cannot insert multiple commands into a prepared statement",
            ));
        }
        let Some(stmt) = stmts.pop() else {
            return Ok(None);
        };
        Ok(Some(Prepared {
            translated: self.translate(stmt, given).await?,
        }))
    }

    /// The result columns a prepared statement will return (the extended protocol's Describe).
    pub async fn describe(&mut self, prepared: &Prepared) -> Result<Vec<Field>> {
        let t = &prepared.translated;
        match &t.kind {
            Kind::Read | Kind::Write => {}
            Kind::Show { name } => {
                return Ok(vec![Field {
                    name: name.clone(),
                    ty: PgType::Text,
                    scale: None,
                    typmod: None,
                }])
            }
            Kind::Explain(_) => {
                return Ok(vec![Field {
                    name: "QUERY PLAN".into(),
                    ty: PgType::Text,
                    scale: None,
                    typmod: None,
                }])
            }
            _ => return Ok(Vec::new()),
        }
        let catalog = self.catalog();
        let sql = t.sql.clone();
        let engine = self.engine.clone();
        let rows = tokio::task::spawn_blocking(move || engine.describer.describe(&catalog, &sql))
            .await
            .map_err(Error::internal)??;
        Ok(self.fields(&rows.columns, t))
    }

    fn fields(&self, columns: &[ResultColumn], t: &Translated) -> Vec<Field> {
        let catalog = self.catalog();
        columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let origin = c
                    .origin
                    .as_ref()
                    .and_then(|(table, column)| catalog.table(table)?.column(column));
                let ty = origin
                    .map(|c| c.ty)
                    .or_else(|| t.expr_types.get(i).copied().flatten())
                    .or_else(|| c.decl_type.as_deref().and_then(PgType::parse_declared))
                    .unwrap_or(PgType::Text);
                let scale = match origin {
                    Some(c) => c.typmod.and_then(|m| m.scale()),
                    None => t.expr_scales.get(i).copied().flatten(),
                };
                Field {
                    name: c.name.clone(),
                    ty,
                    scale,
                    typmod: origin.and_then(|c| c.typmod),
                }
            })
            .collect()
    }

    /// A fresh cancel token for the next statement: cancelling it stops that statement if
    /// it has not taken effect (SQLSTATE 57014), else the statement finishes and answers its
    /// outcome. A token from an earlier statement cancels nothing later.
    pub fn new_statement(&mut self) -> Cancel {
        self.cancel = Cancel::default();
        self.cancel.clone()
    }

    /// Leave the session consistent if the last statement was abandoned half-way (its
    /// future dropped: nothing else can tell): an implicit transaction it had opened is
    /// rolled back, an explicit one is failed (its statements' effects are unknown, so it
    /// may not commit).
    async fn recover_abandoned(&mut self) {
        self.cache_fill = false;
        if !std::mem::replace(&mut self.in_flight, true) {
            return;
        }
        tracing::debug!("a statement was abandoned half-way; recovering the session");
        match self.txn.take() {
            Some(txn) if txn.implicit => self.abandon(txn).await,
            Some(mut txn) => {
                txn.failed = true;
                self.txn = Some(txn);
            }
            None => {}
        }
    }

    /// Execute a prepared statement with parameter values already decoded.
    pub async fn execute(&mut self, prepared: &Prepared, params: Vec<Value>) -> Result<Output> {
        self.recover_abandoned().await;
        let result = self.execute_one(prepared, params).await;
        self.in_flight = false;
        result
    }

    async fn execute_one(&mut self, prepared: &Prepared, params: Vec<Value>) -> Result<Output> {
        let t = &prepared.translated;
        if !matches!(t.kind, Kind::Commit | Kind::Rollback) {
            self.engine.cluster.serving()?;
        }
        if self.transaction_failed()
            && !matches!(
                t.kind,
                Kind::Commit | Kind::Rollback | Kind::Savepoint(SavepointOp::RollbackTo, _)
            )
        {
            return Err(failed_txn());
        }
        self.permitted(&t.kind, &t.tag)?;
        let started = Instant::now();
        let result = self.execute_inner(t, params).await;
        let kind = match &t.kind {
            Kind::Read | Kind::Explain(_) => "read",
            Kind::Write => "write",
            Kind::Ddl(_) => "ddl",
            _ => "other",
        };
        self.engine
            .metrics
            .statement(kind, result.is_ok(), started.elapsed());
        // Schema changes go into the node's events (the dashboard's Events page); inside a
        // transaction they are not made until COMMIT, which may not come: those are left out.
        if kind == "ddl" && result.is_ok() && self.txn.is_none() {
            let text = if t.sql.is_empty() { &t.tag } else { &t.sql };
            let mut line: String = text.chars().take(limits::DDL_EVENT_CHARS).collect();
            // (Within a multi-statement query, an implicit transaction, it is not recorded.)
            if line.len() < text.len() {
                line.push('…');
            }
            self.engine.cluster.journal.record("ddl", line);
        }
        if result.is_err() {
            if let Some(txn) = self.txn.as_mut() {
                txn.failed = true;
            }
        }
        result
    }

    /// Run `stmt` on `shard`: through the transaction's lease on it (taken now if needed),
    /// else as an autocommit read or write.
    async fn on_shard(&mut self, shard: ShardId, stmt: Statement, read: bool) -> Result<Rows> {
        let cluster = self.engine.cluster.clone();
        match self.txn.as_mut() {
            Some(txn) => {
                // Holding another shard already, it must not wait for an older transaction.
                let priority = Some(crate::replication::writer::Priority {
                    started: txn.priority,
                    holding: !txn.leases.is_empty(),
                });
                self.cancel.check()?;
                if let std::collections::btree_map::Entry::Vacant(slot) = txn.leases.entry(shard) {
                    // Waiting for the writer can end early: an unused lease is rolled back.
                    let lease = tokio::select! {
                        lease = cluster.begin_in(shard, priority) => lease?,
                        _ = self.cancel.cancelled() => return Err(cancel::cancelled()),
                    };
                    for name in &txn.savepoints {
                        let sql = savepoint_sql(SavepointOp::Set, name);
                        if let Err(e) = cluster.exec(shard, &lease, savepoint_stmt(sql)).await {
                            cluster.rollback(lease).await;
                            return Err(e);
                        }
                    }
                    slot.insert(lease);
                }
                let lease = txn.leases.get(&shard).expect("lease taken above");
                cluster.exec(shard, lease, stmt).await
            }
            None if read => cluster.read(shard, stmt, self.read_consistency()).await,
            None => cluster.write(shard, stmt).await,
        }
    }

    /// Run `sql` on each of `shards`: in parallel for reads outside a transaction, else in
    /// shard order (so transactions take shards in one order).
    async fn on_shards(
        &mut self,
        shards: &[ShardId],
        sql: &str,
        params: &[Value],
        read: bool,
    ) -> Result<Vec<Rows>> {
        self.on_shards_with(shards, sql, params, read, &[]).await
    }

    /// [`Session::on_shards`], reading the reference-table shards `refs` where it runs.
    async fn on_shards_with(
        &mut self,
        shards: &[ShardId],
        sql: &str,
        params: &[Value],
        read: bool,
        refs: &[ShardId],
    ) -> Result<Vec<Rows>> {
        let token = self.cancel.clone();
        let stmt = |sql: &str| Statement {
            sql: sql.to_string(),
            params: params.to_vec(),
            kind: StatementKind::Dml,
            refs: refs.to_vec(),
            cancel: token.clone(),
        };
        if read && self.txn.is_none() && shards.len() > 1 {
            let cluster = self.engine.cluster.clone();
            let consistency = self.read_consistency();
            let calls = shards
                .iter()
                .map(|s| cluster.read(*s, stmt(sql), consistency));
            return futures::future::try_join_all(calls).await;
        }
        let mut sorted = shards.to_vec();
        sorted.sort();
        let mut out = Vec::with_capacity(sorted.len());
        for s in sorted {
            out.push(self.on_shard(s, stmt(sql), read).await?);
        }
        Ok(out)
    }

    fn run_plan<'a>(
        &'a mut self,
        plan: &'a Plan,
        params: &'a [Value],
    ) -> futures::future::BoxFuture<'a, Result<Rows>> {
        Box::pin(async move {
            match plan {
                Plan::Local { sql } => {
                    scratch::run_alone(sql.clone(), params.to_vec(), &self.cancel).await
                }
                Plan::System { tables, sql, .. } => {
                    scratch::run_system(
                        self.catalog(),
                        tables.clone(),
                        sql.clone(),
                        params.to_vec(),
                        &self.cancel,
                    )
                    .await
                }
                Plan::Shards {
                    shards,
                    sql,
                    read,
                    refs,
                    ..
                } => Ok(merge(
                    self.on_shards_with(shards, sql, params, *read, refs)
                        .await?,
                )),
                Plan::Gather { pulls, sql } => {
                    let mut pulled = Vec::with_capacity(pulls.len());
                    let mut total = 0usize;
                    for p in pulls {
                        let rows = merge(self.on_shards(&p.shards, &p.sql, params, true).await?);
                        total += rows.rows.len();
                        scratch::check_intermediate(total)?;
                        pulled.push(scratch::Pulled {
                            table: p.table.clone(),
                            rows: rows.rows,
                        });
                    }
                    scratch::run_over(pulled, sql.clone(), params.to_vec(), &self.cancel).await
                }
                Plan::TwoPhase {
                    shards,
                    shard_sql,
                    merge_sql,
                    columns,
                    refs,
                } => {
                    let partials = merge(
                        self.on_shards_with(shards, shard_sql, params, true, refs)
                            .await?,
                    );
                    scratch::check_intermediate(partials.rows.len())?;
                    let table = crate::catalog::Table {
                        ddl: vec![format!(
                            "CREATE TABLE _cairn_partials ({})",
                            columns.join(", ")
                        )],
                        ..crate::catalog::Table::scratch("_cairn_partials".into(), Vec::new())
                    };
                    let pulled = vec![scratch::Pulled {
                        table,
                        rows: partials.rows,
                    }];
                    scratch::run_over(pulled, merge_sql.clone(), params.to_vec(), &self.cancel)
                        .await
                }
                Plan::Insert { parts } => {
                    let mut results = Vec::with_capacity(parts.len());
                    for (shard, sql) in parts {
                        let stmt = Statement {
                            sql: sql.clone(),
                            params: params.to_vec(),
                            kind: StatementKind::Dml,
                            refs: Vec::new(),
                            cancel: self.cancel.clone(),
                        };
                        results.push(self.on_shard(*shard, stmt, false).await?);
                    }
                    Ok(merge(results))
                }
                Plan::Move(m) => self.move_rows(m, params).await,
                Plan::InsertSelect(is) => {
                    let source = self.run_plan(&is.source, params).await?;
                    self.insert_rows(&is.table, &is.columns, &is.suffix, source.rows)
                        .await
                }
            }
        })
    }

    /// An UPDATE that moves rows between shards, inside the session's transaction or an
    /// implicit one (so nothing is deleted unless its new copy was inserted).
    async fn move_rows(&mut self, m: &plan::Move, params: &[Value]) -> Result<Rows> {
        let implicit = self.txn.is_none();
        if implicit {
            self.txn = Some(OpenTxn::implicit());
        }
        let result = async {
            let deleted = merge(
                self.on_shards(&m.shards, &m.delete_sql, params, false)
                    .await?,
            );
            let count = deleted.rows.len() as u64;
            let pulled = scratch::Pulled {
                table: m.table.clone(),
                rows: deleted.rows,
            };
            let (mut output, rows) = scratch::modify_and_read(
                pulled,
                m.update_sql.clone(),
                params.to_vec(),
                &self.cancel,
            )
            .await?;
            let columns: Vec<String> = m.table.columns.iter().map(|c| c.name.clone()).collect();
            self.insert_rows(&m.table, &columns, "", rows).await?;
            output.changes = count;
            Ok(output)
        }
        .await;
        if implicit {
            let txn = self.txn.take().expect("opened above");
            match &result {
                Ok(_) => self.commit_implicit(txn).await?,
                Err(_) => self.abandon(txn).await,
            }
        }
        result
    }

    /// Insert `rows` (values for `is.columns`) into `is.table`, each on its shard.
    async fn insert_rows(
        &mut self,
        table: &crate::catalog::Table,
        columns: &[String],
        suffix: &str,
        rows: Vec<Vec<Value>>,
    ) -> Result<Rows> {
        let catalog = self.catalog();
        let mut columns = columns.to_vec();
        let key = table.distribution_column().map(str::to_string);
        let mut rows = rows;
        let mut position = key
            .as_ref()
            .and_then(|k| columns.iter().position(|c| c.eq_ignore_ascii_case(k)));
        if let (Some(k), None) = (&key, position) {
            // The query does not give the key: a serial column's values come from its
            // sequence.
            if table
                .serial
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case(k))
            {
                let values = self.engine.serial_values(&table.name, rows.len()).await?;
                for (row, v) in rows.iter_mut().zip(values) {
                    row.push(Value::Integer(v));
                }
                columns.push(k.clone());
                position = Some(columns.len() - 1);
            }
        }
        let key_type = key.as_ref().and_then(|k| table.column(k)).map(|c| c.ty);
        let mut by_shard: BTreeMap<ShardId, Vec<Vec<Value>>> = BTreeMap::new();
        for row in rows {
            if row.len() != columns.len() {
                return Err(Error::sql(
                    sqlstate::SYNTAX_ERROR,
                    "INSERT has more target columns than expressions",
                ));
            }
            let value = match (position, key_type) {
                (Some(p), Some(ty)) => crate::types::coerce(row[p].clone(), ty)?,
                _ => Value::Null,
            };
            let shard = catalog.shard_for(table, &value)?;
            by_shard.entry(shard).or_default().push(row);
        }
        let width = columns.len().max(1);
        let chunk = (limits::SQL_VARIABLES_MAX / width).max(1);
        let names: Vec<String> = columns
            .iter()
            .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
            .collect();
        let mut results = Vec::new();
        for (shard, rows) in by_shard {
            for part in rows.chunks(chunk) {
                let mut n = 0;
                let tuples: Vec<String> = part
                    .iter()
                    .map(|r| {
                        let marks: Vec<String> = r
                            .iter()
                            .map(|_| {
                                n += 1;
                                format!("?{n}")
                            })
                            .collect();
                        format!("({})", marks.join(", "))
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO \"{}\" ({}) VALUES {}{}",
                    table.name.replace('"', "\"\""),
                    names.join(", "),
                    tuples.join(", "),
                    suffix
                );
                let stmt = Statement {
                    sql,
                    params: part.iter().flatten().cloned().collect(),
                    kind: StatementKind::Dml,
                    refs: Vec::new(),
                    cancel: self.cancel.clone(),
                };
                results.push(self.on_shard(shard, stmt, false).await?);
            }
        }
        Ok(merge(results))
    }

    /// From now on, statements run as `user`, with the roles the catalog gives it at each.
    pub fn log_in(&mut self, user: &str) {
        self.user = Some(user.to_lowercase());
    }

    /// Refuse (42501) a statement the logged-in user's roles do not allow.
    fn permitted(&self, kind: &Kind, tag: &str) -> Result<()> {
        use crate::auth::Need;
        fn need(kind: &Kind) -> Option<Need> {
            match kind {
                Kind::Read | Kind::Explain(_) | Kind::Show { .. } | Kind::CopyOut(_) => {
                    Some(Need::Read)
                }
                Kind::Write | Kind::CopyIn(_) => Some(Need::Write),
                Kind::Ddl(_) | Kind::Users(_) => Some(Need::Admin),
                Kind::Several(parts) => parts.iter().filter_map(|p| need(&p.kind)).max(),
                Kind::Begin
                | Kind::Commit
                | Kind::Rollback
                | Kind::Set { .. }
                | Kind::Noop
                | Kind::Savepoint(..) => None,
            }
        }
        let Some(user) = &self.user else {
            return Ok(());
        };
        let Some(need) = need(kind) else {
            return Ok(());
        };
        let roles = self
            .engine
            .cluster
            .catalog()
            .users
            .get(user)
            .map(|u| u.roles.clone())
            .unwrap_or_default();
        crate::auth::Grants {
            user: Some(user.clone()),
            roles,
        }
        .check(need, tag)
    }

    /// `CREATE|ALTER|DROP ROLE`, `GRANT|REVOKE role`: written to the catalog at once.
    /// In one meta transaction, which holds the meta writer from the check to the commit:
    /// two admins revoking each other at once cannot both pass the "an admin remains" check.
    async fn users(&mut self, action: &translate::UserAction, tag: &str) -> Result<Output> {
        if self.txn.is_some() {
            return Err(Error::sql(
                sqlstate::ACTIVE_SQL_TRANSACTION,
                format!("{tag} cannot run inside a transaction block"),
            ));
        }
        let cluster = self.engine.cluster.clone();
        let mt = MetaTxn::begin(&cluster).await?;
        let planned = self.user_changes(action, &mt.catalog());
        let (writes, notice) = match planned {
            Ok(p) => p,
            Err(e) => {
                mt.rollback().await;
                return Err(e);
            }
        };
        for write in writes {
            if let Err(e) = mt.exec(write).await {
                mt.rollback().await;
                return Err(e);
            }
        }
        // Commit also catches this node's catalog up before the statement answers.
        mt.commit().await?;
        Ok(Output {
            notice,
            ..Output::command(tag, TxnEvent::None)
        })
    }

    /// The catalog writes `action` makes on `catalog`, and a notice if it makes none.
    fn user_changes(
        &self,
        action: &translate::UserAction,
        catalog: &crate::catalog::Catalog,
    ) -> Result<(Vec<crate::storage::replica::Statement>, Option<String>)> {
        use crate::catalog::meta;
        use translate::UserAction;
        let known = |name: &str| {
            catalog.users.get(name).cloned().ok_or_else(|| {
                Error::sql(
                    sqlstate::UNDEFINED_OBJECT,
                    format!("role \"{name}\" does not exist"),
                )
            })
        };
        // The users once this statement is done, and the writes that make them so.
        let mut after = catalog.users.clone();
        let mut writes = Vec::new();
        match action {
            UserAction::Create {
                name,
                password,
                roles,
                if_not_exists,
            } => {
                if catalog.users.contains_key(name) {
                    if *if_not_exists {
                        let notice = format!("role \"{name}\" already exists, skipping");
                        return Ok((Vec::new(), Some(notice)));
                    }
                    return Err(Error::sql(
                        sqlstate::DUPLICATE_OBJECT,
                        format!("role \"{name}\" already exists"),
                    ));
                }
                let Some(password) = password else {
                    return Err(Error::sql(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("role \"{name}\" needs a PASSWORD to log in"),
                    ));
                };
                let roles = roles
                    .iter()
                    .map(|r| crate::auth::valid_role(r))
                    .collect::<Result<_>>()?;
                let user = crate::auth::user(name, password, roles)?;
                writes.push(meta::put_user(&user)?);
                after.insert(user.name.clone(), user);
            }
            UserAction::Password { name, password } => {
                let old = known(name)?;
                let new = crate::auth::user(name, password, old.roles)?;
                writes.push(meta::put_user(&new)?);
                after.insert(new.name.clone(), new);
            }
            UserAction::Drop { names, if_exists } => {
                for name in names {
                    if self.user.as_deref() == Some(name.as_str()) {
                        return Err(Error::sql(
                            sqlstate::OBJECT_IN_USE,
                            "current user cannot be dropped",
                        ));
                    }
                    match known(name) {
                        Ok(_) => {
                            writes.push(meta::delete_user(name));
                            after.remove(name);
                        }
                        Err(_) if *if_exists => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            UserAction::Grant {
                roles,
                users,
                revoke,
            } => {
                let roles: Vec<String> = roles
                    .iter()
                    .map(|r| crate::auth::valid_role(r))
                    .collect::<Result<_>>()?;
                for name in users {
                    let mut user = known(name)?;
                    for role in &roles {
                        if *revoke {
                            user.roles.remove(role);
                        } else {
                            user.roles.insert(role.clone());
                        }
                    }
                    writes.push(meta::put_user(&user)?);
                    after.insert(user.name.clone(), user);
                }
            }
        }
        // Logins stay possible for someone who can manage them: never no admin among users,
        // and never no users once there were some (that would open the cluster to anyone).
        let admins = after.values().filter(|u| u.roles.contains("admin")).count();
        if (!after.is_empty() || !catalog.users.is_empty()) && admins == 0 {
            return Err(Error::sql(
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                if after.is_empty() {
                    "that would leave the cluster without users, open to anyone who connects; \
                     keep at least one user with the admin role"
                } else {
                    "that would leave no user with the admin role, and nobody able to change \
                     users or the schema again; the first user needs it too (... IN ROLE admin)"
                },
            ));
        }
        Ok((writes, None))
    }

    async fn execute_inner(&mut self, t: &Translated, params: Vec<Value>) -> Result<Output> {
        match &t.kind {
            Kind::Users(action) => self.users(action, &t.tag).await,
            Kind::Begin => {
                let mut out = Output::command("BEGIN", TxnEvent::Started);
                if self.txn.is_some() {
                    out.notice = Some("there is already a transaction in progress".into());
                } else {
                    self.txn = Some(OpenTxn::explicit());
                }
                Ok(out)
            }
            Kind::Commit => match self.txn.take() {
                None => Ok(Output {
                    notice: Some("there is no transaction in progress".into()),
                    ..Output::command("COMMIT", TxnEvent::Ended)
                }),
                Some(txn) if txn.failed => {
                    self.abandon(txn).await;
                    Ok(Output::command("ROLLBACK", TxnEvent::Ended))
                }
                Some(txn) => {
                    self.commit(txn).await?;
                    Ok(Output::command("COMMIT", TxnEvent::Ended))
                }
            },
            Kind::Rollback => {
                let mut out = Output::command("ROLLBACK", TxnEvent::Ended);
                match self.txn.take() {
                    None => out.notice = Some("there is no transaction in progress".into()),
                    Some(txn) => self.abandon(txn).await,
                }
                Ok(out)
            }
            Kind::Set { name, value } => {
                let name = name.to_lowercase();
                let valid = match name.as_str() {
                    "cairn.read_consistency" => {
                        ["linearizable", "bounded", "any"].contains(&value.to_lowercase().as_str())
                    }
                    "cairn.max_staleness" => parse_duration(value).is_some(),
                    "cairn.cache_ttl" => translate::parse_cache_ttl(value).is_ok(),
                    _ => true,
                };
                if !valid {
                    return Err(Error::sql(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!(
                            "invalid value for {name}: \"{value}\" (read consistency: linearizable, \
                             bounded or any; staleness: e.g. 500ms or 2s; cache_ttl: e.g. 5s, or off)"
                        ),
                    ));
                }
                self.settings.insert(name, value.to_lowercase());
                Ok(Output::command("SET", TxnEvent::None))
            }
            Kind::Show { name } => {
                // `SHOW a.b` arrives as the words `a b`; `SHOW TIME ZONE` as `time zone`.
                let lower = name.to_lowercase();
                let value = self
                    .setting(&lower)
                    .or_else(|| self.setting(&lower.replace(' ', ".")))
                    .ok_or_else(|| {
                        Error::sql(
                            sqlstate::UNDEFINED_OBJECT,
                            format!("unrecognized configuration parameter \"{name}\""),
                        )
                    })?;
                Ok(Output {
                    fields: vec![Field {
                        name: name.clone(),
                        ty: PgType::Text,
                        scale: None,
                        typmod: None,
                    }],
                    rows: vec![vec![Value::Text(value)]],
                    returns_rows: true,
                    ..Output::command("SHOW", TxnEvent::None)
                })
            }
            Kind::Noop => Ok(Output::command(&t.tag, TxnEvent::None)),
            Kind::Savepoint(op, name) => {
                self.savepoint(*op, name).await?;
                Ok(Output::command(&t.tag, TxnEvent::None))
            }
            Kind::Several(parts) => {
                let implicit = self.txn.is_none();
                if implicit {
                    self.txn = Some(OpenTxn::implicit());
                }
                let mut result = Ok(());
                for part in parts {
                    if let Err(e) = Box::pin(self.execute_inner(part, params.clone())).await {
                        result = Err(e);
                        break;
                    }
                }
                if implicit {
                    let txn = self.txn.take().expect("opened above");
                    match &result {
                        Ok(()) => self.commit_implicit(txn).await?,
                        Err(_) => self.abandon(txn).await,
                    }
                }
                result.map(|()| Output::command(&t.tag, TxnEvent::None))
            }
            Kind::Ddl(action) => self.ddl(action, &t.tag).await,
            Kind::CopyIn(spec) => {
                let catalog = self.catalog();
                let table = catalog.table(&spec.table).cloned().ok_or_else(|| {
                    Error::sql(
                        sqlstate::UNDEFINED_TABLE,
                        format!("relation \"{}\" does not exist", spec.table),
                    )
                })?;
                let names: Vec<String> = if spec.columns.is_empty() {
                    table.columns.iter().map(|c| c.name.clone()).collect()
                } else {
                    spec.columns.clone()
                };
                let mut columns = Vec::with_capacity(names.len());
                for n in names {
                    let ty = table.column(&n).map(|c| c.ty).ok_or_else(|| {
                        Error::sql(
                            sqlstate::UNDEFINED_COLUMN,
                            format!(
                                "column \"{n}\" of relation \"{}\" does not exist",
                                table.name
                            ),
                        )
                    })?;
                    columns.push((n, ty));
                }
                let width = columns.len();
                self.copy = Some(CopyState {
                    table,
                    columns,
                    parser: super::copy::Parser::new(spec.options.clone()),
                    rows: Vec::new(),
                    inserted: 0,
                    error: None,
                });
                Ok(Output {
                    copy_in: Some((width, spec.options.format == super::copy::Format::Binary)),
                    ..Output::command("COPY", TxnEvent::None)
                })
            }
            Kind::CopyOut(spec) => {
                let out = Box::pin(self.execute_inner(&spec.query, params)).await?;
                let mut data = Vec::with_capacity(out.rows.len() + 1);
                for row in &out.rows {
                    let mut fields = Vec::with_capacity(row.len());
                    for (value, field) in row.iter().zip(&out.fields) {
                        fields.push(field.text(value)?);
                    }
                    data.push(super::copy::write_row(&fields, &spec.options));
                }
                if spec.options.header {
                    // In the first row's chunk: the protocol layer counts chunks as rows.
                    let names: Vec<Option<String>> =
                        out.fields.iter().map(|f| Some(f.name.clone())).collect();
                    let mut header = super::copy::write_row(&names, &spec.options);
                    match data.first_mut() {
                        Some(first) => {
                            header.append(first);
                            *first = header;
                        }
                        None => data.push(header),
                    }
                }
                Ok(Output {
                    rows_affected: out.rows.len() as u64,
                    copy_out: Some((out.fields.len(), data)),
                    ..Output::command(&format!("COPY {}", out.rows.len()), TxnEvent::None)
                })
            }
            Kind::Explain(inner) => {
                let catalog = self.catalog();
                let plan =
                    plan::plan(&self.engine, &catalog, inner, &params, self.txn.is_none()).await?;
                let mut lines = plan.explain();
                if inner.kind == Kind::Read && self.txn.is_none() {
                    if let Some(c) = self.cacheable(inner, &params) {
                        let held = if self.engine.cache.holds(&c) {
                            "a cached result is held; it answers unless a change committed since"
                        } else {
                            "no cached result: it runs, then its result is kept"
                        };
                        lines.push(format!("Result cache: on (ttl {:?}); {held}", c.ttl));
                    }
                }
                let rows: Vec<Vec<Value>> =
                    lines.into_iter().map(|l| vec![Value::Text(l)]).collect();
                Ok(Output {
                    fields: vec![Field {
                        name: "QUERY PLAN".into(),
                        ty: PgType::Text,
                        scale: None,
                        typmod: None,
                    }],
                    rows_affected: rows.len() as u64,
                    rows,
                    returns_rows: true,
                    ..Output::command("EXPLAIN", TxnEvent::None)
                })
            }
            Kind::Read | Kind::Write => {
                let catalog = self.catalog();
                let evaluated;
                let t = if super::sequences::mentioned(t) {
                    evaluated = super::sequences::evaluate(
                        &self.engine,
                        &catalog,
                        &mut self.sequence_values,
                        t,
                    )
                    .await?;
                    &evaluated
                } else {
                    t
                };
                if t.kind == Kind::Read && self.txn.is_none() {
                    if let Some(c) = self.cacheable(t, &params) {
                        return self.read_cached(t, &c, params).await;
                    }
                }
                let plan =
                    plan::plan(&self.engine, &catalog, t, &params, self.txn.is_none()).await?;
                // A statement writing several shards is atomic: an implicit transaction.
                let several = match &plan {
                    Plan::Shards {
                        shards,
                        read: false,
                        ..
                    } => shards.len() > 1,
                    Plan::Insert { parts } => parts.len() > 1,
                    Plan::InsertSelect(_) => true,
                    _ => false,
                };
                if several && self.txn.is_none() {
                    // Lost a lock conflict (wait-die) before anything was prepared: nothing
                    // happened, so retry — keeping the first attempt's age, so the statement
                    // soon is the oldest and waits instead of dying again.
                    let started = Instant::now();
                    let mut priority = None;
                    let mut pause = std::time::Duration::from_millis(1);
                    loop {
                        let mut txn = OpenTxn::implicit();
                        txn.priority = *priority.get_or_insert(txn.priority);
                        self.txn = Some(txn);
                        let result = self.run_plan(&plan, &params).await;
                        let txn = self.txn.take().expect("opened above");
                        match result {
                            Ok(rows) => {
                                self.commit_implicit(txn).await?;
                                return Ok(self.output(t, rows));
                            }
                            Err(e)
                                if e.code() == sqlstate::SERIALIZATION_FAILURE
                                    && started.elapsed() < limits::IMPLICIT_TXN_RETRY_FOR =>
                            {
                                self.abandon(txn).await;
                                let jitter = rand::random::<u64>() % (pause.as_micros() as u64 + 1);
                                tokio::time::sleep(std::time::Duration::from_micros(jitter)).await;
                                pause = (pause * 2).min(std::time::Duration::from_millis(50));
                            }
                            Err(e) => {
                                self.abandon(txn).await;
                                return Err(e);
                            }
                        }
                    }
                }
                let rows = self.run_plan(&plan, &params).await?;
                Ok(self.output(t, rows))
            }
        }
    }

    /// Whether the result cache may answer this SELECT (see `cache::cacheable`).
    fn cacheable(&self, t: &Translated, params: &[Value]) -> Option<super::cache::Cacheable> {
        let stmt = t.stmt.as_ref()?;
        let session_ttl = match self.settings.get("cairn.cache_ttl") {
            Some(v) => translate::parse_cache_ttl(v).ok().flatten(),
            None => None,
        };
        let catalog = self.engine.cluster.catalog();
        // Quick way out: no table caches and the session does not ask.
        if session_ttl.is_none() && !catalog.objects.keys().any(|k| k.starts_with("cache_ttl:")) {
            return None;
        }
        let ctes = plan::cte_names(stmt);
        let mut tables = Vec::new();
        let _ = sqlparser::ast::visit_relations(stmt.as_ref(), |n| {
            let name = translate::object_name(n);
            if !ctes.contains(&name.to_lowercase()) {
                tables.push(name);
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        super::cache::cacheable(
            &catalog,
            &t.sql,
            &stmt.to_string(),
            &tables,
            params,
            session_ttl,
        )
    }

    /// A cacheable SELECT: from the cache when an entry holds for this session's read
    /// consistency, else run (at linearizable consistency) and kept.
    async fn read_cached(
        &mut self,
        t: &Translated,
        c: &super::cache::Cacheable,
        params: Vec<Value>,
    ) -> Result<Output> {
        let engine = self.engine.clone();
        let cache = &engine.cache;
        let shards = c.shards();
        let max_age = match self.read_consistency() {
            ReadConsistency::Linearizable => None,
            ReadConsistency::Bounded(bound) => Some(Some(bound)),
            ReadConsistency::Any => Some(None),
        };
        // Bounded and any: an entry the watches know no change for, without a round trip.
        if let Some(age) = max_age {
            if let Some(out) = cache.get(c, age) {
                cache.hit();
                return Ok(out);
            }
        }
        // Where every shard stands now (nothing committed before this query is missed).
        let now = cache
            .now(&engine.cluster, &engine.feeds, &shards)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, "result cache: not used");
                None
            });
        if max_age.is_none() && now.is_some() {
            if let Some(out) = cache.get(c, None) {
                cache.hit();
                return Ok(out);
            }
        }
        cache.miss();
        // Computed at linearizable consistency, so the entry is at least as new as `now`.
        self.cache_fill = true;
        let catalog = self.catalog();
        let result = match plan::plan(&self.engine, &catalog, t, &params, true).await {
            Ok(plan) => self.run_plan(&plan, &params).await,
            Err(e) => Err(e),
        };
        self.cache_fill = false;
        let out = self.output(t, result?);
        if let Some(now) = now {
            cache.put(c, now, &out);
        }
        Ok(out)
    }

    /// SAVEPOINT, ROLLBACK TO, RELEASE: on every shard the transaction holds, and on those
    /// it takes later (see `OpenTxn::savepoints`).
    async fn savepoint(&mut self, op: SavepointOp, name: &str) -> Result<()> {
        let cluster = self.engine.cluster.clone();
        let Some(txn) = self.txn.as_mut() else {
            let verb = match op {
                SavepointOp::Set => "SAVEPOINT",
                SavepointOp::RollbackTo => "ROLLBACK TO SAVEPOINT",
                SavepointOp::Release => "RELEASE SAVEPOINT",
            };
            return Err(Error::sql(
                sqlstate::NO_ACTIVE_SQL_TRANSACTION,
                format!("{verb} can only be used in transaction blocks"),
            ));
        };
        let found = txn.savepoints.iter().rposition(|s| s == name);
        let keep = match (op, found) {
            (SavepointOp::Set, _) => txn.savepoints.len(),
            (_, None) => {
                return Err(Error::sql(
                    sqlstate::INVALID_SAVEPOINT_SPECIFICATION,
                    format!("savepoint \"{name}\" does not exist"),
                ))
            }
            (SavepointOp::RollbackTo, Some(i)) => i + 1,
            (SavepointOp::Release, Some(i)) => i,
        };
        if op == SavepointOp::RollbackTo && !txn.changes.is_empty() {
            return Err(Error::unsupported(
                "ROLLBACK TO SAVEPOINT in a transaction that changed the schema",
            ));
        }
        let sql = savepoint_sql(op, name);
        for (shard, lease) in &txn.leases {
            cluster
                .exec(*shard, lease, savepoint_stmt(sql.clone()))
                .await?;
        }
        txn.savepoints.truncate(keep);
        match op {
            SavepointOp::Set => txn.savepoints.push(name.to_string()),
            SavepointOp::RollbackTo => txn.failed = false,
            SavepointOp::Release => {}
        }
        Ok(())
    }

    /// Commit every shard the transaction holds; with DDL, its catalog changes commit in
    /// the same two-phase commit, as one more part on the meta shard.
    async fn commit(&mut self, txn: OpenTxn) -> Result<()> {
        let cluster = self.engine.cluster.clone();
        let mut leases: Vec<(ShardId, Lease)> = txn.leases.into_iter().collect();
        if txn.changes.is_empty() {
            if leases.len() <= 1 {
                // One shard: its own commit is atomic (one Raft proposal).
                for (_, lease) in leases {
                    cluster.commit(lease).await?;
                }
                return Ok(());
            }
            return commit_across(&cluster, leases).await;
        }
        let catalog_part = async {
            let lease = cluster.begin(ShardId::META).await?;
            let written = async {
                cluster.sync(ShardId::META).await?;
                let current = cluster.catalog();
                for (table, base) in &txn.bases {
                    let now = current.any_table(table).map(serde_json::to_string).transpose().map_err(Error::internal)?;
                    let busy = current.jobs.values().any(|j| j.table.eq_ignore_ascii_case(table));
                    if now != *base || busy {
                        return Err(Error::Retry(format!(
                            "table \"{table}\" was changed by another schema change during this transaction; retry it"
                        )));
                    }
                }
                for change in &txn.changes {
                    // A table put on a colocation group retired meanwhile (its last table
                    // dropped by a job) would have no shards.
                    if let Change::PutTable(t) = change {
                        if !current.colocations.contains_key(&t.colocation) {
                            return Err(Error::Retry(format!(
                                "the shards chosen for table \"{}\" were retired during this transaction; retry it",
                                t.name
                            )));
                        }
                    }
                    cluster.exec(ShardId::META, &lease, meta::change(change)?).await?;
                }
                for stmt in cluster.retirements(&txn.changes) {
                    cluster.exec(ShardId::META, &lease, stmt).await?;
                }
                Ok(())
            }
            .await;
            match written {
                Ok(()) => Ok(lease),
                Err(e) => {
                    cluster.rollback(lease).await;
                    Err(e)
                }
            }
        }
        .await;
        match catalog_part {
            Ok(lease) => leases.insert(0, (ShardId::META, lease)),
            Err(e) => {
                for (_, lease) in leases {
                    cluster.rollback(lease).await;
                }
                return Err(e);
            }
        }
        commit_across(&cluster, leases).await?;
        // Committed: what follows only catches this node up, and must not turn the
        // outcome into an error.
        if let Err(e) = cluster.sync(ShardId::META).await {
            tracing::warn!(error = %e, "catalog not caught up after a transaction's DDL");
        }
        cluster.spread_catalog().await;
        Ok(())
    }

    /// Commit a transaction the session opened around a statement — unless the statement
    /// was cancelled meanwhile: then nothing of it is applied (57014).
    async fn commit_implicit(&mut self, txn: OpenTxn) -> Result<()> {
        if self.cancel.is_cancelled() {
            self.abandon(txn).await;
            return Err(cancel::cancelled());
        }
        self.commit(txn).await
    }

    async fn abandon(&mut self, txn: OpenTxn) {
        for (_, lease) in txn.leases {
            self.engine.cluster.rollback(lease).await;
        }
    }

    /// A schema change: a DDL job outside a transaction block; inside one, the shards'
    /// parts through the transaction's leases and the catalog change at COMMIT.
    async fn ddl(&mut self, action: &translate::DdlAction, tag: &str) -> Result<Output> {
        use translate::DdlAction as A;
        let names: Vec<&str> = match action {
            A::CreateTable(ct) => vec![ct.name.as_str()],
            A::DropTables { names, .. } => names.iter().map(String::as_str).collect(),
            A::CreateIndex { table, .. }
            | A::AlterTable { table, .. }
            | A::Rebuild { table, .. }
            | A::Distribute { table, .. } => vec![table.as_str()],
            A::DropIndexes { .. }
            | A::CreateView { .. }
            | A::CreateSequence { .. }
            | A::DropObjects { .. }
            | A::SetCacheTtl { .. }
            | A::SetReplicationFactor { .. }
            | A::Comment { .. } => Vec::new(),
        };
        // A view's columns: its query described now, against this session's catalog.
        let described;
        let action = match action {
            A::CreateView {
                name,
                or_replace,
                query,
                names,
                ..
            } => {
                let prepared = self
                    .prepare(query, &[])
                    .await?
                    .ok_or_else(|| Error::sql(sqlstate::SYNTAX_ERROR, "a view needs a query"))?;
                let fields = self.describe(&prepared).await?;
                if names.len() > fields.len() {
                    return Err(Error::sql(
                        sqlstate::SYNTAX_ERROR,
                        "CREATE VIEW specifies more column names than columns",
                    ));
                }
                let columns = fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| crate::catalog::Column {
                        name: names.get(i).cloned().unwrap_or_else(|| f.name.clone()),
                        ty: f.ty,
                        typmod: f.typmod,
                    })
                    .collect();
                described = A::CreateView {
                    name: name.clone(),
                    or_replace: *or_replace,
                    query: query.clone(),
                    names: names.clone(),
                    columns,
                    query_columns: fields.iter().map(|f| f.name.clone()).collect(),
                };
                &described
            }
            other => other,
        };
        if let Some(name) = names.iter().find(|n| super::system::is_system_table(n)) {
            return Err(Error::sql(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("permission denied: \"{name}\" is a system catalog"),
            ));
        }
        // Schema changes of one table run one at a time: a job planned while another is
        // running on the table would finish with a catalog entry that undoes the other's.
        let deadline = Instant::now() + limits::DDL_QUEUE_WAIT;
        loop {
            match self.ddl_attempt(action, tag).await? {
                Ok(output) => return Ok(output),
                Err(busy) => {
                    // Nothing was recorded yet: a cancel stops the wait.
                    if self.cancel.is_cancelled() {
                        return Err(cancel::cancelled());
                    }
                    if Instant::now() >= deadline {
                        return Err(Error::sql(
                            sqlstate::OBJECT_IN_USE,
                            format!(
                                "another schema change of table \"{busy}\" has been running for over {:?}; try again later",
                                limits::DDL_QUEUE_WAIT
                            ),
                        ));
                    }
                    self.engine.cluster.wait_for_jobs_on(&busy, deadline).await;
                }
            }
        }
    }

    /// One try at a schema change; `Ok(Err(table))` if a job on the table is running (the
    /// caller waits for it and plans again).
    async fn ddl_attempt(
        &mut self,
        action: &translate::DdlAction,
        tag: &str,
    ) -> Result<std::result::Result<Output, String>> {
        let cluster = self.engine.cluster.clone();
        let in_txn = self.txn.is_some();
        let mt = MetaTxn::begin(&cluster).await?;
        let catalog = if in_txn { self.catalog() } else { mt.catalog() };
        let planned = match ddl::plan(&mt, &catalog, action).await {
            Ok(p) => p,
            Err(e) => {
                mt.rollback().await;
                return Err(e);
            }
        };
        let mut notice = None;
        let mut notices: Vec<String> = Vec::new();
        let mut jobs = Vec::new();
        let mut new_shards = Vec::new();
        let mut plans = Vec::new();
        let running = mt.catalog();
        let written = async {
            for p in planned {
                match p {
                    Planned::Skip(n) => notice = Some(n),
                    Planned::Do(plan) => {
                        let busy = running
                            .jobs
                            .values()
                            .any(|j| j.table.eq_ignore_ascii_case(&plan.table));
                        if busy && !in_txn {
                            return Ok(Some(plan.table.clone()));
                        }
                        notices.extend(plan.notice.clone());
                        for stmt in &plan.setup {
                            mt.exec(stmt.clone()).await?;
                        }
                        new_shards.extend(plan.new_shards.iter().copied());
                        if !in_txn {
                            for change in &plan.hide {
                                mt.exec(meta::change(change)?).await?;
                            }
                            let id = mt.next("_jobs", 1).await? as u64;
                            let job = Job {
                                id,
                                table: plan.table.clone(),
                                steps: plan.steps.clone(),
                                finish: plan.finish.clone(),
                                undo: plan.undo.clone(),
                                abort: plan.abort.clone(),
                            };
                            mt.exec(meta::put_job(&job)?).await?;
                            jobs.push(job);
                        }
                        plans.push(plan);
                    }
                }
            }
            Ok::<Option<String>, Error>(None)
        }
        .await;
        match written {
            Err(e) => {
                mt.rollback().await;
                return Err(e);
            }
            Ok(Some(busy)) => {
                mt.rollback().await;
                return Ok(Err(busy));
            }
            Ok(None) => {}
        }
        mt.commit().await?;
        self.wait_for_shards(&new_shards).await?;
        if in_txn {
            for plan in plans {
                for step in &plan.steps {
                    let stmt = Statement {
                        sql: step.sql.clone(),
                        params: Vec::new(),
                        kind: StatementKind::Ddl,
                        refs: Vec::new(),
                        cancel: self.cancel.clone(),
                    };
                    self.on_shard(step.shard, stmt, false).await?;
                }
                let txn = self.txn.as_mut().expect("in a transaction");
                if let std::collections::btree_map::Entry::Vacant(base) =
                    txn.bases.entry(plan.table.to_lowercase())
                {
                    let committed = cluster
                        .catalog()
                        .any_table(&plan.table)
                        .map(serde_json::to_string)
                        .transpose()
                        .map_err(Error::internal)?;
                    base.insert(committed);
                }
                txn.changes.extend(plan.finish.iter().cloned());
                *txn.catalog.lock().expect("catalog cache lock") = None;
            }
        } else {
            for job in &jobs {
                match cluster.run_job(job).await {
                    Ok(()) => {}
                    // Refused by a shard: undone everywhere, certainly not applied.
                    Err(e @ Error::Sql { .. }) => return Err(e),
                    // The job stays in the catalog and the meta leader drives it to its end
                    // (done or undone): never "retry" for something that may take effect.
                    Err(e) => {
                        return Err(crate::error::ambiguous(format!(
                            "the schema change is recorded but not finished ({e}); the cluster finishes or undoes it within about {:?}",
                            limits::DDL_JOB_ADOPT_AFTER
                        )))
                    }
                }
            }
            // The change is made: every node plans the next statement with it.
            cluster.spread_catalog().await;
        }
        if let translate::DdlAction::Distribute { column, .. } = action {
            // Citus's functions return void: one row, one empty column.
            let name = if column.is_some() {
                "create_distributed_table"
            } else {
                "create_reference_table"
            };
            return Ok(Ok(Output {
                fields: vec![Field {
                    name: name.into(),
                    ty: PgType::Text,
                    scale: None,
                    typmod: None,
                }],
                rows: vec![vec![Value::Text(String::new())]],
                rows_affected: 1,
                returns_rows: true,
                notice,
                ..Output::command(tag, TxnEvent::None)
            }));
        }
        for plan in &notices {
            notice = notice.or(Some(plan.clone()));
        }
        Ok(Ok(Output {
            notice,
            ..Output::command(tag, TxnEvent::None)
        }))
    }

    /// Wait until each new shard's group has a leader (they are started by every replica
    /// node when the catalog reaches it).
    async fn wait_for_shards(&self, shards: &[ShardId]) -> Result<()> {
        let cluster = &self.engine.cluster;
        let deadline = Instant::now() + limits::SHARD_CREATE_WAIT;
        for shard in shards {
            loop {
                match cluster.read_index(*shard).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(Error::Unavailable(format!(
                            "new shard {shard} has no leader after {:?}: {e}",
                            limits::SHARD_CREATE_WAIT
                        )))
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                }
            }
        }
        Ok(())
    }

    fn output(&self, t: &Translated, rows: Rows) -> Output {
        let returns_rows = !rows.columns.is_empty();
        let fields = self.fields(&rows.columns, t);
        let count = if t.kind == Kind::Read {
            rows.rows.len() as u64
        } else {
            rows.changes
        };
        let tag = match t.tag.as_str() {
            "INSERT" => format!("INSERT 0 {count}"),
            "SELECT" | "UPDATE" | "DELETE" => format!("{} {count}", t.tag),
            other => other.to_string(),
        };
        Output {
            fields,
            rows: rows.rows,
            tag,
            rows_affected: count,
            returns_rows,
            txn: TxnEvent::None,
            notice: None,
            copy_in: None,
            copy_out: None,
        }
    }

    /// Rows of a `COPY FROM STDIN`, in chunks cut anywhere. Errors are kept for
    /// [`Session::copy_done`]: the protocol reads the rest of the data either way.
    pub async fn copy_data(&mut self, data: &[u8]) {
        let Some(copy) = self.copy.as_mut() else {
            return;
        };
        if copy.error.is_some() {
            return;
        }
        let parsed = copy.parser.feed(data);
        if copy.parser.pending() > limits::COPY_LINE_BYTES_MAX {
            copy.error = Some(Error::sql(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "COPY: a row longer than {} bytes",
                    limits::COPY_LINE_BYTES_MAX
                ),
            ));
            return;
        }
        if let Err(e) = self.copy_rows(parsed).await {
            if let Some(copy) = self.copy.as_mut() {
                copy.error = Some(e);
            }
        }
    }

    /// Convert parsed rows to typed values and insert full batches.
    async fn copy_rows(&mut self, parsed: Result<Vec<super::copy::Row>>) -> Result<()> {
        let copy = self.copy.as_mut().expect("a copy is in progress");
        let first_line = copy.parser.line;
        let parsed = parsed?;
        let first_line = first_line + 1 - parsed.len() as u64;
        for (i, fields) in parsed.into_iter().enumerate() {
            let line = first_line + i as u64;
            if fields.len() != copy.columns.len() {
                return Err(Error::sql(
                    sqlstate::DATA_EXCEPTION,
                    format!(
                        "COPY {}: line {line}: {} columns where {} were expected",
                        copy.table.name,
                        fields.len(),
                        copy.columns.len()
                    ),
                ));
            }
            let mut row = Vec::with_capacity(fields.len());
            for (f, (name, ty)) in fields.into_iter().zip(&copy.columns) {
                let value = match f {
                    None => Ok(Value::Null),
                    Some(super::copy::Field::Text(text)) => {
                        crate::types::coerce(Value::Text(text), *ty)
                    }
                    Some(super::copy::Field::Binary(bytes)) => {
                        crate::types::decode(&bytes, *ty, crate::types::Format::Binary)
                    }
                };
                row.push(value.map_err(|e| {
                    Error::sql(
                        e.code(),
                        format!("COPY {}: line {line}, column {name}: {e}", copy.table.name),
                    )
                })?);
            }
            copy.rows.push(row);
        }
        if copy.rows.len() >= limits::COPY_BATCH_ROWS {
            self.copy_flush().await?;
        }
        Ok(())
    }

    async fn copy_flush(&mut self) -> Result<()> {
        let copy = self.copy.as_mut().expect("a copy is in progress");
        let rows = std::mem::take(&mut copy.rows);
        if rows.is_empty() {
            return Ok(());
        }
        let (table, columns) = (
            copy.table.clone(),
            copy.columns
                .iter()
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>(),
        );
        let n = rows.len() as u64;
        // Outside a transaction block each batch commits on its own — all of it or none
        // (its rows may go to several shards), so the count a failure reports is exact.
        let implicit = self.txn.is_none();
        if implicit {
            self.txn = Some(OpenTxn::implicit());
        }
        let inserted = self.insert_rows(&table, &columns, "", rows).await;
        if implicit {
            let txn = self.txn.take().expect("opened above");
            match &inserted {
                Ok(_) => self.commit_implicit(txn).await?,
                Err(_) => self.abandon(txn).await,
            }
        }
        inserted?;
        if let Some(copy) = self.copy.as_mut() {
            copy.inserted += n;
        }
        Ok(())
    }

    /// The client finished sending rows: insert the rest and report `COPY n`.
    pub async fn copy_done(&mut self) -> Result<Output> {
        let Some(copy) = self.copy.as_mut() else {
            return Err(Error::sql(
                sqlstate::PROTOCOL_VIOLATION,
                "no COPY in progress",
            ));
        };
        if copy.error.is_none() {
            let rest = copy.parser.finish();
            if let Err(e) = self.copy_rows(rest).await {
                if let Some(copy) = self.copy.as_mut() {
                    copy.error = Some(e);
                }
            }
        }
        if self.copy.as_ref().is_some_and(|c| c.error.is_none()) {
            if let Err(e) = self.copy_flush().await {
                if let Some(copy) = self.copy.as_mut() {
                    copy.error = Some(e);
                }
            }
        }
        let copy = self.copy.take().expect("checked above");
        if let Some(e) = copy.error {
            if let Some(txn) = self.txn.as_mut() {
                txn.failed = true;
            }
            return Err(match e {
                Error::Sql { code, message } if copy.inserted > 0 && self.txn.is_none() => {
                    Error::Sql {
                        code,
                        message: format!(
                            "{message} ({} rows before it were loaded)",
                            copy.inserted
                        ),
                    }
                }
                other => other,
            });
        }
        Ok(Output {
            rows_affected: copy.inserted,
            ..Output::command(&format!("COPY {}", copy.inserted), TxnEvent::None)
        })
    }

    /// The client gave up the COPY.
    pub async fn copy_fail(&mut self, message: &str) -> Error {
        let inserted = self.copy.take().map(|c| c.inserted).unwrap_or(0);
        if let Some(txn) = self.txn.as_mut() {
            txn.failed = true;
        }
        Error::sql(
            sqlstate::QUERY_CANCELED,
            format!("COPY from stdin failed: {message} ({inserted} rows were loaded before)"),
        )
    }

    /// Run every statement of a simple-protocol query string. Stops at the first error (its
    /// `Err` is the last element). Several statements outside a transaction block run as one
    /// implicit transaction, as in PostgreSQL.
    pub async fn run_script(&mut self, sql: &str) -> Vec<Result<Output>> {
        self.recover_abandoned().await;
        let outputs = self.run_script_inner(sql).await;
        self.in_flight = false;
        outputs
    }

    async fn run_script_inner(&mut self, sql: &str) -> Vec<Result<Output>> {
        let stmts = match translate::parse(sql) {
            Ok(s) => s,
            Err(e) => return vec![Err(e)],
        };
        let control = |s: &sqlparser::ast::Statement| {
            matches!(
                s,
                sqlparser::ast::Statement::StartTransaction { .. }
                    | sqlparser::ast::Statement::Commit { .. }
                    | sqlparser::ast::Statement::Rollback { .. }
            )
        };
        if stmts.len() > 1
            && stmts
                .iter()
                .any(|s| matches!(s, sqlparser::ast::Statement::Copy { .. }))
        {
            return vec![Err(Error::unsupported(
                "COPY together with other statements in one query string (send it alone)",
            ))];
        }
        let implicit = stmts.len() > 1 && self.txn.is_none() && !stmts.iter().any(control);
        if implicit {
            self.txn = Some(OpenTxn::implicit());
        }
        let mut outputs = Vec::with_capacity(stmts.len());
        for stmt in stmts {
            // Each statement is translated when its turn comes, so it sees the tables the
            // statements before it created.
            let result = match self.translate(stmt, &[]).await {
                Ok(translated) => self.execute_one(&Prepared { translated }, Vec::new()).await,
                Err(e) => Err(e),
            };
            let failed = result.is_err();
            outputs.push(result);
            if failed {
                if let Some(t) = self.txn.as_mut() {
                    t.failed = true;
                }
                break;
            }
        }
        if implicit {
            let failed = outputs.iter().any(|o| o.is_err());
            if let Some(txn) = self.txn.take() {
                if failed {
                    self.abandon(txn).await;
                } else if let Err(e) = self.commit_implicit(txn).await {
                    outputs.push(Err(e));
                }
            }
        }
        outputs
    }

    /// End the session: roll back an open transaction, releasing the shards' writers.
    pub async fn close(&mut self) {
        if let Some(txn) = self.txn.take() {
            self.abandon(txn).await;
        }
    }
}

/// The SQLite statement for a savepoint operation (names are prefixed so they cannot meet
/// the writer's own).
fn savepoint_sql(op: SavepointOp, name: &str) -> String {
    let verb = match op {
        SavepointOp::Set => "SAVEPOINT",
        SavepointOp::RollbackTo => "ROLLBACK TO",
        SavepointOp::Release => "RELEASE",
    };
    format!("{verb} \"user_{}\"", name.replace('"', "\"\""))
}

fn savepoint_stmt(sql: String) -> Statement {
    Statement {
        sql,
        params: Vec::new(),
        kind: StatementKind::Savepoint,
        refs: Vec::new(),
        cancel: Default::default(),
    }
}

/// Commit a transaction holding several shards: two-phase commit over Raft. Shards it only
/// read are released once every part has ended its statements (its lock point); one that
/// wrote commits alone; several that wrote are prepared, the decision is recorded on the
/// first of them (the coordinator shard), and each is resolved by it. An unclear decision is
/// settled by asking the coordinator shard again, which records abort if nothing is
/// recorded — so the answer to the client is always the decision in force.
///
/// Each phase runs on every shard at once (the parts hold their shards' writers already,
/// so they wait for nothing but their own proposals): a commit over N shards costs three
/// rounds of proposals — prepare, decide, resolve — not 2N + 1.
async fn commit_across(cluster: &Arc<Cluster>, leases: Vec<(ShardId, Lease)>) -> Result<()> {
    let collected = futures::future::join_all(
        leases
            .iter()
            .map(|(_, lease)| async move { cluster.collect(lease).await }),
    )
    .await;
    let mut writers: Vec<(ShardId, Lease)> = Vec::new();
    let mut failed: Option<Error> = None;
    let mut release = Vec::new();
    for ((shard, lease), outcome) in leases.into_iter().zip(collected) {
        match outcome {
            Ok(true) if failed.is_none() => writers.push((shard, lease)),
            Ok(_) => release.push(lease),
            Err(e) => {
                failed.get_or_insert(e);
                release.push(lease);
            }
        }
    }
    if let Some(e) = failed {
        release.extend(writers.into_iter().map(|(_, l)| l));
        futures::future::join_all(release.into_iter().map(|l| cluster.rollback(l))).await;
        return Err(e);
    }
    futures::future::join_all(release.into_iter().map(|l| cluster.rollback(l))).await;
    if writers.len() <= 1 {
        for (_, lease) in writers {
            cluster.commit(lease).await?;
        }
        return Ok(());
    }
    let id = (rand::random::<u64>() >> 1).max(1);
    let coordinator = writers[0].0;
    let outcomes = futures::future::join_all(
        writers
            .iter()
            .map(|(_, lease)| async move { cluster.prepare(lease, id, coordinator).await }),
    )
    .await;
    let mut prepared: Vec<(ShardId, Lease)> = Vec::new();
    let mut failure: Option<Error> = None;
    for ((shard, lease), outcome) in writers.into_iter().zip(outcomes) {
        match outcome {
            Ok(()) => prepared.push((shard, lease)),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if crate::planted::active("pause-after-prepare") {
        // For fault tests: a window where every part is prepared and nothing decided.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
    let want = failure.is_none();
    let first = match prepared.first() {
        Some((s, lease)) if *s == coordinator => cluster.decide_on(lease, id, want).await,
        _ => cluster.decide(coordinator, id, want).await,
    };
    let commit = match first {
        Ok(c) => c,
        // Unclear (lost lease, leader change): ask again; the answer is final.
        Err(_) => match cluster.decide(coordinator, id, false).await {
            Ok(c) => c,
            Err(e) => {
                return Err(Error::sql(
                    sqlstate::TRANSACTION_RESOLUTION_UNKNOWN,
                    format!(
                        "the outcome of the commit is unknown (the coordinator shard {coordinator} did not answer: {e}); it is settled when the shard recovers"
                    ),
                ))
            }
        },
    };
    let resolved = futures::future::join_all(prepared.into_iter().map(|(shard, lease)| async move {
        if cluster.resolve(lease, commit).await.is_err() {
            // The lease broke (leader change): resolve through the shard's leader, which
            // also resolves it by itself when it takes over.
            if let Err(e) = cluster.resolve_on(shard, id, commit).await {
                tracing::warn!(%shard, txn = id, commit, error = %e, "resolution left to the shard's recovery");
                return false;
            }
        }
        true
    }))
    .await;
    let all_resolved = resolved.iter().all(|r| *r);
    if all_resolved && failure.is_none() {
        // Every part prepared was resolved through its log (a part that failed to prepare
        // may still be prepared and ask later, so then the record stays).
        cluster.decision_resolved(coordinator, id);
    }
    if commit {
        Ok(())
    } else {
        Err(failure.unwrap_or_else(|| {
            Error::sql(
                sqlstate::SERIALIZATION_FAILURE,
                "the transaction was aborted while committing; retry it",
            )
        }))
    }
}
