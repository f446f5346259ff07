//! The catalog: what the cluster is made of and where every row lives. Nodes (addresses,
//! zones), tables (columns with their declared PostgreSQL types, the SQLite DDL that creates
//! them, how they are distributed), colocation groups, shards (their hash range or list
//! values and their replicas), pending DDL jobs and cluster settings.
//!
//! It is kept by the meta group (`ShardId::META`), in the meta replica's SQLite tables
//! (`META_SCHEMA`), one JSON definition per row. It changes only through the meta group's
//! writer (statements from [`meta`]), so every node's copy is the same at the same log
//! index. Every node holds a meta replica and reloads its [`Catalog`] after each applied
//! change (`cluster::Cluster` publishes it).
//!
//! Routing, traced: `INSERT INTO reads (uid, ...) VALUES (42, ...)` → table `reads` is
//! `Distribution::Hash { column: "uid" }` in colocation group 3 → [`hash_value`] of 42 →
//! [`Catalog::shard_for`] picks the shard whose hash range holds it → that shard's replicas.

pub mod meta;

use crate::error::{sqlstate, Error, Result};
use crate::ids::{NodeId, ShardId};
use crate::types::PgType;
use rusqlite::types::Value;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The meta replica's tables. Each row is a JSON definition keyed by its id or name.
pub const META_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS _cairn_nodes (id INTEGER PRIMARY KEY, def TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS _cairn_tables (name TEXT PRIMARY KEY, def TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS _cairn_colocations (id INTEGER PRIMARY KEY, def TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS _cairn_shards (id INTEGER PRIMARY KEY, def TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS _cairn_jobs (id INTEGER PRIMARY KEY, def TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS _cairn_sequences (name TEXT PRIMARY KEY, next INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS _cairn_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS _cairn_retired (id INTEGER PRIMARY KEY);
    CREATE TABLE IF NOT EXISTS _cairn_objects (key TEXT PRIMARY KEY, def TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS _cairn_users (name TEXT PRIMARY KEY, def TEXT NOT NULL);
";

/// A user who logs in with a password (SCRAM-SHA-256), with the built-in roles granted to
/// it. Once the catalog has one user, every PostgreSQL client must log in as one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// `admin`, `readwrite`, `readonly`.
    #[serde(default)]
    pub roles: BTreeSet<String>,
    /// SCRAM's salt and salted password (PBKDF2-HMAC-SHA-256 of the password), hex.
    pub salt: String,
    pub salted_password: String,
    pub iterations: u32,
}

/// A schema object that holds no rows of its own: views, sequences, comments. Kept in
/// `_cairn_objects` by [`Object::key`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Object {
    View(View),
    Sequence(Sequence),
    /// `COMMENT ON ... IS '...'`: `on` is the commented object's key (see [`comment_key`]).
    Comment {
        on: String,
        text: String,
    },
    /// A table's result cache: `WITH (cache_ttl = ...)` or `ALTER TABLE ... SET (...)`.
    CacheTtl {
        table: String,
        millis: u64,
    },
}

impl Object {
    pub fn key(&self) -> String {
        match self {
            Object::View(v) => format!("view:{}", v.name.to_lowercase()),
            Object::Sequence(s) => format!("sequence:{}", s.name.to_lowercase()),
            Object::Comment { on, .. } => format!("comment:{on}"),
            Object::CacheTtl { table, .. } => cache_ttl_key(table),
        }
    }
}

/// The key a table's cache TTL is kept under.
pub fn cache_ttl_key(table: &str) -> String {
    format!("cache_ttl:{}", table.to_lowercase())
}

/// The key a comment on `kind` (`table`, `column`, `view`, `sequence`, `index`) named
/// `name` (a column: `table.column`) is kept under.
pub fn comment_key(kind: &str, name: &str) -> String {
    format!("{kind}:{}", name.to_lowercase())
}

/// `CREATE VIEW name AS query`: the query is expanded where the view is named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub name: String,
    /// The query as PostgreSQL text (the statement parsed and printed again).
    pub query: String,
    /// Its columns: names (the view's own list if it gave one) and types.
    pub columns: Vec<Column>,
    /// The names the query itself gives its columns, in order.
    pub query_columns: Vec<String>,
}

/// `CREATE SEQUENCE`, or the sequence behind a serial or identity column (`owned_by`).
/// Values come from the meta group in blocks (`_cairn_sequences`), as serial ids do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sequence {
    pub name: String,
    pub data_type: PgType,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cache: i64,
    pub cycle: bool,
    /// (table, column) whose default draws from it.
    #[serde(default)]
    pub owned_by: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub ty: PgType,
    /// `varchar(n)`, `numeric(p, s)`: what the declared modifier constrains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typmod: Option<crate::types::Typmod>,
}

/// How a table's rows are spread over shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Distribution {
    /// Every row on one shard (tables whose unique constraints do not include a common
    /// column, or that have no primary key).
    Single,
    /// By a stable hash of `column`, one contiguous hash range per shard.
    Hash { column: String },
    /// A full copy on every node.
    Reference,
    /// By the value of `column`, one shard per value list (partition).
    List { column: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TableState {
    /// Being created on its shards; invisible to queries.
    Creating,
    Ready,
    /// Being dropped from its shards; invisible to queries.
    Dropping,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    /// SQLite statements that build the table as it is now: CREATE TABLE, then each ALTER
    /// TABLE in order (indexes apart). Scratch databases at the coordinator replay them.
    pub ddl: Vec<String>,
    /// Indexes: name and SQLite `CREATE INDEX`.
    pub indexes: Vec<(String, String)>,
    /// Tables this one's foreign keys reference (they must outlive it).
    #[serde(default)]
    pub references: Vec<String>,
    /// SQLite expression of the distribution column's DEFAULT, evaluated by the coordinator
    /// when an INSERT leaves the column out.
    #[serde(default)]
    pub key_default: Option<String>,
    pub distribution: Distribution,
    pub colocation: u64,
    pub state: TableState,
    /// A serial column whose values the coordinator draws from a cluster-wide sequence
    /// (a table on several shards cannot let each shard's SQLite number its rows).
    #[serde(default)]
    pub serial: Option<String>,
    /// The serial or identity column, whatever the layout (a single-shard table lets its
    /// SQLite number rows, so `serial` is None there): its implicit sequence is
    /// `<table>_<column>_seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numbered: Option<String>,
    /// An identity column (`GENERATED ... AS IDENTITY`), numbered like a serial one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub column: String,
    /// GENERATED ALWAYS (an INSERT may not give it a value), else BY DEFAULT.
    pub always: bool,
}

impl Table {
    /// A table known only by its columns (a CTE, while translating).
    pub fn scratch(name: String, columns: Vec<Column>) -> Table {
        Table {
            name,
            columns,
            ddl: Vec::new(),
            indexes: Vec::new(),
            references: Vec::new(),
            key_default: None,
            distribution: Distribution::Single,
            colocation: 0,
            state: TableState::Ready,
            serial: None,
            numbered: None,
            identity: None,
        }
    }

    /// The implicit sequence of its serial or identity column: (sequence name, column).
    pub fn implicit_sequence(&self) -> Option<(String, &str)> {
        self.numbered
            .as_deref()
            .map(|c| (format!("{}_{c}_seq", self.name), c))
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// The column rows are placed by, if any.
    pub fn distribution_column(&self) -> Option<&str> {
        match &self.distribution {
            Distribution::Hash { column } | Distribution::List { column } => Some(column),
            Distribution::Single | Distribution::Reference => None,
        }
    }
}

/// One list partition: rows whose distribution value is in `values` (or, for the default
/// partition, `values` is None: every value no other partition lists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListPartition {
    pub name: String,
    pub values: Option<Vec<KeyValue>>,
    /// Zones whose nodes hold the partition's replicas (empty: any node).
    pub zones: Vec<String>,
    pub shard: ShardId,
}

/// A distribution value as stored in the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KeyValue {
    Integer(i64),
    Text(String),
}

impl KeyValue {
    pub fn from_value(v: &Value) -> Option<KeyValue> {
        match v {
            Value::Integer(i) => Some(KeyValue::Integer(*i)),
            Value::Text(s) => Some(KeyValue::Text(s.clone())),
            Value::Real(f) if f.fract() == 0.0 && f.abs() < 9e15 => {
                Some(KeyValue::Integer(*f as i64))
            }
            _ => None,
        }
    }

    pub fn to_value(&self) -> Value {
        match self {
            KeyValue::Integer(i) => Value::Integer(*i),
            KeyValue::Text(s) => Value::Text(s.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ColocationKind {
    /// One shard holding whole tables.
    Single,
    /// `shard_count` shards, shard i holding the i-th of as many equal hash ranges.
    Hash { shard_count: u32 },
    /// One shard replicated to every node.
    Reference,
    /// One shard per partition (of one list-partitioned table).
    List { partitions: Vec<ListPartition> },
}

/// Tables that share shards: a join on their distribution column runs inside each shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Colocation {
    pub id: u64,
    pub kind: ColocationKind,
    /// For hash groups, in hash-range order.
    pub shards: Vec<ShardId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub id: ShardId,
    pub colocation: u64,
    /// The nodes that should hold a replica (the placement driver makes the Raft membership
    /// follow this list).
    pub replicas: Vec<NodeId>,
    /// The membership the group was created with; these nodes may initialise the group.
    pub initial: Vec<NodeId>,
    /// Replica count wanted; 0 means every node (reference tables).
    pub replication_factor: u32,
    /// Zones the replicas must be in (empty: any).
    pub zones: Vec<String>,
    /// Nodes whose replica was moved away: already out of the group's Raft membership
    /// (the placement driver removes a member from Raft first, then lists it here), so
    /// each of them deletes its copy. A node placed here again leaves this list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<NodeId>,
    /// Replicas a rebalance is moving away: taken out once the replica added in their
    /// place is a voter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaving: Vec<NodeId>,
    /// Which placement of the shard on a node each replica is (0 for the initial ones, then
    /// one more at each add): a node that finds its copy was made for an older placement
    /// (it was moved away and back while the node missed the catalog in between) deletes
    /// it and starts empty, since that copy is no longer a member the group knows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epochs: Vec<(NodeId, u64)>,
    /// The placement the next add gets (every earlier one is below it).
    #[serde(default)]
    pub epoch_next: u64,
}

impl Shard {
    /// The placement `node`'s replica is for (see `epochs`).
    pub fn epoch_of(&self, node: NodeId) -> u64 {
        self.epochs
            .iter()
            .find(|(n, _)| *n == node)
            .map(|(_, e)| *e)
            .unwrap_or(0)
    }

    /// Every placement made so far is below this one.
    pub fn epochs_below(&self) -> u64 {
        self.epoch_next.max(1)
    }

    /// The record after `node`'s replica is taken out of the group: listed as removed (so
    /// the node deletes its copy) and in no other list.
    pub fn take_off(&self, node: NodeId) -> Shard {
        let mut shrunk = self.clone();
        shrunk.replicas.retain(|r| *r != node);
        shrunk.initial.retain(|r| *r != node);
        shrunk.leaving.retain(|r| *r != node);
        shrunk.epochs.retain(|(r, _)| *r != node);
        if !shrunk.removed.contains(&node) {
            shrunk.removed.push(node);
        }
        shrunk
    }

    /// Record a new placement on `node`.
    pub fn place_on(&mut self, node: NodeId) {
        let next = self.epochs_below();
        self.epoch_next = next + 1;
        self.epochs.retain(|(n, _)| *n != node);
        self.epochs.push((node, next));
        self.replicas.push(node);
        self.removed.retain(|n| *n != node);
    }
}

/// Where a node is in its life: serving (`Active`), having its replicas and meta vote
/// moved away (`Decommissioning`), or gone for good (`Decommissioned`: its id is never
/// used again; a process starting under it is refused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Active,
    Decommissioning,
    Decommissioned,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Decommissioning => "decommissioning",
            NodeState::Decommissioned => "decommissioned",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub cluster_addr: String,
    pub pg_addr: String,
    pub http_addr: String,
    pub zone: Option<String>,
    #[serde(default)]
    pub state: NodeState,
    /// When `state` last changed (Unix milliseconds; 0 = when the node joined).
    #[serde(default)]
    pub since_ms: u64,
}

impl NodeRecord {
    /// May the placement driver put replicas here?
    pub fn is_active(&self) -> bool {
        self.state == NodeState::Active
    }
}

/// A change a DDL job makes to the catalog when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    PutTable(Box<Table>),
    ForgetTable(String),
    PutColocation(Box<Colocation>),
    PutObject(Box<Object>),
    /// Delete the object with this key.
    ForgetObject(String),
    /// Every shard of a colocation group keeps this many replicas (the placement driver
    /// adds or trims them online).
    SetReplicationFactor {
        colocation: u64,
        factor: u32,
    },
    /// One shard (a list partition's) keeps this many replicas.
    SetShardReplicationFactor {
        shard: ShardId,
        factor: u32,
    },
}

/// One shard's part of a DDL job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStep {
    pub shard: ShardId,
    pub sql: String,
}

/// A schema change in progress: each step's SQL runs on its shard (once per shard, see
/// `StatementKind::DdlOnce`), then the `finish` changes apply to the catalog and the job is
/// deleted. If a shard refuses its SQL (a SQL error, e.g. a unique index over duplicate
/// rows), the `undo` steps run and the `abort` changes apply instead: a table never ends up
/// changed on some shards only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub table: String,
    pub steps: Vec<JobStep>,
    pub finish: Vec<Change>,
    pub undo: Vec<JobStep>,
    pub abort: Vec<Change>,
}

impl Job {
    /// The `DdlOnce` id of step `i` (unique across jobs: job ids are never reused).
    pub fn step_id(&self, i: usize) -> u64 {
        (self.id << 16) | i as u64
    }

    /// The `DdlOnce` id of undo step `i`.
    pub fn undo_id(&self, i: usize) -> u64 {
        (1 << 62) | (self.id << 16) | i as u64
    }
}

/// Cluster-wide settings, fixed when the cluster is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub replication_factor: u32,
    pub shard_count: u32,
    /// Made when the cluster is created; every connection between its nodes names it.
    pub cluster_id: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            replication_factor: 3,
            shard_count: 4,
            cluster_id: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Every table in any state, by lower-case name.
    tables: BTreeMap<String, Table>,
    pub colocations: BTreeMap<u64, Colocation>,
    pub shards: BTreeMap<ShardId, Shard>,
    pub jobs: BTreeMap<u64, Job>,
    pub settings: Settings,
    /// Shards retired with the last table on them (tombstones, kept forever: a node
    /// removes its replica of a shard only when the catalog names it here, never because
    /// it does not know the shard — its catalog may be behind).
    pub retired: BTreeSet<ShardId>,
    /// Views, sequences and comments, by [`Object::key`].
    pub objects: BTreeMap<String, Object>,
    /// Users, by lower-case name.
    pub users: BTreeMap<String, User>,
    /// Why the newest catalog did not load (a bug, corruption, or a definition written by a
    /// newer version): this is then the last one that did, and the node serves no statement
    /// from it until a later change loads (`Catalog::usable`).
    pub load_error: Option<String>,
}

fn load_rows<K, T: serde::de::DeserializeOwned>(
    conn: &Connection,
    table: &str,
    key: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<K>,
) -> Result<Vec<(K, T)>> {
    let mut stmt = conn.prepare(&format!("SELECT * FROM {table}"))?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let k = key(row)?;
        let def: String = row.get(1)?;
        let t = serde_json::from_str(&def)
            .map_err(|e| Error::Corrupt(format!("catalog {table}: {e}: {def}")))?;
        out.push((k, t));
    }
    Ok(out)
}

impl Catalog {
    /// Read the catalog from the meta replica's tables.
    /// Err if this catalog is stale because the newest one did not load.
    pub fn usable(&self) -> Result<()> {
        match &self.load_error {
            None => Ok(()),
            Some(e) => Err(Error::sql(
                crate::error::sqlstate::CANNOT_CONNECT_NOW,
                format!("this node cannot read the cluster's catalog ({e}); it serves no statements until it can, other nodes may"),
            )),
        }
    }

    pub fn load(conn: &Connection) -> Result<Catalog> {
        let mut c = Catalog::default();
        for (_, n) in load_rows::<i64, NodeRecord>(conn, "_cairn_nodes", |r| r.get(0))? {
            c.nodes.insert(n.id, n);
        }
        for (name, t) in load_rows::<String, Table>(conn, "_cairn_tables", |r| r.get(0))? {
            c.tables.insert(name, t);
        }
        for (_, g) in load_rows::<i64, Colocation>(conn, "_cairn_colocations", |r| r.get(0))? {
            c.colocations.insert(g.id, g);
        }
        for (_, s) in load_rows::<i64, Shard>(conn, "_cairn_shards", |r| r.get(0))? {
            c.shards.insert(s.id, s);
        }
        for (_, j) in load_rows::<i64, Job>(conn, "_cairn_jobs", |r| r.get(0))? {
            c.jobs.insert(j.id, j);
        }
        let mut stmt = conn.prepare("SELECT key, value FROM _cairn_settings")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let key: String = row.get(0)?;
            let value: String = row.get(1)?;
            match key.as_str() {
                "replication_factor" => {
                    c.settings.replication_factor = value.parse().unwrap_or(3);
                }
                "shard_count" => c.settings.shard_count = value.parse().unwrap_or(4),
                "cluster_id" => c.settings.cluster_id = Some(value),
                _ => {}
            }
        }
        for (key, o) in load_rows::<String, Object>(conn, "_cairn_objects", |r| r.get(0))? {
            c.objects.insert(key, o);
        }
        for (name, u) in load_rows::<String, User>(conn, "_cairn_users", |r| r.get(0))? {
            c.users.insert(name, u);
        }
        let mut stmt = conn.prepare("SELECT id FROM _cairn_retired")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            c.retired.insert(ShardId(row.get::<_, i64>(0)? as u64));
        }
        Ok(c)
    }

    /// A table queries may use (state Ready).
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables
            .get(&name.to_lowercase())
            .filter(|t| t.state == TableState::Ready)
    }

    /// A table in any state (DDL must not create a name that is being dropped).
    pub fn any_table(&self, name: &str) -> Option<&Table> {
        self.tables.get(&name.to_lowercase())
    }

    pub fn column_type(&self, table: &str, column: &str) -> Option<PgType> {
        self.table(table)?.column(column).map(|c| c.ty)
    }

    /// Tables queries may use.
    pub fn tables(&self) -> impl Iterator<Item = &Table> {
        self.tables
            .values()
            .filter(|t| t.state == TableState::Ready)
    }

    /// Add or replace a table in this copy only (a transaction's uncommitted DDL).
    pub fn put_table(&mut self, table: Table) {
        self.tables.insert(table.name.to_lowercase(), table);
    }

    pub fn remove_table(&mut self, name: &str) {
        self.tables.remove(&name.to_lowercase());
    }

    /// Apply a change to this copy only (a transaction's view of its own DDL).
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::PutTable(t) => self.put_table((**t).clone()),
            Change::ForgetTable(name) => self.remove_table(name),
            Change::PutColocation(g) => {
                self.colocations.insert(g.id, (**g).clone());
            }
            Change::PutObject(o) => {
                self.objects.insert(o.key(), (**o).clone());
            }
            Change::ForgetObject(key) => {
                self.objects.remove(key);
            }
            Change::SetReplicationFactor { colocation, factor } => {
                for shard in self.shards.values_mut() {
                    if shard.colocation == *colocation {
                        shard.replication_factor = *factor;
                    }
                }
            }
            Change::SetShardReplicationFactor { shard, factor } => {
                if let Some(shard) = self.shards.get_mut(shard) {
                    shard.replication_factor = *factor;
                }
            }
        }
    }

    /// How long results of queries over `table` may be cached, if the table asks for it.
    pub fn cache_ttl(&self, table: &str) -> Option<std::time::Duration> {
        match self.objects.get(&cache_ttl_key(table)) {
            Some(Object::CacheTtl { millis, .. }) => {
                Some(std::time::Duration::from_millis(*millis))
            }
            _ => None,
        }
    }

    pub fn view(&self, name: &str) -> Option<&View> {
        match self.objects.get(&format!("view:{}", name.to_lowercase())) {
            Some(Object::View(v)) => Some(v),
            _ => None,
        }
    }

    pub fn sequence(&self, name: &str) -> Option<&Sequence> {
        match self
            .objects
            .get(&format!("sequence:{}", name.to_lowercase()))
        {
            Some(Object::Sequence(s)) => Some(s),
            _ => None,
        }
    }

    pub fn views(&self) -> impl Iterator<Item = &View> {
        self.objects.values().filter_map(|o| match o {
            Object::View(v) => Some(v),
            _ => None,
        })
    }

    pub fn sequences(&self) -> impl Iterator<Item = &Sequence> {
        self.objects.values().filter_map(|o| match o {
            Object::Sequence(s) => Some(s),
            _ => None,
        })
    }

    /// The comment on an object (see [`comment_key`]).
    pub fn comment(&self, key: &str) -> Option<&str> {
        match self.objects.get(&format!("comment:{key}")) {
            Some(Object::Comment { text, .. }) => Some(text),
            _ => None,
        }
    }

    /// Whether a relation (table, view, sequence, index) already has this name.
    pub fn relation_exists(&self, name: &str) -> bool {
        self.any_table(name).is_some()
            || self.view(name).is_some()
            || self.sequence(name).is_some()
            || self.index_owner(name).is_some()
    }

    /// The table owning index `name`.
    pub fn index_owner(&self, name: &str) -> Option<&Table> {
        self.tables()
            .find(|t| t.indexes.iter().any(|(i, _)| i.eq_ignore_ascii_case(name)))
    }

    /// The list partition named `name` (of any list-partitioned table).
    pub fn list_partition(&self, name: &str) -> Option<&ListPartition> {
        self.colocations.values().find_map(|c| match &c.kind {
            ColocationKind::List { partitions } => partitions
                .iter()
                .find(|p| p.name.eq_ignore_ascii_case(name)),
            _ => None,
        })
    }

    pub fn colocation_of(&self, table: &Table) -> Result<&Colocation> {
        self.colocations.get(&table.colocation).ok_or_else(|| {
            Error::Corrupt(format!(
                "table {} names missing colocation group {}",
                table.name, table.colocation
            ))
        })
    }

    /// Every shard holding rows of `table`.
    pub fn shards_of(&self, table: &Table) -> Result<Vec<ShardId>> {
        Ok(self.colocation_of(table)?.shards.clone())
    }

    /// The shard holding rows of `table` whose distribution column is `value` (the value
    /// already in its stored form). For Single and Reference tables, their one shard.
    pub fn shard_for(&self, table: &Table, value: &Value) -> Result<ShardId> {
        let group = self.colocation_of(table)?;
        match &group.kind {
            ColocationKind::Single | ColocationKind::Reference => group
                .shards
                .first()
                .copied()
                .ok_or_else(|| Error::Corrupt(format!("colocation {} has no shard", group.id))),
            ColocationKind::Hash { shard_count } => {
                let i = hash_index(hash_value(value), *shard_count as usize);
                group.shards.get(i).copied().ok_or_else(|| {
                    Error::Corrupt(format!("colocation {} lacks shard {i}", group.id))
                })
            }
            ColocationKind::List { partitions } => {
                let key = KeyValue::from_value(value);
                let listed = partitions.iter().find(|p| {
                    p.values
                        .as_ref()
                        .is_some_and(|vs| key.as_ref().is_some_and(|k| vs.contains(k)))
                });
                listed
                    .or_else(|| partitions.iter().find(|p| p.values.is_none()))
                    .map(|p| p.shard)
                    .ok_or_else(|| {
                        Error::sql(
                            sqlstate::CHECK_VIOLATION,
                            format!(
                                "no partition of relation \"{}\" found for row ({} = {})",
                                table.name,
                                table.distribution_column().unwrap_or("?"),
                                display_value(value)
                            ),
                        )
                    })
            }
        }
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    pub fn shard(&self, id: ShardId) -> Option<&Shard> {
        self.shards.get(&id)
    }
}

fn display_value(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(s) => s.clone(),
        Value::Blob(b) => format!("<{} bytes>", b.len()),
    }
}

/// The stable 64-bit hash of a distribution value: FNV-1a over a type tag and the value's
/// bytes, then the splitmix64 finaliser so consecutive keys spread over the whole range.
/// It must never change: shard ranges are defined by it.
pub fn hash_value(value: &Value) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    match value {
        Value::Null => feed(b"n"),
        Value::Integer(i) => {
            feed(b"i");
            feed(&i.to_le_bytes());
        }
        // An integral real hashes as the integer, so 5 and 5.0 land together.
        Value::Real(f) if f.fract() == 0.0 && f.abs() < 9e15 => {
            feed(b"i");
            feed(&(*f as i64).to_le_bytes());
        }
        Value::Real(f) => {
            feed(b"r");
            feed(&f.to_bits().to_le_bytes());
        }
        Value::Text(s) => {
            feed(b"t");
            feed(s.as_bytes());
        }
        Value::Blob(b) => {
            feed(b"b");
            feed(b);
        }
    }
    let mut z = h.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// Which of `count` equal, contiguous hash ranges holds `hash`.
pub fn hash_index(hash: u64, count: usize) -> usize {
    ((hash as u128 * count.max(1) as u128) >> 64) as usize
}

/// The inclusive hash range of range `i` of `count`, for display.
pub fn hash_range(i: usize, count: usize) -> (u64, u64) {
    let count = count.max(1) as u128;
    let lo = ((i as u128) << 64).div_ceil(count);
    let hi = (((i as u128 + 1) << 64).div_ceil(count)) - 1;
    (lo as u64, hi.min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable() {
        // These values define where existing rows live: they must never change.
        assert_eq!(
            hash_value(&Value::Integer(1)),
            hash_value(&Value::Real(1.0))
        );
        assert_ne!(
            hash_value(&Value::Integer(1)),
            hash_value(&Value::Text("1".into()))
        );
        let known = hash_value(&Value::Integer(42));
        assert_eq!(known, hash_value(&Value::Integer(42)));
    }

    #[test]
    fn ranges_cover_the_hash_space_in_order() {
        for count in [1usize, 2, 3, 4, 7, 16] {
            let mut next = 0u128;
            for i in 0..count {
                let (lo, hi) = hash_range(i, count);
                assert_eq!(lo as u128, next, "count {count} range {i}");
                assert_eq!(hash_index(lo, count), i);
                assert_eq!(hash_index(hi, count), i);
                next = hi as u128 + 1;
            }
            assert_eq!(next, 1u128 << 64);
        }
    }

    #[test]
    fn keys_spread_over_shards() {
        let mut counts = [0usize; 4];
        for k in 0..4000 {
            counts[hash_index(hash_value(&Value::Integer(k)), 4)] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }
}
