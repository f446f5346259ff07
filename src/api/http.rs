//! HTTP/JSON API (axum). `POST /v1/sql` runs one statement (`{"sql", "params"}`) or an atomic
//! batch (`{"statements": [{"sql", "params"}, ...]}`); `GET /health` reports the node. Errors
//! are `{"error": {"code": "<SQLSTATE>", "message": "..."}}` with a 4xx/5xx status.
//!
//! Interactive transactions: `POST /v1/txn` opens one (`{"timeout": "30s"}` optional) and
//! answers its id; `POST /v1/txn/{id}/sql` runs statements in it (same body as `/v1/sql`,
//! a `statements` list running in order); `POST /v1/txn/{id}/commit` and `.../rollback` end
//! it. A transaction idle for longer than its timeout is rolled back.

use crate::error::{sqlstate, Error};
use crate::limits;
use crate::sql::{Engine, Output, Session};
use crate::storage::cancel::{Cancel, CancelOnDrop};
use crate::types::{self, PgType};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::types::Value;
use serde::Deserialize;
use serde_json::{json, Value as Json_};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

fn no_txn(id: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: sqlstate::NO_ACTIVE_SQL_TRANSACTION.into(),
        message: format!(
            "no open transaction \"{id}\" (it committed, rolled back, or was idle past its timeout)"
        ),
    }
}

/// What every handler works with.
#[derive(Clone)]
pub(super) struct Api {
    pub(super) engine: Arc<Engine>,
    txns: Arc<Txns>,
}

/// Open HTTP transactions by id.
#[derive(Default)]
struct Txns {
    open: Mutex<HashMap<String, Arc<TxnHandle>>>,
}

struct TxnHandle {
    /// One request at a time works in the transaction; the lock is held while it does.
    session: Arc<tokio::sync::Mutex<Session>>,
    /// Rolled back once idle past this.
    deadline: Mutex<Instant>,
    timeout: Duration,
}

impl Txns {
    fn get(&self, id: &str) -> Result<Arc<TxnHandle>, ApiError> {
        let open = self.open.lock().expect("txns lock poisoned");
        open.get(id).cloned().ok_or_else(|| no_txn(id))
    }

    fn take(&self, id: &str) -> Result<Arc<TxnHandle>, ApiError> {
        let mut open = self.open.lock().expect("txns lock poisoned");
        open.remove(id).ok_or_else(|| no_txn(id))
    }

    /// Roll back the transactions idle past their timeout; ends when the API is gone.
    async fn reap(txns: Weak<Txns>) {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(txns) = txns.upgrade() else { return };
            let now = Instant::now();
            let expired: Vec<Arc<TxnHandle>> = {
                let mut open = txns.open.lock().expect("txns lock poisoned");
                let ids: Vec<String> = open
                    .iter()
                    .filter(|(_, h)| *h.deadline.lock().expect("deadline lock poisoned") < now)
                    .map(|(id, _)| id.clone())
                    .collect();
                ids.iter().filter_map(|id| open.remove(id)).collect()
            };
            for handle in expired {
                // A request still running in it finishes first (it renewed the deadline).
                handle.session.lock().await.close().await;
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Statement {
    sql: String,
    #[serde(default)]
    params: Vec<Json_>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: Option<String>,
    #[serde(default)]
    params: Vec<Json_>,
    statements: Option<Vec<Statement>>,
    consistency: Option<String>,
    /// For `"consistency": "bounded"`: how far behind the leader a replica may be, e.g. "500ms".
    max_staleness: Option<String>,
}

#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: String,
    pub(super) message: String,
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Sql { code, .. } if *code == sqlstate::PROGRAM_LIMIT_EXCEEDED => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Error::Sql { code, .. } if code.starts_with("40") => StatusCode::CONFLICT,
            Error::Sql { code, .. } if *code == sqlstate::INSUFFICIENT_PRIVILEGE => {
                StatusCode::FORBIDDEN
            }
            Error::Sql { .. } => StatusCode::BAD_REQUEST,
            Error::Retry(_) => StatusCode::CONFLICT,
            // Not 503: that invites a retry, and this write may have been applied.
            Error::Ambiguous(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::NotLeader { .. } | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Corrupt(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            code: e.code().to_string(),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if self.code == sqlstate::TRANSACTION_RESOLUTION_UNKNOWN {
            // Tells a client that retrying may apply the write twice.
            error["outcome"] = json!("unknown");
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: sqlstate::PROTOCOL_VIOLATION.into(),
        message: message.into(),
    }
}

/// A JSON parameter as the value stored for a parameter of type `ty`.
fn json_param(v: &Json_, ty: PgType) -> Result<Value, Error> {
    let value = match v {
        Json_::Null => return Ok(Value::Null),
        Json_::Bool(b) => Value::Integer(*b as i64),
        Json_::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json_::String(s) => Value::Text(s.clone()),
        other => Value::Text(other.to_string()),
    };
    types::coerce(value, ty)
}

/// A stored value as JSON, shaped by its column's type.
pub(super) fn json_value(v: &Value, ty: PgType) -> Json_ {
    match (v, ty) {
        (Value::Null, _) => Json_::Null,
        (Value::Integer(i), PgType::Bool) => Json_::Bool(*i != 0),
        (Value::Integer(i), _) => json!(i),
        (Value::Real(f), _) => serde_json::Number::from_f64(*f)
            .map(Json_::Number)
            .unwrap_or_else(|| json!(f.to_string())),
        (Value::Text(s), PgType::Json | PgType::Jsonb) => {
            serde_json::from_str(s).unwrap_or_else(|_| json!(s))
        }
        // An array is a JSON array of its elements, each shaped by the element type.
        (Value::Text(s), _) if ty.is_array() => match (types::array::elements(v, ty), ty.element())
        {
            (Ok(items), Some(element)) => {
                Json_::Array(items.iter().map(|x| json_value(x, element)).collect())
            }
            _ => json!(s),
        },
        (Value::Text(s), _) => json!(s),
        (Value::Blob(b), _) => match types::encode(v, PgType::Bytea, types::Format::Text) {
            Ok(Some(text)) => json!(String::from_utf8_lossy(&text)),
            _ => json!(b.len()),
        },
    }
}

fn output_json(o: &Output) -> Json_ {
    json!({
        "columns": o.fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        "types": o.fields.iter().map(|f| f.ty.name()).collect::<Vec<_>>(),
        "rows": o.rows.iter().map(|r| r.iter().zip(&o.fields).map(|(v, f)| json_value(v, f.ty)).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "rows_affected": o.rows_affected,
        "tag": o.tag,
    })
}

async fn run_one(session: &mut Session, stmt: &Statement) -> Result<Output, Error> {
    let prepared = session
        .prepare(&stmt.sql, &[])
        .await?
        .ok_or_else(|| Error::sql(sqlstate::SYNTAX_ERROR, "empty statement"))?;
    let types = prepared.param_types().to_vec();
    if stmt.params.len() != types.len() {
        return Err(Error::sql(
            sqlstate::PROTOCOL_VIOLATION,
            format!(
                "statement has {} parameters but {} were supplied",
                types.len(),
                stmt.params.len()
            ),
        ));
    }
    let params = stmt
        .params
        .iter()
        .zip(types)
        .map(|(v, t)| json_param(v, t))
        .collect::<Result<Vec<_>, _>>()?;
    session.execute(&prepared, params).await
}

/// The body is JSON whatever its Content-Type says (`curl -d` sends a form type).
/// The request body, or the error answering a body refused by axum (too large, unreadable).
pub(super) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            sqlstate::PROGRAM_LIMIT_EXCEEDED
        } else {
            sqlstate::PROTOCOL_VIOLATION
        };
        ApiError {
            status,
            code: code.into(),
            message: r.body_text(),
        }
    })
}

pub(super) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON request: {e}")))
}

/// Run `work` to its end in a task of its own. hyper drops a handler's future when its
/// client's connection closes; a statement dropped half-way could leave a transaction with
/// part of its effects, or a write whose caller never learns it applied. The client going
/// away cancels `cancel` instead: the statement stops if nothing of it took effect yet
/// (SQLSTATE 57014; inside a transaction, the transaction fails), else it finishes.
pub(super) async fn detached<T: Send + 'static>(
    cancel: Cancel,
    work: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    let guard = CancelOnDrop::new(cancel);
    let result = tokio::spawn(work).await;
    guard.defuse();
    result.unwrap_or_else(|e| Err(Error::internal(format!("request task failed: {e}")).into()))
}

async fn sql(
    State(api): State<Api>,
    user: Option<axum::Extension<LoggedIn>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Json_>, ApiError> {
    let req: SqlRequest = parse_body(&body_bytes(body)?)?;
    let mut session = api.engine.session();
    if let Some(axum::Extension(LoggedIn(user))) = &user {
        session.log_in(user);
    }
    let cancel = session.new_statement();
    detached(cancel, run_sql(session, req)).await
}

/// `POST /v1/sql`, run to its end whatever the client does.
async fn run_sql(mut session: Session, req: SqlRequest) -> Result<Json<Json_>, ApiError> {
    if let Some(c) = &req.consistency {
        let set = Statement {
            sql: format!("SET cairn.read_consistency = '{}'", c.replace('\'', "''")),
            params: vec![],
        };
        run_one(&mut session, &set).await?;
    }
    if let Some(m) = &req.max_staleness {
        let set = Statement {
            sql: format!("SET cairn.max_staleness = '{}'", m.replace('\'', "''")),
            params: vec![],
        };
        run_one(&mut session, &set).await?;
    }
    let result = match (req.sql, req.statements) {
        (Some(sql), None) => run_one(
            &mut session,
            &Statement {
                sql,
                params: req.params,
            },
        )
        .await
        .map(|o| output_json(&o)),
        (None, Some(stmts)) => {
            if stmts.len() > limits::HTTP_STATEMENTS_MAX {
                return Err(bad_request(format!(
                    "at most {} statements per request",
                    limits::HTTP_STATEMENTS_MAX
                )));
            }
            run_batch(&mut session, &stmts).await
        }
        _ => {
            return Err(bad_request(
                "send either \"sql\" (with optional \"params\") or \"statements\"",
            ))
        }
    };
    session.close().await;
    Ok(Json(result?))
}

/// All statements in one transaction: every one applies, or none.
async fn run_batch(session: &mut Session, stmts: &[Statement]) -> Result<Json_, Error> {
    run_one(
        session,
        &Statement {
            sql: "BEGIN".into(),
            params: vec![],
        },
    )
    .await?;
    let mut results = Vec::with_capacity(stmts.len());
    for (i, stmt) in stmts.iter().enumerate() {
        match run_one(session, stmt).await {
            Ok(o) => results.push(output_json(&o)),
            Err(e) => {
                session.close().await;
                return Err(match e {
                    Error::Sql { code, message } => Error::Sql {
                        code,
                        message: format!("statement {i}: {message}"),
                    },
                    other => other,
                });
            }
        }
    }
    run_one(
        session,
        &Statement {
            sql: "COMMIT".into(),
            params: vec![],
        },
    )
    .await?;
    Ok(json!({ "results": results }))
}

/// This node and its replicas: each group's leader and term as this node sees them.
async fn health(State(Api { engine, .. }): State<Api>) -> Json<Json_> {
    let shards: Vec<Json_> = engine
        .cluster
        .groups()
        .iter()
        .map(|g| {
            let (leader, term) = g.leader();
            json!({
                "shard": g.shard.to_string(),
                "leader": leader.map(|l| l.to_string()),
                "term": term,
                "elections": g.elections.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    let catalog = engine.cluster.catalog();
    let cluster = catalog.settings.cluster_id.clone();
    let mut health = json!({ "status": "ok", "node": engine.cluster.node.to_string(), "cluster": cluster, "shards": shards });
    if let Some(e) = &catalog.load_error {
        health["status"] = json!("degraded");
        health["catalog_error"] = json!(e);
    }
    let divergent = engine.cluster.divergent.lock().expect("lock").clone();
    if !divergent.is_empty() {
        health["status"] = json!("degraded");
        health["divergent"] = json!(divergent
            .iter()
            .map(|(s, n)| (s.to_string(), n.clone()))
            .collect::<std::collections::BTreeMap<_, _>>());
    }
    Json(health)
}

/// This node's replicas: applied log index and a checksum of their rows, for comparing
/// replicas (equal checksums at equal applied indexes).
async fn replicas(State(Api { engine, .. }): State<Api>) -> Result<Json<Json_>, ApiError> {
    let mut replicas = Vec::new();
    for group in engine.cluster.groups() {
        let counted = async {
            let (applied, checksum) = group.replica.checksum().await?;
            let prepared = group.replica.prepared_count().await?;
            Ok::<_, Error>((applied, checksum, prepared))
        }
        .await;
        let (applied, checksum, prepared) = match counted {
            Ok(c) => c,
            // Removed meanwhile (its shard was retired): no longer a replica here.
            Err(_) if engine.cluster.group(group.shard).is_none() => continue,
            Err(e) => return Err(e.into()),
        };
        replicas.push(json!({
            "shard": group.shard.to_string(),
            "applied_index": applied,
            "checksum": format!("{checksum:016x}"),
            "prepared": prepared,
        }));
    }
    Ok(Json(
        json!({ "node": engine.cluster.node.to_string(), "replicas": replicas }),
    ))
}

/// Prometheus text exposition.
async fn metrics(State(Api { engine, .. }): State<Api>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        engine.metrics.encode(),
    )
        .into_response()
}

pub(super) async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "42704".into(),
        message: "no such endpoint".into(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnRequest {
    /// How long the transaction may sit idle between requests, e.g. "30s".
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnSqlRequest {
    sql: Option<String>,
    #[serde(default)]
    params: Vec<Json_>,
    statements: Option<Vec<Statement>>,
}

/// `POST /v1/txn`: open a transaction.
async fn txn_begin(
    State(api): State<Api>,
    user: Option<axum::Extension<LoggedIn>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Json_>, ApiError> {
    let body = body_bytes(body)?;
    let req: TxnRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TxnRequest::default()
    } else {
        parse_body(&body)?
    };
    let timeout = match &req.timeout {
        None => limits::HTTP_TXN_TIMEOUT_DEFAULT,
        Some(text) => crate::sql::parse_duration(text)
            .filter(|d| !d.is_zero() && *d <= limits::HTTP_TXN_TIMEOUT_MAX)
            .ok_or_else(|| ApiError {
                status: StatusCode::BAD_REQUEST,
                code: sqlstate::INVALID_PARAMETER_VALUE.into(),
                message: format!(
                    "invalid timeout \"{text}\": give a duration such as 500ms or 30s, at most {}s",
                    limits::HTTP_TXN_TIMEOUT_MAX.as_secs()
                ),
            })?,
    };
    if api.txns.open.lock().expect("txns lock poisoned").len() >= limits::HTTP_TXNS_MAX {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: sqlstate::INSUFFICIENT_RESOURCES.into(),
            message: format!(
                "too many open HTTP transactions (at most {}); commit or roll back some",
                limits::HTTP_TXNS_MAX
            ),
        });
    }
    let mut session = api.engine.session();
    if let Some(axum::Extension(LoggedIn(user))) = &user {
        session.log_in(user);
    }
    let begin = Statement {
        sql: "BEGIN".into(),
        params: vec![],
    };
    run_one(&mut session, &begin).await?;
    let id = format!("{:016x}", rand::random::<u64>());
    let handle = Arc::new(TxnHandle {
        session: Arc::new(tokio::sync::Mutex::new(session)),
        deadline: Mutex::new(Instant::now() + timeout),
        timeout,
    });
    api.txns
        .open
        .lock()
        .expect("txns lock poisoned")
        .insert(id.clone(), handle);
    Ok(Json(
        json!({ "txn": id, "timeout_ms": timeout.as_millis() as u64 }),
    ))
}

impl TxnHandle {
    fn touch(&self) {
        *self.deadline.lock().expect("deadline lock poisoned") = Instant::now() + self.timeout;
    }
}

/// `POST /v1/txn/{id}/sql`: statements in the transaction, in order.
async fn txn_sql(
    State(api): State<Api>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Json_>, ApiError> {
    let req: TxnSqlRequest = parse_body(&body_bytes(body)?)?;
    let single = req.sql.is_some();
    let stmts = match (req.sql, req.statements) {
        (Some(sql), None) => vec![Statement {
            sql,
            params: req.params,
        }],
        (None, Some(stmts)) if stmts.len() <= limits::HTTP_STATEMENTS_MAX => stmts,
        (None, Some(_)) => {
            return Err(bad_request(format!(
                "at most {} statements per request",
                limits::HTTP_STATEMENTS_MAX
            )))
        }
        _ => {
            return Err(bad_request(
                "send either \"sql\" (with optional \"params\") or \"statements\"",
            ))
        }
    };
    let handle = api.txns.get(&id)?;
    handle.touch();
    let mut session = handle.session.clone().lock_owned().await;
    let cancel = session.new_statement();
    detached(cancel, async move {
        let results = run_in_txn(&mut session, &stmts, single).await;
        drop(session);
        handle.touch();
        results
    })
    .await
}

/// The statements of one `POST /v1/txn/{id}/sql`, in order.
async fn run_in_txn(
    session: &mut Session,
    stmts: &[Statement],
    single: bool,
) -> Result<Json<Json_>, ApiError> {
    let mut results = Vec::with_capacity(stmts.len());
    for (i, stmt) in stmts.iter().enumerate() {
        if is_transaction_control(&stmt.sql) {
            return Err(bad_request(
                "end the transaction with POST /v1/txn/{id}/commit or /rollback, not by SQL",
            ));
        }
        let output = run_one(session, stmt).await.map_err(|e| match e {
            Error::Sql { code, message } if !single => Error::Sql {
                code,
                message: format!("statement {i}: {message}"),
            },
            other => other,
        })?;
        results.push(output_json(&output));
    }
    if single {
        return Ok(Json(results.pop().expect("one statement ran")));
    }
    Ok(Json(json!({ "results": results })))
}

/// BEGIN/COMMIT/ROLLBACK/END (not ROLLBACK TO): would end or nest the handle's transaction.
fn is_transaction_control(sql: &str) -> bool {
    let words: Vec<String> = sql
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .take(2)
        .map(str::to_ascii_lowercase)
        .collect();
    match words.first().map(String::as_str) {
        Some("begin" | "commit" | "end" | "abort") => true,
        Some("start") => words.get(1).map(String::as_str) == Some("transaction"),
        Some("rollback") => !matches!(words.get(1).map(String::as_str), Some("to")),
        _ => false,
    }
}

/// `POST /v1/txn/{id}/commit`.
async fn txn_commit(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let handle = api.txns.take(&id)?;
    let mut session = handle.session.clone().lock_owned().await;
    detached(
        Cancel::default(),
        async move { commit_txn(&mut session).await },
    )
    .await
}

async fn commit_txn(session: &mut Session) -> Result<Json<Json_>, ApiError> {
    if session.transaction_failed() {
        session.close().await;
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: sqlstate::IN_FAILED_TRANSACTION.into(),
            message: "the transaction had failed; it was rolled back".into(),
        });
    }
    let commit = Statement {
        sql: "COMMIT".into(),
        params: vec![],
    };
    let result = run_one(session, &commit).await;
    session.close().await;
    result?;
    Ok(Json(json!({ "committed": true })))
}

/// `POST /v1/txn/{id}/rollback`.
async fn txn_rollback(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let handle = api.txns.take(&id)?;
    let mut session = handle.session.clone().lock_owned().await;
    detached(Cancel::default(), async move {
        session.close().await;
        Ok(Json(json!({ "rolled_back": true })))
    })
    .await
}

/// The user an HTTP request logged in as (HTTP Basic), once the cluster has users.
#[derive(Clone)]
pub struct LoggedIn(pub String);

/// `Authorization: Basic` as a user and password.
fn basic_credentials(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Once the cluster has users, every request but `/health` logs in with HTTP Basic (401
/// with a JSON error otherwise) and may do what the user's roles allow: SQL statements are
/// checked one by one in the session; other requests by what they are (reads, changes,
/// node operations).
async fn authenticate(
    State(api): State<Api>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use crate::auth::Need;
    let catalog = api.engine.cluster.catalog();
    let path = req.uri().path().to_string();
    if catalog.users.is_empty() || path == "/health" {
        return next.run(req).await;
    }
    // A key derivation takes milliseconds of CPU: off the async workers, so a burst of
    // logins (or of wrong passwords, never cached) does not stall running requests.
    let user = match basic_credentials(req.headers()) {
        Some((user, password)) => {
            let catalog = catalog.clone();
            tokio::task::spawn_blocking(move || {
                crate::auth::verify(&catalog, &user, &password).then(|| user.to_lowercase())
            })
            .await
            .ok()
            .flatten()
        }
        None => None,
    };
    let Some(user) = user else {
        let mut response = ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: sqlstate::INVALID_PASSWORD.into(),
            message: "log in with HTTP Basic authentication: a user and its password".into(),
        }
        .into_response();
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Basic realm=\"cairn\""),
        );
        return response;
    };
    let method = req.method().clone();
    let reading = method == axum::http::Method::GET || method == axum::http::Method::HEAD;
    let need = if path.starts_with("/v1/sql") || path.starts_with("/v1/txn") {
        None
    } else if (path.starts_with("/v1/nodes/")
        || path.starts_with("/v1/shards/")
        || path.starts_with("/v1/dev"))
        && !reading
    {
        Some(Need::Admin)
    } else if reading {
        Some(Need::Read)
    } else {
        Some(Need::Write)
    };
    if let Some(need) = need {
        let grants = crate::auth::Grants {
            user: Some(user.clone()),
            roles: catalog
                .users
                .get(&user)
                .map(|u| u.roles.clone())
                .unwrap_or_default(),
        };
        if let Err(e) = grants.check(need, &format!("{method} {path}")) {
            return ApiError::from(e).into_response();
        }
    }
    req.extensions_mut().insert(LoggedIn(user));
    next.run(req).await
}

pub fn router(engine: Arc<Engine>) -> Router {
    crate::sql::kv::spawn_reaper(&engine);
    crate::sql::files::spawn_collector(&engine);
    let txns = Arc::new(Txns::default());
    tokio::spawn(Txns::reap(Arc::downgrade(&txns)));
    let api = Api {
        engine: engine.clone(),
        txns: txns.clone(),
    };
    let subscriptions = Arc::new(super::ws::Subscriptions::default());
    let ws = {
        let engine = engine.clone();
        move |upgrade: axum::extract::ws::WebSocketUpgrade| async move {
            super::ws::upgrade(upgrade, engine, subscriptions)
        }
    };
    Router::new()
        .route("/v1/ws", get(ws))
        .route("/v1/sql", post(sql))
        .route("/v1/kv", get(super::kv::list))
        .route(
            "/v1/kv/txn",
            post(super::kv::txn)
                .get(super::kv::get_txn_key)
                .put(super::kv::put_txn_key)
                .delete(super::kv::delete_txn_key),
        )
        .route(
            "/v1/kv/{*key}",
            get(super::kv::get)
                .put(super::kv::put)
                .delete(super::kv::delete),
        )
        .route("/v1/files", get(super::files::list))
        .route(
            "/v1/files/{*path}",
            get(super::files::get)
                .head(super::files::head)
                .put(super::files::put)
                .delete(super::files::delete)
                .post(super::files::post)
                // A file streams in under its own bound (`limits::FILE_BYTES_MAX`).
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/uploads", post(super::files::create_upload))
        .route(
            "/v1/uploads/{id}",
            get(super::files::upload_status)
                .head(super::files::upload_status)
                .patch(super::files::append_upload)
                .delete(super::files::cancel_upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/txn", post(txn_begin))
        .route("/v1/txn/{id}/sql", post(txn_sql))
        .route("/v1/txn/{id}/commit", post(txn_commit))
        .route("/v1/txn/{id}/rollback", post(txn_rollback))
        .route("/health", get(health))
        .route("/v1/replicas", get(replicas))
        .route("/v1/nodes", get(super::nodes::list))
        .route(
            "/v1/nodes/{id}/decommission",
            post(super::nodes::decommission),
        )
        .route(
            "/v1/nodes/{id}/recommission",
            post(super::nodes::recommission),
        )
        .route("/v1/nodes/{id}/remove", post(super::nodes::remove))
        .route("/v1/events", get(super::nodes::events))
        .route("/v1/timeline", get(super::nodes::timeline))
        .route("/v1/shards", get(super::nodes::shards))
        .route("/v1/tables", get(super::nodes::tables))
        .route("/v1/shards/{id}/check", post(super::nodes::check))
        .route("/metrics", get(metrics))
        .route(
            "/v1/dev/links",
            get(super::dev::links).post(super::dev::set_links),
        )
        .route("/v1/dev/{action}", post(super::dev::action))
        .route("/", get(super::dashboard::index))
        .route("/dashboard/app.js", get(super::dashboard::script))
        .route("/dashboard/style.css", get(super::dashboard::style))
        .route("/dashboard/vendor/{file}", get(super::dashboard::vendor))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limits::HTTP_BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            authenticate,
        ))
        .with_state(api)
}

/// Serve the HTTP API on `listener`; with `tls`, HTTPS only.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
) {
    let capped = Capped {
        inner: listener,
        slots: Arc::new(tokio::sync::Semaphore::new(limits::CONNECTIONS_MAX)),
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
    };
    if let Err(e) = axum::serve(capped, router(engine)).await {
        tracing::error!(error = %e, "http server stopped");
    }
}

/// The HTTP listener with at most `limits::CONNECTIONS_MAX` connections open: one past it
/// is closed at once (a client flooding the port cannot exhaust the node's memory or file
/// descriptors; the pgwire port has the same cap).
struct Capped {
    inner: TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// An accepted connection holding its slot until it closes.
struct Slotted {
    stream: Io,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// A connection's bytes: plain, or TLS whose handshake runs on the connection's first read
/// or write (in the connection's own task, so a slow handshake holds up no one else).
enum Io {
    Plain(tokio::net::TcpStream),
    Handshaking(Box<tokio_rustls::Accept<tokio::net::TcpStream>>),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
    Failed,
}

impl Io {
    /// Finish the handshake if one is under way.
    fn ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        match self {
            Io::Handshaking(accept) => match std::pin::Pin::new(accept.as_mut()).poll(cx) {
                Poll::Ready(Ok(tls)) => {
                    *self = Io::Tls(Box::new(tls));
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => {
                    *self = Io::Failed;
                    Poll::Ready(Err(e))
                }
                Poll::Pending => Poll::Pending,
            },
            Io::Failed => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "TLS handshake failed",
            ))),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// `$call` on the connection's stream once any handshake is done.
macro_rules! on_stream {
    ($self:ident, $cx:ident, |$s:ident| $call:expr) => {{
        let this = &mut $self.stream;
        match this.ready($cx) {
            std::task::Poll::Ready(Ok(())) => {}
            std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => return std::task::Poll::Pending,
        }
        match this {
            Io::Plain($s) => {
                let $s = std::pin::Pin::new($s);
                $call
            }
            Io::Tls(tls) => {
                let $s = std::pin::Pin::new(tls.as_mut());
                $call
            }
            Io::Handshaking(_) | Io::Failed => unreachable!("ready() settled the handshake"),
        }
    }};
}

impl axum::serve::Listener for Capped {
    type Io = Slotted;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Slotted, std::net::SocketAddr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let _ = stream.set_nodelay(true);
                    let stream = match &self.tls {
                        Some(acceptor) => Io::Handshaking(Box::new(acceptor.accept(stream))),
                        None => Io::Plain(stream),
                    };
                    return (
                        Slotted {
                            stream,
                            _slot: slot,
                        },
                        peer,
                    );
                }
                Err(_) => {
                    tracing::warn!(%peer, "refusing connection: {} HTTP connections open", limits::CONNECTIONS_MAX);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

impl tokio::io::AsyncRead for Slotted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        on_stream!(self, cx, |s| s.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for Slotted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        on_stream!(self, cx, |s| s.poll_write(cx, buf))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        on_stream!(self, cx, |s| s.poll_flush(cx))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        on_stream!(self, cx, |s| s.poll_shutdown(cx))
    }
}
