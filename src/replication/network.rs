//! The Raft network: openraft's RPCs sent over [`super::transport`] to the peer's cluster
//! address (from the group's membership), tagged with the shard so one connection per node
//! pair carries every group.

use super::transport::{CallError, Client, Request, Response};
use super::{NodeInfo, TypeConfig};
use crate::ids::ShardId;
use crate::limits;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
pub struct Network {
    pub shard: ShardId,
    pub client: Arc<Client>,
    pub acks: Arc<Acks>,
}

pub struct Peer {
    shard: ShardId,
    target: u64,
    addr: String,
    client: Arc<Client>,
    acks: Arc<Acks>,
}

/// What each follower last acknowledged of this node as leader: the vote it accepted and
/// when the append it accepted was *sent*. A follower that accepted an append refuses every
/// vote for a lease (openraft's, the maximum election timeout) from when it received it, so
/// once a quorum has acknowledged sends at or after `t`, no other leader can exist before
/// `t` plus the lease ([`super::group::ShardGroup`]'s lease reads).
#[derive(Default)]
pub struct Acks(std::sync::Mutex<std::collections::HashMap<u64, (openraft::Vote<u64>, Instant)>>);

impl Acks {
    fn record(&self, target: u64, vote: openraft::Vote<u64>, sent: Instant) {
        let mut acks = self.0.lock().expect("acks lock poisoned");
        match acks.get_mut(&target) {
            Some((v, at)) if *v == vote => *at = (*at).max(sent),
            _ => {
                acks.insert(target, (vote, sent));
            }
        }
    }

    /// The latest time a quorum of `voters` acknowledged `vote` (this node, `me`, counting as
    /// `now`), if a quorum ever did.
    pub fn quorum_acked(
        &self,
        me: u64,
        vote: &openraft::Vote<u64>,
        voters: &std::collections::BTreeSet<u64>,
        now: Instant,
    ) -> Option<Instant> {
        let acks = self.0.lock().expect("acks lock poisoned");
        let mut times: Vec<Instant> = voters
            .iter()
            .filter_map(|v| match acks.get(v) {
                _ if *v == me => Some(now),
                Some((acked, at)) if acked == vote => Some(*at),
                _ => None,
            })
            .collect();
        let quorum = voters.len() / 2 + 1;
        times.sort_unstable_by(|a, b| b.cmp(a));
        times.get(quorum.checked_sub(1)?).copied()
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> Peer {
        Peer {
            shard: self.shard,
            target,
            addr: node.cluster_addr.clone(),
            client: self.client.clone(),
            acks: self.acks.clone(),
        }
    }
}

type RpcResult<T, E = RaftError<u64>> = Result<T, RPCError<u64, NodeInfo, E>>;

impl Peer {
    async fn call<E: std::error::Error>(
        &self,
        request: Request,
        option: &RPCOption,
    ) -> RpcResult<Response, E> {
        self.client
            .call(&self.addr, request, option.hard_ttl())
            .await
            .map_err(|e| match e {
                CallError::NotSent(_) | CallError::Unreachable(_) => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                CallError::Timeout(_) => RPCError::Network(NetworkError::new(&e)),
            })
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<u64, NodeInfo, E> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

fn unexpected<E: std::error::Error>(what: &str) -> RPCError<u64, NodeInfo, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
        "unexpected answer to {what}"
    ))))
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        // Keep messages small enough to send (and to fit the peer's frame limit): ask
        // openraft to send fewer entries when these add up to too much.
        let mut total = 0;
        for (i, entry) in rpc.entries.iter().enumerate() {
            if let openraft::EntryPayload::Normal(batch) = &entry.payload {
                total += batch.ops.iter().map(super::Op::bytes).sum::<usize>();
            }
            if total > limits::ENTRY_BYTES_TARGET && i > 0 {
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(i as u64),
                ));
            }
        }
        let (vote, sent) = (rpc.vote, Instant::now());
        match self
            .call(
                Request::Append {
                    shard: self.shard,
                    rpc,
                },
                &option,
            )
            .await?
        {
            Response::Append(Ok(r)) => {
                // Any answer but a higher vote means the follower took us for its leader.
                if !matches!(r, AppendEntriesResponse::HigherVote(_)) {
                    self.acks.record(self.target, vote, sent);
                }
                Ok(r)
            }
            Response::Append(Err(e)) => Err(self.remote(e)),
            _ => Err(unexpected("append")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        match self
            .call(
                Request::Snapshot {
                    shard: self.shard,
                    rpc,
                },
                &option,
            )
            .await?
        {
            Response::Snapshot(Ok(r)) => Ok(r),
            Response::Snapshot(Err(e)) => Err(self.remote(e)),
            _ => Err(unexpected("install_snapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        match self
            .call(
                Request::Vote {
                    shard: self.shard,
                    rpc,
                },
                &option,
            )
            .await?
        {
            Response::Vote(Ok(r)) => Ok(r),
            Response::Vote(Err(e)) => Err(self.remote(e)),
            _ => Err(unexpected("vote")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Acks;
    use std::time::{Duration, Instant};

    #[test]
    fn a_lease_runs_from_the_send_a_quorum_acknowledged_for_the_current_vote() {
        let acks = Acks::default();
        let vote = openraft::Vote::new_committed(3, 1);
        let voters = [1, 2, 3].into_iter().collect();
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(100);
        // Nobody but the leader itself: no quorum, no lease.
        assert_eq!(acks.quorum_acked(1, &vote, &voters, now), None);
        acks.record(2, vote, t0);
        acks.record(3, vote, t0 + Duration::from_millis(30));
        // The second newest of {now, t0 + 30, t0} counts for 2 of 3.
        assert_eq!(
            acks.quorum_acked(1, &vote, &voters, now),
            Some(t0 + Duration::from_millis(30))
        );
        // An older send answered late does not move the lease back.
        acks.record(3, vote, t0);
        assert_eq!(
            acks.quorum_acked(1, &vote, &voters, now),
            Some(t0 + Duration::from_millis(30))
        );
        // Acknowledgements of an earlier leadership of this node count for nothing.
        let next = openraft::Vote::new_committed(4, 1);
        assert_eq!(acks.quorum_acked(1, &next, &voters, now), None);
        acks.record(2, next, t0 + Duration::from_millis(50));
        assert_eq!(
            acks.quorum_acked(1, &next, &voters, now),
            Some(t0 + Duration::from_millis(50))
        );
    }
}
