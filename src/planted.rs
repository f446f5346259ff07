//! Deliberate bugs, to prove that the fault-testing checkers catch what they claim to
//! (`cairn chaos` must fail with each one). Chosen with `CAIRN_PLANTED_BUG=<name>` and
//! honoured only in debug builds: a release build never reads the variable.
//!
//! - `stale-reads`: linearizable reads are served by the local replica, like `any`.
//! - `ack-before-commit`: autocommit writes are acknowledged before their proposal commits.
//! - `watch-drop-event`: change feeds drop the first event of one entry in 23.
//! - `stale-base`: the leader's speculative changes claim the state one entry before the
//!   one they were computed on (`Op::Base`), so replicas refuse each write that follows a
//!   write — the guard against changes computed on a state that is gone, at work.
//! - `lease-forever`: a leader answers linearizable reads from its replica as long as it
//!   takes itself for the leader, however long ago a quorum last acknowledged it (the
//!   leader lease without its clock).
//! - `watch-reorder`: change feeds swap the contents of adjacent events of different
//!   entries (positions kept in order) for one entry in 3.

use std::sync::OnceLock;

pub fn active(name: &str) -> bool {
    static CHOSEN: OnceLock<Option<String>> = OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| {
        let chosen = cfg!(debug_assertions)
            .then(|| std::env::var("CAIRN_PLANTED_BUG").ok())
            .flatten();
        if let Some(bug) = &chosen {
            tracing::warn!(
                bug,
                "PLANTED BUG ACTIVE: this node is deliberately broken for checker tests"
            );
        }
        chosen
    });
    chosen.as_deref() == Some(name)
}
