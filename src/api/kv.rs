//! The key-value HTTP API over `sql::kv`:
//! - `PUT /v1/kv/{key}[?ttl=30s]`: the body is the value, its Content-Type kept; answers
//!   `{"key", "version"}` and `ETag: "<version>"`.
//! - `GET /v1/kv/{key}`: the value as stored, its Content-Type, `ETag`; 404 when absent or
//!   expired; `If-None-Match: "<version>"` answers 304 when unchanged.
//! - `DELETE /v1/kv/{key}`: `{"key", "deleted": bool}`.
//! - `GET /v1/kv?prefix=P&limit=L&after=K`: live keys in order, paged (`next` is the `after`
//!   of the next page).
//! - `If-Match: "<version>"` on PUT/DELETE writes only that version, `If-None-Match: *` on
//!   PUT creates only; a precondition that fails answers 412.
//! - `POST /v1/kv/txn`: `{"ops": [{"put": k, "value": "..."|"value_base64": "...",
//!   "content_type"?, "ttl"?, "if_version"?, "if_absent"?}, {"delete": k, "if_version"?},
//!   {"check": k, "if_version"?|"if_absent"?|"if_present"?}]}`: all or nothing, across shards.
//!
//! Reads take `?consistency=` and `?max_staleness=` as `/v1/sql` does. Errors are
//! `{"error": {"code", "message"}}`: the API's own codes are words (`not_found`,
//! `precondition_failed`, `bad_request`, `too_large`); errors of the engine underneath keep
//! their SQLSTATE (`57P03` unavailable, `08007` outcome unknown, ...).

use super::http::{body_bytes, detached, parse_body, Api, ApiError};
use crate::error::{sqlstate, Error};
use crate::limits;
use crate::sql::kv::{self, Condition, Done, Entry, Op, Outcome};
use crate::storage::cancel::Cancel;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value as Json_};
use std::time::Duration;

/// The API's own error codes.
pub mod code {
    pub const NOT_FOUND: &str = "not_found";
    pub const PRECONDITION_FAILED: &str = "precondition_failed";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const TOO_LARGE: &str = "too_large";
}

pub(super) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code: code.into(),
        message: message.into(),
    }
}

pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
    error(StatusCode::BAD_REQUEST, code::BAD_REQUEST, message)
}

/// An engine error, with the API's codes for what the caller sent wrong.
fn engine_error(e: Error) -> ApiError {
    match &e {
        Error::Sql { code, message } if *code == sqlstate::PROGRAM_LIMIT_EXCEEDED => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::TOO_LARGE,
            message.clone(),
        ),
        Error::Sql { code, message } if *code == sqlstate::INVALID_PARAMETER_VALUE => {
            bad_request(message.clone())
        }
        _ => e.into(),
    }
}

/// A value as JSON: `("value", text)` when it is UTF-8, else `("value_base64", ...)`.
pub fn value_json(bytes: &[u8]) -> (&'static str, Json_) {
    match std::str::from_utf8(bytes) {
        Ok(text) => ("value", json!(text)),
        Err(_) => (
            "value_base64",
            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

fn expiry_text(micros: i64) -> String {
    crate::types::format_timestamp_micros(micros - crate::types::PG_EPOCH_UNIX_MICROS, true)
}

fn entry_json(e: &Entry) -> Json_ {
    let mut object = Map::new();
    object.insert("key".into(), json!(e.key));
    let (field, value) = value_json(&e.value);
    object.insert(field.into(), value);
    object.insert("content_type".into(), json!(e.content_type));
    object.insert("version".into(), json!(e.version));
    object.insert("expires_at".into(), json!(e.expires_at.map(expiry_text)));
    Json_::Object(object)
}

fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("a number is a header value")
}

/// `"N"`, `W/"N"` or `N` as a version; `*` as "any existing version".
fn parse_tag(text: &str) -> Result<Condition, ApiError> {
    let t = text.trim();
    if t == "*" {
        return Ok(Condition::Present);
    }
    let t = t.strip_prefix("W/").unwrap_or(t).trim_matches('"');
    t.parse::<i64>().map(Condition::Version).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            code::BAD_REQUEST,
            format!("a precondition names one version, as in If-Match: \"42\" (got {text:?})"),
        )
    })
}

/// The write condition the request's headers ask for.
fn condition(headers: &HeaderMap) -> Result<Condition, ApiError> {
    let header_text = |name: header::HeaderName| -> Result<Option<String>, ApiError> {
        headers
            .get(&name)
            .map(|v| {
                v.to_str()
                    .map(str::to_string)
                    .map_err(|_| bad_request(format!("{name} is not text")))
            })
            .transpose()
    };
    match (
        header_text(header::IF_MATCH)?,
        header_text(header::IF_NONE_MATCH)?,
    ) {
        (None, None) => Ok(Condition::Any),
        (Some(m), None) => parse_tag(&m),
        (None, Some(n)) if n.trim() == "*" => Ok(Condition::Absent),
        (None, Some(_)) => Err(bad_request(
            "a write takes If-None-Match: * (create only) or If-Match: \"<version>\"",
        )),
        (Some(_), Some(_)) => Err(bad_request("send If-Match or If-None-Match, not both")),
    }
}

fn precondition_failed(key: &str, condition: Condition) -> ApiError {
    let why = match condition {
        Condition::Absent => format!("key {key:?} exists"),
        Condition::Version(v) => format!("key {key:?} is not at version {v}"),
        Condition::Present | Condition::Any => format!("key {key:?} does not exist"),
    };
    error(
        StatusCode::PRECONDITION_FAILED,
        code::PRECONDITION_FAILED,
        why,
    )
}

fn parse_ttl(text: &str) -> Result<Duration, ApiError> {
    match crate::units::duration(text) {
        Some(d) if !d.is_zero() && d <= limits::KV_TTL_MAX => Ok(d),
        _ => Err(bad_request(format!(
            "ttl is a duration such as 30s, 5m or 2h, above zero and at most {} days (got {text:?})",
            limits::KV_TTL_MAX.as_secs() / 86_400
        ))),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadParams {
    consistency: Option<String>,
    max_staleness: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WriteParams {
    ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    after: Option<String>,
    consistency: Option<String>,
    max_staleness: Option<String>,
}

/// Query parameters, or a coded error naming what is wrong with them.
pub(super) fn query<T: serde::de::DeserializeOwned + Default>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| bad_request(format!("bad query parameters: {}", e.body_text())))
}

pub(super) type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// `GET /v1/kv/{key}`.
pub(super) async fn get(
    State(api): State<Api>,
    Path(key): Path<String>,
    headers: HeaderMap,
    params: QueryResult<ReadParams>,
) -> Result<Response, ApiError> {
    read_key(api, key, headers, query(params)?).await
}

async fn read_key(
    api: Api,
    key: String,
    headers: HeaderMap,
    params: ReadParams,
) -> Result<Response, ApiError> {
    let found = kv::get(
        &api.engine,
        &key,
        params.consistency.as_deref(),
        params.max_staleness.as_deref(),
    )
    .await
    .map_err(engine_error)?;
    let Some(entry) = found else {
        return Err(error(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            format!("no key {key:?} (never written, deleted, or expired)"),
        ));
    };
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_tag(v).ok())
        .is_some_and(|c| c == Condition::Version(entry.version));
    if unchanged {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag(entry.version))],
        )
            .into_response());
    }
    let content_type = entry
        .content_type
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::ETAG, etag(entry.version)),
        ],
        entry.value,
    )
        .into_response();
    if let Some(at) = entry.expires_at {
        if let Ok(v) = HeaderValue::from_str(&expiry_text(at)) {
            response.headers_mut().insert("x-cairn-expires-at", v);
        }
    }
    Ok(response)
}

/// `PUT /v1/kv/{key}`.
pub(super) async fn put(
    State(api): State<Api>,
    Path(key): Path<String>,
    headers: HeaderMap,
    params: QueryResult<WriteParams>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    write_key(api, key, headers, query(params)?, body).await
}

async fn write_key(
    api: Api,
    key: String,
    headers: HeaderMap,
    params: WriteParams,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let value = body_bytes(body).map_err(|e| match e.status {
        StatusCode::PAYLOAD_TOO_LARGE => error(e.status, code::TOO_LARGE, e.message),
        _ => error(e.status, code::BAD_REQUEST, e.message),
    })?;
    let condition = condition(&headers)?;
    let ttl = params.ttl.as_deref().map(parse_ttl).transpose()?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let op = Op::Put {
        key: key.clone(),
        value: value.to_vec(),
        content_type,
        ttl,
        condition,
    };
    match apply(&api, vec![op]).await? {
        Outcome::Applied(done) => match done.first() {
            Some(Done::Put { version }) => Ok((
                [(header::ETAG, etag(*version))],
                Json(json!({"key": key, "version": version})),
            )
                .into_response()),
            other => Err(Error::internal(format!("a put answered {other:?}")).into()),
        },
        Outcome::ConditionFailed { .. } => Err(precondition_failed(&key, condition)),
    }
}

/// `DELETE /v1/kv/{key}`.
pub(super) async fn delete(
    State(api): State<Api>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete_key(api, key, headers).await
}

async fn delete_key(api: Api, key: String, headers: HeaderMap) -> Result<Response, ApiError> {
    let condition = condition(&headers)?;
    let op = Op::Delete {
        key: key.clone(),
        condition,
    };
    match apply(&api, vec![op]).await? {
        Outcome::Applied(done) => {
            let deleted = matches!(done.first(), Some(Done::Deleted(true)));
            Ok(Json(json!({"key": key, "deleted": deleted})).into_response())
        }
        Outcome::ConditionFailed { .. } => Err(precondition_failed(&key, condition)),
    }
}

/// The key named `txn`, which `/v1/kv/txn` would otherwise shadow.
pub(super) async fn get_txn_key(
    State(api): State<Api>,
    headers: HeaderMap,
    params: QueryResult<ReadParams>,
) -> Result<Response, ApiError> {
    read_key(api, "txn".into(), headers, query(params)?).await
}

pub(super) async fn put_txn_key(
    State(api): State<Api>,
    headers: HeaderMap,
    params: QueryResult<WriteParams>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    write_key(api, "txn".into(), headers, query(params)?, body).await
}

pub(super) async fn delete_txn_key(
    State(api): State<Api>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete_key(api, "txn".into(), headers).await
}

/// Apply a write to its end whatever the client does (see `http::detached`).
async fn apply(api: &Api, ops: Vec<Op>) -> Result<Outcome, ApiError> {
    let engine = api.engine.clone();
    detached(Cancel::default(), async move {
        kv::apply(&engine, &ops).await.map_err(engine_error)
    })
    .await
}

/// `GET /v1/kv?prefix=P&limit=L&after=K`.
pub(super) async fn list(
    State(api): State<Api>,
    params: QueryResult<ListParams>,
) -> Result<Json<Json_>, ApiError> {
    let params = query(params)?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > limits::KV_LIST_MAX {
        return Err(bad_request(format!(
            "limit is between 1 and {} (got {limit})",
            limits::KV_LIST_MAX
        )));
    }
    let entries = kv::list(
        &api.engine,
        &params.prefix,
        params.after.as_deref(),
        limit + 1,
        params.consistency.as_deref(),
        params.max_staleness.as_deref(),
    )
    .await
    .map_err(engine_error)?;
    let more = entries.len() > limit;
    let page = &entries[..entries.len().min(limit)];
    let next = if more {
        page.last().map(|e| e.key.clone())
    } else {
        None
    };
    Ok(Json(json!({
        "items": page.iter().map(entry_json).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// One step of `POST /v1/kv/txn`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnStep {
    put: Option<String>,
    delete: Option<String>,
    check: Option<String>,
    value: Option<String>,
    value_base64: Option<String>,
    content_type: Option<String>,
    ttl: Option<String>,
    if_version: Option<i64>,
    #[serde(default)]
    if_absent: bool,
    #[serde(default)]
    if_present: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnRequest {
    ops: Vec<TxnStep>,
}

fn step_op(i: usize, s: TxnStep) -> Result<Op, ApiError> {
    let fail = |m: &str| bad_request(format!("step {i}: {m}"));
    let condition = match (s.if_version, s.if_absent, s.if_present) {
        (None, false, false) => Condition::Any,
        (Some(v), false, false) => Condition::Version(v),
        (None, true, false) => Condition::Absent,
        (None, false, true) => Condition::Present,
        _ => {
            return Err(fail(
                "give at most one of if_version, if_absent, if_present",
            ))
        }
    };
    let plain = s.value.is_none()
        && s.value_base64.is_none()
        && s.content_type.is_none()
        && s.ttl.is_none();
    match (s.put, s.delete, s.check) {
        (Some(key), None, None) => {
            let value = match (s.value, s.value_base64) {
                (Some(text), None) => text.into_bytes(),
                (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| fail(&format!("value_base64 is not base64: {e}")))?,
                _ => return Err(fail("a put has one of value, value_base64")),
            };
            let ttl = s.ttl.as_deref().map(parse_ttl).transpose()?;
            Ok(Op::Put {
                key,
                value,
                content_type: s.content_type,
                ttl,
                condition,
            })
        }
        (None, Some(key), None) if plain => Ok(Op::Delete { key, condition }),
        (None, None, Some(key)) if plain && condition != Condition::Any => {
            Ok(Op::Check { key, condition })
        }
        (None, None, Some(_)) if plain => {
            Err(fail("a check has one of if_version, if_absent, if_present"))
        }
        (None, Some(_), None) | (None, None, Some(_)) => Err(fail(
            "value, value_base64, content_type and ttl belong to a put",
        )),
        _ => Err(fail("each step has one of put, delete, check")),
    }
}

/// `POST /v1/kv/txn`.
pub(super) async fn txn(
    State(api): State<Api>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Json_>, ApiError> {
    let body = body_bytes(body).map_err(|e| match e.status {
        StatusCode::PAYLOAD_TOO_LARGE => error(e.status, code::TOO_LARGE, e.message),
        _ => error(e.status, code::BAD_REQUEST, e.message),
    })?;
    let request: TxnRequest = parse_body(&body).map_err(|e| bad_request(e.message))?;
    let ops = request
        .ops
        .into_iter()
        .enumerate()
        .map(|(i, s)| step_op(i, s))
        .collect::<Result<Vec<_>, _>>()?;
    let conditions: Vec<Condition> = ops
        .iter()
        .map(|op| match op {
            Op::Put { condition, .. }
            | Op::Delete { condition, .. }
            | Op::Check { condition, .. } => *condition,
        })
        .collect();
    match apply(&api, ops.clone()).await? {
        Outcome::Applied(done) => {
            let results: Vec<Json_> = ops
                .iter()
                .zip(done)
                .map(|(op, d)| match d {
                    Done::Put { version } => json!({"key": op.key(), "version": version}),
                    Done::Deleted(deleted) => json!({"key": op.key(), "deleted": deleted}),
                    Done::Checked { version } => json!({"key": op.key(), "version": version}),
                })
                .collect();
            Ok(Json(json!({ "results": results })))
        }
        Outcome::ConditionFailed { step, key } => {
            let mut e = precondition_failed(&key, conditions[step]);
            e.message = format!("step {step}: {}; nothing was applied", e.message);
            Err(e)
        }
    }
}
