//! Liveness by gossip: SWIM (`foca`) over UDP on the node's cluster address (the same
//! port number as its TCP cluster port). Each node sees every other as alive, suspect or
//! dead, with when that last changed. Gossip only informs: membership stays with the meta
//! group, and the placement driver reads this view to decide where replicas may go and
//! which nodes' replicas to replace (`--dead-after`).
//!
//! A node unheard of since this node started is `unknown`; after `LIVENESS_UNKNOWN_GRACE`
//! it counts as down, and its time dead runs from when this node started looking.

use super::journal::Journal;
use crate::ids::NodeId;
use crate::limits;
use foca::{Config, Foca, Identity, Notification, PostcardCodec, Runtime, State, Timer};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// A node as gossip names it: its id, where it listens, and which run of the process this
/// is (a restart gets a new `run`, so the cluster tells it from its dead predecessor).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Peer {
    pub node: u64,
    pub addr: SocketAddr,
    pub run: u64,
}

impl Identity for Peer {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Peer {
            run: self.run.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.run > adversary.run
    }
}

/// What this node knows of another's liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Live {
    Alive,
    Suspect,
    Dead,
    /// Not heard of since this node started.
    Unknown,
}

impl Live {
    pub fn as_str(self) -> &'static str {
        match self {
            Live::Alive => "alive",
            Live::Suspect => "suspect",
            Live::Dead => "dead",
            Live::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    live: Live,
    since: Instant,
    since_ms: u64,
}

pub struct Liveness {
    me: NodeId,
    started: Instant,
    started_ms: u64,
    seen: Mutex<BTreeMap<NodeId, Seen>>,
    input: mpsc::Sender<Input>,
    journal: Arc<Journal>,
}

enum Input {
    Data(Vec<u8>),
    Timer(Timer<Peer>),
    Announce(SocketAddr),
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Liveness {
    /// Bind UDP on `addr` (the cluster address) and start gossiping as node `me`, whom
    /// others reach at `advertised` (`addr` itself unless it listens on every interface or
    /// behind a translated address).
    pub async fn start(
        me: NodeId,
        addr: SocketAddr,
        advertised: SocketAddr,
        journal: Arc<Journal>,
        faults: Arc<crate::replication::faults::LinkFaults>,
    ) -> crate::error::Result<Arc<Liveness>> {
        let socket = UdpSocket::bind(addr).await.map_err(|e| {
            crate::error::Error::Unavailable(format!(
                "cannot listen for gossip (udp) on {addr}: {e}"
            ))
        })?;
        let socket = Arc::new(socket);
        let (tx, rx) = mpsc::channel(limits::GOSSIP_QUEUE);
        let liveness = Arc::new(Liveness {
            me,
            started: Instant::now(),
            started_ms: now_ms(),
            seen: Mutex::new(BTreeMap::new()),
            input: tx.clone(),
            journal,
        });
        let identity = Peer {
            node: me.0,
            addr: advertised,
            run: now_ms(),
        };
        tokio::spawn(receive(socket.clone(), tx.clone()));
        tokio::spawn(run(
            identity,
            socket,
            rx,
            tx,
            Arc::downgrade(&liveness),
            faults,
        ));
        Ok(liveness)
    }

    /// A liveness view that hears nothing (tests of components without a network): every
    /// other node is unknown.
    pub fn detached(me: NodeId) -> Arc<Liveness> {
        let (tx, _rx) = mpsc::channel(1);
        Arc::new(Liveness {
            me,
            started: Instant::now(),
            started_ms: now_ms(),
            seen: Mutex::new(BTreeMap::new()),
            input: tx,
            journal: Arc::new(Journal::default()),
        })
    }

    /// Ask the node at `addr` to gossip with us (a node we know from the catalog but do not
    /// see alive: just started, restarted, or back from a partition).
    pub fn announce(&self, addr: SocketAddr) {
        let _ = self.input.try_send(Input::Announce(addr));
    }

    /// `node`'s liveness and since when (Unix ms).
    pub fn of(&self, node: NodeId) -> (Live, u64) {
        if node == self.me {
            return (Live::Alive, self.started_ms);
        }
        match self.seen.lock().expect("liveness lock").get(&node) {
            Some(s) => (s.live, s.since_ms),
            // Not heard of for the whole grace period since this node started: dead, as far
            // as anyone here can tell.
            None if self.started.elapsed() > limits::LIVENESS_UNKNOWN_GRACE => {
                (Live::Dead, self.started_ms)
            }
            None => (Live::Unknown, self.started_ms),
        }
    }

    fn not_alive_for(&self, node: NodeId) -> Option<Duration> {
        if node == self.me {
            return None;
        }
        match self.seen.lock().expect("liveness lock").get(&node) {
            Some(s) if s.live == Live::Alive => None,
            Some(s) if s.live == Live::Suspect => Some(Duration::ZERO),
            Some(s) => Some(s.since.elapsed()),
            None => Some(self.started.elapsed()),
        }
    }

    /// Of `nodes`, those not to place anything on: suspect or dead (a node not heard of yet
    /// counts as dead only after `LIVENESS_UNKNOWN_GRACE`: a cluster just started places
    /// its first tables on every node).
    pub fn down_among(&self, nodes: impl IntoIterator<Item = NodeId>) -> BTreeSet<NodeId> {
        nodes
            .into_iter()
            .filter(|n| !matches!(self.of(*n).0, Live::Alive | Live::Unknown))
            .collect()
    }

    /// Every node this node has seen not alive (suspect, dead, or unknown past the grace).
    pub fn down(&self) -> BTreeSet<NodeId> {
        let known: Vec<NodeId> = self
            .seen
            .lock()
            .expect("liveness lock")
            .keys()
            .copied()
            .collect();
        self.down_among(known)
    }

    /// Of `nodes`, those dead (or unknown) for longer than `after`.
    pub fn dead_longer_than(
        &self,
        nodes: impl IntoIterator<Item = NodeId>,
        after: Duration,
    ) -> BTreeSet<NodeId> {
        nodes
            .into_iter()
            .filter(|n| {
                self.not_alive_for(*n).is_some_and(|d| d > after) && self.of(*n).0 != Live::Suspect
            })
            .collect()
    }

    /// Fold foca's membership into the view, noting and logging every change.
    fn update(&self, members: &BTreeMap<u64, (u64, State)>) {
        let mut seen = self.seen.lock().expect("liveness lock");
        for (node, (_, state)) in members {
            let node = NodeId(*node);
            if node == self.me {
                continue;
            }
            let live = match state {
                State::Alive => Live::Alive,
                State::Suspect => Live::Suspect,
                State::Down => Live::Dead,
            };
            let changed = seen.get(&node).is_none_or(|s| s.live != live);
            if changed {
                seen.insert(
                    node,
                    Seen {
                        live,
                        since: Instant::now(),
                        since_ms: now_ms(),
                    },
                );
                let line = format!("node {node} is {}", live.as_str());
                match live {
                    Live::Alive => tracing::info!("{line} (gossip)"),
                    _ => tracing::warn!("{line} (gossip)"),
                }
                self.journal.record("liveness", line);
            }
        }
    }
}

/// UDP datagrams into the gossip task. A packet that does not decode is dropped there.
async fn receive(socket: Arc<UdpSocket>, tx: mpsc::Sender<Input>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, _)) => {
                if tx.send(Input::Data(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "gossip receive");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// foca's side effects, collected while it handles one input.
struct Effects {
    send: Vec<(SocketAddr, Vec<u8>)>,
    timers: Vec<(Timer<Peer>, Duration)>,
    changed: bool,
}

impl Runtime<Peer> for Effects {
    fn notify(&mut self, notification: Notification<'_, Peer>) {
        if let Notification::Defunct = notification {
            tracing::warn!("gossip: the cluster declared this node down; rejoining");
        }
        self.changed = true;
    }

    fn send_to(&mut self, to: Peer, data: &[u8]) {
        self.send.push((to.addr, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<Peer>, after: Duration) {
        self.timers.push((event, after));
    }
}

async fn run(
    identity: Peer,
    socket: Arc<UdpSocket>,
    mut rx: mpsc::Receiver<Input>,
    tx: mpsc::Sender<Input>,
    liveness: std::sync::Weak<Liveness>,
    faults: Arc<crate::replication::faults::LinkFaults>,
) {
    let config = Config::new_lan(std::num::NonZeroU32::new(16).expect("non-zero"));
    let mut foca = Foca::new(identity, config, StdRng::from_os_rng(), PostcardCodec);
    let mut fx = Effects {
        send: Vec::new(),
        timers: Vec::new(),
        changed: false,
    };
    while let Some(input) = rx.recv().await {
        let result = match input {
            Input::Data(data) => foca.handle_data(&data, &mut fx),
            Input::Timer(timer) => foca.handle_timer(timer, &mut fx),
            Input::Announce(addr) => foca.announce(
                Peer {
                    node: 0,
                    addr,
                    run: 0,
                },
                &mut fx,
            ),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "gossip input ignored");
        }
        for (addr, data) in fx.send.drain(..) {
            match faults.of(&addr.to_string()) {
                None => {
                    let _ = socket.send_to(&data, addr).await;
                }
                Some(crate::replication::faults::LinkFault::Cut) => {}
                Some(slow) => {
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(slow.delay()).await;
                        let _ = socket.send_to(&data, addr).await;
                    });
                }
            }
        }
        for (timer, after) in fx.timers.drain(..) {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(Input::Timer(timer)).await;
            });
        }
        if std::mem::take(&mut fx.changed) {
            let Some(liveness) = liveness.upgrade() else {
                return;
            };
            // The newest run of each node speaks for it.
            let mut members: BTreeMap<u64, (u64, State)> = BTreeMap::new();
            for m in foca.iter_membership_state() {
                let id = m.id();
                let newer = members.get(&id.node).is_none_or(|(run, _)| id.run >= *run);
                if newer {
                    members.insert(id.node, (id.run, m.state()));
                }
            }
            liveness.update(&members);
        }
    }
}
