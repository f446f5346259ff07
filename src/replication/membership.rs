//! Changing a group's members, on its leader: a replica joins as a learner, is caught up (a
//! snapshot when the log no longer reaches back far enough), is promoted to voter, and an old
//! one is removed — so the group never has fewer voters than it started with in between.
//!
//! These are the openraft calls and their time limits, nothing else: the caller keeps one
//! change of a group at a time (`Cluster::change_lock`) and decides what to move
//! (`cluster::placement`). The deterministic simulation (`tests/simulation.rs`) runs these
//! same functions under crashes and partitions between the steps.

use super::{NodeInfo, Raft};
use crate::error::{Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::limits;
use std::collections::BTreeSet;

/// The group's voters as this replica's membership has them.
pub fn voters(raft: &Raft) -> BTreeSet<u64> {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

/// Make `id` a voter of `shard`'s group: a learner first, promoted once it has caught up.
/// With `voters_max` voters already, it stays a learner. Idempotent: a retry after a timeout
/// or a crash between the steps finishes the move.
pub async fn add_voter(
    raft: &Raft,
    shard: ShardId,
    id: u64,
    node: NodeInfo,
    voters_max: usize,
) -> Result<()> {
    let voters = voters(raft);
    if voters.contains(&id) {
        return Ok(());
    }
    tracing::info!(shard = %shard, node = %NodeId(id), addr = %node.cluster_addr, "adding replica");
    // A learner that never catches up (it died, or cannot be reached) must not hold the
    // caller's membership lock forever: every later change of the group would wait behind it.
    tokio::time::timeout(
        limits::LEARNER_CATCH_UP_WAIT,
        raft.add_learner(id, node, true),
    )
    .await
    .map_err(|_| {
        Error::Unavailable(format!(
            "{} did not catch up with {shard} within {:?}",
            NodeId(id),
            limits::LEARNER_CATCH_UP_WAIT
        ))
    })?
    .map_err(refused)?;
    if voters.len() >= voters_max {
        tracing::info!(shard = %shard, node = %NodeId(id), "joined as a learner");
        return Ok(());
    }
    change(
        raft,
        shard,
        openraft::ChangeMembers::AddVoterIds(BTreeSet::from([id])),
        false,
    )
    .await
}

/// Take `id` out of `shard`'s group, voter or learner; nothing if it is not a member. A voter
/// is not removed when that would leave fewer than `keep_voters` voters (and never the last).
/// Decided on the leader's newest membership, which changes one at a time, so a caller
/// working from an older view cannot take a group below it.
pub async fn remove(raft: &Raft, shard: ShardId, id: u64, keep_voters: usize) -> Result<()> {
    let membership = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .clone();
    let change_of = if membership.voter_ids().any(|v| v == id) {
        let voters = membership.voter_ids().count();
        if voters <= keep_voters.max(1) {
            return Err(Error::Unavailable(format!(
                "removing {} would leave {shard} with {} voters",
                NodeId(id),
                voters - 1
            )));
        }
        openraft::ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else if membership.learner_ids().any(|l| l == id) {
        openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    } else {
        return Ok(());
    };
    tracing::info!(shard = %shard, node = %NodeId(id), "removing replica from the group");
    change(raft, shard, change_of, false).await
}

/// Propose a membership change and wait for it to commit, at most `MEMBERSHIP_CHANGE_WAIT`:
/// a leader that lost its quorum would wait forever, holding the caller's lock (the change
/// may still commit later; callers look again).
/// `retain` keeps removed voters as learners.
pub async fn change(
    raft: &Raft,
    shard: ShardId,
    change: openraft::ChangeMembers<u64, NodeInfo>,
    retain: bool,
) -> Result<()> {
    tokio::time::timeout(
        limits::MEMBERSHIP_CHANGE_WAIT,
        raft.change_membership(change, retain),
    )
    .await
    .map_err(|_| {
        Error::Unavailable(format!(
            "a membership change of {shard} did not commit within {:?}",
            limits::MEMBERSHIP_CHANGE_WAIT
        ))
    })?
    .map_err(refused)?;
    Ok(())
}

/// A refused membership change: NotLeader (with the leader, if known) or Unavailable.
fn refused(
    e: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, NodeInfo>>,
) -> Error {
    match e {
        openraft::error::RaftError::APIError(
            openraft::error::ClientWriteError::ForwardToLeader(f),
        ) => Error::NotLeader {
            leader: f.leader_id.map(NodeId),
        },
        other => Error::Unavailable(other.to_string()),
    }
}
