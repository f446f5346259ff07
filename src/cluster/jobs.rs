//! DDL jobs: a schema change runs on every shard of a table, then changes the catalog, and
//! either all of it happens or none of it. A job is written to the catalog before any shard
//! sees it; its SQL runs at most once per shard (`StatementKind::DdlOnce`), so the
//! coordinator and the placement driver (which adopts jobs whose coordinator went away) may
//! both drive it. A shard refusing the SQL with a SQL error aborts the job: its undo runs on
//! every shard where a step of it ran (`StatementKind::DdlUndo`) and the catalog takes the
//! abort path.

use super::Cluster;
use crate::catalog::{meta, Change, Job};
use crate::error::{Error, Result};
use crate::ids::ShardId;
use crate::storage::replica::{Statement, StatementKind};
use rusqlite::types::Value;

impl Cluster {
    /// Wait until this node's catalog shows no DDL job on `table`, or `deadline`. Another
    /// node's job ends when its coordinator (or the meta leader adopting it) finishes it.
    pub async fn wait_for_jobs_on(&self, table: &str, deadline: std::time::Instant) {
        let mut watch = self.catalog_watch();
        loop {
            let busy = watch
                .borrow_and_update()
                .jobs
                .values()
                .any(|j| j.table.eq_ignore_ascii_case(table));
            if !busy {
                return;
            }
            // Woken by a catalog change; polled too, in case this node's catalog lags.
            let wait = deadline
                .saturating_duration_since(std::time::Instant::now())
                .min(std::time::Duration::from_millis(200));
            if wait.is_zero() {
                return;
            }
            let _ = tokio::time::timeout(wait, watch.changed()).await;
            let _ = self.sync(ShardId::META).await;
        }
    }

    /// Drive `job` to its end. A SQL error from a shard is returned after the job was
    /// rolled back everywhere; any other error leaves the job for a later attempt.
    pub async fn run_job(&self, job: &Job) -> Result<()> {
        let mut refused = None;
        for (i, step) in job.steps.iter().enumerate() {
            let stmt = Statement {
                sql: step.sql.clone(),
                params: Vec::new(),
                kind: StatementKind::DdlOnce(job.step_id(i)),
                refs: Vec::new(),
                cancel: Default::default(),
            };
            match self.write(step.shard, stmt).await {
                Ok(_) => {}
                Err(e @ Error::Sql { .. }) => {
                    refused = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let Some(refusal) = refused else {
            self.end_job(job, &job.finish).await?;
            return Ok(());
        };
        tracing::info!(job = job.id, table = %job.table, error = %refusal, "DDL refused by a shard; undoing it");
        for (i, step) in job.undo.iter().enumerate() {
            let stmt = Statement {
                sql: step.sql.clone(),
                params: Vec::new(),
                kind: StatementKind::DdlUndo {
                    id: job.undo_id(i),
                    job: job.id,
                },
                refs: Vec::new(),
                cancel: Default::default(),
            };
            self.write(step.shard, stmt).await?;
        }
        self.end_job(job, &job.abort).await?;
        Err(refusal)
    }

    /// The statements (for the meta transaction applying `changes`) that retire the
    /// colocation groups `changes` take tables off — a dropped table's, a re-laid-out
    /// table's old one — if no table is left on them.
    pub fn retirements(&self, changes: &[Change]) -> Vec<Statement> {
        let catalog = self.catalog();
        // Each table's group as of the changes so far (a transaction may create a table and
        // lay it out anew, or drop it, in one go).
        let mut placed: std::collections::HashMap<String, u64> = Default::default();
        let mut left: Vec<u64> = Vec::new();
        let mut before = |name: &str, now: Option<u64>| {
            let key = name.to_lowercase();
            let was = match now {
                Some(g) => placed.insert(key.clone(), g),
                None => placed.remove(&key),
            };
            was.or_else(|| catalog.any_table(name).map(|t| t.colocation))
        };
        for change in changes {
            match change {
                Change::ForgetTable(name) => left.extend(before(name, None)),
                Change::PutTable(t) => {
                    left.extend(before(&t.name, Some(t.colocation)).filter(|&g| g != t.colocation))
                }
                Change::PutColocation(_)
                | Change::PutObject(_)
                | Change::ForgetObject(_)
                | Change::SetReplicationFactor { .. }
                | Change::SetShardReplicationFactor { .. } => {}
            }
        }
        left.sort_unstable();
        left.dedup();
        left.into_iter().flat_map(meta::retire_if_unused).collect()
    }

    /// In one meta transaction: apply `finish` and delete the job — unless another driver
    /// already ended it.
    async fn end_job(&self, job: &Job, changes: &[Change]) -> Result<()> {
        let lease = self.begin(ShardId::META).await?;
        let result = async {
            let present = self
                .exec(
                    ShardId::META,
                    &lease,
                    Statement {
                        sql: "SELECT id FROM _cairn_jobs WHERE id = ?1".into(),
                        params: vec![Value::Integer(job.id as i64)],
                        kind: StatementKind::Dml,
                        refs: Vec::new(),
                        cancel: Default::default(),
                    },
                )
                .await?;
            if present.rows.is_empty() {
                return Ok(false);
            }
            for change in changes {
                self.exec(ShardId::META, &lease, meta::change(change)?)
                    .await?;
            }
            for stmt in self.retirements(changes) {
                self.exec(ShardId::META, &lease, stmt).await?;
            }
            self.exec(ShardId::META, &lease, meta::delete_job(job.id))
                .await?;
            Ok(true)
        }
        .await;
        match result {
            Ok(true) => self.commit(lease).await?,
            Ok(false) => self.rollback(lease).await,
            Err(e) => {
                self.rollback(lease).await;
                return Err(e);
            }
        }
        self.sync(ShardId::META).await
    }
}
