//! Files over HTTP, on `sql::files`:
//! - `PUT /v1/files/{path}`: the body streamed in (memory bounded whatever its size); the file
//!   appears once every chunk is written, atomically replacing the one before. Answers
//!   `{"path", "size", "sha256", ...}` and `ETag: "<sha256>"`.
//! - `GET /v1/files/{path}`: streamed out with `Content-Length`, `ETag`, `Content-Type`,
//!   `Last-Modified`, `Accept-Ranges`; one `Range: bytes=...` answers 206 (or 416);
//!   `If-None-Match: "<sha256>"` answers 304. `HEAD` the same without the body.
//! - `DELETE /v1/files/{path}`: `{"path", "deleted": bool}`.
//! - `POST /v1/files/{path}?rename_to=P`: atomic rename (a file at `P` is replaced).
//! - `GET /v1/files?prefix=P&limit=L&after=Q`: current files in path order, paged.
//! - Resumable uploads (tus-like offsets): `POST /v1/uploads` `{"path", "length",
//!   "content_type"?}` answers `{"upload": id, "offset": 0, ...}` (201, `Location`);
//!   `PATCH /v1/uploads/{id}` with `Upload-Offset: N` (the upload's offset now) appends the
//!   body and answers the new `Upload-Offset` (204), or the file once `length` bytes are in
//!   (200, as a PUT; `If-Match`/`If-None-Match` apply then); `HEAD`/`GET /v1/uploads/{id}`
//!   tell the offset to resume from; `DELETE` cancels. Bytes are kept in whole chunks: after
//!   a cut-off request the offset is the last whole chunk, and the client resends from it.
//! - `If-Match: "<sha256>"` / `If-Match: *` / `If-None-Match: *` on PUT, DELETE and rename
//!   (of the source) as for keys; a precondition that fails answers 412.
//!
//! Errors are `{"error": {"code", "message"}}` with the key-value API's codes (`not_found`,
//! `precondition_failed`, `bad_request`, `too_large`, `range_not_satisfiable`); the engine's
//! keep their SQLSTATE.

use super::http::{detached, Api, ApiError};
use super::kv::{bad_request, code, error, query, QueryResult};
use crate::error::{sqlstate, Error};
use crate::limits;
use crate::sql::files::{self, Condition, File, Upload};
use crate::storage::cancel::Cancel;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{json, Value as Json_};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const RANGE_NOT_SATISFIABLE: &str = "range_not_satisfiable";
const OFFSET_MISMATCH: &str = "offset_mismatch";

/// An engine error, with the API's codes for what the caller sent or asked wrong.
fn engine_error(e: Error) -> ApiError {
    match &e {
        Error::Sql { code, message } => match *code {
            sqlstate::UNDEFINED_FILE => error(StatusCode::NOT_FOUND, code::NOT_FOUND, message),
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE => error(
                StatusCode::PRECONDITION_FAILED,
                code::PRECONDITION_FAILED,
                message,
            ),
            sqlstate::INVALID_PARAMETER_VALUE => bad_request(message.clone()),
            sqlstate::OBJECT_IN_USE => error(StatusCode::CONFLICT, OFFSET_MISMATCH, message),
            sqlstate::PROGRAM_LIMIT_EXCEEDED => {
                error(StatusCode::PAYLOAD_TOO_LARGE, code::TOO_LARGE, message)
            }
            _ => e.into(),
        },
        _ => e.into(),
    }
}

fn etag(sha256: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{sha256}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

fn http_date(micros: i64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64);
    httpdate::fmt_http_date(at)
}

fn rfc3339(micros: i64) -> String {
    crate::types::format_timestamp_micros(micros - crate::types::PG_EPOCH_UNIX_MICROS, true)
}

fn file_json(f: &File) -> Json_ {
    json!({
        "path": f.path,
        "size": f.size,
        "sha256": f.sha256,
        "content_type": f.content_type,
        "modified_at": rfc3339(f.modified_us),
    })
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<String>, ApiError> {
    headers
        .get(&name)
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| bad_request(format!("{name} is not text")))
        })
        .transpose()
}

/// `"<sha256>"` (or `W/"..."`) as a condition; `*` as "any current file".
fn parse_tag(text: &str) -> Result<Condition, ApiError> {
    let t = text.trim();
    if t == "*" {
        return Ok(Condition::Present);
    }
    let t = t.strip_prefix("W/").unwrap_or(t).trim_matches('"');
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Condition::Sha256(t.to_ascii_lowercase()));
    }
    Err(bad_request(format!(
        "a file's precondition names its SHA-256, as in If-Match: \"<64 hex digits>\" (got {text:?})"
    )))
}

/// The condition a write's headers ask for.
fn condition(headers: &HeaderMap) -> Result<Condition, ApiError> {
    match (
        header_text(headers, header::IF_MATCH)?,
        header_text(headers, header::IF_NONE_MATCH)?,
    ) {
        (None, None) => Ok(Condition::Any),
        (Some(m), None) => parse_tag(&m),
        (None, Some(n)) if n.trim() == "*" => Ok(Condition::Absent),
        (None, Some(_)) => Err(bad_request(
            "a write takes If-None-Match: * (create only) or If-Match: \"<sha256>\"",
        )),
        (Some(_), Some(_)) => Err(bad_request("send If-Match or If-None-Match, not both")),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadParams {
    consistency: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PostParams {
    rename_to: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    after: Option<String>,
    consistency: Option<String>,
}

type PathResult = Result<Path<String>, axum::extract::rejection::PathRejection>;

/// The path from the URL, or a coded error (a path that is not UTF-8, say).
fn url_path(path: PathResult) -> Result<String, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|e| bad_request(format!("invalid file path: {}", e.body_text())))
}

/// `PUT /v1/files/{path}`.
pub(super) async fn put(
    State(api): State<Api>,
    path: PathResult,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let path = url_path(path)?;
    let condition = condition(&headers)?;
    let declared = header_text(&headers, header::CONTENT_LENGTH)?
        .map(|n| n.trim().parse::<u64>())
        .transpose()
        .map_err(|_| bad_request("Content-Length is not a number"))?;
    if declared.is_some_and(|n| n > limits::FILE_BYTES_MAX) {
        return Err(engine_error(Error::sql(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!("a file is at most {} bytes", limits::FILE_BYTES_MAX),
        )));
    }
    let content_type = header_text(&headers, header::CONTENT_TYPE)?;
    let mut upload = Upload::begin(&api.engine, &path, content_type, &condition)
        .await
        .map_err(engine_error)?;
    // If the client goes away, hyper drops this future and with it the upload, which is
    // then abandoned (nothing of it becomes visible).
    let mut stream = body.into_data_stream();
    while let Some(frame) = stream.next().await {
        let bytes = frame.map_err(|e| {
            bad_request(format!(
                "the upload was cut short ({e}); nothing was stored"
            ))
        })?;
        upload.write(&bytes).await.map_err(engine_error)?;
    }
    if let Some(n) = declared {
        if n != upload.size() {
            return Err(bad_request(format!(
                "Content-Length said {n} bytes and {} came; nothing was stored",
                upload.size()
            )));
        }
    }
    // Every byte is in: publish it whatever the client does now.
    let file = detached(Cancel::default(), async move {
        upload.finish(&condition).await.map_err(engine_error)
    })
    .await?;
    Ok(([(header::ETAG, etag(&file.sha256))], Json(file_json(&file))).into_response())
}

/// A `Range` header resolved against a file's size.
#[derive(Debug, PartialEq)]
enum Wanted {
    Whole,
    /// Bytes `start..end` (end exclusive, within the file).
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range; anything else (several ranges, other units) is ignored, as
/// RFC 9110 allows, and the whole file is sent.
fn wanted(range: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // The last N bytes.
        (true, false) => match parse(last) {
            Some(0) => Wanted::Unsatisfiable,
            Some(n) if size > 0 => Wanted::Part(size.saturating_sub(n), size),
            Some(_) => Wanted::Unsatisfiable,
            None => Wanted::Whole,
        },
        (false, _) => {
            let Some(start) = parse(first) else {
                return Wanted::Whole;
            };
            let end = if last.is_empty() {
                size
            } else {
                match parse(last) {
                    Some(l) if l >= start => (l + 1).min(size),
                    _ => return Wanted::Whole,
                }
            };
            if start >= size {
                Wanted::Unsatisfiable
            } else {
                Wanted::Part(start, end)
            }
        }
        (true, true) => Wanted::Whole,
    }
}

/// Bytes `start..end` of `file` as a body. A chunk that is missing or not the size the
/// file says ends it with an error, so the client sees a short body (its Content-Length is
/// not reached), never wrong bytes.
fn stream(engine: Arc<crate::sql::Engine>, file: File, start: u64, end: u64) -> Body {
    let chunks = files::read_range(engine, file, start, end).map_err(|e: Error| {
        tracing::warn!(error = %e, "a download failed part-way");
        std::io::Error::other(e.to_string())
    });
    Body::from_stream(chunks)
}

/// `GET /v1/files/{path}`.
pub(super) async fn get(
    State(api): State<Api>,
    path: PathResult,
    headers: HeaderMap,
    params: QueryResult<ReadParams>,
) -> Result<Response, ApiError> {
    read(api, url_path(path)?, headers, query(params)?, true).await
}

/// `HEAD /v1/files/{path}`.
pub(super) async fn head(
    State(api): State<Api>,
    path: PathResult,
    headers: HeaderMap,
    params: QueryResult<ReadParams>,
) -> Result<Response, ApiError> {
    read(api, url_path(path)?, headers, query(params)?, false).await
}

async fn read(
    api: Api,
    path: String,
    headers: HeaderMap,
    params: ReadParams,
    with_body: bool,
) -> Result<Response, ApiError> {
    let found = files::current(&api.engine, &path, params.consistency.as_deref())
        .await
        .map_err(engine_error)?;
    let Some(file) = found else {
        return Err(error(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            format!("no file {:?}", path.trim_start_matches('/')),
        ));
    };
    let tag = etag(&file.sha256);
    let unchanged = header_text(&headers, header::IF_NONE_MATCH)?
        .and_then(|v| parse_tag(&v).ok())
        .is_some_and(|c| c == Condition::Sha256(file.sha256.clone()));
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response());
    }
    // If-Range naming another version: the whole (new) file, not a piece of it.
    let range_applies = match header_text(&headers, header::IF_RANGE)? {
        Some(v) => parse_tag(&v).ok() == Some(Condition::Sha256(file.sha256.clone())),
        None => true,
    };
    let range = header_text(&headers, header::RANGE)?.filter(|_| range_applies);
    let (status, start, end) = match wanted(range.as_deref(), file.size) {
        Wanted::Whole => (StatusCode::OK, 0, file.size),
        Wanted::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e),
        Wanted::Unsatisfiable => {
            let mut response = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                RANGE_NOT_SATISFIABLE,
                format!("the file has {} bytes", file.size),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", file.size)) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(response);
        }
    };
    let content_type = file
        .content_type
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ETAG, tag)
        .header(header::LAST_MODIFIED, http_date(file.modified_us))
        .header(header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{}", end - 1, file.size),
        );
    }
    let body = if with_body {
        stream(api.engine.clone(), file, start, end)
    } else {
        Body::empty()
    };
    response
        .body(body)
        .map_err(|e| Error::internal(format!("building a file response: {e}")).into())
}

/// `DELETE /v1/files/{path}`.
pub(super) async fn delete(
    State(api): State<Api>,
    path: PathResult,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = url_path(path)?;
    let condition = condition(&headers)?;
    let engine = api.engine.clone();
    let shown = path.trim_start_matches('/').to_string();
    let deleted = detached(Cancel::default(), async move {
        files::delete(&engine, &path, &condition)
            .await
            .map_err(engine_error)
    })
    .await?;
    Ok(Json(json!({"path": shown, "deleted": deleted})).into_response())
}

/// `POST /v1/files/{path}?rename_to=P`.
pub(super) async fn post(
    State(api): State<Api>,
    path: PathResult,
    headers: HeaderMap,
    params: QueryResult<PostParams>,
) -> Result<Response, ApiError> {
    let path = url_path(path)?;
    let Some(to) = query(params)?.rename_to else {
        return Err(bad_request(
            "POST on a file renames it: POST /v1/files/{path}?rename_to=<new path>",
        ));
    };
    let from_condition = condition(&headers)?;
    let engine = api.engine.clone();
    let file = detached(Cancel::default(), async move {
        files::rename(&engine, &path, &to, &from_condition, &Condition::Any)
            .await
            .map_err(engine_error)
    })
    .await?;
    Ok(([(header::ETAG, etag(&file.sha256))], Json(file_json(&file))).into_response())
}

/// `GET /v1/files?prefix=P&limit=L&after=Q`.
pub(super) async fn list(
    State(api): State<Api>,
    params: QueryResult<ListParams>,
) -> Result<Json<Json_>, ApiError> {
    let params = query(params)?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > limits::FILE_LIST_MAX {
        return Err(bad_request(format!(
            "limit is between 1 and {} (got {limit})",
            limits::FILE_LIST_MAX
        )));
    }
    let found = files::list(
        &api.engine,
        &params.prefix,
        params.after.as_deref(),
        limit + 1,
        params.consistency.as_deref(),
    )
    .await
    .map_err(engine_error)?;
    let more = found.len() > limit;
    let page = &found[..found.len().min(limit)];
    let next = if more {
        page.last().map(|f| f.path.clone())
    } else {
        None
    };
    Ok(Json(json!({
        "items": page.iter().map(file_json).collect::<Vec<_>>(),
        "next": next,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUpload {
    path: String,
    length: u64,
    content_type: Option<String>,
}

fn upload_json(u: &files::Resumable) -> Json_ {
    json!({
        "upload": u.id,
        "path": u.path,
        "offset": u.offset,
        "length": u.length,
        "content_type": u.content_type,
    })
}

fn offset_headers(u: &files::Resumable) -> [(header::HeaderName, HeaderValue); 2] {
    [
        (
            header::HeaderName::from_static("upload-offset"),
            HeaderValue::from(u.offset),
        ),
        (
            header::HeaderName::from_static("upload-length"),
            HeaderValue::from(u.length),
        ),
    ]
}

/// `POST /v1/uploads`.
pub(super) async fn create_upload(
    State(api): State<Api>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = super::http::body_bytes(body).map_err(|e| bad_request(e.message))?;
    let request: NewUpload = super::http::parse_body(&body).map_err(|e| bad_request(e.message))?;
    let engine = api.engine.clone();
    let upload = detached(Cancel::default(), async move {
        files::create_resumable(&engine, &request.path, request.length, request.content_type)
            .await
            .map_err(engine_error)
    })
    .await?;
    let location = HeaderValue::from_str(&format!("/v1/uploads/{}", upload.id))
        .map_err(|e| ApiError::from(Error::internal(e.to_string())))?;
    let mut response = (StatusCode::CREATED, Json(upload_json(&upload))).into_response();
    response.headers_mut().insert(header::LOCATION, location);
    response.headers_mut().extend(offset_headers(&upload));
    Ok(response)
}

/// `GET` and `HEAD /v1/uploads/{id}`.
pub(super) async fn upload_status(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let upload = files::resumable(&api.engine, &id)
        .await
        .map_err(engine_error)?;
    Ok((offset_headers(&upload), Json(upload_json(&upload))).into_response())
}

/// `PATCH /v1/uploads/{id}`.
pub(super) async fn append_upload(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let condition = condition(&headers)?;
    let offset = header_text(&headers, header::HeaderName::from_static("upload-offset"))?
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| bad_request("PATCH takes Upload-Offset: <the upload's offset now>"))?;
    let mismatch = |e: Error, engine: Arc<crate::sql::Engine>, id: String| async move {
        let mut answer = engine_error(e).into_response();
        if let Ok(now) = files::resumable(&engine, &id).await {
            answer.headers_mut().extend(offset_headers(&now));
        }
        answer
    };
    let mut appending = match files::Appending::begin(&api.engine, &id, offset).await {
        Ok(a) => a,
        Err(e) => return Ok(mismatch(e, api.engine.clone(), id).await),
    };
    // A client that goes away drops this future: the whole chunks it sent are kept.
    let mut stream = body.into_data_stream();
    while let Some(frame) = stream.next().await {
        let Ok(bytes) = frame else { break };
        if let Err(e) = appending.write(&bytes).await {
            return Ok(mismatch(e, api.engine.clone(), id).await);
        }
    }
    let (upload, file) = detached(Cancel::default(), async move {
        appending.finish(&condition).await.map_err(engine_error)
    })
    .await?;
    Ok(match file {
        Some(file) => (
            [(header::ETAG, etag(&file.sha256))],
            offset_headers(&upload),
            Json(file_json(&file)),
        )
            .into_response(),
        None => (StatusCode::NO_CONTENT, offset_headers(&upload)).into_response(),
    })
}

/// `DELETE /v1/uploads/{id}`.
pub(super) async fn cancel_upload(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let engine = api.engine.clone();
    let shown = id.clone();
    detached(Cancel::default(), async move {
        files::cancel_resumable(&engine, &id)
            .await
            .map_err(engine_error)
    })
    .await?;
    Ok(Json(json!({"upload": shown, "cancelled": true})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_against_the_size() {
        assert_eq!(wanted(None, 10), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=0-4"), 10), Wanted::Part(0, 5));
        assert_eq!(wanted(Some("bytes=5-"), 10), Wanted::Part(5, 10));
        assert_eq!(wanted(Some("bytes=-3"), 10), Wanted::Part(7, 10));
        assert_eq!(wanted(Some("bytes=-30"), 10), Wanted::Part(0, 10));
        assert_eq!(wanted(Some("bytes=8-100"), 10), Wanted::Part(8, 10));
        assert_eq!(wanted(Some("bytes=10-"), 10), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-"), 0), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-1,4-5"), 10), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=5-2"), 10), Wanted::Whole);
        assert_eq!(wanted(Some("items=0-1"), 10), Wanted::Whole);
    }

    #[test]
    fn preconditions_name_a_sha256() {
        let sha = "ab".repeat(32);
        assert_eq!(
            parse_tag(&format!("\"{sha}\"")).unwrap(),
            Condition::Sha256(sha.clone())
        );
        assert_eq!(parse_tag("*").unwrap(), Condition::Present);
        assert!(parse_tag("\"42\"").is_err());
    }
}
