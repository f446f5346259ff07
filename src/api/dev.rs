//! `/v1/dev/...`: fault injection for clusters run by `cairn dev`, whose supervisor owns
//! the nodes' processes. Any node of such a cluster takes `POST /v1/dev/{crash, restart,
//! pause, resume, partition, slow, heal}` and forwards it to the supervisor (the node asked
//! may be the one crashed); the supervisor then sets each node's link faults with `POST
//! /v1/dev/links`. A node started any other way answers 403 with a JSON error: nothing
//! here is reachable in a deployed cluster.

use super::http::{Api, ApiError};
use crate::replication::faults::LinkFault;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The error code of a fault-injection request to a node not run by `cairn dev`
/// (SQLSTATE 55000, object not in prerequisite state).
const NOT_DEV: &str = "55000";

fn supervisor(api: &Api) -> Result<std::net::SocketAddr, ApiError> {
    api.engine.dev_supervisor.ok_or_else(|| ApiError {
        status: StatusCode::FORBIDDEN,
        code: NOT_DEV.into(),
        message: "fault injection is only for clusters run by `cairn dev`; this node was not started by it".into(),
    })
}

/// `GET /v1/dev/links`: this node's link faults, by peer cluster address.
pub(super) async fn links(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    supervisor(&api)?;
    Ok(Json(
        json!({ "links": api.engine.cluster.client.faults.all() }),
    ))
}

/// `POST /v1/dev/links` (from the supervisor): replace this node's link faults.
pub(super) async fn set_links(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    supervisor(&api)?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Links {
        links: BTreeMap<String, LinkFault>,
    }
    let links: Links = serde_json::from_slice(&body).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: crate::error::sqlstate::PROTOCOL_VIOLATION.into(),
        message: format!("expected {{\"links\": {{\"host:port\": \"cut\" | {{\"slow\": {{\"delay_ms\": N}}}}}}}}: {e}"),
    })?;
    api.engine.cluster.client.faults.set(links.links);
    Ok(Json(
        json!({ "links": api.engine.cluster.client.faults.all() }),
    ))
}

/// `POST /v1/dev/{action}`: handed to the supervisor as it is; its answer comes back.
pub(super) async fn action(
    State(api): State<Api>,
    Path(action): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let supervisor = supervisor(&api)?;
    let url = format!("http://{supervisor}/dev/{action}");
    let body = if body.is_empty() {
        b"{}".to_vec()
    } else {
        body.to_vec()
    };
    let answer = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A restart waits for the node to be ready again.
            .timeout_global(Some(Duration::from_secs(90)))
            .build()
            .into();
        let mut resp = agent
            .post(&url)
            .header("content-type", "application/json")
            .send(&body[..])
            .map_err(|e| format!("the dev supervisor at {url} does not answer: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("reading the dev supervisor's answer: {e}"))?;
        Ok::<_, String>((status, text))
    })
    .await
    .map_err(crate::error::Error::internal)?;
    let unavailable = |message: String| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "08006".into(),
        message,
    };
    let (status, text) = answer.map_err(unavailable)?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|_| unavailable(format!("the dev supervisor answered {status}: {text}")))?;
    // Faults injected show among the cluster's events, beside their effects.
    if let Some(message) = value["message"].as_str().filter(|_| status == 200) {
        if action != "faults" {
            api.engine
                .cluster
                .journal
                .record("fault", format!("dev: {message}"));
        }
    }
    Ok((
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(value),
    ))
}
