//! The dashboard at `/`: a page and its script and style, compiled into the binary (no
//! network needed), drawing from the node's own HTTP API — nodes, shards and alerts,
//! events, a SQL console, a live view of a table or prefix over `/v1/ws`, and fault
//! buttons in a `cairn dev` cluster (`/v1/dev/...`), and charts of the last 15 minutes drawn
//! with uPlot (vendored, MIT: `dashboard/vendor/`) from every node's `/v1/timeline`.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");
const UPLOT: &str = include_str!("dashboard/vendor/uPlot.iife.js");
const UPLOT_STYLE: &str = include_str!("dashboard/vendor/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("dashboard/vendor/LICENSE-uPlot");

pub(super) async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
}

pub(super) async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
}

pub(super) async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
}

/// uPlot's script, stylesheet and licence (`/dashboard/vendor/...`). They change only with
/// the binary: the browser may keep them for a day.
pub(super) async fn vendor(
    axum::extract::Path(file): axum::extract::Path<String>,
) -> axum::response::Response {
    let (kind, body) = match file.as_str() {
        "uPlot.iife.js" => ("text/javascript; charset=utf-8", UPLOT),
        "uPlot.min.css" => ("text/css; charset=utf-8", UPLOT_STYLE),
        "LICENSE-uPlot" => ("text/plain; charset=utf-8", UPLOT_LICENSE),
        _ => return super::http::not_found().await.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        body,
    )
        .into_response()
}
