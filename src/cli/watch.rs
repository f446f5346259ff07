//! `cairn watch`: follow a table's changes or a key prefix over `/v1/ws` and print each
//! event as it comes. When the connection drops it reconnects — to the next of `--url`'s
//! nodes — and resumes from the last event's token, so nothing is printed twice or missed.

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["table", "prefix"])))]
pub struct WatchArgs {
    /// HTTP address of a node, or several comma-separated (tried in turn on reconnect).
    #[arg(long, default_value = "http://127.0.0.1:8080", value_delimiter = ',')]
    pub url: Vec<String>,
    /// The table to follow.
    #[arg(long)]
    pub table: Option<String>,
    /// Only rows matching this SQL condition (old or new row).
    #[arg(long = "where", requires = "table")]
    pub condition: Option<String>,
    /// Keys of the key-value API starting with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Resume after this token (printed with each event under --json) instead of now.
    #[arg(long)]
    pub from: Option<String>,
    /// First print the rows that match now, then every change after them.
    #[arg(long)]
    pub snapshot: bool,
    /// One JSON message per line, progress included, exactly as the server sends them.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Give up when no node could be reached for this long.
    #[arg(long, default_value = "30s", value_parser = crate::units::duration_arg)]
    pub retry_for: Duration,
}

/// The WebSocket address of a node given as `host:port`, `http://...` or `ws://...`.
fn ws_url(url: &str) -> String {
    let base = url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_string()
    } else {
        format!("ws://{base}")
    };
    if base.ends_with("/v1/ws") {
        base
    } else {
        format!("{base}/v1/ws")
    }
}

/// How one connection ended.
enum Ended {
    /// Printed `--count` events.
    Done,
    /// The connection dropped; resume elsewhere.
    Lost(String),
}

pub async fn run(args: WatchArgs) -> Result<()> {
    let mut token = args.from.clone();
    let mut printed = 0u64;
    let mut snapshot = args.snapshot;
    let mut next = 0usize;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let url = ws_url(&args.url[next % args.url.len()]);
        next += 1;
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(&url),
        )
        .await;
        let stream = match connected {
            Ok(Ok((stream, _))) => {
                unreachable_since = None;
                stream
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > args.retry_for {
                    bail!(
                        "no node answered for {:?} (last: {url}: {why})",
                        args.retry_for
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut request = match (&args.table, &args.prefix) {
            (Some(t), _) => json!({ "table": t }),
            (None, Some(p)) => json!({ "prefix": p }),
            (None, None) => bail!("give --table or --prefix"),
        };
        if let Some(c) = &args.condition {
            request["where"] = json!(c);
        }
        if let Some(t) = &token {
            request["from"] = json!(t);
        }
        if snapshot {
            request["snapshot"] = json!(true);
        }
        match follow(
            stream,
            request,
            &args,
            &mut token,
            &mut printed,
            &mut snapshot,
        )
        .await?
        {
            Ended::Done => return Ok(()),
            Ended::Lost(why) => {
                eprintln!(
                    "cairn watch: {url}: {why}; resuming from {}",
                    token.as_deref().unwrap_or("now")
                );
            }
        }
    }
}

/// Follow on one connection until it ends; `token` moves with each event printed.
async fn follow(
    mut stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    request: Value,
    args: &WatchArgs,
    token: &mut Option<String>,
    printed: &mut u64,
    snapshot: &mut bool,
) -> Result<Ended> {
    let subscribe = json!({"id": "watch", "subscribe": request});
    if let Err(e) = stream
        .send(Message::Text(subscribe.to_string().into()))
        .await
    {
        return Ok(Ended::Lost(e.to_string()));
    }
    let mut started = None;
    loop {
        // Progress comes every second: a longer silence means the node is gone.
        let message = match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Err(_) => return Ok(Ended::Lost("no message for 10 s".into())),
            Ok(None) => return Ok(Ended::Lost("connection closed".into())),
            Ok(Some(Err(e))) => return Ok(Ended::Lost(e.to_string())),
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Close(_)))) => return Ok(Ended::Lost("connection closed".into())),
            Ok(Some(Ok(_))) => continue,
        };
        let m: Value = serde_json::from_str(&message).context("a message that is not JSON")?;
        if args.json {
            println!("{m}");
        }
        if let Some(e) = m.get("error") {
            let code = e["code"].as_str().unwrap_or("");
            if code == "unavailable" || code == "slow_consumer" {
                if let Some(t) = e["token"].as_str() {
                    *token = Some(t.to_string());
                }
                return Ok(Ended::Lost(format!("{code}: {}", e["message"])));
            }
            return Err(anyhow!("{code}: {}", e["message"].as_str().unwrap_or("")));
        }
        if let Some(start) = m["subscribed"]["token"].as_str() {
            // With a snapshot, the start counts once the snapshot is all printed: a
            // connection lost half-way starts over with a new snapshot.
            started = Some(start.to_string());
            if !*snapshot {
                *token = started.clone();
            }
        } else if let Some(rows) = m["snapshot"].as_array() {
            if !args.json {
                for row in rows {
                    println!("snapshot {row}");
                }
            }
        } else if m.get("snapshot_done").is_some() {
            // A resume after this starts from the token, not from a new snapshot.
            *snapshot = false;
            *token = started.clone();
        } else if let Some(event) = m.get("event") {
            if !args.json {
                println!("{}", human(event));
            }
            if let Some(t) = event["token"].as_str() {
                *token = Some(t.to_string());
            }
            *printed += 1;
            if args.count.is_some_and(|c| *printed >= c) {
                return Ok(Ended::Done);
            }
        } else if let Some(t) = m["progress"].as_str() {
            *token = Some(t.to_string());
        }
    }
}

/// One event as a line: `insert rides {"id":1} {"id":1,"status":"open",...}`.
fn human(event: &Value) -> String {
    let op = event["op"].as_str().unwrap_or("?");
    let table = event["table"].as_str().unwrap_or("?");
    let row = if event["new"].is_null() {
        &event["old"]
    } else {
        &event["new"]
    };
    format!("{op} {table} {} {row}", event["key"])
}

#[cfg(test)]
mod tests {
    use super::ws_url;

    #[test]
    fn node_addresses_become_websocket_urls() {
        assert_eq!(ws_url("127.0.0.1:8080"), "ws://127.0.0.1:8080/v1/ws");
        assert_eq!(ws_url("http://h:1/"), "ws://h:1/v1/ws");
        assert_eq!(ws_url("https://h:1"), "wss://h:1/v1/ws");
        assert_eq!(ws_url("ws://h:1/v1/ws"), "ws://h:1/v1/ws");
    }
}
