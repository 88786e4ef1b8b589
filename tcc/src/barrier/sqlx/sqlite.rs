//! The barrier on SQLite through sqlx (feature `sqlx-sqlite`).
//!
//! The same table and rules as [`barrier::sqlite`](crate::barrier) on
//! rusqlite. Create the table once with [`migrate`] (or run [`SCHEMA`]
//! yourself), then wrap each phase's SQL in [`run`]: it begins an
//! `IMMEDIATE` transaction on your pool, passes the barrier, runs your code
//! if the barrier lets it, and commits; a busy or locked database runs the
//! whole transaction again, up to [`ATTEMPTS`] times (after the pool's own
//! busy timeout). Inside a `sqlx::Transaction` of your own, use [`guard`];
//! to decide yourself, [`enter`].
//!
//! ```
//! use sqlx::SqlitePool;
//! use tcc::barrier::{sqlx::sqlite, BarrierError};
//! use tcc::{tcc, tcc_service};
//!
//! struct Wallet {
//!     db: SqlitePool,
//! }
//!
//! #[tcc_service(name = "wallet")]
//! impl Wallet {
//!     #[try_phase]
//!     async fn freeze(&self) -> Result<(), BarrierError> {
//!         sqlite::run(&self.db, |tx| Box::pin(async move {
//!             sqlx::query("UPDATE wallet SET frozen = frozen + 10").execute(&mut **tx).await?;
//!             Ok::<_, BarrierError>(())
//!         }))
//!         .await?;
//!         Ok(())
//!     }
//!
//!     #[confirm]
//!     async fn pay(&self) -> Result<(), BarrierError> {
//!         sqlite::run(&self.db, |tx| Box::pin(async move {
//!             sqlx::query("UPDATE wallet SET frozen = frozen - 10, paid = paid + 10")
//!                 .execute(&mut **tx)
//!                 .await?;
//!             Ok::<_, BarrierError>(())
//!         }))
//!         .await?;
//!         Ok(())
//!     }
//!
//!     #[cancel]
//!     async fn unfreeze(&self) -> Result<(), BarrierError> {
//!         sqlite::run(&self.db, |tx| Box::pin(async move {
//!             sqlx::query("UPDATE wallet SET frozen = frozen - 10").execute(&mut **tx).await?;
//!             Ok::<_, BarrierError>(())
//!         }))
//!         .await?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = SqlitePool::connect("sqlite::memory:").await?;
//! sqlite::migrate(&db).await?;
//! sqlx::raw_sql("CREATE TABLE wallet (frozen INTEGER, paid INTEGER); INSERT INTO wallet VALUES (0, 0);")
//!     .execute(&db)
//!     .await?;
//! tcc! { Wallet { db: db.clone() } }.await?;
//! let (frozen, paid): (i64, i64) = sqlx::query_as("SELECT frozen, paid FROM wallet")
//!     .fetch_one(&db)
//!     .await?;
//! assert_eq!((frozen, paid), (0, 10));
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::Row;
use sqlx::error::DatabaseError;
use sqlx_sqlite::{Sqlite, SqliteConnection, SqliteError, SqlitePool};

use super::super::{
    ATTEMPTS, BarrierError, BarrierErrorKind, Branch, Entry, FirstWrite, Outcome, RowState, Step,
    backoff, first_write, first_write_entry, in_chain, rule,
};
pub use super::{BodyFuture, Tx};
use crate::phase::Phase;

/// The barrier's table, as [`migrate`] creates it: the same as rusqlite's
/// (`tcc::barrier::sqlite::SCHEMA`). `updated_at` is in milliseconds since
/// the Unix epoch, by SQLite's clock; the partial index serves [`cleanup`].
pub const SCHEMA: &str = super::super::SQLITE_SCHEMA;

/// SQLite's clock in milliseconds since the Unix epoch, without
/// `unixepoch('subsec')` (SQLite 3.42+), so older system libraries work. A
/// macro, so that the statements stay `&'static str` (`concat!`), as sqlx
/// wants them.
macro_rules! now_ms {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    };
}

/// Creates the barrier's table and index if they do not exist: safe to call
/// at every start.
pub async fn migrate(pool: &SqlitePool) -> Result<(), BarrierError> {
    sqlx::raw_sql(SCHEMA).execute(pool).await?;
    Ok(())
}

/// Passes the barrier for `branch` on `tx` (a connection inside a
/// transaction: `&mut *tx` for a `sqlx::Transaction`), and says what the
/// phase may do. Call it before the phase's first statement, and commit
/// whatever it returns but an error (an empty cancel's row must commit).
///
/// Most phases want [`run`] or [`guard`] instead.
pub async fn enter(tx: &mut SqliteConnection, branch: &Branch) -> Result<Entry, BarrierError> {
    pass(tx, branch, Step::Phase(branch.phase())).await
}

/// Runs `body` in the caller's transaction `tx` if the barrier lets
/// `branch` through; does not commit. The outcome says whether `body` ran.
/// Begin `tx` with `begin_with("BEGIN IMMEDIATE")`: a deferred transaction
/// that read first may find the database busy when it comes to write.
pub async fn guard<'t, 'c, T, E, F, Fut>(
    tx: &'t mut sqlx::Transaction<'c, Sqlite>,
    branch: &Branch,
    body: F,
) -> Result<Outcome<T>, E>
where
    F: FnOnce(&'t mut sqlx::Transaction<'c, Sqlite>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: From<BarrierError>,
{
    Ok(match enter(tx, branch).await? {
        Entry::Run | Entry::RunAfterUncommittedTry => Outcome::Ran(body(tx).await?),
        Entry::Duplicate => Outcome::Duplicate,
        Entry::EmptyCancel => Outcome::EmptyCancel,
    })
}

/// Runs the phase that is running now ([`Branch::current`]) through the
/// barrier: one `IMMEDIATE` transaction on a connection of `pool` holding
/// the barrier's row and whatever `body` does, committed together. See
/// [`run_branch`].
pub async fn run<'a, T, E, F>(pool: &SqlitePool, body: F) -> Result<Outcome<T>, E>
where
    F: for<'t> FnMut(&'t mut Tx<'a, Sqlite>) -> BodyFuture<'t, Result<T, E>>,
    E: From<BarrierError> + std::error::Error + 'static,
{
    let branch = Branch::current()?;
    run_branch(pool, &branch, body).await
}

/// Runs `branch` through the barrier in one `IMMEDIATE` transaction on a
/// connection of `pool`: the barrier's row, then `body` if the barrier lets
/// the phase through, then the commit. If `body` fails, everything rolls
/// back and the error is returned.
///
/// A busy or locked database (`SQLITE_BUSY`, `SQLITE_LOCKED`, anywhere in
/// the error's source chain, including `body`'s) runs the whole transaction
/// again, up to [`ATTEMPTS`] times, after a short random pause that doubles
/// at each attempt; the pool's busy timeout waits first. So `body` may be
/// called more than once: keep its effects inside the transaction (see
/// [`announce`] for those that cannot be).
pub async fn run_branch<'a, T, E, F>(
    pool: &SqlitePool,
    branch: &Branch,
    body: F,
) -> Result<Outcome<T>, E>
where
    F: for<'t> FnMut(&'t mut Tx<'a, Sqlite>) -> BodyFuture<'t, Result<T, E>>,
    E: From<BarrierError> + std::error::Error + 'static,
{
    run_step(pool, branch, Step::Phase(branch.phase()), body).await
}

/// [`run_branch`] for any step: the transaction, its retries.
async fn run_step<'a, T, E, F>(
    pool: &SqlitePool,
    branch: &Branch,
    step: Step,
    mut body: F,
) -> Result<Outcome<T>, E>
where
    F: for<'t> FnMut(&'t mut Tx<'a, Sqlite>) -> BodyFuture<'t, Result<T, E>>,
    E: From<BarrierError> + std::error::Error + 'static,
{
    let mut attempt = 1;
    loop {
        let result = async {
            let tx = pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(BarrierError::from)?;
            let mut tx = Tx::new(tx);
            let outcome = match pass(&mut tx, branch, step).await? {
                Entry::Run | Entry::RunAfterUncommittedTry => Outcome::Ran(body(&mut tx).await?),
                Entry::Duplicate => Outcome::Duplicate,
                Entry::EmptyCancel => Outcome::EmptyCancel,
            };
            tx.commit().await.map_err(BarrierError::from)?;
            Ok(outcome)
        }
        .await;
        match result {
            Err(error) if attempt < ATTEMPTS && is_busy(&error) => {
                tokio::time::sleep(backoff(attempt)).await;
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
/// [the barrier's docs](crate::barrier#a-try-that-fails-after-acting-outside-the-database-seata-6374).
///
/// [`Outcome::Ran`] means go ahead; [`Outcome::Duplicate`] means this Try
/// was delivered before: skip it. A Try after its Cancel is refused
/// ([`BarrierErrorKind::TryAfterCancel`]).
pub async fn announce(pool: &SqlitePool, branch: &Branch) -> Result<Outcome<()>, BarrierError> {
    if branch.phase() != Phase::Try {
        return Err(BarrierError::new(
            BarrierErrorKind::AnnounceOutsideTry,
            Some(branch),
        ));
    }
    // Retried when busy, like a phase: the rules let an announce only run
    // (a new row) or be a duplicate.
    run_step(pool, branch, Step::Announce, |_| {
        Box::pin(async { Ok::<_, BarrierError>(()) })
    })
    .await
}

/// The shortest and longest pauses of [`cleanup`] between its batches: the
/// longest is the longest sleep of SQLite's default busy handler.
const MIN_PAUSE: Duration = Duration::from_millis(1);
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// Deletes the rows of finished branches (`confirmed`, `cancelled`,
/// `cancelled_before_try`) last changed more than `horizon` ago, at most
/// `batch` rows per transaction, and pauses after each batch for as long as
/// it took (100 ms at most), so a writer on another connection waits for
/// about one batch, not the whole cleanup (see the rusqlite backend's
/// `cleanup` for why). Returns how many rows it deleted. Rows of unfinished
/// branches are kept. See [the barrier's docs](crate::barrier#cleanup) for
/// choosing `horizon`.
pub async fn cleanup(
    pool: &SqlitePool,
    horizon: Duration,
    batch: usize,
) -> Result<u64, BarrierError> {
    let horizon_ms = i64::try_from(horizon.as_millis()).unwrap_or(i64::MAX);
    let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
    let mut deleted = 0;
    loop {
        let started = Instant::now();
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let n = sqlx::query(concat!(
            "DELETE FROM tcc_barrier WHERE (transaction_id, service) IN (
                 SELECT transaction_id, service FROM tcc_barrier
                 WHERE state IN ('confirmed', 'cancelled', 'cancelled_before_try')
                   AND updated_at < ",
            now_ms!(),
            " - ?1
                 LIMIT ?2)"
        ))
        .bind(horizon_ms)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        deleted += n;
        if (n as i64) < batch {
            return Ok(deleted);
        }
        tokio::time::sleep(started.elapsed().clamp(MIN_PAUSE, MAX_PAUSE)).await;
    }
}

/// One step through the barrier: the first write, and, only if it did not
/// take effect, a read of the row and the rules' ruling.
async fn pass(
    tx: &mut SqliteConnection,
    branch: &Branch,
    step: Step,
) -> Result<Entry, BarrierError> {
    let id = branch.transaction_id().to_string();
    let service = branch.service_name();
    // A write first: a deferred transaction takes SQLite's write lock here,
    // before any read, so it cannot deadlock upgrading a read lock.
    let write = first_write(step);
    let changed = match write {
        FirstWrite::Insert(state) => sqlx::query(concat!(
            "INSERT INTO tcc_barrier (transaction_id, service, state, updated_at)
             VALUES (?1, ?2, ?3, ",
            now_ms!(),
            ") ON CONFLICT DO NOTHING"
        ))
        .bind(&id)
        .bind(service)
        .bind(state.name()),
        FirstWrite::Update { from, to } => sqlx::query(concat!(
            "UPDATE tcc_barrier SET state = ?3, updated_at = ",
            now_ms!(),
            " WHERE transaction_id = ?1 AND service = ?2 AND state = ?4"
        ))
        .bind(&id)
        .bind(service)
        .bind(to.name())
        .bind(from.name()),
    }
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 1 {
        return Ok(first_write_entry(step, write));
    }
    let prior =
        sqlx::query("SELECT state FROM tcc_barrier WHERE transaction_id = ?1 AND service = ?2")
            .bind(&id)
            .bind(service)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| RowState::parse(row.get::<&str, _>(0), branch))
            .transpose()?;
    let ruling = rule(step, prior).map_err(|kind| BarrierError::new(kind, Some(branch)))?;
    if let Some(next) = ruling.next {
        match prior {
            None => sqlx::query(concat!(
                "INSERT INTO tcc_barrier (transaction_id, service, state, updated_at)
                 VALUES (?1, ?2, ?3, ",
                now_ms!(),
                ")"
            ))
            .bind(&id)
            .bind(service)
            .bind(next.name()),
            Some(prior) => sqlx::query(concat!(
                "UPDATE tcc_barrier SET state = ?3, updated_at = ",
                now_ms!(),
                " WHERE transaction_id = ?1 AND service = ?2 AND state = ?4"
            ))
            .bind(&id)
            .bind(service)
            .bind(next.name())
            .bind(prior.name()),
        }
        .execute(&mut *tx)
        .await?;
    }
    Ok(ruling.entry)
}

/// Whether `error` comes from a busy or locked database anywhere in its
/// source chain: running the transaction again may succeed. Looks for the
/// `sqlx::Error` itself, as an error wrapping it with
/// `#[error(transparent)]` hides the wrapper from the chain.
pub fn is_busy(error: &(dyn std::error::Error + 'static)) -> bool {
    // `SQLITE_BUSY` (5) or `SQLITE_LOCKED` (6), extended codes included
    // (the primary code is the low byte).
    let busy = |db: &dyn DatabaseError| {
        db.code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6))
    };
    // A `sqlx::Error` shows its database error as a boxed `DatabaseError`
    // in the chain, which is all a transparent wrapper leaves.
    in_chain::<sqlx::Error>(error, |e| e.as_database_error().is_some_and(busy))
        || in_chain::<Box<dyn DatabaseError>>(error, |e| busy(&**e))
        || in_chain::<SqliteError>(error, |e| busy(e))
}

/// Whether `error` says the barrier's table does not exist: `migrate` was
/// never called. SQLite gives no code of its own for it (`SQLITE_ERROR`),
/// only its message, "no such table: tcc_barrier".
pub(crate) fn is_missing_table(error: &SqliteError) -> bool {
    error
        .message()
        .contains(&format!("no such table: {}", super::super::TABLE))
}
