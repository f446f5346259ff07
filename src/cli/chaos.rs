//! `cairn chaos`: start a local cluster of real `cairn` processes, run a client workload
//! while a nemesis drawn from the seed kills (SIGKILL), restarts, pauses (SIGSTOP) and
//! resumes nodes and partitions the network between them (`firewall`), heal, wait for the
//! replicas to converge, then check the history.
//!
//! Workloads: `set` (unique inserts: every acknowledged insert present at the end, nothing
//! never attempted present), `register` (reads, writes and compare-and-set on a few keys;
//! each key's history must be linearizable), `bank` (transfers across shards; totals
//! never change) and `watch` (writers update hot rows and insert new ones while WebSocket
//! subscribers follow the table, resuming from their tokens through faults and their own
//! dropped connections; `chaos::watch` checks etcd's watch properties per shard). A failing seed replays the same fault
//! schedule (the timing of client operations around it varies).

use crate::chaos::history::{self, Call, Op, Outcome};
use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Set,
    Register,
    Bank,
    Watch,
    /// The register workload over the HTTP key-value API (GET, PUT, CAS by If-Match).
    KvRegister,
    /// Files over HTTP: uploads of multi-chunk files, overwrites, renames, deletes, reads.
    Files,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    #[arg(long, value_enum, default_value_t = Workload::Set)]
    pub workload: Workload,
    /// Seed for the fault schedule and the clients' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long the workload runs under faults, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = super::bench::parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
    /// Where node data and the history file go (emptied first).
    #[arg(long, default_value = "cairn-chaos")]
    pub data_dir: PathBuf,
    /// First port used (pgwire ports from here, HTTP +100, cluster +200).
    #[arg(long, default_value_t = 18000)]
    pub base_port: u16,
    /// Fault kinds the nemesis draws from, comma-separated: kill, pause, partition,
    /// membership. Partitions need root and `iptables`; without them the default leaves
    /// them out. Membership changes are never drawn unless named.
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<FaultKind>,
    /// Leave out what clients do to the cluster: by default about one operation in twelve
    /// is cancelled (a CancelRequest after 0–40 ms) and one in twenty-five is abandoned
    /// (the client's connection dropped mid-statement or mid-transaction).
    #[arg(long)]
    pub no_client_faults: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultKind {
    /// kill -9 a node (the leader or a random one), restart it after a while.
    Kill,
    /// SIGSTOP a node (the leader or a random one), SIGCONT after a while.
    Pause,
    /// Cut the network: isolate the leader, split off a random minority, or cut one pair of
    /// nodes (a bridge: the others still reach both).
    Partition,
    /// Change who is in the cluster: add a node, decommission one (stopped once drained),
    /// or kill one for good (sometimes also `remove`d at once) and let its replicas be
    /// re-created on the others. Nodes then run with `--dead-after` MEMBERSHIP_DEAD_AFTER.
    Membership,
}

/// Replicas per shard in a chaos cluster (the default replication factor): membership
/// changes keep at least this many nodes in service.
const REPLICAS: usize = 3;
/// Nodes the membership nemesis may add beyond `--nodes`.
const MEMBERSHIP_SPARES: usize = 3;
/// How long a node must be dead before its replicas move, under the membership nemesis:
/// short, so a run of seconds sees the repair.
const MEMBERSHIP_DEAD_AFTER: &str = "3s";
/// How long the cluster gets, once the clients stopped, to finish the moves the membership
/// nemesis started: every shard back to its replication factor on nodes in service and
/// every decommission done.
const MEMBERSHIP_SETTLE: Duration = Duration::from_secs(120);

/// Registers in the register workload: few keys, so operations on each overlap.
const REGISTER_KEYS: i64 = 4;
/// Accounts in the bank workload, and each one's opening balance.
const BANK_ACCOUNTS: i64 = 8;
const BANK_OPENING: i64 = 100;
/// Rows the watch workload's writers update (besides the rows they insert).
const WATCH_HOT_ROWS: i64 = 8;
/// The watch workload's filtered subscriber follows rows with `v % WATCH_MODULUS = 0`.
const WATCH_MODULUS: i64 = 3;
/// How long subscribers get to catch up with the end token once the writers stopped.
const WATCH_CATCH_UP: Duration = Duration::from_secs(60);

/// One bank operation on `c`: a transfer as an interactive transaction (read both balances,
/// move money only if the source can afford it), or a read of the total in a transaction.
async fn bank_op(
    c: &tokio_postgres::Client,
    call: Call,
) -> Result<Option<i64>, tokio_postgres::Error> {
    match call {
        Call::Transfer { from, to, amount } => {
            c.batch_execute("BEGIN").await?;
            let result = async {
                let have: i64 = c
                    .query_one("SELECT bal FROM chaos_bank WHERE id = $1", &[&from])
                    .await?
                    .get(0);
                let _: i64 = c
                    .query_one("SELECT bal FROM chaos_bank WHERE id = $1", &[&to])
                    .await?
                    .get(0);
                if have >= amount {
                    c.execute(
                        "UPDATE chaos_bank SET bal = bal - $2 WHERE id = $1",
                        &[&from, &amount],
                    )
                    .await?;
                    c.execute(
                        "UPDATE chaos_bank SET bal = bal + $2 WHERE id = $1",
                        &[&to, &amount],
                    )
                    .await?;
                }
                c.batch_execute("COMMIT").await
            }
            .await;
            if result.is_err() {
                let _ = c.batch_execute("ROLLBACK").await;
            }
            result.map(|_| None)
        }
        _ => {
            // Inside a transaction: it holds every shard it reads, so it cannot see one
            // side of a transfer without the other (a statement outside one reads each
            // shard at its own moment). What it read counts only if it commits: COMMIT is
            // where a part that only read confirms it was read from a current leader.
            c.batch_execute("BEGIN").await?;
            match c.query_one("SELECT sum(bal) FROM chaos_bank", &[]).await {
                Ok(row) => {
                    c.batch_execute("COMMIT").await?;
                    Ok(Some(row.get(0)))
                }
                Err(e) => {
                    let _ = c.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        }
    }
}
/// One client operation gives up after this long (its outcome is then unknown).
const OP_TIMEOUT: Duration = Duration::from_secs(5);

fn micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

async fn connect(url: &str) -> Option<tokio_postgres::Client> {
    connect_abortable(url).await.map(|(c, _)| c)
}

/// A client and the task running its connection: aborting the task drops the socket at
/// once, as a client process that dies does.
async fn connect_abortable(
    url: &str,
) -> Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
    let (c, conn) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .ok()?
    .ok()?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Some((c, task))
}

/// What a client does to its own operation.
#[derive(Debug, Clone, Copy)]
enum ClientFault {
    /// Send a CancelRequest after this long.
    Cancel(Duration),
    /// Drop the connection after this long if the operation has not ended.
    Disconnect(Duration),
}

/// Whether an error means the operation certainly did not take effect. Cairn promises
/// that only 08007 (outcome unknown), internal errors and lost connections leave it open:
/// a constraint or syntax error, a conflict (40001), a cancel (57014), an unavailable
/// shard (57P03), a failed or ended transaction (25P02, 25P03) all mean "not applied" —
/// so the checkers hold Cairn to that.
fn certainly_not_applied(code: &str) -> bool {
    ["23", "42", "40", "22", "25"]
        .iter()
        .any(|p| code.starts_with(p))
        || code == "57014"
        || code == "57P03"
}

/// One client: picks nodes and operations from its seed, records every operation.
/// What every client of a run shares: the seed, the workload, whether clients fault.
#[derive(Clone, Copy)]
struct Plan {
    seed: u64,
    workload: Workload,
    client_faults: bool,
}

async fn client(
    id: usize,
    plan: Plan,
    urls: Vec<String>,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Op>>>,
) {
    let Plan {
        seed,
        workload,
        client_faults,
    } = plan;
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(7919).wrapping_add(id as u64));
    let mut conn: Option<tokio_postgres::Client> = None;
    let mut conn_task: Option<tokio::task::JoinHandle<()>> = None;
    let mut counter = 0i64;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            if let Some(task) = conn_task.take() {
                task.abort();
            }
            let made = connect_abortable(&urls[rng.random_range(0..urls.len())]).await;
            (conn, conn_task) = match made {
                Some((c, t)) => (Some(c), Some(t)),
                None => (None, None),
            };
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        let c = conn.as_ref().expect("connected above");
        counter += 1;
        let unique = (id as i64 + 1) * 1_000_000_000 + counter;
        let (key, call) = match workload {
            Workload::Set => (0, Call::Add(unique)),
            Workload::KvRegister | Workload::Files => {
                unreachable!("kv_client and files_client run these workloads")
            }
            Workload::Watch => {
                if rng.random_bool(0.7) {
                    (rng.random_range(0..WATCH_HOT_ROWS), Call::Write(unique))
                } else {
                    (unique, Call::Add(unique))
                }
            }
            Workload::Bank => {
                let from = rng.random_range(0..BANK_ACCOUNTS);
                let to = (from + rng.random_range(1..BANK_ACCOUNTS)) % BANK_ACCOUNTS;
                let call = if rng.random_bool(0.6) {
                    Call::Transfer {
                        from,
                        to,
                        amount: rng.random_range(1..30),
                    }
                } else {
                    Call::ReadTotal
                };
                (0, call)
            }
            Workload::Register => {
                let key = rng.random_range(0..REGISTER_KEYS);
                let call = match rng.random_range(0..4) {
                    0 | 1 => Call::Read,
                    2 => Call::Write(unique),
                    _ => Call::Cas(last_seen(&history, key), unique),
                };
                (key, call)
            }
        };
        let invoked = micros(start);
        let run = async {
            match call {
                Call::Add(v) if workload == Workload::Watch => c
                    .execute("INSERT INTO chaos_watch (id, v) VALUES ($1, $1)", &[&v])
                    .await
                    .map(|_| None),
                Call::Write(v) if workload == Workload::Watch => c
                    .execute("UPDATE chaos_watch SET v = $2 WHERE id = $1", &[&key, &v])
                    .await
                    .map(|_| None),
                Call::Add(v) => c
                    .execute("INSERT INTO chaos_set (v) VALUES ($1)", &[&v])
                    .await
                    .map(|_| None),
                Call::Read => c
                    .query_opt("SELECT v FROM chaos_reg WHERE k = $1", &[&key])
                    .await
                    .map(|r| r.map(|r| r.get::<_, i64>(0))),
                Call::Write(v) => c
                    .execute("UPDATE chaos_reg SET v = $2 WHERE k = $1", &[&key, &v])
                    .await
                    .map(|_| None),
                Call::Transfer { .. } | Call::ReadTotal => bank_op(c, call).await,
                Call::Delete | Call::Move { .. } => unreachable!("files_client runs these"),
                Call::Cas(from, to) => c
                    .execute(
                        "UPDATE chaos_reg SET v = $3 WHERE k = $1 AND v = $2",
                        &[&key, &from, &to],
                    )
                    .await
                    .map(|n| Some(n as i64)),
            }
        };
        let fault = match rng.random_range(0..100) {
            _ if !client_faults => None,
            0..8 => Some(ClientFault::Cancel(Duration::from_millis(
                rng.random_range(0..40),
            ))),
            8..12 => Some(ClientFault::Disconnect(Duration::from_millis(
                rng.random_range(0..40),
            ))),
            _ => None,
        };
        let canceller = match fault {
            Some(ClientFault::Cancel(after)) => {
                let token = c.cancel_token();
                Some(tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = token.cancel_query(tokio_postgres::NoTls).await;
                }))
            }
            _ => None,
        };
        let cut_after = match fault {
            Some(ClientFault::Disconnect(after)) => after,
            _ => OP_TIMEOUT * 2,
        };
        let mut error = None;
        let timed = async {
            tokio::select! {
                r = tokio::time::timeout(OP_TIMEOUT, run) => Some(r),
                _ = tokio::time::sleep(cut_after) => None,
            }
        };
        let Some(timed) = timed.await else {
            // The client went away mid-operation: whatever it did may or may not stand.
            if let Some(task) = conn_task.take() {
                task.abort();
            }
            conn = None;
            history.lock().expect("history lock poisoned").push(Op {
                client: id,
                key,
                call,
                invoked,
                completed: micros(start),
                outcome: Outcome::Unknown,
                error: Some("the client dropped its connection".into()),
            });
            continue;
        };
        if let Some(c) = canceller {
            c.abort();
        }
        let outcome = match timed {
            Ok(Ok(result)) => match call {
                Call::Cas(..) if result == Some(0) => Outcome::Fail,
                Call::Cas(..) => Outcome::Ok(None),
                _ => Outcome::Ok(result),
            },
            Ok(Err(e)) => {
                // A node that is shutting down, out of the cluster or cut off from its
                // shards' quorum (57P01, 57P03) will say so again: go to another, as a
                // pool would.
                if e.is_closed() || e.code().is_some_and(|c| c.code().starts_with("57P")) {
                    conn = None;
                }
                error = Some(match e.as_db_error() {
                    Some(db) => format!("{}: {}", db.code().code(), db.message()),
                    None => e.to_string(),
                });
                match e.code().map(|c| c.code()) {
                    Some(code) if certainly_not_applied(code) => Outcome::Fail,
                    _ => Outcome::Unknown,
                }
            }
            Err(_) => {
                conn = None;
                error = Some(format!("no answer within {OP_TIMEOUT:?}"));
                Outcome::Unknown
            }
        };
        let completed = micros(start);
        history.lock().expect("history lock poisoned").push(Op {
            client: id,
            key,
            call,
            invoked,
            completed,
            outcome,
            error,
        });
        if outcome == Outcome::Unknown {
            conn = None; // try another node
        }
    }
}

/// One HTTP request of the kv-register workload: status, ETag and body, or why none came.
fn kv_call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    if_match: Option<&str>,
    body: Option<String>,
) -> Result<(u16, Option<String>, String), String> {
    let result = match method {
        "GET" => agent.get(url).call(),
        _ => {
            let mut req = agent.put(url);
            if let Some(tag) = if_match {
                req = req.header("if-match", tag);
            }
            req.send(body.unwrap_or_default())
        }
    };
    let mut resp = result.map_err(|e| e.to_string())?;
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((resp.status().as_u16(), etag, text))
}

/// What an answer means for a write: applied, certainly not applied, or unknown.
fn kv_write_outcome(status: u16, body: &str) -> Outcome {
    match status {
        200 => Outcome::Ok(None),
        // Precondition failed, bad request, unavailable before anything ran.
        412 | 400 | 404 | 409 | 413 | 503 => Outcome::Fail,
        _ if body.contains("\"outcome\":\"unknown\"") => Outcome::Unknown,
        _ => Outcome::Unknown,
    }
}

/// A client of the kv-register workload: reads, writes and compare-and-sets (a read of the
/// value and its version, then a write with `If-Match`) on a few keys over HTTP, against a
/// random node each time; client faults are requests given up after 0–40 ms.
async fn kv_client(
    id: usize,
    plan: Plan,
    nodes: Vec<std::net::SocketAddr>,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Op>>>,
) {
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(plan.seed.wrapping_mul(7919).wrapping_add(id as u64));
    let mut counter = 0i64;
    while !stop.load(Ordering::Relaxed) {
        counter += 1;
        let unique = (id as i64 + 1) * 1_000_000_000 + counter;
        let key = rng.random_range(0..REGISTER_KEYS);
        let call = match rng.random_range(0..4) {
            0 | 1 => Call::Read,
            2 => Call::Write(unique),
            _ => Call::Cas(last_seen(&history, key), unique),
        };
        let node = nodes[rng.random_range(0..nodes.len())];
        let timeout = if plan.client_faults && rng.random_range(0..25) == 0 {
            Duration::from_millis(rng.random_range(1..40))
        } else {
            OP_TIMEOUT
        };
        let url = format!("http://{node}/v1/kv/chaos/{key}");
        let invoked = micros(start);
        let (outcome, error) = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(timeout))
                .build()
                .into();
            let parse = |text: &str| text.trim().parse::<i64>().ok();
            match call {
                Call::Read => match kv_call(&agent, "GET", &url, None, None) {
                    Ok((200, _, text)) => (Outcome::Ok(parse(&text)), None),
                    Ok((404, _, _)) => (Outcome::Ok(None), None),
                    Ok((status, _, text)) => (Outcome::Fail, Some(format!("{status}: {text}"))),
                    Err(e) => (Outcome::Fail, Some(e)),
                },
                Call::Write(v) => match kv_call(&agent, "PUT", &url, None, Some(v.to_string())) {
                    Ok((status, _, text)) => (
                        kv_write_outcome(status, &text),
                        (status != 200).then(|| format!("{status}: {text}")),
                    ),
                    Err(e) => (Outcome::Unknown, Some(e)),
                },
                Call::Cas(from, to) => {
                    let (value, tag) = match kv_call(&agent, "GET", &url, None, None) {
                        Ok((200, Some(tag), text)) => (parse(&text), tag),
                        Ok((status, _, text)) => {
                            return (Outcome::Fail, Some(format!("read {status}: {text}")))
                        }
                        Err(e) => return (Outcome::Fail, Some(format!("read: {e}"))),
                    };
                    if value != Some(from) {
                        return (Outcome::Fail, None);
                    }
                    match kv_call(&agent, "PUT", &url, Some(&tag), Some(to.to_string())) {
                        Ok((status, _, text)) => (
                            kv_write_outcome(status, &text),
                            (status != 200).then(|| format!("{status}: {text}")),
                        ),
                        Err(e) => (Outcome::Unknown, Some(e)),
                    }
                }
                _ => (Outcome::Fail, Some("not a register operation".into())),
            }
        })
        .await
        .unwrap_or((Outcome::Unknown, Some("client task failed".into())));
        history.lock().expect("history lock poisoned").push(Op {
            client: id,
            key,
            call,
            invoked,
            completed: micros(start),
            outcome,
            error,
        });
    }
}

/// Paths each files client owns (`chaos/c<client>/s<slot>`).
const FILE_SLOTS: i64 = 3;

fn file_path(key: i64) -> String {
    format!("chaos/c{}/s{}", key / FILE_SLOTS, key % FILE_SLOTS)
}

/// The content of upload `id`: its own bytes (a seeded generator), from one byte to a few
/// chunks, so every upload's SHA-256 is distinct and a mix of two is recognisable.
fn file_content(id: i64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(id as u64);
    let len = 1 + (id.unsigned_abs() as usize * 7919) % (700 * 1024);
    let mut bytes = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rng, &mut bytes);
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Which upload a read body is: its id, or -1 for bytes no upload sent (a mix, a
/// truncation); a body whose SHA-256 is not its ETag is -1 too.
fn identify(
    body: &[u8],
    etag: Option<&str>,
    known: &Mutex<std::collections::HashMap<String, i64>>,
) -> i64 {
    let sha = sha256_hex(body);
    if etag.is_some_and(|t| t.trim_matches('"') != sha) {
        return -1;
    }
    *known.lock().expect("known lock").get(&sha).unwrap_or(&-1)
}

static FILE_CONTENTS: std::sync::OnceLock<Mutex<std::collections::HashMap<String, i64>>> =
    std::sync::OnceLock::new();

fn file_contents() -> &'static Mutex<std::collections::HashMap<String, i64>> {
    FILE_CONTENTS.get_or_init(Default::default)
}

/// One files client: uploads, renames and deletes on its own paths, and reads of them,
/// through random nodes.
async fn files_client(
    id: usize,
    plan: Plan,
    nodes: Vec<std::net::SocketAddr>,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Op>>>,
) {
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(plan.seed.wrapping_mul(6151).wrapping_add(id as u64));
    let mut counter = 0i64;
    let base = id as i64 * FILE_SLOTS;
    while !stop.load(Ordering::Relaxed) {
        counter += 1;
        let unique = (id as i64 + 1) * 1_000_000_000 + counter;
        let key = base + rng.random_range(0..FILE_SLOTS);
        let call = match rng.random_range(0..10) {
            0..=3 => Call::Read,
            4..=6 => Call::Write(unique),
            7 | 8 => Call::Move {
                to: base + rng.random_range(0..FILE_SLOTS),
            },
            _ => Call::Delete,
        };
        if let Call::Move { to } = call {
            if to == key {
                continue;
            }
        }
        let node = nodes[rng.random_range(0..nodes.len())];
        let timeout = if plan.client_faults && rng.random_range(0..25) == 0 {
            Duration::from_millis(rng.random_range(1..40))
        } else {
            OP_TIMEOUT
        };
        let url = format!("http://{node}/v1/files/{}", file_path(key));
        if let Call::Write(v) = call {
            // Known before it is sent: a read may see it before the answer comes.
            let sha = sha256_hex(&file_content(v));
            file_contents().lock().expect("known lock").insert(sha, v);
        }
        let invoked = micros(start);
        let (outcome, error) = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(timeout))
                .build()
                .into();
            let status_outcome = |r: Result<ureq::http::Response<ureq::Body>, ureq::Error>| match r
            {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    (
                        kv_write_outcome(status, &text),
                        (status != 200).then(|| format!("{status}: {text}")),
                    )
                }
                Err(e) => (Outcome::Unknown, Some(e.to_string())),
            };
            match call {
                Call::Read => match agent.get(&url).call() {
                    Ok(mut resp) if resp.status() == 200 => {
                        let etag = resp
                            .headers()
                            .get("etag")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        match resp.body_mut().with_config().limit(64 << 20).read_to_vec() {
                            Ok(body) => (
                                Outcome::Ok(Some(identify(
                                    &body,
                                    etag.as_deref(),
                                    file_contents(),
                                ))),
                                None,
                            ),
                            // Cut off part-way: no answer, not a wrong one.
                            Err(e) => (Outcome::Fail, Some(e.to_string())),
                        }
                    }
                    Ok(resp) if resp.status() == 404 => (Outcome::Ok(None), None),
                    Ok(resp) => (Outcome::Fail, Some(format!("read {}", resp.status()))),
                    Err(e) => (Outcome::Fail, Some(e.to_string())),
                },
                Call::Write(v) => status_outcome(agent.put(&url).send(&file_content(v)[..])),
                Call::Delete => status_outcome(agent.delete(&url).call()),
                Call::Move { to } => {
                    let moved = format!("{url}?rename_to={}", file_path(to));
                    status_outcome(agent.post(&moved).send_empty())
                }
                _ => (Outcome::Fail, Some("not a files operation".into())),
            }
        })
        .await
        .unwrap_or((Outcome::Unknown, Some("client task failed".into())));
        history.lock().expect("history lock poisoned").push(Op {
            client: id,
            key,
            call,
            invoked,
            completed: micros(start),
            outcome,
            error,
        });
    }
}

/// What every files client's paths hold once the run is over (each read whole).
fn files_final_state(
    http: std::net::SocketAddr,
    clients: usize,
) -> anyhow::Result<std::collections::BTreeMap<i64, Option<i64>>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut out = std::collections::BTreeMap::new();
    for key in 0..clients as i64 * FILE_SLOTS {
        let url = format!("http://{http}/v1/files/{}", file_path(key));
        let mut resp = agent
            .get(&url)
            .call()
            .with_context(|| format!("reading {url}"))?;
        let value = match resp.status().as_u16() {
            404 => None,
            200 => {
                let etag = resp
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(64 << 20)
                    .read_to_vec()?;
                Some(identify(&body, etag.as_deref(), file_contents()))
            }
            other => bail!("reading {url} at the end answered {other}"),
        };
        out.insert(key, value);
    }
    Ok(out)
}

/// The last value a successful operation on `key` read or wrote: a CAS from it has a fair
/// chance of succeeding.
fn last_seen(history: &Mutex<Vec<Op>>, key: i64) -> i64 {
    let h = history.lock().expect("history lock poisoned");
    h.iter()
        .rev()
        .filter(|o| o.key == key)
        .find_map(|o| match (o.call, o.outcome) {
            (Call::Read, Outcome::Ok(Some(v))) => Some(v),
            (Call::Write(v), Outcome::Ok(_)) | (Call::Cas(_, v), Outcome::Ok(_)) => Some(v),
            _ => None,
        })
        .unwrap_or(0)
}

/// A WebSocket connection to one node's `/v1/ws`.
type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Subscribe on the node at `http` and answer the acknowledgement's token.
async fn ws_subscribe(
    http: std::net::SocketAddr,
    request: serde_json::Value,
) -> Option<(WsStream, String)> {
    use futures::{SinkExt, StreamExt};
    let url = format!("ws://{http}/v1/ws");
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .ok()?
    .ok()?;
    let message = serde_json::json!({"id": "w", "subscribe": request});
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        message.to_string().into(),
    ))
    .await
    .ok()?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .ok()??
            .ok()?;
        let tokio_tungstenite::tungstenite::Message::Text(text) = m else {
            continue;
        };
        let m: serde_json::Value = serde_json::from_str(&text).ok()?;
        if let Some(t) = m["subscribed"]["token"].as_str() {
            return Some((ws, t.to_string()));
        }
        if !m["error"].is_null() {
            return None;
        }
    }
}

/// Has `at` reached `end` on every shard `end` names?
fn caught_up(at: &crate::cluster::feed::Token, end: &crate::cluster::feed::Token) -> bool {
    end.0
        .iter()
        .all(|(s, p)| at.0.get(s).is_some_and(|mine| mine >= p))
}

/// One subscriber of the watch workload: follows `chaos_watch` from `start` through every
/// fault, resuming from its last token on a random node whenever its connection ends (and,
/// with client faults, dropping it itself now and then); stops once caught up with the end
/// token, or `WATCH_CATCH_UP` after it was given.
/// Who a watch-workload subscriber is and where it starts.
struct Watcher {
    name: String,
    modulus: Option<i64>,
    nodes: Vec<std::net::SocketAddr>,
    start: String,
    seed: u64,
    client_faults: bool,
}

async fn watcher(
    who: Watcher,
    end: tokio::sync::watch::Receiver<Option<crate::cluster::feed::Token>>,
    log: Arc<Mutex<Vec<crate::chaos::watch::Seen>>>,
) {
    let Watcher {
        name,
        modulus,
        nodes,
        start,
        seed,
        client_faults,
    } = who;
    use crate::chaos::watch::Seen;
    use futures::StreamExt;
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed.wrapping_mul(31)
            .wrapping_add(name.len() as u64 * 7 + modulus.unwrap_or(0) as u64),
    );
    let record = |s: Seen| log.lock().expect("watch log lock poisoned").push(s);
    let mut token = start;
    let mut deadline: Option<Instant> = None;
    let done = |token: &str, deadline: &mut Option<Instant>| -> bool {
        let Some(target) = end.borrow().clone() else {
            return false;
        };
        let limit = *deadline.get_or_insert_with(|| Instant::now() + WATCH_CATCH_UP);
        let at: Option<crate::cluster::feed::Token> = token.parse().ok();
        at.is_some_and(|a| caught_up(&a, &target)) || Instant::now() > limit
    };
    loop {
        if done(&token, &mut deadline) {
            return;
        }
        let mut request =
            serde_json::json!({"table": "chaos_watch", "from": token, "progress_ms": 200});
        if let Some(m) = modulus {
            request["where"] = serde_json::json!(format!("v % {m} = 0"));
        }
        let node = nodes[rng.random_range(0..nodes.len())];
        let Some((mut ws, _)) = ws_subscribe(node, request).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            if done(&token, &mut deadline) {
                return;
            }
            if client_faults && rng.random_range(0..300) == 0 {
                drop(ws);
                record(Seen::Resumed);
                break;
            }
            let next = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
            let text = match next {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => t,
                Ok(Some(Ok(_))) => continue,
                // Closed, failed, or silent for 5 s (a paused node sends no progress).
                _ => {
                    record(Seen::Resumed);
                    break;
                }
            };
            let Ok(m) = serde_json::from_str::<serde_json::Value>(&text) else {
                record(Seen::Failed(format!("not JSON: {text}")));
                return;
            };
            if let Some(e) = m.get("event") {
                let value = |row: &serde_json::Value| row["v"].as_i64();
                let t = e["token"].as_str().unwrap_or_default().to_string();
                record(Seen::Event {
                    shard: e["shard"].as_str().unwrap_or_default().to_string(),
                    token: t.clone(),
                    op: e["op"].as_str().unwrap_or_default().to_string(),
                    id: e["key"]["id"].as_i64().unwrap_or(-1),
                    old: value(&e["old"]),
                    new: value(&e["new"]),
                });
                token = t;
            } else if let Some(p) = m["progress"].as_str() {
                record(Seen::Progress(p.to_string()));
                token = p.to_string();
            } else if let Some(e) = m.get("error") {
                let code = e["code"].as_str().unwrap_or_default();
                if code == "unavailable" || code == "slow_consumer" {
                    if let Some(t) = e["token"].as_str() {
                        token = t.to_string();
                    }
                    record(Seen::Resumed);
                    break;
                }
                record(Seen::Failed(format!("{code}: {}", e["message"])));
                return;
            }
        }
    }
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<bool> {
    if args.nodes < 3 {
        bail!("--nodes must be at least 3 (faults take one node away at a time)");
    }
    println!(
        "chaos: workload {:?}, seed {}, {} nodes, {:?}",
        args.workload, args.seed, args.nodes, args.duration
    );
    let mut firewall = None;
    let mut kinds = args.faults.clone();
    if kinds.is_empty() {
        kinds = vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Partition];
        if let Err(e) = super::firewall::Firewall::new(args.base_port).map(|f| firewall = Some(f)) {
            println!("partitions left out: {e:#}");
            kinds.pop();
        }
    } else if kinds.contains(&FaultKind::Partition) {
        firewall = Some(
            super::firewall::Firewall::new(args.base_port)
                .context("partitions need root and iptables")?,
        );
    }
    kinds.dedup();
    println!("faults: {kinds:?}");
    let membership = kinds.contains(&FaultKind::Membership);
    let node_args = if membership {
        vec![
            "--dead-after".to_string(),
            MEMBERSHIP_DEAD_AFTER.to_string(),
        ]
    } else {
        Vec::new()
    };
    let mut cluster = super::local::LocalCluster::start_with(
        args.nodes,
        &args.data_dir,
        args.base_port,
        node_args,
    )?;
    let ips: Vec<std::net::IpAddr> = cluster.nodes.iter().map(|n| n.cluster.ip()).collect();
    let first = cluster.nodes[0].cluster;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let setup = connect(&urls[0]).await.context("connecting to n1")?;
    let history: Arc<Mutex<Vec<Op>>> = Arc::default();
    match args.workload {
        Workload::Set => {
            setup
                .batch_execute("CREATE TABLE chaos_set (v bigint PRIMARY KEY)")
                .await?
        }
        Workload::Register => {
            setup
                .batch_execute("CREATE TABLE chaos_reg (k bigint PRIMARY KEY, v bigint NOT NULL)")
                .await?;
            for k in 0..REGISTER_KEYS {
                setup
                    .execute("INSERT INTO chaos_reg VALUES ($1, 0)", &[&k])
                    .await?;
                let init = Op {
                    client: usize::MAX,
                    key: k,
                    call: Call::Write(0),
                    invoked: 0,
                    completed: 0,
                    outcome: Outcome::Ok(None),
                    error: None,
                };
                history.lock().expect("history lock poisoned").push(init);
            }
        }
        Workload::KvRegister => {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into();
            let http0 = cluster.nodes[0].http;
            tokio::task::block_in_place(|| {
                for k in 0..REGISTER_KEYS {
                    let url = format!("http://{http0}/v1/kv/chaos/{k}");
                    match kv_call(&agent, "PUT", &url, None, Some("0".into())) {
                        Ok((200, _, _)) => {}
                        other => bail!("setting up key {k}: {other:?}"),
                    }
                }
                Ok(())
            })?;
            for k in 0..REGISTER_KEYS {
                history.lock().expect("history lock poisoned").push(Op {
                    client: usize::MAX,
                    key: k,
                    call: Call::Write(0),
                    invoked: 0,
                    completed: 0,
                    outcome: Outcome::Ok(None),
                    error: None,
                });
            }
        }
        Workload::Files => {
            // The files tables, made once before the clients race to make them.
            let http0 = cluster.nodes[0].http;
            tokio::task::block_in_place(|| {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(60)))
                    .build()
                    .into();
                let url = format!("http://{http0}/v1/files/chaos/setup");
                match agent.put(&url).send("setup") {
                    Ok(r) if r.status() == 200 => Ok(()),
                    other => bail!("setting up the files tables: {other:?}"),
                }
            })?;
        }
        Workload::Watch => {
            setup
                .batch_execute(
                    "CREATE TABLE chaos_watch (id bigint PRIMARY KEY, v bigint NOT NULL) WITH (shard_count = 4)",
                )
                .await?;
            for id in 0..WATCH_HOT_ROWS {
                setup
                    .execute("INSERT INTO chaos_watch VALUES ($1, 0)", &[&id])
                    .await?;
            }
        }
        Workload::Bank => {
            setup
                // Accounts spread over shards: transfers are cross-shard transactions
                // (two-phase commit).
                .batch_execute(
                    "CREATE TABLE chaos_bank (id bigint PRIMARY KEY, bal bigint NOT NULL) WITH (shard_count = 4)",
                )
                .await?;
            for id in 0..BANK_ACCOUNTS {
                setup
                    .execute(
                        "INSERT INTO chaos_bank VALUES ($1, $2)",
                        &[&id, &BANK_OPENING],
                    )
                    .await?;
            }
        }
    }
    let http: Vec<std::net::SocketAddr> = cluster.nodes.iter().map(|n| n.http).collect();
    let (end_tx, end_rx) = tokio::sync::watch::channel(None);
    let mut watchers = Vec::new();
    if args.workload == Workload::Watch {
        // Every subscriber starts from one token taken before any write.
        let (_, start) = ws_subscribe(http[0], serde_json::json!({"table": "chaos_watch"}))
            .await
            .context("subscribing on n1")?;
        for (name, modulus) in [
            ("all-1", None),
            ("all-2", None),
            ("filtered", Some(WATCH_MODULUS)),
        ] {
            let log: Arc<Mutex<Vec<crate::chaos::watch::Seen>>> = Arc::default();
            let who = Watcher {
                name: name.to_string(),
                modulus,
                nodes: http.clone(),
                start: start.clone(),
                seed: args.seed,
                client_faults: !args.no_client_faults,
            };
            let task = tokio::spawn(watcher(who, end_rx.clone(), log.clone()));
            watchers.push((name, modulus, log, task));
        }
    }
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..args.clients)
        .map(|i| {
            let plan = Plan {
                seed: args.seed,
                workload: args.workload,
                client_faults: !args.no_client_faults,
            };
            if args.workload == Workload::Files {
                let http = cluster.nodes.iter().map(|n| n.http).collect();
                return tokio::spawn(files_client(
                    i,
                    plan,
                    http,
                    start,
                    stop.clone(),
                    history.clone(),
                ));
            }
            if args.workload == Workload::KvRegister {
                let http = cluster.nodes.iter().map(|n| n.http).collect();
                return tokio::spawn(kv_client(
                    i,
                    plan,
                    http,
                    start,
                    stop.clone(),
                    history.clone(),
                ));
            }
            tokio::spawn(client(
                i,
                plan,
                urls.clone(),
                start,
                stop.clone(),
                history.clone(),
            ))
        })
        .collect();

    // The nemesis: one fault at a time, drawn from the seed, each healed before the next.
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut faults = Vec::new();
    // Nodes the membership nemesis took out of service for good, by index, with their ids:
    // other faults leave them alone.
    let mut retired = Retired::default();
    while start.elapsed() + Duration::from_secs(3) < args.duration {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
        let kind = kinds[rng.random_range(0..kinds.len())];
        let in_service: Vec<usize> = (0..cluster.nodes.len())
            .filter(|i| !retired.nodes.contains_key(i))
            .collect();
        let on_leader = rng.random_bool(0.5);
        let target = match cluster.leader() {
            Some(l) if on_leader && !retired.nodes.contains_key(&l) => l,
            _ => in_service[rng.random_range(0..in_service.len())],
        };
        let who = if on_leader { "leader" } else { "random" };
        let hold = Duration::from_millis(rng.random_range(300..1500));
        let at = start.elapsed();
        match kind {
            FaultKind::Kill => {
                cluster.nodes[target].kill9().await;
                tokio::time::sleep(hold).await;
                let join = (target != 0).then_some(first);
                tokio::task::block_in_place(|| cluster.nodes[target].spawn(join))?;
                faults.push(format!(
                    "{:>7.2}s kill -9 n{} ({who}), restarted after {hold:?}",
                    at.as_secs_f64(),
                    target + 1,
                ));
            }
            FaultKind::Pause => {
                cluster.nodes[target].pause();
                tokio::time::sleep(hold).await;
                cluster.nodes[target].resume();
                faults.push(format!(
                    "{:>7.2}s SIGSTOP n{} ({who}), resumed after {hold:?}",
                    at.as_secs_f64(),
                    target + 1,
                ));
            }
            FaultKind::Partition => {
                let fw = firewall.as_mut().expect("partitions only with a firewall");
                // Long enough for elections on the majority side.
                let hold = hold * 3;
                let shape = rng.random_range(0..3);
                let description = match shape {
                    0 => {
                        fw.split(&[ips[target]], &ips)?;
                        format!("isolated n{} ({who})", target + 1)
                    }
                    1 => {
                        let mut order: Vec<usize> = (0..args.nodes).collect();
                        for k in (1..order.len()).rev() {
                            order.swap(k, rng.random_range(0..=k));
                        }
                        let minority: Vec<usize> = order[..(args.nodes - 1) / 2].to_vec();
                        let side: Vec<std::net::IpAddr> =
                            minority.iter().map(|&k| ips[k]).collect();
                        fw.split(&side, &ips)?;
                        let names: Vec<String> =
                            minority.iter().map(|k| format!("n{}", k + 1)).collect();
                        format!("split minority {{{}}} from the rest", names.join(","))
                    }
                    _ => {
                        let other = (target + 1 + rng.random_range(0..args.nodes - 1)) % args.nodes;
                        fw.cut(ips[target], ips[other])?;
                        format!(
                            "cut n{} ({who}) from n{} only (the rest bridge them)",
                            target + 1,
                            other + 1
                        )
                    }
                };
                tokio::time::sleep(hold).await;
                fw.heal()?;
                faults.push(format!(
                    "{:>7.2}s partition: {description}, healed after {hold:?}",
                    at.as_secs_f64()
                ));
            }
            FaultKind::Membership => {
                let what =
                    membership_step(&mut cluster, &mut retired, &mut rng, args.nodes).await?;
                faults.push(format!("{:>7.2}s {what}", at.as_secs_f64()));
            }
        }
    }
    let remaining = args.duration.saturating_sub(start.elapsed());
    tokio::time::sleep(remaining).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    // Heal and converge.
    for n in cluster.nodes.iter_mut() {
        n.resume();
    }
    if let Some(fw) = firewall.as_mut() {
        fw.heal()?;
    }
    println!("faults:");
    for f in &faults {
        println!("  {f}");
    }
    let settled = if membership {
        tokio::task::block_in_place(|| settle_membership(&mut cluster, &retired))
    } else {
        Ok(String::new())
    };
    match &settled {
        Ok(how) if !how.is_empty() => println!("membership: {how}"),
        Ok(_) => {}
        Err(e) => println!("membership: FAILED to settle: {e:#}"),
    }
    let (converged, states) =
        tokio::task::block_in_place(|| cluster.converge(Duration::from_secs(60)))?;

    let history = std::mem::take(&mut *history.lock().expect("history lock poisoned"));
    let path = args.data_dir.join("history.jsonl");
    let mut file = std::fs::File::create(&path)?;
    for op in &history {
        writeln!(file, "{}", serde_json::to_string(op)?)?;
    }
    let count = |o: fn(&Outcome) -> bool| history.iter().filter(|op| o(&op.outcome)).count();
    println!(
        "operations: {} ok, {} failed, {} unknown",
        count(|o| matches!(o, Outcome::Ok(_))),
        count(|o| matches!(o, Outcome::Fail)),
        count(|o| matches!(o, Outcome::Unknown))
    );
    println!(
        "convergence: {}",
        if converged {
            "all replicas equal at the same applied index, no prepared part left"
        } else {
            "FAILED (replicas differ, or prepared parts were left unresolved)"
        }
    );
    if !converged {
        for s in &states {
            println!("  {s}");
        }
    }
    let checker_ok = match args.workload {
        Workload::Set => {
            let reader = connect(&urls[0]).await.context("reading the final set")?;
            let present: BTreeSet<i64> = reader
                .query("SELECT v FROM chaos_set", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let v = history::check_set(&history, &present);
            println!(
                "set: {} acknowledged, {} present, {} unknown adds present, lost {:?}, never attempted {:?}, failed but present {:?}",
                v.acknowledged,
                present.len(),
                v.recovered,
                v.lost,
                v.unexpected,
                v.failed_but_present
            );
            v.ok()
        }
        Workload::Files => {
            let http0 = cluster.nodes[0].http;
            let clients = args.clients;
            let final_state = tokio::task::block_in_place(|| files_final_state(http0, clients))?;
            let v = history::check_files(&history, &final_state);
            println!(
                "files: {} paths, {} uploads acknowledged, {} reads, bad reads {:?}, bad final states {:?}",
                v.paths, v.uploads_ok, v.reads_ok, v.bad_reads, v.bad_finals
            );
            v.ok()
        }
        Workload::Register | Workload::KvRegister => {
            let v = history::check_registers(&history);
            println!(
                "register: {} keys, {} operations, non-linearizable keys {:?}, undecided keys {:?}",
                v.keys, v.ops, v.violations, v.undecided
            );
            v.ok()
        }
        Workload::Watch => {
            // Where every shard stands now that writes stopped: each subscriber must get there.
            let end = match ws_subscribe(http[0], serde_json::json!({"table": "chaos_watch"})).await
            {
                Some((_, t)) => t,
                None => bail!("could not take the end token on n1"),
            };
            let end: crate::cluster::feed::Token = end.parse()?;
            let _ = end_tx.send(Some(end.clone()));
            let mut logs = Vec::new();
            for (name, modulus, log, task) in watchers.drain(..) {
                let _ = task.await;
                let seen = std::mem::take(&mut *log.lock().expect("watch log lock poisoned"));
                logs.push(crate::chaos::watch::Log {
                    name: name.to_string(),
                    modulus,
                    seen,
                });
            }
            let path = args.data_dir.join("watch.jsonl");
            let mut file = std::fs::File::create(&path)?;
            for log in &logs {
                writeln!(file, "{}", serde_json::to_string(log)?)?;
            }
            let initial = (0..WATCH_HOT_ROWS).map(|k| (k, 0)).collect();
            let v = crate::chaos::watch::check_watch(&history, &initial, &logs, &end);
            println!(
                "watch: {} subscribers, {} events delivered, {} resumes, end token {end}",
                v.subscribers, v.events, v.resumes
            );
            for p in v.problems.iter().take(20) {
                println!("  {p}");
            }
            println!("subscribers' logs: {}", path.display());
            v.ok()
        }
        Workload::Bank => {
            let reader = connect(&urls[0])
                .await
                .context("reading the final balances")?;
            let balances: Vec<i64> = reader
                .query("SELECT bal FROM chaos_bank", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let negatives = balances.iter().filter(|b| **b < 0).count();
            let v = history::check_bank(
                &history,
                BANK_ACCOUNTS * BANK_OPENING,
                balances.iter().sum(),
                negatives,
            );
            println!(
                "bank: {} transfers committed, {} total reads, {} reads saw a wrong total {:?}, final total {} (expected {}), negative balances {}",
                v.transfers_ok,
                v.reads,
                v.bad_reads.len(),
                v.bad_reads.iter().take(5).collect::<Vec<_>>(),
                v.final_total,
                v.expected_total,
                v.negative_balances
            );
            v.ok()
        }
    };
    println!("history: {}", path.display());
    let passed = converged && checker_ok && settled.is_ok();
    println!(
        "verdict: {} (seed {})",
        if passed { "PASS" } else { "FAIL" },
        args.seed
    );
    Ok(passed)
}

/// The nodes the membership nemesis took out of service for good: index → cluster id.
#[derive(Default)]
struct Retired {
    nodes: std::collections::BTreeMap<usize, String>,
    /// Those decommissioned (rather than killed): stopped once drained.
    draining: BTreeSet<usize>,
}

/// The id the cluster gave the node at `http` (`/health`'s `node`).
fn node_id(http: std::net::SocketAddr) -> Option<String> {
    let v: serde_json::Value =
        serde_json::from_str(&super::local::http_get(http, "/health")?).ok()?;
    v["node"].as_str().map(str::to_string)
}

/// Node `id`'s liveness as the node at `http` sees it.
fn liveness(http: std::net::SocketAddr, id: &str) -> Option<String> {
    let v: serde_json::Value =
        serde_json::from_str(&super::local::http_get(http, "/v1/nodes")?).ok()?;
    v["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == id)
        .and_then(|n| n["liveness"].as_str().map(str::to_string))
}

/// One membership change, drawn from `rng` among those that keep `REPLICAS` nodes in
/// service: add a node, decommission one, or kill one for good. Never the first node (the
/// one the others join through and the checkers read from). Its description.
async fn membership_step(
    cluster: &mut super::local::LocalCluster,
    retired: &mut Retired,
    rng: &mut rand::rngs::StdRng,
    nodes: usize,
) -> anyhow::Result<String> {
    let in_service: Vec<usize> = (1..cluster.nodes.len())
        .filter(|i| !retired.nodes.contains_key(i) && cluster.nodes[*i].child.is_some())
        .collect();
    let mut choices = Vec::new();
    if cluster.nodes.len() < nodes + MEMBERSHIP_SPARES {
        choices.push("add");
    }
    // The first node is always in service besides these.
    if in_service.len() + 1 > REPLICAS {
        choices.extend(["decommission", "kill"]);
    }
    let Some(&choice) = choices.get(rng.random_range(0..choices.len().max(1))) else {
        return Ok("membership: nothing to change".to_string());
    };
    let http0 = cluster.nodes[0].http;
    Ok(match choice {
        "add" => {
            let i = tokio::task::block_in_place(|| cluster.add())?;
            let id = node_id(cluster.nodes[i].http).unwrap_or_else(|| "?".into());
            format!("added n{} (cluster id {id})", i + 1)
        }
        "decommission" => {
            let target = in_service[rng.random_range(0..in_service.len())];
            let Some(id) = node_id(cluster.nodes[target].http) else {
                return Ok(format!("decommission n{}: its id unknown", target + 1));
            };
            let path = format!("/v1/nodes/{id}/decommission");
            match tokio::task::block_in_place(|| super::local::http_post(http0, &path)) {
                Some((202, _)) => {
                    retired.nodes.insert(target, id.clone());
                    retired.draining.insert(target);
                    format!("decommissioning n{} ({id})", target + 1)
                }
                other => format!("decommission n{} ({id}) refused: {other:?}", target + 1),
            }
        }
        _ => {
            // Losing a second replica of a shard for good before the first is replaced
            // loses its quorum for good, in any Raft system: kill only a settled cluster.
            let waiting = tokio::task::block_in_place(|| unsettled(http0, retired));
            if !waiting.is_empty() {
                return Ok(format!(
                    "kill for good: not yet, still repairing ({})",
                    waiting.len()
                ));
            }
            let target = in_service[rng.random_range(0..in_service.len())];
            let Some(id) = node_id(cluster.nodes[target].http) else {
                return Ok(format!("kill n{}: its id unknown", target + 1));
            };
            cluster.nodes[target].kill9().await;
            retired.nodes.insert(target, id.clone());
            if rng.random_bool(0.5) {
                // `remove` is for a node known dead: wait until gossip stops calling it alive.
                let path = format!("/v1/nodes/{id}/remove");
                let answer = tokio::task::block_in_place(|| {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while Instant::now() < deadline && liveness(http0, &id) == Some("alive".into())
                    {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    super::local::http_post(http0, &path)
                });
                format!(
                    "kill -9 n{} ({id}) for good, then remove: {:?}",
                    target + 1,
                    answer.map(|a| a.0)
                )
            } else {
                format!("kill -9 n{} ({id}) for good", target + 1)
            }
        }
    })
}

/// What is still moving after the membership nemesis' changes: shards not at their
/// replication factor on nodes in service (or with a replica leaving), meta voters on
/// retired nodes, decommissions not finished. Empty once the cluster has settled.
fn unsettled(http0: std::net::SocketAddr, retired: &Retired) -> Vec<String> {
    let get = |path: &str| {
        super::local::http_get(http0, path)
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
    };
    let mut problems = Vec::new();
    let is_retired = |id: &str| retired.nodes.values().any(|r| r == id);
    match get("/v1/shards") {
        None => problems.push("GET /v1/shards on n1 failed".to_string()),
        Some(v) => {
            for shard in v["shards"].as_array().into_iter().flatten() {
                let name = shard["shard"].as_str().unwrap_or("?");
                let replicas: Vec<&str> = shard["replicas"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str())
                    .collect();
                let factor = shard["replication_factor"].as_u64().unwrap_or(0) as usize;
                let leaving = shard["leaving"].as_array().map_or(0, |l| l.len());
                if replicas.len() != factor || replicas.iter().any(|r| is_retired(r)) || leaving > 0
                {
                    problems.push(format!(
                        "{name}: replicas {replicas:?} (factor {factor}, leaving {leaving})"
                    ));
                }
            }
        }
    }
    match get("/v1/nodes") {
        None => problems.push("GET /v1/nodes on n1 failed".to_string()),
        Some(v) => {
            for node in v["nodes"].as_array().into_iter().flatten() {
                let id = node["id"].as_str().unwrap_or("?");
                if node["meta"] == "voter" && is_retired(id) {
                    problems.push(format!("{id} is still a meta voter"));
                }
                let draining = retired
                    .draining
                    .iter()
                    .any(|i| retired.nodes.get(i).is_some_and(|r| r == id));
                if draining && node["state"] != "decommissioned" {
                    problems.push(format!("{id} is {}, not decommissioned", node["state"]));
                }
            }
        }
    }
    problems
}

/// Wait until the moves the membership nemesis started are done (`unsettled` says nothing),
/// then stop the decommissioned nodes' processes, as an operator would.
fn settle_membership(
    cluster: &mut super::local::LocalCluster,
    retired: &Retired,
) -> anyhow::Result<String> {
    let http0 = cluster.nodes[0].http;
    let deadline = Instant::now() + MEMBERSHIP_SETTLE;
    let started = Instant::now();
    loop {
        let problems = unsettled(http0, retired);
        if problems.is_empty() {
            for i in &retired.draining {
                let node = &mut cluster.nodes[*i];
                if let Some(mut c) = node.child.take() {
                    let _ = c.start_kill();
                }
            }
            return Ok(format!(
                "settled {:.1}s after the clients stopped: every shard at its replication factor on nodes in service; retired {:?}",
                started.elapsed().as_secs_f64(),
                retired.nodes.values().collect::<Vec<_>>()
            ));
        }
        if Instant::now() > deadline {
            bail!("after {MEMBERSHIP_SETTLE:?}: {}", problems.join("; "));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
