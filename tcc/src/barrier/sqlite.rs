//! The barrier on SQLite, through rusqlite (feature `sqlite`).
//!
//! Create the table once with [`migrate`] (or run [`SCHEMA`] yourself), then
//! wrap each phase's SQL in [`run`]: it opens an `IMMEDIATE` transaction on
//! your connection, passes the barrier, runs your code if the barrier lets
//! it, and commits; a busy or locked database is tried again, up to
//! [`ATTEMPTS`] times. Inside a transaction of your own, use
//! [`guard`]; to decide yourself, [`enter`].
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use rusqlite::Connection;
//! use tcc::barrier::{sqlite, BarrierError};
//! use tcc::{tcc, tcc_service};
//!
//! #[derive(Debug, thiserror::Error)]
//! enum WalletError {
//!     #[error("insufficient funds")]
//!     Insufficient,
//!     #[error(transparent)]
//!     Barrier(#[from] BarrierError),
//!     #[error(transparent)]
//!     Sql(#[from] rusqlite::Error),
//! }
//!
//! struct Wallet {
//!     db: Arc<Mutex<Connection>>,
//! }
//!
//! #[tcc_service(name = "wallet")]
//! impl Wallet {
//!     #[try_phase]
//!     async fn freeze(&self) -> Result<(), WalletError> {
//!         let mut db = self.db.lock().unwrap();
//!         sqlite::run(&mut db, |tx| {
//!             let frozen = tx.execute(
//!                 "UPDATE wallet SET frozen = frozen + 10 WHERE balance - frozen >= 10",
//!                 [],
//!             )?;
//!             if frozen == 0 {
//!                 return Err(WalletError::Insufficient);
//!             }
//!             Ok(())
//!         })?;
//!         Ok(())
//!     }
//!
//!     #[confirm]
//!     async fn pay(&self) -> Result<(), WalletError> {
//!         let mut db = self.db.lock().unwrap();
//!         sqlite::run(&mut db, |tx| {
//!             tx.execute("UPDATE wallet SET balance = balance - 10, frozen = frozen - 10", [])?;
//!             Ok::<_, WalletError>(())
//!         })?;
//!         Ok(())
//!     }
//!
//!     #[cancel]
//!     async fn unfreeze(&self) -> Result<(), WalletError> {
//!         let mut db = self.db.lock().unwrap();
//!         // Runs only if this branch's Try committed: an empty cancel (a Try
//!         // that failed, or never came) unfreezes nothing.
//!         sqlite::run(&mut db, |tx| {
//!             tx.execute("UPDATE wallet SET frozen = frozen - 10", [])?;
//!             Ok::<_, WalletError>(())
//!         })?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = Connection::open_in_memory()?;
//! sqlite::migrate(&db)?;
//! db.execute_batch("CREATE TABLE wallet (balance INTEGER, frozen INTEGER);
//!                   INSERT INTO wallet VALUES (15, 0);")?;
//! let db = Arc::new(Mutex::new(db));
//!
//! tcc! { Wallet { db: db.clone() } }.await?; // pays 10
//! // 5 left: the Try fails, its Cancel is an empty cancel, nothing stays frozen.
//! assert!(tcc! { Wallet { db: db.clone() } }.await.is_err());
//! let db = db.lock().unwrap();
//! let (balance, frozen): (i64, i64) =
//!     db.query_row("SELECT balance, frozen FROM wallet", [], |row| Ok((row.get(0)?, row.get(1)?)))?;
//! assert_eq!((balance, frozen), (5, 0));
//! # Ok(())
//! # }
//! ```
//!
//! The phases above run on the runtime's thread, as rusqlite blocks. To move
//! them to `spawn_blocking`, capture [`Branch::current`] first and call
//! [`run_branch`] there: the blocking thread has no phase context.

use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{
    Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior, params,
};

use super::{
    ATTEMPTS, BarrierError, BarrierErrorKind, Branch, Entry, FirstWrite, HeldBranch, Outcome,
    RowState, Step, backoff, first_write, first_write_entry, in_chain, rule,
};
use crate::phase::Phase;

/// The barrier's table, as [`migrate`] creates it. `updated_at` is in
/// milliseconds since the Unix epoch, by SQLite's clock; the partial index
/// serves [`cleanup`].
pub const SCHEMA: &str = super::SQLITE_SCHEMA;

/// SQLite's clock in milliseconds since the Unix epoch, without
/// `unixepoch('subsec')` (SQLite 3.42+), so older system libraries work.
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// Creates the barrier's table and index if they do not exist: safe to call
/// at every start.
pub fn migrate(conn: &Connection) -> Result<(), BarrierError> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

/// Passes the barrier for `branch` inside `tx`, and says what the phase may
/// do. Call it before the phase's first statement, and commit `tx` whatever
/// it returns but an error (an empty cancel's row must commit).
///
/// Most phases want [`run`] or [`guard`] instead.
pub fn enter(tx: &Transaction<'_>, branch: &Branch) -> Result<Entry, BarrierError> {
    pass(tx, branch, Step::Phase(branch.phase()))
}

/// Runs `body` in `tx` if the barrier lets `branch` through; does not
/// commit. The outcome says whether `body` ran.
pub fn guard<T, E>(
    tx: &Transaction<'_>,
    branch: &Branch,
    body: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
) -> Result<Outcome<T>, E>
where
    E: From<BarrierError>,
{
    guard_step(tx, branch, Step::Phase(branch.phase()), body)
}

fn guard_step<T, E>(
    tx: &Transaction<'_>,
    branch: &Branch,
    step: Step,
    body: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
) -> Result<Outcome<T>, E>
where
    E: From<BarrierError>,
{
    Ok(match pass(tx, branch, step)? {
        Entry::Run | Entry::RunAfterUncommittedTry => Outcome::Ran(body(tx)?),
        Entry::Duplicate => Outcome::Duplicate,
        Entry::EmptyCancel => Outcome::EmptyCancel,
    })
}

/// Runs the phase that is running now ([`Branch::current`]) through the
/// barrier: one `IMMEDIATE` transaction on `conn` holding the barrier's row
/// and whatever `body` does, committed together. See [`run_branch`].
pub fn run<T, E>(
    conn: &mut Connection,
    body: impl FnMut(&Transaction<'_>) -> Result<T, E>,
) -> Result<Outcome<T>, E>
where
    E: From<BarrierError> + std::error::Error + 'static,
{
    run_branch(conn, &Branch::current()?, body)
}

/// Runs `branch` through the barrier in one `IMMEDIATE` transaction on
/// `conn`: the barrier's row, then `body` if the barrier lets the phase
/// through, then the commit. If `body` fails, everything rolls back and the
/// error is returned.
///
/// A busy or locked database (`SQLITE_BUSY`, `SQLITE_LOCKED`, anywhere in
/// the error's source chain, including `body`'s) runs the whole transaction
/// again, up to [`ATTEMPTS`] times, after a short random pause that doubles
/// at each attempt (blocking the thread, as rusqlite does); the
/// connection's own busy timeout waits first.
/// So `body` may be called more than once: keep its effects inside the
/// transaction (see [`announce`] for those that cannot be).
///
/// Use it where [`run`] cannot read the phase's context, as on a blocking
/// thread:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tcc::barrier::{sqlite, BarrierError, Branch};
///
/// async fn freeze(db: Arc<Mutex<rusqlite::Connection>>) -> Result<(), BarrierError> {
///     // In the phase's task: the branch, from its context.
///     let branch = Branch::current()?;
///     // On a blocking thread, which has no context: the branch, passed in.
///     tokio::task::spawn_blocking(move || {
///         sqlite::run_branch(&mut db.lock().unwrap(), &branch, |tx| {
///             tx.execute("UPDATE wallet SET frozen = frozen + 10", [])?;
///             Ok::<_, BarrierError>(())
///         })
///     })
///     .await
///     .expect("the blocking task ran")?;
///     Ok(())
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let db = rusqlite::Connection::open_in_memory().unwrap();
/// # sqlite::migrate(&db).unwrap();
/// # db.execute_batch("CREATE TABLE wallet (frozen INTEGER); INSERT INTO wallet VALUES (0);").unwrap();
/// # let db = Arc::new(Mutex::new(db));
/// # let phase_db = db.clone();
/// # let ok = || async { Ok::<(), BarrierError>(()) };
/// # let wallet = tcc::Service::new("wallet", move || freeze(phase_db.clone()), ok, ok);
/// # tcc::Orchestrator::new([wallet]).orchestrate().await.unwrap();
/// # let frozen: i64 = db.lock().unwrap().query_row("SELECT frozen FROM wallet", [], |r| r.get(0)).unwrap();
/// # assert_eq!(frozen, 10);
/// # }
/// ```
pub fn run_branch<T, E>(
    conn: &mut Connection,
    branch: &Branch,
    body: impl FnMut(&Transaction<'_>) -> Result<T, E>,
) -> Result<Outcome<T>, E>
where
    E: From<BarrierError> + std::error::Error + 'static,
{
    run_step(conn, branch, Step::Phase(branch.phase()), body)
}

/// [`run_branch`] for any step: the transaction, its retries.
fn run_step<T, E>(
    conn: &mut Connection,
    branch: &Branch,
    step: Step,
    mut body: impl FnMut(&Transaction<'_>) -> Result<T, E>,
) -> Result<Outcome<T>, E>
where
    E: From<BarrierError> + std::error::Error + 'static,
{
    let mut attempt = 1;
    loop {
        let result = (|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(BarrierError::from)?;
            let outcome = guard_step(&tx, branch, step, &mut body)?;
            tx.commit().map_err(BarrierError::from)?;
            Ok(outcome)
        })();
        match result {
            Err(error) if attempt < ATTEMPTS && is_busy(&error) => {
                thread::sleep(backoff(attempt));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Records, in a transaction of its own (tried again when busy, as in
/// [`run_branch`]), that the Try of `branch` is about to act outside the
/// database, before it does: a Cancel that comes after then runs its code
/// even if the Try's own transaction never commits. See
/// [the module docs](super#a-try-that-fails-after-acting-outside-the-database-seata-6374).
///
/// [`Outcome::Ran`] means go ahead; [`Outcome::Duplicate`] means this Try
/// was delivered before: skip it. A Try after its Cancel is refused
/// ([`BarrierErrorKind::TryAfterCancel`]).
pub fn announce(conn: &mut Connection, branch: &Branch) -> Result<Outcome<()>, BarrierError> {
    if branch.phase() != Phase::Try {
        return Err(BarrierError::new(
            BarrierErrorKind::AnnounceOutsideTry,
            Some(branch),
        ));
    }
    // Retried when busy, like a phase: the rules let an announce only run
    // (a new row) or be a duplicate.
    run_step(conn, branch, Step::Announce, |_| Ok::<_, BarrierError>(()))
}

/// The shortest and longest pauses of [`cleanup`] between its batches: the
/// longest is the longest sleep of SQLite's default busy handler.
const MIN_PAUSE: Duration = Duration::from_millis(1);
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// Deletes the rows of finished branches (`confirmed`, `cancelled`,
/// `cancelled_before_try`) last changed more than `horizon` ago, at most
/// `batch` rows per transaction, and pauses after each batch for as long as
/// it took (100 ms at most), so a writer on another connection waits for
/// about one batch, not the whole cleanup; cleanup takes about twice its
/// working time. Blocks the thread, as rusqlite does. Returns how many rows
/// it deleted. Rows of unfinished branches are kept. See
/// [the module docs](super#cleanup) for choosing `horizon`.
pub fn cleanup(
    conn: &mut Connection,
    horizon: Duration,
    batch: usize,
) -> Result<u64, BarrierError> {
    let horizon_ms = i64::try_from(horizon.as_millis()).unwrap_or(i64::MAX);
    let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
    let sql = format!(
        "DELETE FROM tcc_barrier WHERE (transaction_id, service) IN (
             SELECT transaction_id, service FROM tcc_barrier
             WHERE state IN ('confirmed', 'cancelled', 'cancelled_before_try')
               AND updated_at < {NOW_MS} - ?1
             LIMIT ?2)"
    );
    let mut deleted = 0;
    loop {
        let started = Instant::now();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(&sql, params![horizon_ms, batch])?;
        tx.commit()?;
        deleted += n as u64;
        if (n as i64) < batch {
            return Ok(deleted);
        }
        // SQLite does not queue writers: one waiting on another connection
        // sleeps in its busy handler and tries again when it wakes (the
        // default handler sleeps longer the longer it waits, up to 100 ms).
        // A batch begun at once would find it asleep and take the lock
        // again, and it would wait for the whole cleanup. A pause as long
        // as the batch outlasts the sleep of a writer that came during it.
        thread::sleep(started.elapsed().clamp(MIN_PAUSE, MAX_PAUSE));
    }
}

/// The branches whose rows still hold what their Try reserved (`tried` or
/// `started`) and last changed more than `age` ago, by SQLite's clock, the
/// oldest first: reservations that no one may ever release, unless the
/// transaction log still holds their transactions (see
/// [the module docs](super#reservations-no-one-will-release)). Reads
/// only: a connection opened read-only does.
pub fn held_longer_than(conn: &Connection, age: Duration) -> Result<Vec<HeldBranch>, BarrierError> {
    let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
    let mut statement = conn.prepare(&format!(
        "SELECT transaction_id, service, state, {NOW_MS} - updated_at FROM tcc_barrier
         WHERE state IN ('tried', 'started') AND updated_at < {NOW_MS} - ?1
         ORDER BY updated_at, transaction_id, service"
    ))?;
    let rows = statement.query_map([age_ms], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, i64>(3)?,
        ))
    })?;
    let mut held = Vec::new();
    for row in rows {
        let (transaction_id, service, state, age_ms) = row?;
        if let Some(state) = HeldBranch::holding(&state) {
            held.push(HeldBranch {
                transaction_id,
                service,
                state,
                age: Duration::from_millis(u64::try_from(age_ms).unwrap_or(0)),
            });
        }
    }
    Ok(held)
}

/// One step through the barrier: the first write, and, only if it did not
/// take effect, a read of the row and the rules' ruling.
fn pass(conn: &Connection, branch: &Branch, step: Step) -> Result<Entry, BarrierError> {
    let id = branch.transaction_id().to_string();
    let service = branch.service_name();
    // A write first: a deferred transaction takes SQLite's write lock here,
    // before any read, so it cannot deadlock upgrading a read lock.
    let write = first_write(step);
    let changed = match write {
        FirstWrite::Insert(state) => conn.execute(
            &format!(
                "INSERT INTO tcc_barrier (transaction_id, service, state, updated_at)
                 VALUES (?1, ?2, ?3, {NOW_MS}) ON CONFLICT DO NOTHING"
            ),
            params![id, service, state.name()],
        )?,
        FirstWrite::Update { from, to } => conn.execute(
            &format!(
                "UPDATE tcc_barrier SET state = ?3, updated_at = {NOW_MS}
                 WHERE transaction_id = ?1 AND service = ?2 AND state = ?4"
            ),
            params![id, service, to.name(), from.name()],
        )?,
    };
    if changed == 1 {
        return Ok(first_write_entry(step, write));
    }
    let prior = conn
        .query_row(
            "SELECT state FROM tcc_barrier WHERE transaction_id = ?1 AND service = ?2",
            params![id, service],
            |row| row.get::<_, String>(0),
        )
        .optional()?
        .map(|text| RowState::parse(&text, branch))
        .transpose()?;
    let ruling = rule(step, prior).map_err(|kind| BarrierError::new(kind, Some(branch)))?;
    if let Some(next) = ruling.next {
        match prior {
            None => conn.execute(
                &format!(
                    "INSERT INTO tcc_barrier (transaction_id, service, state, updated_at)
                     VALUES (?1, ?2, ?3, {NOW_MS})"
                ),
                params![id, service, next.name()],
            )?,
            Some(prior) => conn.execute(
                &format!(
                    "UPDATE tcc_barrier SET state = ?3, updated_at = {NOW_MS}
                     WHERE transaction_id = ?1 AND service = ?2 AND state = ?4"
                ),
                params![id, service, next.name(), prior.name()],
            )?,
        };
    }
    Ok(ruling.entry)
}

/// Whether `error` comes from a busy or locked database anywhere in its
/// source chain: running the transaction again may succeed. Looks for
/// SQLite's own error too, as an error wrapping a `rusqlite::Error` with
/// `#[error(transparent)]` hides the wrapper from the chain and shows only
/// its source.
pub fn is_busy(error: &(dyn std::error::Error + 'static)) -> bool {
    let busy =
        |code: ErrorCode| matches!(code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked);
    in_chain::<rusqlite::Error>(error, |e| e.sqlite_error_code().is_some_and(busy))
        || in_chain::<rusqlite::ffi::Error>(error, |e| busy(e.code))
}

/// Whether `error` says the barrier's table does not exist: `migrate` was
/// never called. SQLite gives no code of its own for it (`SQLITE_ERROR`),
/// only its message, "no such table: tcc_barrier".
pub(crate) fn is_missing_table(error: &rusqlite::Error) -> bool {
    error
        .to_string()
        .contains(&format!("no such table: {}", super::TABLE))
}
