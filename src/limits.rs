//! Every bound in one place, with the reason for its value. Exceeding one is a clear error
//! (or backpressure), never unbounded memory growth.

use std::time::Duration;

/// Largest HTTP request body. Statements plus parameters; files use their own streaming path.
pub const HTTP_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Largest single SQL text accepted on any API. PostgreSQL itself allows 1 GiB, but nothing
/// legitimate sent to Cairn is this large; bulk data goes through COPY.
pub const SQL_TEXT_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Rows a single result may hold. Results are materialised before they are sent (the
/// writer thread must not wait on a slow client), so this bounds memory per query.
pub const RESULT_ROWS_MAX: usize = 1_000_000;

/// Bytes a single result may hold, for the same reason.
pub const RESULT_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Binary operators in a row at one nesting level of an expression (`1+1+...`, long OR
/// chains): each is a level of the parsed tree, and translating a tree recurses once per
/// level (see `sql::translate::check_operator_runs`). A debug build translates a chain of
/// 400 on a 2 MiB stack (a tokio worker's) and overflows before 700; this leaves room for
/// the frames around it. Long lists belong in `IN (...)`, which is not a chain.
pub const EXPRESSION_OPERATORS_MAX: usize = 256;

/// Statements a single HTTP request may carry.
pub const HTTP_STATEMENTS_MAX: usize = 1_000;

/// Autocommit statements one Raft proposal may carry (group commit). Bigger batches amortise
/// the fsync further but hold every statement of the batch until the slowest is done.
pub const WRITE_BATCH_STATEMENTS_MAX: usize = 256;

/// Requests queued for a shard's writer before callers wait (backpressure).
pub const WRITER_QUEUE_MAX: usize = 1_024;

/// Requests queued for a replica's SQLite thread.
pub const REPLICA_QUEUE_MAX: usize = 64;

/// A transaction holding a shard's writer and then sending nothing for this long is aborted:
/// while it holds the writer every other writer of the shard waits.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a write waits for the shard's writer (held by a transaction) before failing
/// with a retryable error.
pub const WRITER_WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a write the shard's writer has taken (or a commit it was handed) may take to
/// answer before its caller reports "outcome unknown" (SQLSTATE 08007): past this point the
/// write may have been proposed, so the caller cannot say it did not happen. A proposal
/// waits this long only without a quorum.
pub const WRITE_OUTCOME_WAIT: Duration = Duration::from_secs(20);

/// Read-only SQLite connections per replica serving reads outside transactions.
pub const READ_CONNECTIONS_MAX: usize = 8;

/// Applied log entries after which a snapshot is taken and the log before it purged.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 5_000;

/// Concurrent client connections per API before new ones are refused.
pub const CONNECTIONS_MAX: usize = 1_024;

/// How long a request waits for an election in progress before failing with "no leader".
/// A few election timeouts: long enough to ride out a failover, short enough to fail fast
/// when there is no quorum.
pub const LEADER_WAIT: Duration = Duration::from_secs(5);

/// How long a node waits at start for its advertised host name to resolve.
pub const RESOLVE_WAIT: Duration = Duration::from_secs(10);

/// A new one-shard table joins the shared one-shard group unless one transaction holds that
/// shard's writer throughout this long (then it gets a shard of its own, instead of its
/// CREATE waiting for a stranger's transaction to end).
pub const SHARED_SHARD_BUSY: Duration = Duration::from_secs(1);

/// Two-phase commit decisions whose parts are all resolved are deleted in batches: once this
/// many are waiting, or `FORGET_AFTER` after the first of a batch.
pub const FORGET_BATCH: usize = 64;
pub const FORGET_AFTER: Duration = Duration::from_secs(2);

/// A single statement writing several shards (an implicit transaction) that loses a lock
/// conflict is retried by the server for this long before the client sees SQLSTATE 40001.
pub const IMPLICIT_TXN_RETRY_FOR: Duration = Duration::from_secs(10);

/// An HTTP transaction (`POST /v1/txn`) idle this long is rolled back, unless the client
/// asked for another timeout; at most `HTTP_TXN_TIMEOUT_MAX` (below the writer's own
/// idle-in-transaction timeout).
pub const HTTP_TXN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
pub const HTTP_TXN_TIMEOUT_MAX: Duration = Duration::from_secs(50);

/// Open HTTP transactions per node.
pub const HTTP_TXNS_MAX: usize = 1_024;

/// Largest row changes (SQLite changeset bytes) one transaction — or one batch of autocommit
/// statements — may make on one shard; the statement that crosses it fails with SQLSTATE
/// 54000. The writer holds them in memory until they commit.
pub const TXN_CHANGES_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Raft entries stay about this small: a commit with more changes goes as several entries
/// (staged parts, then one that applies them all), and entries go to a follower in messages
/// of about this size (a single larger entry goes alone).
pub const ENTRY_BYTES_TARGET: usize = 1024 * 1024;

/// The memory one shard's log keeps before writing it to a table file (fjall's memtable;
/// its default, 64 MiB, is per shard: a node with many shards, or files streaming through
/// a few, held hundreds of MiB of log in memory).
pub const LOG_MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;

/// A session holding a transaction on another node's shard leader tells it so this often;
/// the leader ends a forwarded transaction it has not heard of for `REMOTE_TXN_SILENCE`
/// (the session's node died or was cut off), freeing the shard's writer.
pub const REMOTE_TXN_KEEPALIVE: Duration = Duration::from_secs(1);
pub const REMOTE_TXN_SILENCE: Duration = Duration::from_secs(5);

/// Largest message between nodes. Raft batches entries up to openraft's
/// `max_payload_entries`, and snapshot chunks are `snapshot_max_chunk_size` (3 MiB); a frame
/// claiming more is garbage and closes the connection.
pub const CLUSTER_FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Inbound connections on the cluster port. Each peer keeps one (re-dialled after a
/// failure); the cap stops a flood from taking the node's descriptors and memory.
pub const CLUSTER_CONNECTIONS_MAX: usize = 256;

/// Calls queued per peer connection before callers wait.
pub const CLUSTER_QUEUE_MAX: usize = 1_024;

/// Calls in flight on one inbound cluster connection; further frames wait to be read.
pub const CLUSTER_INFLIGHT_MAX: usize = 256;

/// Request bytes (in KiB) a node holds while answering cluster calls, over all its inbound
/// connections: 256 MiB. A connection whose next frame does not fit waits with that one
/// frame read and reads nothing more, so a flood of large calls holds at most the budget
/// plus one frame per connection instead of taking the node's memory.
pub const CLUSTER_INFLIGHT_KIB_MAX: usize = 256 * 1024;

/// Connecting to a peer gives up after this long (the peer is then unreachable).
pub const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A peer connection with calls pending and nothing heard for `CLUSTER_PROBE_AFTER` sends
/// the peer a ping; if neither the ping nor anything else is answered within
/// `CLUSTER_PEER_SILENCE`, the path is taken as broken (a partition drops packets without a
/// reset; a paused process answers nothing): the connection closes, its pending calls fail
/// at once instead of waiting out their timeouts, and the next call dials again. A slow call
/// alone never closes a connection: the ping is answered beside it.
pub const CLUSTER_PROBE_AFTER: Duration = Duration::from_secs(1);
pub const CLUSTER_PEER_SILENCE: Duration = Duration::from_secs(3);

/// A forwarded statement or transaction call waits this long for the leader's answer.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// Calls (or answers) written to a peer connection in one flush.
pub const CLUSTER_BATCH_MAX: usize = 64;

/// How long adding a replica waits for it to catch up as a learner before giving up (and
/// freeing the node's one-at-a-time membership lock for the next change).
pub const LEARNER_CATCH_UP_WAIT: Duration = Duration::from_secs(20);

/// How long a membership change waits to commit before its lock is given up (the
/// placement driver tries again): a leader that lost its quorum would wait forever.
pub const MEMBERSHIP_CHANGE_WAIT: Duration = Duration::from_secs(10);

/// How often the placement driver (on the meta leader) compares the catalog with reality.
pub const PLACEMENT_INTERVAL: Duration = Duration::from_millis(500);

/// How often the placement driver looks at how leaders are spread (one leadership move at
/// most each time; each election costs the shard a moment of writes).
pub const LEADER_BALANCE_EVERY: Duration = Duration::from_secs(3);

/// A shard whose leadership was moved is not moved again for this long.
pub const LEADER_MOVE_COOLDOWN: Duration = Duration::from_secs(30);

/// A replica campaigns for leadership only if it heard from the leader this recently
/// (and applied what the leader had committed then).
pub const CAMPAIGN_FRESH: Duration = Duration::from_millis(300);

/// Replica moves (a replica added and not yet trimmed) in flight at once across the
/// cluster, and per node taking one in: each move copies a shard (a snapshot when the log
/// no longer covers it), so the bound keeps repair from starving client traffic.
pub const PLACEMENT_MOVES_MAX: usize = 4;
pub const PLACEMENT_MOVES_PER_NODE: usize = 2;

/// How long a node must be dead (by gossip) before its replicas are re-created elsewhere,
/// unless `--dead-after` says otherwise. A minute rides out a process restart, an upgrade or
/// a short network cut (moving replicas then would copy data only to move it back), and is
/// still short enough that a second failure in the same shards is unlikely meanwhile.
pub const DEAD_AFTER_DEFAULT: Duration = Duration::from_secs(60);

/// A node gossip has not heard of since this node started counts as down after this
/// (gossip reaches every live node within a few probe periods).
pub const LIVENESS_UNKNOWN_GRACE: Duration = Duration::from_secs(10);

/// How often the meta leader checks every shard's replicas against each other, and the
/// pause between two shards (a check scans the shard on every replica: pacing keeps it from
/// competing with clients), and how long a check waits for each replica's result.
pub const CONSISTENCY_CHECK_EVERY: Duration = Duration::from_secs(600);
pub const CONSISTENCY_CHECK_PACE: Duration = Duration::from_secs(1);
pub const CONSISTENCY_CHECK_WAIT: Duration = Duration::from_secs(10);
/// How fast a replica reads its rows for a check unless `--check-rate` says otherwise:
/// CockroachDB's default (`server.consistency_check.max_rate`), a 1 GiB shard in about
/// two minutes, a small share of any disk. And how long a checker waits for a replica
/// still reading (a 28 GiB shard at that rate).
pub const CONSISTENCY_CHECK_RATE: u64 = 8 * 1024 * 1024;
pub const CONSISTENCY_CHECK_RUN_MAX: Duration = Duration::from_secs(3600);

/// Voters of the meta group at most; other nodes follow it as learners. Five survive two
/// failures, and every catalog change waits for three of them, not for every node.
pub const META_VOTERS_MAX: usize = 5;

/// Largest replication factor a table may ask for (beyond it every write waits on a
/// quorum of many nodes for little more safety).
pub const REPLICATION_FACTOR_MAX: u32 = 9;

/// How long `cairn start` lets its groups stop cleanly on SIGINT/SIGTERM before exiting
/// anyway (nothing acknowledged depends on it: the log is fsynced before any answer).
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// How long a node shutting down waits for its leaderships to be taken over (within
/// `SHUTDOWN_WAIT`).
pub const HANDOVER_WAIT: Duration = Duration::from_millis(1500);

/// How often each node asks catalog nodes it does not see alive to gossip with it.
pub const GOSSIP_ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// Gossip inputs (datagrams, timers) queued for the gossip task.
pub const GOSSIP_QUEUE: usize = 1024;

/// Events a node keeps for `GET /v1/events` (the oldest are dropped).
pub const JOURNAL_EVENTS: usize = 1000;

/// A DDL job still pending after this long is adopted by the meta leader (its coordinator
/// failed or died); before that, the coordinator is assumed to be driving it.
pub const DDL_JOB_ADOPT_AFTER: Duration = Duration::from_secs(10);

/// A schema change waits this long for another one on the same table to finish (they run
/// one at a time per table) before answering 55006.
pub const DDL_QUEUE_WAIT: Duration = Duration::from_secs(60);

/// A schema change waits this long for every node to apply its catalog before answering
/// (`Cluster::spread_catalog`); a node slower than that catches up by itself.
pub const CATALOG_SPREAD_WAIT: Duration = Duration::from_secs(2);

/// How long a DDL statement waits for new shard groups to elect leaders.
pub const SHARD_CREATE_WAIT: Duration = Duration::from_secs(30);

/// Shards one hash-distributed table may have. Every shard is a Raft group on RF nodes, and
/// each group costs CPU and memory even when idle (DESIGN.md decision 1).
pub const SHARDS_PER_TABLE_MAX: u32 = 256;

/// Rows one query may pull from shards to the coordinator for a distributed join or merge.
pub const INTERMEDIATE_ROWS_MAX: usize = 1_000_000;

/// Values a node reserves from a cluster-wide sequence at once (serial columns of tables
/// on several shards): one meta-group write per this many inserted rows.
pub const SEQUENCE_BLOCK: i64 = 1_000;

/// Bound parameters per generated statement (SQLite allows 32,766): INSERT ... SELECT across
/// shards sends its rows in statements of at most this many values.
pub const SQL_VARIABLES_MAX: usize = 30_000;

/// Rows of a COPY inserted per batch (per shard, one Raft proposal each outside a
/// transaction block): large enough to amortise a proposal, small enough to bound memory.
pub const COPY_BATCH_ROWS: usize = 2_000;

/// Longest row COPY accepts (bytes buffered for one incomplete row).
pub const COPY_LINE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Partial aggregates one query may push to shards; beyond it the query is merged by
/// pulling rows instead.
pub const PARTIAL_AGGREGATES_MAX: usize = 256;

/// Rows pulled for a multi-table merge above which the coordinator gathers statistics
/// (ANALYZE) before running the query: cheap next to a bad join order on many rows.
pub const SCRATCH_ANALYZE_ROWS: usize = 10_000;

/// A shard's prepared part of a cross-shard transaction waits this long for its session's
/// decision before resolving itself from the coordinator shard's record (presumed abort if
/// none): the session has nothing left to do but decide, so silence means it is gone.
pub const PREPARED_TIMEOUT: Duration = Duration::from_secs(10);

/// A new leader finding prepared parts asks their coordinator shards for the decisions;
/// with a coordinator unreachable for this long it answers its callers "unavailable"
/// (naming the coordinator) instead of holding them, and tries again at the next request.
pub const RECOVERY_DECISION_WAIT: Duration = Duration::from_secs(10);

/// Elements of one array value. PostgreSQL allows about 134 million; an array is kept as one
/// JSON text in SQLite and converted whole on every read, so a bound well below the result
/// byte limit keeps one value from dominating a statement's memory.
pub const ARRAY_ELEMENTS_MAX: usize = 1_000_000;

/// Rows `generate_series` may produce in one call (a typo in a bound must not run away).
pub const SERIES_ROWS_MAX: i64 = 10_000_000;

/// Change feeds (`cluster::feed`). One read of a shard's change events returns about this
/// many bytes: small enough to keep a follower's catch-up from crowding Raft traffic.
pub const FEED_PAGE_BYTES: usize = 256 * 1024;
/// A shard's feed waits this long for new events before answering with none (and so a
/// subscription hears of progress at least this often while nothing changes).
pub const FEED_WAIT: Duration = Duration::from_millis(500);
/// Chunks of events a shard's feed keeps for subscribers that have not taken them yet; a
/// subscriber further behind is cut (told its last token), never skipped silently.
pub const FEED_BUFFER_CHUNKS: usize = 256;
/// Subscriptions on one WebSocket connection, and on one node.
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 64;
pub const SUBSCRIPTIONS_PER_NODE_MAX: usize = 10_000;
/// Messages waiting to be written to one WebSocket client; a client that lets more pile up
/// is too slow and is cut with its last token.
pub const WS_OUTBOX_MAX: usize = 4_096;
/// A client whose full outbox frees no room for this long is too slow: it is cut.
pub const WS_SLOW_CLIENT_WAIT: Duration = Duration::from_secs(5);
/// How long a client cut for being slow gets to read what was sent before the notice
/// (its subscriptions' last tokens) and the close.
pub const WS_CUT_NOTICE_WAIT: Duration = Duration::from_secs(10);
/// A WebSocket message from a client (subscribe requests are small).
pub const WS_MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Rows a subscription's snapshot may send (more is refused: subscribe with a narrower
/// condition, or read the table with SQL and resume from a token).
pub const SUBSCRIPTION_SNAPSHOT_ROWS_MAX: usize = 100_000;

/// The key-value API: a key's bytes (UTF-8), a value's bytes, steps in one `/v1/kv/txn`.
pub const KV_KEY_BYTES_MAX: usize = 4 * 1024;
pub const KV_VALUE_BYTES_MAX: usize = 1024 * 1024;
pub const KV_TXN_OPS_MAX: usize = 128;
/// The longest time to live a key may be given.
pub const KV_TTL_MAX: Duration = Duration::from_secs(365 * 86_400);
/// Keys answered by one list request at most (`limit` defaults to 100).
pub const KV_LIST_MAX: usize = 1_000;
/// How often the meta leader looks for expired keys, and how many it deletes per look.
pub const KV_EXPIRY_INTERVAL: Duration = Duration::from_secs(1);
pub const KV_EXPIRY_BATCH: usize = 1_000;

/// The result cache: bytes of cached results per node (the least used go first), the
/// longest TTL a table or session may ask for, the largest single result kept, and how
/// long a linearizable lookup waits for this node to have seen the changes committed
/// before it (else the query runs without the cache).
pub const RESULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;
pub const RESULT_CACHE_TTL_MAX: Duration = Duration::from_secs(24 * 3600);
pub const RESULT_CACHE_ENTRY_BYTES_MAX: usize = 4 * 1024 * 1024;
pub const RESULT_CACHE_CATCH_UP_WAIT: Duration = Duration::from_secs(1);

/// How long past the leader's lease (openraft's: the maximum election timeout) a follower
/// waits before campaigning on its own (`cluster::campaign_on_silence`): the other
/// followers heard the leader's last heartbeat a little later and must have let their lease
/// run out too, or they refuse the vote.
pub const CAMPAIGN_MARGIN: std::time::Duration = std::time::Duration::from_millis(40);

/// The part of the leader's lease (openraft's: the maximum election timeout, measured by
/// followers from when they accept an append) within which the leader answers linearizable
/// reads from its replica without a quorum round (`ShardGroup::lease_read_index`). The rest
/// covers clocks that run at different rates on different hosts: a quarter of the lease is
/// far more than any drift between two monotonic clocks over 300 ms.
pub const LEASE_READ_FRACTION: f64 = 0.75;

/// Files (`sql::files`): the bytes of one chunk row — one Raft entry per chunk, so at most
/// `ENTRY_BYTES_TARGET`; chosen by measurement (docs/BENCHMARKS.md, "Files").
pub const FILE_CHUNK_BYTES: usize = 256 * 1024;
/// The largest file. Memory does not grow with it (uploads and downloads stream); the
/// bound keeps one upload from filling a cluster's disks by mistake.
pub const FILE_BYTES_MAX: u64 = 16 * 1024 * 1024 * 1024;
/// A file path's bytes (UTF-8), as many file systems allow for a whole path.
pub const FILE_PATH_BYTES_MAX: usize = 1024;
/// Chunk writes one upload keeps in flight, and chunk reads one download reads ahead: with
/// the chunk size, the memory an upload or a download holds.
pub const FILE_UPLOAD_PARALLEL: usize = 8;
pub const FILE_READ_AHEAD: usize = 4;
/// How often an upload tells the cluster it is alive (at most; a quarter of `--files-gc-after`
/// when that is shorter).
pub const FILE_UPLOAD_TOUCH_EVERY: Duration = Duration::from_secs(10);
/// `--files-gc-after`'s default: replaced and deleted versions stay readable this long for
/// downloads in flight; an upload silent this long is abandoned.
pub const FILE_GC_AFTER: Duration = Duration::from_secs(300);
/// How often the meta leader collects old versions at most, and how many per pass.
pub const FILE_GC_INTERVAL: Duration = Duration::from_secs(10);
pub const FILE_GC_BATCH: usize = 64;
/// How long one chunk write is retried across leader changes before the upload fails.
pub const FILE_CHUNK_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Times a file's commit (or a rename) is retried after a conflict with another writer.
pub const FILE_COMMIT_RETRIES: u32 = 8;
/// Rows below a folder read to list it (FTP's LIST walks every path under the folder).
pub const FILE_FOLDER_ROWS_MAX: usize = 100_000;
/// Files answered by one list request at most (`limit` defaults to 100).
pub const FILE_LIST_MAX: usize = 1_000;
/// An FTP session sending no command for this long is closed (libunftp's idle timeout).
pub const FTP_IDLE_SESSION: Duration = Duration::from_secs(600);
/// A resumable upload (`/v1/uploads`) not appended to for this long is abandoned and
/// collected (tus servers commonly keep one a day).
pub const FILE_RESUMABLE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// How long the leader of a retired shard's group waits for its followers to have every
/// entry before it removes its replica anyway (a follower dead or gone early never will).
pub const RETIRED_LEADER_WAIT: Duration = Duration::from_secs(30);

/// Seconds of history each node keeps for the dashboard's charts (15 minutes at 1 s).
pub const TIMELINE_SECONDS: usize = 900;
/// How often a node counts the rows and bytes of the tables in the shards it leads (a walk of
/// their b-tree pages' headers) for `GET /v1/tables`.
pub const TABLE_SIZES_EVERY: Duration = Duration::from_secs(15);
/// Characters of a DDL statement kept in its event (`GET /v1/events`).
pub const DDL_EVENT_CHARS: usize = 200;
