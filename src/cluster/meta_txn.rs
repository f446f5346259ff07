//! A transaction on the meta group, from any node: several catalog changes that apply
//! together, serialised with every other catalog change (it holds the meta writer).

use super::{Cluster, Lease};
use crate::catalog::{meta, Catalog};
use crate::error::{Error, Result};
use crate::ids::ShardId;
use crate::storage::replica::{Rows, Statement};
use rusqlite::types::Value;
use std::sync::Arc;

pub struct MetaTxn<'c> {
    cluster: &'c Cluster,
    lease: Option<Lease>,
}

impl<'c> MetaTxn<'c> {
    /// Nodes this node's gossip sees as not alive (new replicas are not placed there).
    pub fn down_nodes(&self) -> std::collections::BTreeSet<crate::ids::NodeId> {
        self.cluster.liveness.down()
    }

    /// Take the meta writer. The catalog read afterwards ([`MetaTxn::catalog`]) includes every
    /// change committed before, so decisions made on it cannot race other catalog writers.
    pub async fn begin(cluster: &'c Cluster) -> Result<MetaTxn<'c>> {
        let lease = cluster.begin(ShardId::META).await?;
        let txn = MetaTxn {
            cluster,
            lease: Some(lease),
        };
        cluster.sync(ShardId::META).await?;
        Ok(txn)
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.cluster.catalog()
    }

    pub fn cluster(&self) -> &'c Cluster {
        self.cluster
    }

    fn lease(&self) -> &Lease {
        self.lease
            .as_ref()
            .expect("a meta transaction is used only while open")
    }

    pub async fn exec(&self, stmt: Statement) -> Result<Rows> {
        self.cluster.exec(ShardId::META, self.lease(), stmt).await
    }

    /// Reserve `count` values of cluster-wide sequence `name`; returns the first. Sequences
    /// start at 1 and never hand out a value twice (ids of shards, colocation groups and DDL
    /// jobs must never be reused).
    pub async fn next(&self, name: &str, count: i64) -> Result<i64> {
        let rows = self.exec(meta::sequence_next(name)).await?;
        let first = match rows.rows.first().and_then(|r| r.first()) {
            Some(Value::Integer(n)) => *n,
            None => 1,
            Some(other) => return Err(Error::Corrupt(format!("sequence {name}: {other:?}"))),
        };
        self.exec(meta::sequence_set(name, first + count)).await?;
        Ok(first)
    }

    /// Commit, then catch this node's catalog up with it.
    pub async fn commit(mut self) -> Result<()> {
        let lease = self.lease.take().expect("open");
        self.cluster.commit(lease).await?;
        self.cluster.sync(ShardId::META).await
    }

    pub async fn rollback(mut self) {
        if let Some(lease) = self.lease.take() {
            self.cluster.rollback(lease).await;
        }
    }
}

impl Drop for MetaTxn<'_> {
    fn drop(&mut self) {
        // Dropping the lease rolls the transaction back (the writer sees its channel close).
        if self.lease.is_some() {
            tracing::debug!("meta transaction dropped without commit; rolled back");
        }
    }
}
