//! `cairn node list | decommission N | recommission N | remove N` and `cairn status`, over
//! any node's HTTP API.

use clap::{Args, Subcommand};
use std::time::Duration;

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Every node: addresses, zone, state, liveness, replicas and leaders.
    List(UrlArg),
    /// Move every replica and the meta vote off a node, then retire it for good.
    Decommission(NodeTarget),
    /// Stop a decommission that has not finished; the node takes replicas again.
    Recommission(NodeTarget),
    /// Replace a dead node's replicas now (not after --dead-after) and retire it.
    Remove(NodeTarget),
}

#[derive(Debug, Clone, Args)]
pub struct UrlArg {
    /// HTTP address of any node.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
}

#[derive(Debug, Clone, Args)]
pub struct NodeTarget {
    /// The node, e.g. n3.
    pub node: String,
    #[command(flatten)]
    pub url: UrlArg,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// The body of a JSON answer, or the error it carries.
fn answer(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    url: &str,
) -> anyhow::Result<serde_json::Value> {
    let mut resp = result.map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let status = resp.status();
    let text = resp.body_mut().read_to_string()?;
    let body: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| anyhow::anyhow!("{url}: {status}: {text}"))?;
    if let Some(e) = body.get("error") {
        anyhow::bail!(
            "{} ({})",
            e["message"].as_str().unwrap_or("error"),
            e["code"].as_str().unwrap_or("?")
        );
    }
    Ok(body)
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || run_blocking(args)).await?
}

fn run_blocking(args: NodeArgs) -> anyhow::Result<()> {
    let agent = agent();
    let (base, path, verb) = match &args.command {
        NodeCommand::List(u) => (u.url.clone(), String::new(), None),
        NodeCommand::Decommission(t) => (t.url.url.clone(), t.node.clone(), Some("decommission")),
        NodeCommand::Recommission(t) => (t.url.url.clone(), t.node.clone(), Some("recommission")),
        NodeCommand::Remove(t) => (t.url.url.clone(), t.node.clone(), Some("remove")),
    };
    let base = base.trim_end_matches('/');
    match verb {
        None => {
            let url = format!("{base}/v1/nodes");
            let body = answer(agent.get(&url).call(), &url)?;
            println!("{}", nodes_table(&body));
        }
        Some(verb) => {
            let url = format!("{base}/v1/nodes/{path}/{verb}");
            let body = answer(agent.post(&url).send_empty(), &url)?;
            let n = &body["node"];
            println!(
                "{}: {} ({} replicas left to move)",
                text(&n["id"]),
                text(&n["state"]),
                text(&n["replicas"])
            );
            if verb != "recommission" {
                println!("follow it with `cairn node list --url {base}` or GET {base}/v1/events");
            }
        }
    }
    Ok(())
}

/// `cairn status`: the nodes, then the shards.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub url: UrlArg,
    /// Print `{"nodes": [...], "shards": [...]}` as the HTTP API answers them.
    #[arg(long)]
    pub json: bool,
}

/// `cairn health`: one node's `/health`, briefly.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// HTTP address of the node.
    #[arg(
        long,
        env = "CAIRN_HEALTH_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
}

pub async fn health(args: HealthArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let url = format!("{}/health", args.url.trim_end_matches('/'));
        let body = answer(agent.get(&url).call(), &url)?;
        let status = text(&body["status"]);
        println!("{} {status}", text(&body["node"]));
        if status != "ok" {
            anyhow::bail!("{} is {status}", text(&body["node"]));
        }
        Ok(())
    })
    .await?
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || status_blocking(args)).await?
}

fn status_blocking(args: StatusArgs) -> anyhow::Result<()> {
    let agent = agent();
    let base = args.url.url.trim_end_matches('/');
    let url = format!("{base}/v1/nodes");
    let nodes = answer(agent.get(&url).call(), &url)?;
    let url = format!("{base}/v1/shards");
    let shards = answer(agent.get(&url).call(), &url)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"nodes": nodes["nodes"], "shards": shards["shards"]})
        );
        return Ok(());
    }
    println!("{}\n", nodes_table(&nodes));
    let (table, unhealthy) = shards_table(&shards);
    println!("{table}");
    let count = shards["shards"].as_array().map_or(0, Vec::len);
    if unhealthy == 0 {
        println!("\n{count} shards, all healthy");
    } else {
        println!("\n{count} shards, {unhealthy} not healthy");
    }
    Ok(())
}

/// One line per shard: tables, leader, replicas with roles, lag, health; and how many are
/// not healthy.
fn shards_table(body: &serde_json::Value) -> (comfy_table::Table, usize) {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(["shard", "tables", "leader", "replicas", "lag", "health"]);
    let mut unhealthy = 0;
    for s in body["shards"].as_array().into_iter().flatten() {
        let state = s["replica_state"].as_array().cloned().unwrap_or_default();
        let replicas: Vec<String> = state
            .iter()
            .map(|r| match r["role"].as_str() {
                Some("leader") => format!("{}*", text(&r["node"])),
                Some("learner") => format!("{}(learner)", text(&r["node"])),
                Some("unknown") => format!("{}?", text(&r["node"])),
                _ => text(&r["node"]),
            })
            .collect();
        let lag = state.iter().filter_map(|r| r["lag"].as_u64()).max();
        let rf = s["replication_factor"].as_u64().unwrap_or(0) as usize;
        let voters = state
            .iter()
            .filter(|r| matches!(r["role"].as_str(), Some("leader" | "follower")))
            .count();
        let health = if s["leader"].is_null() {
            "no leader".to_string()
        } else if voters < rf {
            format!("under-replicated ({voters}/{rf})")
        } else if s["leaving"].as_array().is_some_and(|l| !l.is_empty()) {
            "moving".to_string()
        } else {
            "ok".to_string()
        };
        if health != "ok" {
            unhealthy += 1;
        }
        let tables: Vec<String> = s["tables"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        table.add_row([
            text(&s["shard"]),
            if tables.is_empty() {
                "-".into()
            } else {
                tables.join(",")
            },
            text(&s["leader"]),
            replicas.join(" "),
            lag.map_or("-".into(), |l| l.to_string()),
            health,
        ]);
    }
    (table, unhealthy)
}

fn nodes_table(body: &serde_json::Value) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header([
        "id", "state", "liveness", "zone", "replicas", "leaders", "pg", "http",
    ]);
    for n in body["nodes"].as_array().into_iter().flatten() {
        let mut leaders = text(&n["leaders"]);
        if n["leads_meta"].as_bool() == Some(true) {
            leaders.push_str(" +meta");
        }
        table.add_row([
            text(&n["id"]),
            text(&n["state"]),
            text(&n["liveness"]),
            text(&n["zone"]),
            text(&n["replicas"]),
            leaders,
            text(&n["pg_addr"]),
            text(&n["http_addr"]),
        ]);
    }
    table
}
