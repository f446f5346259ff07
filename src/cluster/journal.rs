//! The node's event log: liveness changes, replicas started and removed, replica moves and
//! node lifecycle steps, each one line, kept in memory up to `JOURNAL_EVENTS` (the oldest
//! dropped first). `GET /v1/events` merges every node's.

use crate::limits;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Event {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// What kind of thing happened: `liveness`, `replica`, `move`, `node`, `check`.
    pub kind: String,
    pub message: String,
}

#[derive(Default)]
pub struct Journal {
    events: Mutex<VecDeque<Event>>,
}

impl Journal {
    pub fn record(&self, kind: &str, message: String) {
        let mut events = self.events.lock().expect("journal lock");
        if events.len() >= limits::JOURNAL_EVENTS {
            events.pop_front();
        }
        events.push_back(Event {
            at_ms: super::liveness::now_ms(),
            kind: kind.to_string(),
            message,
        });
    }

    /// Every kept event, oldest first.
    pub fn all(&self) -> Vec<Event> {
        self.events
            .lock()
            .expect("journal lock")
            .iter()
            .cloned()
            .collect()
    }
}
