//! A client's session: settings, the open transaction, and statement execution.
//!
//! Transactions: `BEGIN` only marks the session; the shard's writer is taken by the first
//! statement after it (drivers often send BEGIN eagerly) and held until COMMIT/ROLLBACK, so a
//! transaction on one shard is serializable. An error inside a transaction fails it: further
//! statements get 25P02 until ROLLBACK (COMMIT then rolls back), as in PostgreSQL.

use super::router::{Lease, Router};
use super::translate::{self, Kind, Translated};
use crate::error::{sqlstate, Error, Result};
use crate::replication::group::{ReadConsistency, ShardGroup};
use crate::replication::transport::Client;
use crate::storage::replica::{ResultColumn, Rows, Statement, StatementKind};
use crate::types::PgType;
use rusqlite::types::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What every session of a node shares: the shard groups (one for now) and routing.
pub struct Engine {
    /// The group SQL runs on until tables are sharded (s1).
    pub group: Arc<ShardGroup>,
    /// Every group with a replica on this node.
    pub groups: Vec<Arc<ShardGroup>>,
    pub router: Router,
}

impl Engine {
    pub fn new(
        group: Arc<ShardGroup>,
        groups: Vec<Arc<ShardGroup>>,
        client: Arc<Client>,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            router: Router {
                group: group.clone(),
                client,
            },
            group,
            groups,
        })
    }

    pub fn session(self: &Arc<Self>) -> Session {
        Session {
            engine: self.clone(),
            settings: BTreeMap::new(),
            txn: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub ty: PgType,
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
        }
    }
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
    lease: Option<Lease>,
    failed: bool,
}

pub struct Session {
    engine: Arc<Engine>,
    settings: BTreeMap<String, String>,
    txn: Option<OpenTxn>,
}

fn failed_txn() -> Error {
    Error::sql(
        sqlstate::IN_FAILED_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

/// Settings every PostgreSQL driver or tool may ask for with SHOW.
fn default_setting(name: &str) -> Option<String> {
    Some(
        match name {
            "server_version" => crate::storage::functions::SERVER_VERSION,
            "server_version_num" => "160000",
            "server_encoding" | "client_encoding" => "UTF8",
            "datestyle" => "ISO, MDY",
            "timezone" => "UTC",
            "integer_datetimes" | "standard_conforming_strings" => "on",
            "transaction_isolation" | "default_transaction_isolation" => "serializable",
            "transaction_read_only" | "default_transaction_read_only" => "off",
            "application_name" | "search_path" => "",
            "max_identifier_length" => "63",
            "is_superuser" => "on",
            "cairn.read_consistency" => "linearizable",
            "cairn.max_staleness" => "500ms",
            _ => return None,
        }
        .to_string(),
    )
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

    /// Translate one statement for later execution (the extended protocol's Parse).
    /// `None` for an empty statement.
    pub fn prepare(&self, sql: &str, given: &[Option<PgType>]) -> Result<Option<Prepared>> {
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
        let catalog = self
            .engine
            .group
            .replica
            .catalog
            .read()
            .expect("catalog lock poisoned")
            .clone();
        Ok(Some(Prepared {
            translated: translate::translate(stmt, &catalog, given)?,
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
                }])
            }
            _ => return Ok(Vec::new()),
        }
        let stmt = Statement {
            sql: t.sql.clone(),
            params: Vec::new(),
            kind: StatementKind::Describe,
        };
        let rows = match self.txn.as_mut().and_then(|t| t.lease.as_ref()) {
            Some(lease) => self.engine.router.exec(lease, stmt).await?,
            None => self.engine.group.replica.read(stmt).await?,
        };
        Ok(self.fields(&rows.columns, t))
    }

    fn fields(&self, columns: &[ResultColumn], t: &Translated) -> Vec<Field> {
        let catalog = self
            .engine
            .group
            .replica
            .catalog
            .read()
            .expect("catalog lock poisoned");
        columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let from_origin = c
                    .origin
                    .as_ref()
                    .and_then(|(table, column)| catalog.column_type(table, column));
                let ty = from_origin
                    .or_else(|| t.expr_types.get(i).copied().flatten())
                    .or_else(|| c.decl_type.as_deref().and_then(PgType::parse_declared))
                    .unwrap_or(PgType::Text);
                Field {
                    name: c.name.clone(),
                    ty,
                }
            })
            .collect()
    }

    /// Execute a prepared statement with parameter values already decoded.
    pub async fn execute(&mut self, prepared: &Prepared, params: Vec<Value>) -> Result<Output> {
        let t = &prepared.translated;
        if self.transaction_failed() && !matches!(t.kind, Kind::Commit | Kind::Rollback) {
            return Err(failed_txn());
        }
        let result = self.execute_inner(t, params).await;
        if result.is_err() {
            if let Some(txn) = self.txn.as_mut() {
                txn.failed = true;
            }
        }
        result
    }

    async fn execute_inner(&mut self, t: &Translated, params: Vec<Value>) -> Result<Output> {
        match &t.kind {
            Kind::Begin => {
                let mut out = Output::command("BEGIN", TxnEvent::Started);
                if self.txn.is_some() {
                    out.notice = Some("there is already a transaction in progress".into());
                } else {
                    self.txn = Some(OpenTxn {
                        lease: None,
                        failed: false,
                    });
                }
                Ok(out)
            }
            Kind::Commit => match self.txn.take() {
                None => Ok(Output {
                    notice: Some("there is no transaction in progress".into()),
                    ..Output::command("COMMIT", TxnEvent::Ended)
                }),
                Some(OpenTxn {
                    lease,
                    failed: true,
                }) => {
                    if let Some(lease) = lease {
                        self.engine.router.rollback(lease).await;
                    }
                    Ok(Output::command("ROLLBACK", TxnEvent::Ended))
                }
                Some(OpenTxn {
                    lease,
                    failed: false,
                }) => {
                    if let Some(lease) = lease {
                        self.engine.router.commit(lease).await?;
                    }
                    Ok(Output::command("COMMIT", TxnEvent::Ended))
                }
            },
            Kind::Rollback => {
                let mut out = Output::command("ROLLBACK", TxnEvent::Ended);
                match self.txn.take() {
                    None => out.notice = Some("there is no transaction in progress".into()),
                    Some(OpenTxn {
                        lease: Some(lease), ..
                    }) => self.engine.router.rollback(lease).await,
                    Some(_) => {}
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
                    _ => true,
                };
                if !valid {
                    return Err(Error::sql(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!(
                            "invalid value for {name}: \"{value}\" (read consistency: linearizable, \
                             bounded or any; staleness: e.g. 500ms or 2s)"
                        ),
                    ));
                }
                self.settings.insert(name, value.to_lowercase());
                Ok(Output::command("SET", TxnEvent::None))
            }
            Kind::Show { name } => {
                let value = self.setting(&name.to_lowercase()).ok_or_else(|| {
                    Error::sql(
                        sqlstate::UNDEFINED_OBJECT,
                        format!("unrecognized configuration parameter \"{name}\""),
                    )
                })?;
                Ok(Output {
                    fields: vec![Field {
                        name: name.clone(),
                        ty: PgType::Text,
                    }],
                    rows: vec![vec![Value::Text(value)]],
                    returns_rows: true,
                    ..Output::command("SHOW", TxnEvent::None)
                })
            }
            Kind::Noop => Ok(Output::command(&t.tag, TxnEvent::None)),
            Kind::Read | Kind::Write | Kind::Ddl => {
                let kind = if t.kind == Kind::Ddl {
                    StatementKind::Ddl
                } else {
                    StatementKind::Dml
                };
                let stmt = Statement {
                    sql: t.sql.clone(),
                    params,
                    kind,
                };
                let router = &self.engine.router;
                let consistency = self.read_consistency();
                let rows = match self.txn.as_mut() {
                    Some(txn) => {
                        if txn.lease.is_none() {
                            txn.lease = Some(router.begin().await?);
                        }
                        let lease = txn.lease.as_ref().expect("lease taken above");
                        router.exec(lease, stmt).await?
                    }
                    None if t.kind == Kind::Read => router.read(stmt, consistency).await?,
                    None => router.write(stmt).await?,
                };
                Ok(self.output(t, rows))
            }
        }
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
        }
    }

    /// Run every statement of a simple-protocol query string. Stops at the first error (its
    /// `Err` is the last element). Several statements outside a transaction block run as one
    /// implicit transaction, as in PostgreSQL.
    pub async fn run_script(&mut self, sql: &str) -> Vec<Result<Output>> {
        let stmts = match translate::parse(sql) {
            Ok(s) => s,
            Err(e) => return vec![Err(e)],
        };
        // A statement that does not translate still lets the ones before it run, as in
        // PostgreSQL (unless the script is one implicit transaction).
        let mut prepared: Vec<Result<Prepared>> = Vec::with_capacity(stmts.len());
        for stmt in stmts {
            let catalog = self
                .engine
                .group
                .replica
                .catalog
                .read()
                .expect("catalog lock poisoned")
                .clone();
            let p =
                translate::translate(stmt, &catalog, &[]).map(|translated| Prepared { translated });
            let failed = p.is_err();
            prepared.push(p);
            if failed {
                break;
            }
        }
        let implicit = prepared.len() > 1
            && self.txn.is_none()
            && !prepared
                .iter()
                .flatten()
                .any(|p| matches!(p.kind(), Kind::Begin | Kind::Commit | Kind::Rollback));
        if implicit {
            self.txn = Some(OpenTxn {
                lease: None,
                failed: false,
            });
        }
        let mut outputs = Vec::with_capacity(prepared.len());
        for p in &prepared {
            let result = match p {
                Ok(p) => self.execute(p, Vec::new()).await,
                Err(e) => Err(e.clone()),
            };
            let failed = result.is_err();
            outputs.push(result);
            if failed {
                if self.txn.is_some() && !implicit {
                    if let Some(t) = self.txn.as_mut() {
                        t.failed = true;
                    }
                }
                break;
            }
        }
        if implicit {
            let failed = outputs.iter().any(|o| o.is_err());
            if let Some(txn) = self.txn.take() {
                if let Some(lease) = txn.lease {
                    if failed {
                        self.engine.router.rollback(lease).await;
                    } else if let Err(e) = self.engine.router.commit(lease).await {
                        outputs.push(Err(e));
                    }
                }
            }
        }
        outputs
    }

    /// End the session: roll back an open transaction, releasing the shard's writer.
    pub async fn close(&mut self) {
        if let Some(OpenTxn {
            lease: Some(lease), ..
        }) = self.txn.take()
        {
            self.engine.router.rollback(lease).await;
        }
    }
}

/// A duration setting: `500ms`, `2s`, `1min`, or a bare number of milliseconds.
fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let t = text.trim().to_lowercase();
    let (number, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    let n: f64 = number.parse().ok()?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n * 1000.0,
        "min" => n * 60_000.0,
        _ => return None,
    };
    (ms.is_finite() && ms >= 0.0).then(|| std::time::Duration::from_micros((ms * 1000.0) as u64))
}
