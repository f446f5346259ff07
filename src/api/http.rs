//! HTTP/JSON API (axum). `POST /v1/sql` runs one statement (`{"sql", "params"}`) or an atomic
//! batch (`{"statements": [{"sql", "params"}, ...]}`); `GET /health` reports the node. Errors
//! are `{"error": {"code": "<SQLSTATE>", "message": "..."}}` with a 4xx/5xx status.

use crate::error::{sqlstate, Error};
use crate::limits;
use crate::sql::{Engine, Output, Session};
use crate::types::{self, PgType};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::types::Value;
use serde::Deserialize;
use serde_json::{json, Value as Json_};
use std::sync::Arc;
use tokio::net::TcpListener;

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

struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Sql { code, .. } if *code == sqlstate::PROGRAM_LIMIT_EXCEEDED => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Error::Sql { code, .. } if code.starts_with("40") => StatusCode::CONFLICT,
            Error::Sql { .. } => StatusCode::BAD_REQUEST,
            Error::Retry(_) => StatusCode::CONFLICT,
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
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
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
fn json_value(v: &Value, ty: PgType) -> Json_ {
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
async fn sql(
    State(engine): State<Arc<Engine>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Json_>, ApiError> {
    let body = body.map_err(|r| {
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
    })?;
    let req: SqlRequest = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid JSON request: {e}")))?;
    let mut session = engine.session();
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
async fn health(State(engine): State<Arc<Engine>>) -> Json<Json_> {
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
    Json(json!({ "status": "ok", "node": engine.cluster.node.to_string(), "shards": shards }))
}

/// This node's replicas: applied log index and a checksum of their rows, for comparing
/// replicas (equal checksums at equal applied indexes).
async fn replicas(State(engine): State<Arc<Engine>>) -> Result<Json<Json_>, ApiError> {
    let mut replicas = Vec::new();
    for group in engine.cluster.groups() {
        let (applied, checksum) = group.replica.checksum().await?;
        replicas.push(json!({
            "shard": group.shard.to_string(),
            "applied_index": applied,
            "checksum": format!("{checksum:016x}"),
        }));
    }
    Ok(Json(
        json!({ "node": engine.cluster.node.to_string(), "replicas": replicas }),
    ))
}

/// Prometheus text exposition.
async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        engine.metrics.encode(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "42704".into(),
        message: "no such endpoint".into(),
    }
}

pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/v1/sql", post(sql))
        .route("/health", get(health))
        .route("/v1/replicas", get(replicas))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limits::HTTP_BODY_BYTES_MAX))
        .with_state(engine)
}

pub async fn serve(listener: TcpListener, engine: Arc<Engine>) {
    if let Err(e) = axum::serve(listener, router(engine)).await {
        tracing::error!(error = %e, "http server stopped");
    }
}
