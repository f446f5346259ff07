//! Newtype identifiers, so a term can never be passed where a log index is expected.
//! Each prints the short form used in logs and the dashboard: `n3`, `s7`, `t4`, `i120`.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_type!(
    /// A node (one `cairn` process), assigned by the cluster and kept in its data dir.
    NodeId,
    "n"
);
id_type!(
    /// A shard: one Raft group and one SQLite replica on each of its nodes.
    ShardId,
    "s"
);
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
