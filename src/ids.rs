//! Newtype identifiers, so a term can never be passed where a log index is expected.
//! Each prints the short form used in logs and the dashboard: `n3`, `s7`, `t4`, `i120`.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        id_type!(@struct $(#[$doc])* $name);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
    (@struct $(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        pub struct $name(pub u64);
    };
}

id_type!(
    /// A node (one `cairn` process), assigned by the cluster and kept in its data dir.
    NodeId,
    "n"
);
id_type!(@struct
    /// A shard: one Raft group and one SQLite replica on each of its nodes. `ShardId::META`
    /// (printed `meta`) is the meta group, which keeps the catalog; data shards are s1, s2, ...
    ShardId
);

impl ShardId {
    pub const META: ShardId = ShardId(0);

    pub fn is_meta(self) -> bool {
        self == ShardId::META
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_meta() {
            write!(f, "meta")
        } else {
            write!(f, "s{}", self.0)
        }
    }
}
/// The name of one life of a shard's replica on a node: its directory under `shards/` and
/// its log's keys. Placement 0 (a replica the shard was created with) is the shard's own
/// name (`s3`); a replica placed later is `s3.e2`, so a node moved away from a shard and
/// back never mixes the two copies' logs or files.
pub fn replica_name(shard: ShardId, epoch: u64) -> String {
    if epoch == 0 {
        shard.to_string()
    } else {
        format!("{shard}.e{epoch}")
    }
}

/// The shard and placement of a replica directory's name (`s3`, `s3.e2`).
pub fn parse_replica_name(name: &str) -> Option<(ShardId, u64)> {
    let (shard, epoch) = match name.split_once(".e") {
        Some((s, e)) => (s, e.parse().ok()?),
        None => (name, 0),
    };
    let id = shard.strip_prefix('s')?.parse().ok()?;
    Some((ShardId(id), epoch))
}

id_type!(
    /// A Raft term.
    Term,
    "t"
);
id_type!(
    /// A position in a shard's Raft log.
    LogIndex,
    "i"
);
