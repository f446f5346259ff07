//! Cancelling a statement without dropping anything: a [`Cancel`] token travels with the
//! statement (`replica::Statement::cancel`) to wherever it runs, and whoever does the work
//! looks at it — SQLite through a progress handler on every connection ([`Slot`]), waits
//! (for a writer, a leader) by selecting on [`Cancel::cancelled`].
//!
//! Why not drop the future, as async code usually cancels: a write that is dropped after its
//! proposal went out may still commit, and the client would have been told "cancelled". With
//! a token, each place decides: before anything can take effect the work stops and answers
//! SQLSTATE 57014; once a proposal is made the work finishes and answers its real outcome.
//! So a 57014 always means "not applied".
//!
//! A progress handler, not `sqlite3_interrupt`: an interrupt sent while no statement is
//! running on the connection (between registering and the first step) is forgotten by
//! SQLite, and the query then runs to its end. The handler reads the token every few hundred
//! virtual-machine steps, so a cancel that arrives at any moment stops the statement.

use crate::error::{sqlstate, Error};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A statement's cancellation: set once by whoever cancels, seen by whoever works.
#[derive(Clone, Default)]
pub struct Cancel(Arc<Inner>);

#[derive(Default)]
struct Inner {
    set: AtomicBool,
    notify: tokio::sync::Notify,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cancel({})", self.is_cancelled())
    }
}

impl Cancel {
    pub fn cancel(&self) {
        self.0.set.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.set.load(Ordering::SeqCst)
    }

    /// Resolves once cancelled (at once if already).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    /// `Err(57014)` if cancelled: for checks between steps that may not start once cancelled.
    pub fn check(&self) -> Result<(), Error> {
        if self.is_cancelled() {
            Err(cancelled())
        } else {
            Ok(())
        }
    }
}

/// The error of a statement stopped by a cancel.
pub fn cancelled() -> Error {
    Error::sql(
        sqlstate::QUERY_CANCELED,
        "canceling statement due to user request",
    )
}

/// Virtual-machine steps between looks at the token: cheap next to the steps themselves.
const STEPS_PER_CHECK: std::os::raw::c_int = 256;

/// The tokens of the statement running on one connection, read by the connection's
/// progress handler (installed once, when the connection is opened).
#[derive(Clone, Default)]
pub struct Slot(Arc<Mutex<Vec<Cancel>>>);

impl Slot {
    /// Install the progress handler on `conn`; statements run [`Slot::arm`]ed.
    pub fn install(conn: &mut rusqlite::Connection) -> rusqlite::Result<Slot> {
        let slot = Slot::default();
        let current = slot.0.clone();
        conn.progress_handler(
            STEPS_PER_CHECK,
            Some(move || {
                current
                    .lock()
                    .map(|c| c.iter().any(Cancel::is_cancelled))
                    .unwrap_or(false)
            }),
        )?;
        Ok(slot)
    }

    /// Until the guard drops, any of `tokens` cancelled makes SQLite stop the statement in
    /// progress with SQLITE_INTERRUPT (SQLSTATE 57014). Only for statements that do not
    /// write: SQLite answers an interrupted write by rolling back the whole transaction.
    pub fn arm(&self, tokens: &[Cancel]) -> Armed<'_> {
        *self.0.lock().expect("cancel slot lock poisoned") = tokens.to_vec();
        Armed(self)
    }

    /// Run `work` armed with `tokens`; cancelled before it starts, it does not run.
    pub fn watch<R>(
        &self,
        tokens: &[Cancel],
        work: impl FnOnce() -> Result<R, Error>,
    ) -> Result<R, Error> {
        for t in tokens {
            t.check()?;
        }
        let armed = self.arm(tokens);
        let result = work();
        drop(armed);
        match result {
            Err(e) if e.code() == sqlstate::QUERY_CANCELED => Err(cancelled()),
            other => other,
        }
    }
}

/// Disarms its slot when dropped.
pub struct Armed<'a>(&'a Slot);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        if let Ok(mut c) = self.0 .0.lock() {
            c.clear();
        }
    }
}

/// Cancels its token when dropped: a future that owns one stops its work if it is dropped
/// (a read abandoned because another part of its query failed).
pub struct CancelOnDrop(Option<Cancel>);

impl CancelOnDrop {
    pub fn new(token: Cancel) -> CancelOnDrop {
        CancelOnDrop(Some(token))
    }

    /// The work finished: dropping the guard now cancels nothing.
    pub fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDLESS: &str =
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n";

    #[test]
    fn a_cancel_stops_a_running_statement() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        let slot = Slot::install(&mut conn).unwrap();
        let cancel = Cancel::default();
        // The statement cancels itself once it is well under way (a function it calls at
        // its 10,000th row), so the cancel lands mid-run, not before it starts.
        let c = cancel.clone();
        conn.create_scalar_function(
            "cancel_at",
            1,
            rusqlite::functions::FunctionFlags::SQLITE_UTF8,
            move |ctx| {
                let x: i64 = ctx.get(0)?;
                if x == 10_000 {
                    c.cancel();
                }
                Ok(x)
            },
        )
        .unwrap();
        let endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT cancel_at(x) + 1 FROM n) SELECT count(*) FROM n";
        let result = slot.watch(std::slice::from_ref(&cancel), || {
            conn.query_row(endless, [], |r| r.get::<_, i64>(0))
                .map_err(Error::from)
        });
        assert_eq!(result.unwrap_err().code(), sqlstate::QUERY_CANCELED);
        // The connection is fine for the next statement.
        let v: i64 = slot
            .watch(&[Cancel::default()], || {
                conn.query_row("SELECT 7", [], |r| r.get(0))
                    .map_err(Error::from)
            })
            .unwrap();
        assert_eq!(v, 7);
    }

    #[test]
    fn a_cancel_before_the_statement_starts_is_not_lost() {
        // The window sqlite3_interrupt has: cancelled after registering, before stepping.
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        let slot = Slot::install(&mut conn).unwrap();
        let cancel = Cancel::default();
        let result = slot.watch(std::slice::from_ref(&cancel), || {
            let mut stmt = conn.prepare(ENDLESS)?;
            cancel.cancel();
            stmt.query_row([], |r| r.get::<_, i64>(0))
                .map_err(Error::from)
        });
        assert_eq!(result.unwrap_err().code(), sqlstate::QUERY_CANCELED);
        let cancel = Cancel::default();
        cancel.cancel();
        let ran = slot.watch(std::slice::from_ref(&cancel), || Ok(()));
        assert!(ran.is_err(), "work cancelled before it starts must not run");
    }
}
