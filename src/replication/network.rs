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

#[derive(Clone)]
pub struct Network {
    pub shard: ShardId,
    pub client: Arc<Client>,
}

pub struct Peer {
    shard: ShardId,
    target: u64,
    addr: String,
    client: Arc<Client>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> Peer {
        Peer {
            shard: self.shard,
            target,
            addr: node.cluster_addr.clone(),
            client: self.client.clone(),
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
            Response::Append(Ok(r)) => Ok(r),
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
