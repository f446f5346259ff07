//! Fault testing: histories of client operations under injected faults, and checkers that
//! judge them (`history`). The harness that starts a cluster, runs workloads and injects
//! faults is `cli::chaos`; it drives real `cairn start` processes.

pub mod history;
pub mod watch;
