//! WebSocket subscriptions at `GET /v1/ws`: JSON text messages, several subscriptions per
//! connection, each with the id its client chose.
//!
//! Client → server:
//! - `{"id": "s1", "subscribe": {"table": "rides", "where": "status = 'open'"}}`, with
//!   optional `"from": "now" | "<token>"`, `"snapshot": true`, `"progress_ms": 1000`.
//! - `{"id": "s2", "subscribe": {"prefix": "cart/"}}`: keys of the key-value API.
//! - `{"id": "s3", "subscribe": {"files": "photos/"}}`: files under a path prefix, as
//!   `{"id", "file": {"op": "created" | "overwritten" | "renamed" | "deleted", "path",
//!   "from"?, "size", "sha256", "content_type", "txn", "time", "token"}}` (a rename is one
//!   event, seen by subscribers of either path's prefix; its `from` is the old path).
//! - `{"unsubscribe": "s1"}`.
//!
//! Server → client, per subscription:
//! - `{"id", "subscribed": {"token"}}`: where delivery starts;
//! - with a snapshot, `{"id", "snapshot": [row, ...]}` messages, then `{"id",
//!   "snapshot_done": {"rows": n}}`;
//! - `{"id", "event": {"shard", "table", "op", "key", "new", "old", "txn", "time",
//!   "token"}}`;
//! - `{"id", "progress": "<token>"}` every `progress_ms`: everything before it has been
//!   sent;
//! - `{"id", "error": {"code", "message", "token"?}}`, after which the subscription is over
//!   (`token`: where to resume). Codes: see [`code`].
//!
//! Each subscription runs in its own task and writes to the connection's bounded outbox
//! (`WS_OUTBOX_MAX` messages), waiting while it is full: a client that reads slowly is
//! served at its pace (a subscription behind the feed reads the kept events, not memory);
//! one that frees no room for `WS_SLOW_CLIENT_WAIT` is cut (`slow_consumer`, with each
//! subscription's last written token) — never skipped ahead, never buffered without bound.

use super::http::json_value;
use crate::cluster::feed::Token;
use crate::error::Error;
use crate::limits;
use crate::sql::subscribe::{self, Change, Columns, End, Subscription};
use crate::sql::{files, kv, Engine};
use crate::storage::changeset::ChangeOp;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use rusqlite::types::Value;
use serde::Deserialize;
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Error codes of `{"error": {"code"}}`.
pub mod code {
    /// The message was not JSON, or not a request this API knows.
    pub const BAD_REQUEST: &str = "bad_request";
    /// A subscription with this id is already open on the connection.
    pub const DUPLICATE_ID: &str = "duplicate_id";
    /// `SUBSCRIPTIONS_PER_CONNECTION_MAX` or `SUBSCRIPTIONS_PER_NODE_MAX` reached.
    pub const TOO_MANY_SUBSCRIPTIONS: &str = "too_many_subscriptions";
    /// No such table.
    pub const UNDEFINED_TABLE: &str = "undefined_table";
    /// The `where` condition does not parse or is not a row condition.
    pub const INVALID_CONDITION: &str = "invalid_condition";
    /// The token is malformed or is not for this table's shards.
    pub const INVALID_TOKEN: &str = "invalid_token";
    /// The token is older than the change window: resubscribe with `"snapshot": true`.
    pub const TOKEN_EXPIRED: &str = "token_expired";
    /// The table was dropped or laid out anew.
    pub const TABLE_CHANGED: &str = "table_changed";
    /// The client did not read fast enough; resume from the token given.
    pub const SLOW_CONSUMER: &str = "slow_consumer";
    /// The cluster could not serve the subscription now; resume from the token given.
    pub const UNAVAILABLE: &str = "unavailable";
    /// Asked for something Cairn does not do yet.
    pub const UNSUPPORTED: &str = "unsupported";
}

/// Subscriptions open on this node.
#[derive(Default)]
pub struct Subscriptions {
    open: AtomicUsize,
}

/// Holds one place in the node's subscription count.
struct Counted(Arc<Subscriptions>);

impl Subscriptions {
    fn take(self: &Arc<Self>) -> Option<Counted> {
        let taken = self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limits::SUBSCRIPTIONS_PER_NODE_MAX).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| Counted(self.clone()))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    id: Option<String>,
    subscribe: Option<SubscribeRequest>,
    unsubscribe: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeRequest {
    table: Option<String>,
    #[serde(rename = "where")]
    condition: Option<String>,
    prefix: Option<String>,
    files: Option<String>,
    from: Option<String>,
    #[serde(default)]
    snapshot: bool,
    progress_ms: Option<u64>,
}

/// What the connection's writer sends: a message, and for a subscription's message the
/// token it moves that subscription to once written.
struct Outgoing {
    text: String,
    delivered: Option<(String, Token)>,
}

/// The connection's outbox and what was written from it.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    /// Set when the outbox overflowed: the writer cuts the connection.
    slow: Arc<tokio::sync::Notify>,
}

impl Outbox {
    /// Queue a message now; when the outbox is full the client is too slow and the
    /// connection is cut (false).
    fn post(&self, text: String, delivered: Option<(String, Token)>) -> bool {
        match self.tx.try_send(Outgoing { text, delivered }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.slow.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queue a subscription's message, waiting while the outbox is full: a client that
    /// reads is throttled to its pace (its subscription falls behind the feed, not into
    /// memory); one that frees no room for `WS_SLOW_CLIENT_WAIT` is too slow and is cut.
    async fn deliver(&self, text: String, delivered: Option<(String, Token)>) -> bool {
        let queued = self.tx.send(Outgoing { text, delivered });
        match tokio::time::timeout(limits::WS_SLOW_CLIENT_WAIT, queued).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.slow.notify_one();
                false
            }
        }
    }

    /// Queue a progress message unless the outbox is full (the next one says the same,
    /// later); false only when the connection is gone.
    fn progress(&self, text: String, delivered: (String, Token)) -> bool {
        match self.tx.try_send(Outgoing {
            text,
            delivered: Some(delivered),
        }) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn error(&self, id: &str, code: &str, message: &str, token: Option<&Token>) -> bool {
        let mut error = json!({"code": code, "message": message});
        if let Some(t) = token {
            error["token"] = json!(t.to_string());
        }
        self.post(json!({"id": id, "error": error}).to_string(), None)
    }
}

/// `GET /v1/ws`: upgrade to a WebSocket serving subscriptions.
pub fn upgrade(
    ws: WebSocketUpgrade,
    engine: Arc<Engine>,
    subscriptions: Arc<Subscriptions>,
) -> Response {
    ws.max_message_size(limits::WS_MESSAGE_BYTES_MAX)
        .max_frame_size(limits::WS_MESSAGE_BYTES_MAX)
        .on_upgrade(move |socket| serve(socket, engine, subscriptions))
}

async fn serve(socket: WebSocket, engine: Arc<Engine>, subscriptions: Arc<Subscriptions>) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Outgoing>(limits::WS_OUTBOX_MAX);
    let outbox = Outbox {
        tx,
        slow: Arc::new(tokio::sync::Notify::new()),
    };
    // Subscription id → its task and the token of its last message written.
    let open: Arc<Mutex<HashMap<String, tokio::task::JoinHandle<()>>>> = Arc::default();
    let written: Arc<Mutex<HashMap<String, Token>>> = Arc::default();

    let writer = {
        let (slow, written, open) = (outbox.slow.clone(), written.clone(), open.clone());
        async move {
            loop {
                let sent = tokio::select! {
                    biased;
                    _ = slow.notified() => false,
                    out = rx.recv() => match out {
                        None => return,
                        Some(out) => {
                            // Waiting on a client that does not read: the outbox fills
                            // meanwhile, and `slow` interrupts the wait. The message is
                            // finished first all the same (the client may have part of
                            // it already), so the notice's token counts it.
                            let text = Message::Text(Utf8Bytes::from(out.text));
                            let mut sending = std::pin::pin!(sink.send(text));
                            let (sent, cut) = tokio::select! {
                                biased;
                                r = &mut sending => (r, false),
                                _ = slow.notified() => {
                                    match tokio::time::timeout(limits::WS_CUT_NOTICE_WAIT, sending).await {
                                        Ok(r) => (r, true),
                                        // It never finished: close without a notice; the
                                        // client's last whole event has its token.
                                        Err(_) => return,
                                    }
                                }
                            };
                            if sent.is_err() {
                                return;
                            }
                            if let Some((id, token)) = out.delivered {
                                written.lock().expect("ws lock poisoned").insert(id, token);
                            }
                            !cut
                        }
                    },
                };
                if sent {
                    continue;
                }
                // Too slow: stop the subscriptions, tell each where it stands (after what
                // the client will still read), and close.
                for (_, task) in open.lock().expect("ws lock poisoned").drain() {
                    task.abort();
                }
                let tokens = written.lock().expect("ws lock poisoned").clone();
                let notice = async {
                    for (id, token) in tokens {
                        let error = json!({"id": id, "error": {
                            "code": code::SLOW_CONSUMER,
                            "message": format!(
                                "more than {} messages waited for this client; resume from the token",
                                limits::WS_OUTBOX_MAX
                            ),
                            "token": token.to_string(),
                        }});
                        sink.send(Message::Text(Utf8Bytes::from(error.to_string())))
                            .await?;
                    }
                    sink.close().await
                };
                let _ = tokio::time::timeout(limits::WS_CUT_NOTICE_WAIT, notice).await;
                return;
            }
        }
    };
    let reader = async {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Text(text) => {
                    handle(&text, &engine, &subscriptions, &outbox, &open, &written);
                }
                Message::Binary(_) => {
                    outbox.error(
                        "",
                        code::BAD_REQUEST,
                        "messages are JSON text, not binary",
                        None,
                    );
                }
                Message::Close(_) => return,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
    for (_, task) in open.lock().expect("ws lock poisoned").drain() {
        task.abort();
    }
}

/// One client message.
fn handle(
    text: &str,
    engine: &Arc<Engine>,
    subscriptions: &Arc<Subscriptions>,
    outbox: &Outbox,
    open: &Arc<Mutex<HashMap<String, tokio::task::JoinHandle<()>>>>,
    written: &Arc<Mutex<HashMap<String, Token>>>,
) {
    let parsed: Json = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            outbox.error("", code::BAD_REQUEST, &format!("not JSON: {e}"), None);
            return;
        }
    };
    // The id, when there is one, goes with the error about the rest.
    let id = parsed["id"].as_str().unwrap_or("").to_string();
    let message: ClientMessage = match serde_json::from_value(parsed) {
        Ok(m) => m,
        Err(e) => {
            outbox.error(&id, code::BAD_REQUEST, &format!("not a request: {e}"), None);
            return;
        }
    };
    match message {
        ClientMessage {
            unsubscribe: Some(id),
            subscribe: None,
            ..
        } => {
            let task = open.lock().expect("ws lock poisoned").remove(&id);
            written.lock().expect("ws lock poisoned").remove(&id);
            match task {
                Some(task) => {
                    task.abort();
                    outbox.post(json!({"id": id, "unsubscribed": true}).to_string(), None);
                }
                None => {
                    outbox.error(&id, code::BAD_REQUEST, "no such subscription", None);
                }
            }
        }
        ClientMessage {
            id: Some(id),
            subscribe: Some(request),
            unsubscribe: None,
        } => {
            let mut tasks = open.lock().expect("ws lock poisoned");
            tasks.retain(|_, t| !t.is_finished());
            if tasks.contains_key(&id) {
                outbox.error(
                    &id,
                    code::DUPLICATE_ID,
                    "a subscription with this id is open",
                    None,
                );
                return;
            }
            if tasks.len() >= limits::SUBSCRIPTIONS_PER_CONNECTION_MAX {
                outbox.error(
                    &id,
                    code::TOO_MANY_SUBSCRIPTIONS,
                    &format!(
                        "{} subscriptions are open on this connection (the limit)",
                        limits::SUBSCRIPTIONS_PER_CONNECTION_MAX
                    ),
                    None,
                );
                return;
            }
            let Some(counted) = subscriptions.take() else {
                outbox.error(
                    &id,
                    code::TOO_MANY_SUBSCRIPTIONS,
                    &format!(
                        "{} subscriptions are open on this node (the limit)",
                        limits::SUBSCRIPTIONS_PER_NODE_MAX
                    ),
                    None,
                );
                return;
            };
            let task = tokio::spawn(run(
                id.clone(),
                request,
                engine.clone(),
                outbox.clone(),
                counted,
            ));
            tasks.insert(id, task);
        }
        ClientMessage { id, .. } => {
            outbox.error(
                id.as_deref().unwrap_or(""),
                code::BAD_REQUEST,
                "expected {\"id\": ..., \"subscribe\": {...}} or {\"unsubscribe\": id}",
                None,
            );
        }
    }
}

/// The error code for a failure to open a subscription.
fn open_error_code(e: &Error) -> &'static str {
    use crate::error::sqlstate;
    match e.code() {
        sqlstate::UNDEFINED_TABLE => code::UNDEFINED_TABLE,
        sqlstate::INVALID_PARAMETER_VALUE => code::INVALID_TOKEN,
        sqlstate::PROGRAM_LIMIT_EXCEEDED => code::BAD_REQUEST,
        // A table whose changes are not kept (`storage::events::UNRECORDED_TABLES`).
        sqlstate::WRONG_OBJECT_TYPE => code::UNSUPPORTED,
        _ if e.is_client_error() => code::INVALID_CONDITION,
        _ => code::UNAVAILABLE,
    }
}

/// One subscription, from opening it to its end.
async fn run(
    id: String,
    request: SubscribeRequest,
    engine: Arc<Engine>,
    outbox: Outbox,
    _counted: Counted,
) {
    let progress = Duration::from_millis(request.progress_ms.unwrap_or(1000).max(100));
    let files_prefix = request.files.clone();
    let request = match subscribe_request(request) {
        Ok(r) => r,
        Err((code, message)) => {
            outbox.error(&id, code, &message, None);
            return;
        }
    };
    // A prefix subscription may come before the first key or file is written.
    let made = match request.table.as_str() {
        kv::TABLE => kv::ensure_table(&engine).await,
        files::VERSIONS => files::ensure_tables(&engine).await,
        _ => Ok(()),
    };
    if let Err(e) = made {
        outbox.error(&id, code::UNAVAILABLE, &e.to_string(), None);
        return;
    }
    let mut file_events = files_prefix.map(FileEvents::new);
    let table = request.table.clone();
    let (mut subscription, snapshot) = match Subscription::open(&engine, request).await {
        Ok(s) => s,
        Err(e) => {
            outbox.error(&id, open_error_code(&e), &e.to_string(), None);
            return;
        }
    };
    let start = subscription.token().clone();
    let ack = json!({"id": id, "subscribed": {"token": start.to_string()}});
    if !outbox
        .deliver(ack.to_string(), Some((id.clone(), start)))
        .await
    {
        return;
    }
    if let Some(mut snapshot) = snapshot {
        if let Some(events) = &file_events {
            // Files: the current ones under the prefix, as files.
            snapshot
                .rows
                .retain(|r| events.current_under(&snapshot.columns, r));
        }
        let total = snapshot.rows.len();
        for rows in snapshot.rows.chunks(500) {
            let rows: Vec<Json> = rows
                .iter()
                .map(|r| match &file_events {
                    Some(_) => FileEvents::file_json(&snapshot.columns, r),
                    None => row_json(&table, &snapshot.columns, r),
                })
                .collect();
            if !outbox
                .deliver(json!({"id": id, "snapshot": rows}).to_string(), None)
                .await
            {
                return;
            }
        }
        if !outbox
            .deliver(
                json!({"id": id, "snapshot_done": {"rows": total}}).to_string(),
                None,
            )
            .await
        {
            return;
        }
    }
    let mut tick = tokio::time::interval(progress);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            next = subscription.next() => match next {
                Ok(changes) => {
                    if let Some(events) = &mut file_events {
                        events.note_superseded(&changes);
                    }
                    for change in changes {
                        let token = change.token.clone();
                        let message = match &mut file_events {
                            None => json!({"id": id, "event": event_json(&change)}),
                            Some(events) => match events.event(&change) {
                                Some(event) => json!({"id": id, "file": event}),
                                // Not a file event (an upload's progress, a collection):
                                // progress messages carry the token past it.
                                None => continue,
                            },
                        };
                        if !outbox.deliver(message.to_string(), Some((id.clone(), token))).await {
                            return;
                        }
                    }
                }
                Err(end) => {
                    let token = subscription.token();
                    let (code, message, token) = match &end {
                        End::Expired(m) => (code::TOKEN_EXPIRED, m.clone(), None),
                        End::TableChanged(m) => (code::TABLE_CHANGED, m.clone(), None),
                        End::Failed(e) => (code::UNAVAILABLE, e.to_string(), Some(token)),
                    };
                    outbox.error(&id, code, &message, token);
                    return;
                }
            },
            _ = tick.tick() => {
                let token = subscription.token().clone();
                let message = json!({"id": id, "progress": token.to_string()});
                if !outbox.progress(message.to_string(), (id.clone(), token)) {
                    return;
                }
            }
        }
    }
}

fn subscribe_request(
    r: SubscribeRequest,
) -> std::result::Result<subscribe::Request, (&'static str, String)> {
    let from = match r.from.as_deref() {
        None | Some("now") => None,
        Some(text) => Some(
            text.parse::<Token>()
                .map_err(|e| (code::INVALID_TOKEN, e.to_string()))?,
        ),
    };
    match (r.table, r.prefix, r.files) {
        (Some(table), None, None) => Ok(subscribe::Request {
            table,
            condition: r.condition,
            key_prefix: None,
            from,
            snapshot: r.snapshot,
        }),
        (None, Some(prefix), None) if r.condition.is_none() => Ok(subscribe::Request {
            table: kv::TABLE.to_string(),
            condition: None,
            key_prefix: Some(("key".to_string(), prefix)),
            from,
            snapshot: r.snapshot,
        }),
        (None, None, Some(prefix)) if r.condition.is_none() => {
            files::check_prefix(&prefix).map_err(|e| (code::BAD_REQUEST, e.to_string()))?;
            Ok(subscribe::Request {
                table: files::VERSIONS.to_string(),
                condition: None,
                key_prefix: None,
                from,
                snapshot: r.snapshot,
            })
        }
        _ => Err((
            code::BAD_REQUEST,
            "subscribe to one of: {\"table\": ..., \"where\"?: ...}, {\"prefix\": ...}, \
             {\"files\": ...}"
                .into(),
        )),
    }
}

/// A row as a JSON object, each value shaped by its column's type. A key-value row's
/// value is shown as the key-value API lists it (text, or `value_base64`).
fn row_json(table: &str, columns: &Columns, row: &[Value]) -> Json {
    let mut object = Map::new();
    for ((name, ty), value) in columns.iter().zip(row) {
        match (name.as_str(), value) {
            ("value", Value::Blob(bytes)) if table == kv::TABLE => {
                let (field, shown) = super::kv::value_json(bytes);
                object.insert(field.into(), shown);
            }
            _ => {
                object.insert(name.clone(), json_value(value, *ty));
            }
        }
    }
    Json::Object(object)
}

fn event_json(change: &Change) -> Json {
    let row = |values: &[Value]| {
        if values.is_empty() {
            Json::Null
        } else {
            row_json(&change.table, &change.columns, values)
        }
    };
    let keyed = if change.new.is_empty() {
        &change.old
    } else {
        &change.new
    };
    let key = if change.key.is_empty() {
        Json::Null
    } else {
        let mut object = Map::new();
        for &i in change.key.iter() {
            if let (Some((name, ty)), Some(v)) =
                (change.columns.get(i as usize), keyed.get(i as usize))
            {
                object.insert(name.clone(), json_value(v, *ty));
            }
        }
        Json::Object(object)
    };
    let time = crate::types::format_timestamp_micros(
        change.time as i64 - crate::types::PG_EPOCH_UNIX_MICROS,
        true,
    );
    json!({
        "shard": change.shard.to_string(),
        "table": &*change.table,
        "op": match change.op {
            ChangeOp::Insert => "insert",
            ChangeOp::Update => "update",
            ChangeOp::Delete => "delete",
        },
        "key": key,
        "new": row(&change.new),
        "old": row(&change.old),
        "txn": change.txn,
        "time": time,
        "token": change.token.to_string(),
    })
}

/// File events from the changes of `cairn_file_versions` (see `sql::files` for its states):
/// a version made current is `created`, or `overwritten` when the same transaction
/// superseded the path's previous version; a row inserted current is a rename's new path
/// (`renamed`, `from` its old path); a current version marked deleted is `deleted`.
/// Everything else (uploads in progress, collection) is no event.
struct FileEvents {
    prefix: String,
    /// Paths and transactions of the versions superseded lately (a changeset orders one
    /// table's rows by key, not by statement: the superseded row may come after the new
    /// current one, so a batch is looked through first).
    superseded: std::collections::VecDeque<(String, String)>,
}

impl FileEvents {
    fn new(prefix: String) -> FileEvents {
        FileEvents {
            prefix: prefix.trim_start_matches('/').to_string(),
            superseded: Default::default(),
        }
    }

    /// Remember the versions this batch supersedes (kept for the next few batches too, in
    /// case a transaction's changes are split over two).
    fn note_superseded(&mut self, changes: &[Change]) {
        for c in changes {
            let state = |row: &[Value]| Self::text(&c.columns, row, "state");
            if c.op == ChangeOp::Update
                && state(&c.old).as_deref() == Some("current")
                && state(&c.new).as_deref() == Some("superseded")
            {
                if let Some(path) = Self::text(&c.columns, &c.old, "path") {
                    self.superseded.push_back((path, c.txn.clone()));
                }
            }
        }
        while self.superseded.len() > 256 {
            self.superseded.pop_front();
        }
    }

    fn column<'a>(columns: &Columns, row: &'a [Value], name: &str) -> Option<&'a Value> {
        columns
            .iter()
            .position(|(c, _)| c == name)
            .and_then(|i| row.get(i))
    }

    fn text(columns: &Columns, row: &[Value], name: &str) -> Option<String> {
        match Self::column(columns, row, name) {
            Some(Value::Text(t)) => Some(t.clone()),
            _ => None,
        }
    }

    fn current_under(&self, columns: &Columns, row: &[Value]) -> bool {
        Self::text(columns, row, "state").as_deref() == Some("current")
            && Self::text(columns, row, "path").is_some_and(|p| p.starts_with(&self.prefix))
    }

    fn file_json(columns: &Columns, row: &[Value]) -> Json {
        let int = |name: &str| match Self::column(columns, row, name) {
            Some(Value::Integer(i)) => json!(i),
            _ => Json::Null,
        };
        json!({
            "path": Self::text(columns, row, "path"),
            "size": int("size"),
            "sha256": Self::text(columns, row, "sha256"),
            "content_type": Self::text(columns, row, "content_type"),
        })
    }

    fn event(&mut self, change: &Change) -> Option<Json> {
        let (columns, old, new) = (&change.columns, &change.old, &change.new);
        let state = |row: &[Value]| Self::text(columns, row, "state");
        let op = match (change.op, state(old).as_deref(), state(new).as_deref()) {
            (ChangeOp::Update, Some("current"), Some("superseded")) => return None,
            (ChangeOp::Update, Some("uploading" | "resumable"), Some("current")) => {
                let path = Self::text(columns, new, "path");
                let replaced = self
                    .superseded
                    .iter()
                    .any(|(p, t)| Some(p) == path.as_ref() && *t == change.txn);
                if replaced {
                    "overwritten"
                } else {
                    "created"
                }
            }
            (ChangeOp::Insert, _, Some("current")) => "renamed",
            (ChangeOp::Update, Some("current"), Some("deleted")) => "deleted",
            _ => return None,
        };
        let row = if new.is_empty() { old } else { new };
        let path = Self::text(columns, row, "path")?;
        let from = Self::text(columns, row, "renamed_from").filter(|_| op == "renamed");
        let under = path.starts_with(&self.prefix)
            || from.as_ref().is_some_and(|f| f.starts_with(&self.prefix));
        if !under {
            return None;
        }
        let mut event = Self::file_json(columns, row);
        event["op"] = json!(op);
        if let Some(from) = from {
            event["from"] = json!(from);
        }
        event["txn"] = json!(change.txn);
        event["time"] = json!(crate::types::format_timestamp_micros(
            change.time as i64 - crate::types::PG_EPOCH_UNIX_MICROS,
            true,
        ));
        event["token"] = json!(change.token.to_string());
        Some(event)
    }
}
