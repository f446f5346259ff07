//! Faults on this node's links to its peers, switched on by `cairn dev`'s supervisor
//! (`POST /v1/dev/links`): a cut link carries nothing either way, a slow one delays each
//! message. Both the cluster transport (Raft, forwarded statements) and gossip consult it,
//! so a partition made here looks to the node like one made by a firewall, without root.
//!
//! The supervisor sets both ends of a link, and every message of the transport is a call
//! answered on its own connection, so refusing calls on the sending side cuts both ways.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

/// What is wrong with the link to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkFault {
    /// Nothing gets through.
    Cut,
    /// Each message waits this long before it leaves.
    Slow { delay_ms: u64 },
}

/// The faults on this node's links, by the peer's cluster address (`host:port`). Empty
/// (and never consulted beyond one read lock) outside dev mode.
#[derive(Debug, Default)]
pub struct LinkFaults {
    links: RwLock<BTreeMap<String, LinkFault>>,
}

impl LinkFaults {
    /// The fault on the link to `addr`, if there is one.
    pub fn of(&self, addr: &str) -> Option<LinkFault> {
        let links = self.links.read().expect("link faults lock");
        if links.is_empty() {
            return None;
        }
        links.get(addr).copied()
    }

    /// Replace every fault with `links` (empty heals them all).
    pub fn set(&self, links: BTreeMap<String, LinkFault>) {
        if !links.is_empty() {
            tracing::warn!(?links, "dev mode: link faults set");
        } else {
            tracing::info!("dev mode: every link healed");
        }
        *self.links.write().expect("link faults lock") = links;
    }

    pub fn all(&self) -> BTreeMap<String, LinkFault> {
        self.links.read().expect("link faults lock").clone()
    }
}

impl LinkFault {
    pub fn delay(self) -> Duration {
        match self {
            LinkFault::Cut => Duration::ZERO,
            LinkFault::Slow { delay_ms } => Duration::from_millis(delay_ms),
        }
    }
}
