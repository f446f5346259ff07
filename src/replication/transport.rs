//! Node-to-node RPC over TCP: one connection per peer, length-prefixed frames
//! (`tokio-util`'s codec) carrying postcard-encoded `(call id, message)`, so many calls —
//! every group's Raft messages, joins, forwarded statements — share the connection and
//! answer out of order. Queues are bounded; a broken connection fails its pending calls and
//! is re-dialled by the next call. Garbage on the port (bad frame, bad postcard) closes that
//! connection only.
//!
//! The byte stream under a connection is a seam: a [`Client`] opens connections through a
//! [`Dialer`] (TCP unless told otherwise) and [`serve_connection`] answers calls on any
//! [`Stream`], so the deterministic simulation (`tests/simulation.rs`) runs this exact code
//! over a simulated network.

use super::{TypeConfig, WireRows, WireStatement};
use crate::error::Error;
use crate::ids::ShardId;
use crate::limits;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// The first frame on every connection: the caller's cluster id (None for a node that
    /// has not joined one yet). Not answered.
    Hello {
        cluster: Option<String>,
    },
    /// Are you there? Answered at once with `Done(Ok)`.
    Ping,
    Append {
        shard: ShardId,
        rpc: AppendEntriesRequest<TypeConfig>,
    },
    Vote {
        shard: ShardId,
        rpc: VoteRequest<u64>,
    },
    Snapshot {
        shard: ShardId,
        rpc: InstallSnapshotRequest<TypeConfig>,
    },
    /// A joining node asks the meta leader for an id (and is recorded in the catalog).
    AllocateId {
        node: super::NodeInfo,
    },
    /// A restarted node tells the meta leader its current addresses.
    Register {
        id: u64,
        node: super::NodeInfo,
    },
    /// The leader's read index of a shard: everything committed before the call.
    ReadIndex {
        shard: ShardId,
    },
    /// Make a running node (with an allocated id) a voter of one shard's group.
    AddNode {
        shard: ShardId,
        id: u64,
        node: super::NodeInfo,
    },
    /// Take a node out of one shard's group (voter or learner). Sent to its leader.
    RemoveNode {
        shard: ShardId,
        id: u64,
    },
    /// To a shard's leader: the group's voters.
    Voters {
        shard: ShardId,
    },
    /// This node's state for `GET /v1/nodes` and `GET /v1/events`.
    Status,
    /// This node's seconds kept for the dashboard's charts, those ended after `since_ms`.
    Timeline {
        since_ms: u64,
    },
    /// To a shard's leader: propose consistency check `id`.
    CheckShard {
        shard: ShardId,
        id: u64,
    },
    /// This node's replica's result of consistency check `id`: (log index, checksum), or
    /// None until it has applied the check.
    CheckResult {
        shard: ShardId,
        id: u64,
    },
    /// Run a statement on the leader, outside or inside a forwarded transaction. A
    /// `cancel` key lets the caller stop it (`Cancel`).
    Exec {
        shard: ShardId,
        txn: Option<u64>,
        stmt: WireStatement,
        read: bool,
        cancel: Option<u64>,
    },
    /// Ask for an election of `shard`'s group from this node (a leadership move): done only
    /// by a caught-up voter.
    Campaign {
        shard: ShardId,
    },
    /// A read served by this node's replica of `shard` as it stands (`any`), or only if it
    /// heard from its leader within `fresh_ms` (`bounded`); `cancel` as for `Exec`.
    ReadReplica {
        shard: ShardId,
        stmt: WireStatement,
        fresh_ms: Option<u64>,
        cancel: Option<u64>,
    },
    /// Answer once this node's meta replica has applied `index` (the catalog a schema
    /// change just made is in force here).
    CatalogAt {
        index: u64,
    },
    /// Cancel the statement sent with this key (if it is still running, or when it comes).
    Cancel {
        key: u64,
    },
    Begin {
        shard: ShardId,
        priority: Option<super::writer::Priority>,
    },
    /// Two-phase commit on a forwarded transaction (`txn` is the forwarded handle).
    TxnCollect {
        txn: u64,
    },
    TxnPrepare {
        txn: u64,
        id: u64,
        coordinator: ShardId,
    },
    TxnDecide {
        txn: u64,
        id: u64,
        commit: bool,
    },
    TxnResolve {
        txn: u64,
        commit: bool,
    },
    /// From the node whose session holds forwarded transaction `txn`: still here. A
    /// forwarded transaction not heard of for `REMOTE_TXN_SILENCE` is ended by the leader.
    TxnKeepAlive {
        txn: u64,
    },
    /// To a shard's leader: the decision on transaction `id`, recording `commit` unless one
    /// is recorded.
    Decide {
        shard: ShardId,
        id: u64,
        commit: bool,
    },
    /// To a shard's leader: resolve its prepared part of transaction `id`, if still there.
    Resolve {
        shard: ShardId,
        id: u64,
        commit: bool,
    },
    /// To a shard's leader: has a transaction held its writer for more than `millis`?
    WriterHeld {
        shard: ShardId,
        millis: u64,
    },
    /// To a shard's leader: delete its decision records of `ids` (every part resolved).
    Forget {
        shard: ShardId,
        ids: Vec<u64>,
    },
    Commit {
        txn: u64,
    },
    Rollback {
        txn: u64,
    },
    /// To any replica of a shard: its change events from `after` on, about `max_bytes` of
    /// them, waiting up to `wait_ms` for an entry at or after `after` to be applied.
    Events {
        shard: ShardId,
        after: crate::storage::events::Position,
        max_bytes: u32,
        wait_ms: u32,
    },
    /// To a shard's leader: a linearizable read answered with the applied index it is as
    /// of (where a change stream continues from the rows it returns).
    ReadAt {
        shard: ShardId,
        stmt: WireStatement,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// A node id for a joining node.
    Allocated(Result<u64, WireError>),
    Index(Result<u64, WireError>),
    Rows(Result<WireRows, WireError>),
    Txn(Result<u64, WireError>),
    Flag(Result<bool, WireError>),
    Done(Result<(), WireError>),
    Events(Result<crate::storage::events::Page, WireError>),
    RowsAt(Result<(WireRows, u64), WireError>),
    /// A group's voters and its leader.
    Voters(Result<(Vec<u64>, u64), WireError>),
    Status(Box<crate::cluster::NodeStatus>),
    Timeline(Vec<crate::metrics::timeline::Second>),
    /// A consistency check on a replica: (log index, checksum once taken).
    Check(Result<Option<crate::storage::replica::CheckState>, WireError>),
}

/// An [`Error`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WireError {
    Sql { code: String, message: String },
    NotLeader { leader: Option<u64> },
    Retry(String),
    Unavailable(String),
    Corrupt(String),
    Internal(String),
    Ambiguous(String),
}

impl From<Error> for WireError {
    fn from(e: Error) -> Self {
        match e {
            Error::Sql { code, message } => WireError::Sql {
                code: code.to_string(),
                message,
            },
            Error::NotLeader { leader } => WireError::NotLeader {
                leader: leader.map(|l| l.0),
            },
            Error::Retry(m) => WireError::Retry(m),
            Error::Ambiguous(m) => WireError::Ambiguous(m),
            Error::Unavailable(m) => WireError::Unavailable(m),
            Error::Corrupt(m) => WireError::Corrupt(m),
            Error::Internal(m) => WireError::Internal(m),
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Sql { code, message } => Error::Sql {
                code: crate::error::sqlstate::intern(&code),
                message,
            },
            WireError::NotLeader { leader } => Error::NotLeader {
                leader: leader.map(crate::ids::NodeId),
            },
            WireError::Retry(m) => Error::Retry(m),
            WireError::Ambiguous(m) => Error::Ambiguous(m),
            WireError::Unavailable(m) => Error::Unavailable(m),
            WireError::Corrupt(m) => Error::Corrupt(m),
            WireError::Internal(m) => Error::Internal(m),
        }
    }
}

/// Why a call got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The call never left this node (the peer could not be dialled): safe to retry.
    #[error("cannot connect to {0}")]
    NotSent(String),
    /// The connection broke with the call in flight: it may or may not have run.
    #[error("lost the connection to {0}")]
    Unreachable(String),
    #[error("no answer from {0} in time")]
    Timeout(String),
}

/// Serves calls arriving from peers.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, request: Request) -> Response;

    /// The id of the cluster this node belongs to, once it knows it: a connection that
    /// names another is closed, one that names none may only ask to join.
    fn cluster_id(&self) -> Option<String> {
        None
    }
}

/// What a connection whose peer named no cluster may ask: to join, or whether we are there.
fn allowed_before_joining(request: &Request) -> bool {
    matches!(
        request,
        Request::Ping | Request::AllocateId { .. } | Request::AddNode { .. }
    )
}

/// A byte stream to or from a peer: a TCP socket, or a simulated one in tests.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Opens connections to peers for a [`Client`]. Production dials TCP ([`TcpDialer`]); the
/// simulation dials its simulated network.
#[async_trait::async_trait]
pub trait Dialer: Send + Sync + 'static {
    /// Connect to a peer's cluster address (`host:port`).
    async fn dial(&self, addr: &str) -> std::io::Result<Box<dyn Stream>>;
}

/// Dials peers over TCP, without Nagle's delay (calls are small and latency-bound).
///
/// With a `source` address on loopback, connections to loopback peers leave from it
/// (instead of 127.0.0.1): nodes sharing a machine on distinct 127.x addresses are then told
/// apart by address, so a firewall rule can cut one pair of nodes (the chaos harness's
/// partitions).
pub struct TcpDialer {
    pub source: Option<std::net::IpAddr>,
}

#[async_trait::async_trait]
impl Dialer for TcpDialer {
    async fn dial(&self, addr: &str) -> std::io::Result<Box<dyn Stream>> {
        let target = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("no address for {addr}")))?;
        let stream = match self.source {
            Some(source @ std::net::IpAddr::V4(v4))
                if v4.is_loopback() && target.ip().is_loopback() && target.is_ipv4() =>
            {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(std::net::SocketAddr::new(source, 0))?;
                socket.connect(target).await?
            }
            _ => TcpStream::connect(target).await?,
        };
        let _ = stream.set_nodelay(true);
        Ok(Box::new(stream))
    }
}

/// Dials peers over TCP, then TLS: the peer's certificate must be the cluster CA's and name
/// the host dialed, and this node presents its own (`--certs-dir`).
pub struct TlsDialer {
    pub tcp: TcpDialer,
    pub config: Arc<tokio_rustls::rustls::ClientConfig>,
}

#[async_trait::async_trait]
impl Dialer for TlsDialer {
    async fn dial(&self, addr: &str) -> std::io::Result<Box<dyn Stream>> {
        let stream = self.tcp.dial(addr).await?;
        let name = crate::tls::Tls::server_name(addr)?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await?;
        Ok(Box::new(tls))
    }
}

type Reply = oneshot::Sender<Result<Response, CallError>>;
type Call = (Request, Reply);

/// Outbound connections, one per peer address.
pub struct Client {
    peers: Mutex<HashMap<String, mpsc::Sender<Call>>>,
    dialer: Arc<dyn Dialer>,
    /// Named in the hello of every connection this client opens.
    cluster_id: Arc<Mutex<Option<String>>>,
    /// Links cut or slowed on purpose (dev mode's fault injection; gossip shares it).
    pub faults: Arc<super::faults::LinkFaults>,
}

impl Client {
    /// A client that dials peers over TCP, from `source` where it can (see [`TcpDialer`]).
    pub fn new(source: Option<std::net::IpAddr>) -> Arc<Client> {
        Client::with_dialer(Arc::new(TcpDialer { source }))
    }

    /// A client that opens its connections with `dialer`.
    pub fn with_dialer(dialer: Arc<dyn Dialer>) -> Arc<Client> {
        Arc::new(Client {
            peers: Mutex::new(HashMap::new()),
            dialer,
            cluster_id: Arc::new(Mutex::new(None)),
            faults: Arc::default(),
        })
    }

    /// The cluster id this node's connections name from now on; connections opened before
    /// it was known are closed, so peers see it on the next call.
    pub fn set_cluster_id(&self, id: Option<String>) {
        let mut current = self.cluster_id.lock().expect("cluster id lock poisoned");
        if *current == id {
            return;
        }
        *current = id;
        drop(current);
        self.peers.lock().expect("peer map lock poisoned").clear();
    }

    fn connection(&self, addr: &str) -> mpsc::Sender<Call> {
        let mut peers = self.peers.lock().expect("peer map lock poisoned");
        if let Some(tx) = peers.get(addr) {
            if !tx.is_closed() {
                return tx.clone();
            }
        }
        let (tx, rx) = mpsc::channel(limits::CLUSTER_QUEUE_MAX);
        let hello = self
            .cluster_id
            .lock()
            .expect("cluster id lock poisoned")
            .clone();
        tokio::spawn(run_connection(
            addr.to_string(),
            self.dialer.clone(),
            hello,
            rx,
        ));
        peers.insert(addr.to_string(), tx.clone());
        tx
    }

    pub async fn call(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let fut = async {
            match self.faults.of(addr) {
                // As a firewall dropping packets looks: the dial times out, nothing sent.
                Some(super::faults::LinkFault::Cut) => {
                    tokio::time::sleep(limits::CLUSTER_CONNECT_TIMEOUT).await;
                    return Err(CallError::NotSent(addr.to_string()));
                }
                Some(slow) => tokio::time::sleep(slow.delay()).await,
                None => {}
            }
            let (reply, rx) = oneshot::channel();
            self.connection(addr)
                .send((request, reply))
                .await
                .map_err(|_| CallError::NotSent(addr.to_string()))?;
            rx.await
                .map_err(|_| CallError::Unreachable(addr.to_string()))?
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| CallError::Timeout(addr.to_string()))?
    }
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(limits::CLUSTER_FRAME_BYTES_MAX)
        .new_codec()
}

/// Wait for a write to the peer unless it goes on without a word from the peer for
/// `CLUSTER_PEER_SILENCE` (false then, or if the write failed). A peer cut off by the network
/// stops draining its socket; once the send buffer is full a plain write would block this
/// connection — its probes too — until every pending call had waited out its own timeout.
async fn unless_silent<E>(
    write: impl std::future::Future<Output = std::result::Result<(), E>>,
    heard: &AtomicU64,
    now_ms: impl Fn() -> u64,
) -> bool {
    let started = now_ms();
    tokio::pin!(write);
    let mut check = tokio::time::interval(limits::CLUSTER_PROBE_AFTER / 2);
    loop {
        tokio::select! {
            written = &mut write => return written.is_ok(),
            _ = check.tick() => {
                let last = heard.load(Ordering::Relaxed).max(started);
                if now_ms().saturating_sub(last) > limits::CLUSTER_PEER_SILENCE.as_millis() as u64 {
                    tracing::info!("peer silent while a write to it waits; closing the connection");
                    return false;
                }
            }
        }
    }
}

/// Owns one outbound connection: writes calls, matches answers by id. Ends (failing every
/// pending call) when the connection breaks or nobody holds the sender.
async fn run_connection(
    addr: String,
    dialer: Arc<dyn Dialer>,
    cluster: Option<String>,
    mut calls: mpsc::Receiver<Call>,
) {
    let stream =
        match tokio::time::timeout(limits::CLUSTER_CONNECT_TIMEOUT, dialer.dial(&addr)).await {
            Ok(Ok(s)) => s,
            _ => {
                // Nothing queued here was sent: say so, so callers may retry elsewhere.
                calls.close();
                while let Ok((_, reply)) = calls.try_recv() {
                    let _ = reply.send(Err(CallError::NotSent(addr.clone())));
                }
                return;
            }
        };
    let (mut sink, mut stream) = Framed::new(stream, codec()).split();
    let hello = postcard::to_stdvec(&(0u64, Request::Hello { cluster })).map(Bytes::from);
    let sent = match hello {
        Ok(frame) => sink.send(frame).await.is_ok(),
        Err(_) => false,
    };
    if !sent {
        calls.close();
        while let Ok((_, reply)) = calls.try_recv() {
            let _ = reply.send(Err(CallError::NotSent(addr.clone())));
        }
        return;
    }
    let pending: Arc<Mutex<HashMap<u64, Reply>>> = Arc::default();
    let next = AtomicU64::new(1);
    // When the peer last sent anything, in ms since the connection opened.
    let opened = tokio::time::Instant::now();
    let now_ms = move || opened.elapsed().as_millis() as u64;
    let heard = Arc::new(AtomicU64::new(0));
    let (reader_pending, reader_heard) = (pending.clone(), heard.clone());
    let mut reader = tokio::spawn(async move {
        while let Some(Ok(frame)) = stream.next().await {
            reader_heard.store(now_ms(), Ordering::Relaxed);
            let Ok((id, response)) = postcard::from_bytes::<(u64, Response)>(&frame) else {
                return;
            };
            if let Some(reply) = reader_pending
                .lock()
                .expect("pending lock poisoned")
                .remove(&id)
            {
                let _ = reply.send(Ok(response));
            }
        }
    });
    let mut batch = Vec::new();
    let mut probe = tokio::time::interval(limits::CLUSTER_PROBE_AFTER / 2);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the unanswered ping went out (ms since the connection opened).
    let mut ping_sent: Option<u64> = None;
    loop {
        tokio::select! {
            _ = probe.tick() => {
                let (now, last) = (now_ms(), heard.load(Ordering::Relaxed));
                if ping_sent.is_some_and(|sent| last >= sent) {
                    ping_sent = None; // answered (or something else arrived since)
                }
                if let Some(sent) = ping_sent {
                    if now.saturating_sub(sent) > limits::CLUSTER_PEER_SILENCE.as_millis() as u64 {
                        tracing::info!(%addr, "peer silent with calls pending; closing the connection");
                        break;
                    }
                    continue;
                }
                let waiting = !pending.lock().expect("pending lock poisoned").is_empty();
                let quiet = now.saturating_sub(last) > limits::CLUSTER_PROBE_AFTER.as_millis() as u64;
                if waiting && quiet {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    let Ok(bytes) = postcard::to_stdvec(&(id, &Request::Ping)) else { continue };
                    if !unless_silent(sink.send(Bytes::from(bytes)), &heard, now_ms).await {
                        break;
                    }
                    ping_sent = Some(now);
                }
            }
            n = calls.recv_many(&mut batch, limits::CLUSTER_BATCH_MAX) => {
                if n == 0 {
                    break;
                }
                // Every call queued for this peer leaves in one write (heartbeats of all
                // groups, replication of several groups): feed them all, flush once.
                let mut failed = false;
                for (request, reply) in batch.drain(..) {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    let Ok(bytes) = postcard::to_stdvec(&(id, &request)) else {
                        let _ = reply.send(Err(CallError::NotSent(addr.clone())));
                        continue;
                    };
                    pending.lock().expect("pending lock poisoned").insert(id, reply);
                    if !unless_silent(sink.feed(Bytes::from(bytes)), &heard, now_ms).await {
                        failed = true;
                        break;
                    }
                }
                if failed || !unless_silent(sink.flush(), &heard, now_ms).await {
                    break;
                }
            }
            _ = &mut reader => break,
        }
    }
    reader.abort();
    // Stop taking calls; those pending fail now (their reply senders drop with `pending`),
    // those still queued were never sent, and the next call for this peer dials again.
    calls.close();
    while let Ok((_, reply)) = calls.try_recv() {
        let _ = reply.send(Err(CallError::NotSent(addr.clone())));
    }
}

/// Accept peers' connections and answer their calls with `handler`, at most
/// `limits::CLUSTER_CONNECTIONS_MAX` at once (a node keeps one per peer; anything past the
/// cap is a flood, closed at once).
///
/// With `tls`, a connection is served only once its TLS handshake is done and the peer has
/// shown a certificate of the cluster's CA.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits::CLUSTER_CONNECTIONS_MAX));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cluster accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "refusing a cluster connection: {} open", limits::CLUSTER_CONNECTIONS_MAX);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let handler = handler.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(socket, peer.to_string(), handler).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        limits::CLUSTER_CONNECT_TIMEOUT,
                        acceptor.accept(socket),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(tls)) => serve_connection(tls, peer.to_string(), handler).await,
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "refusing a cluster connection: TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::warn!(%peer, "refusing a cluster connection: no TLS handshake in time")
                        }
                    }
                }
            }
            drop(slot);
        });
    }
}

/// The node's budget of request bytes being answered on the cluster port, in KiB.
fn inflight_budget() -> &'static Arc<Semaphore> {
    static BUDGET: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    BUDGET.get_or_init(|| Arc::new(Semaphore::new(limits::CLUSTER_INFLIGHT_KIB_MAX)))
}

/// Answer the calls arriving on one accepted connection from `peer` (a label for logs) with
/// `handler`, until the peer closes it or sends garbage. Calls run concurrently, at most
/// `CLUSTER_INFLIGHT_MAX` at once; answers leave in batches as they finish.
pub async fn serve_connection(stream: impl Stream, peer: String, handler: Arc<dyn Handler>) {
    let (mut sink, mut stream) = Framed::new(stream, codec()).split();
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(limits::CLUSTER_INFLIGHT_MAX);
    let writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        while out_rx
            .recv_many(&mut batch, limits::CLUSTER_BATCH_MAX)
            .await
            > 0
        {
            // A caller cut off by the network stops reading: once the send buffer is full,
            // give up rather than hold the answers (and their share of the node's budget)
            // until TCP does.
            let bound = limits::CLUSTER_PEER_SILENCE * 2;
            for frame in batch.drain(..) {
                if !matches!(
                    tokio::time::timeout(bound, sink.feed(frame)).await,
                    Ok(Ok(()))
                ) {
                    return;
                }
            }
            if !matches!(tokio::time::timeout(bound, sink.flush()).await, Ok(Ok(()))) {
                return;
            }
        }
    });
    // The first frame says which cluster the peer belongs to.
    let theirs = match stream.next().await {
        Some(Ok(frame)) => match postcard::from_bytes::<(u64, Request)>(&frame) {
            Ok((_, Request::Hello { cluster })) => cluster,
            _ => {
                tracing::warn!(%peer, "cluster connection: no hello; closing");
                return;
            }
        },
        _ => return,
    };
    let restricted = match (handler.cluster_id(), &theirs) {
        (Some(ours), Some(theirs)) if ours != *theirs => {
            tracing::warn!(%peer, ours, theirs, "refusing a connection from a node of another cluster");
            return;
        }
        (Some(_), None) => true,
        _ => false,
    };
    let slots = Arc::new(Semaphore::new(limits::CLUSTER_INFLIGHT_MAX));
    while let Some(frame) = stream.next().await {
        let Ok(frame) = frame else {
            tracing::debug!(%peer, "cluster connection: bad frame; closing");
            break;
        };
        let Ok((id, request)) = postcard::from_bytes::<(u64, Request)>(&frame) else {
            tracing::warn!(%peer, "cluster connection: undecodable message; closing");
            break;
        };
        if restricted && !allowed_before_joining(&request) {
            tracing::warn!(%peer, "cluster connection from a node that named no cluster asked more than to join; closing");
            break;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        // Frames being answered hold their size from the node's budget: a peer cannot make
        // the node buffer more than that, however many connections and calls it opens.
        let kib = (frame.len() / 1024).clamp(1, limits::CLUSTER_INFLIGHT_KIB_MAX) as u32;
        let Ok(bytes_permit) = inflight_budget().clone().acquire_many_owned(kib).await else {
            break;
        };
        let (handler, out_tx) = (handler.clone(), out_tx.clone());
        tokio::spawn(async move {
            let response = handler.handle(request).await;
            // An answer that cannot be encoded still answers: the caller must not wait out
            // its timeout for nothing.
            let bytes = postcard::to_stdvec(&(id, response)).or_else(|e| {
                let error = Response::Done(Err(WireError::Internal(format!(
                    "the answer could not be encoded: {e}"
                ))));
                postcard::to_stdvec(&(id, error))
            });
            if let Ok(bytes) = bytes {
                let _ = out_tx.send(Bytes::from(bytes)).await;
            }
            drop(permit);
            drop(bytes_permit);
        });
    }
    drop(out_tx);
    let _ = writer.await;
}
