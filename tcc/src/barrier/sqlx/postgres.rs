//! The barrier on PostgreSQL through sqlx (feature `sqlx-postgres`).
//!
//! The same table and rules as [`barrier::postgres`](crate::barrier) on
//! tokio-postgres; a database may serve participants of both. Create the
//! table once with [`migrate`] (or run [`SCHEMA`] yourself), then wrap each
//! phase's SQL in [`run`]: it begins a transaction on your pool, passes the
//! barrier, runs your code if the barrier lets it, and commits; a
//! serialization failure (40001) or a deadlock report (40P01) runs the
//! whole transaction again, up to [`ATTEMPTS`] times. Inside a
//! `sqlx::Transaction` of your own, use [`guard`]; to decide yourself,
//! [`enter`].
//!
//! ```no_run
//! use sqlx::PgPool;
//! use tcc::barrier::{sqlx::postgres, BarrierError};
//! use tcc::{tcc, tcc_service};
//!
//! #[derive(Debug, thiserror::Error)]
//! enum StockError {
//!     #[error("sold out")]
//!     SoldOut,
//!     #[error(transparent)]
//!     Barrier(#[from] BarrierError),
//!     #[error(transparent)]
//!     Sql(#[from] sqlx::Error),
//! }
//!
//! struct Seats {
//!     db: PgPool,
//!     flight: String,
//! }
//!
//! #[tcc_service(name = "seats")]
//! impl Seats {
//!     #[try_phase]
//!     async fn hold(&self) -> Result<(), StockError> {
//!         // The body may borrow what the phase has (`self` here).
//!         postgres::run(&self.db, |tx| Box::pin(async move {
//!             let held = sqlx::query(
//!                 "UPDATE seats SET held = held + 1 WHERE flight = $1 AND free > held",
//!             )
//!             .bind(&self.flight)
//!             .execute(&mut **tx)
//!             .await?;
//!             if held.rows_affected() == 0 {
//!                 return Err(StockError::SoldOut);
//!             }
//!             Ok(())
//!         }))
//!         .await?;
//!         Ok(())
//!     }
//!
//!     #[confirm]
//!     async fn book(&self) -> Result<(), StockError> {
//!         postgres::run(&self.db, |tx| Box::pin(async move {
//!             sqlx::query("UPDATE seats SET held = held - 1, free = free - 1")
//!                 .execute(&mut **tx)
//!                 .await?;
//!             Ok::<_, StockError>(())
//!         }))
//!         .await?;
//!         Ok(())
//!     }
//!
//!     #[cancel]
//!     async fn release(&self) -> Result<(), StockError> {
//!         // Runs only if this branch's Try committed.
//!         postgres::run(&self.db, |tx| Box::pin(async move {
//!             sqlx::query("UPDATE seats SET held = held - 1").execute(&mut **tx).await?;
//!             Ok::<_, StockError>(())
//!         }))
//!         .await?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = PgPool::connect("postgres://postgres@localhost/shop").await?;
//! postgres::migrate(&db).await?;
//! tcc! { Seats { db: db.clone(), flight: "LH 123".into() } }.await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use sqlx::Row;
use sqlx::error::DatabaseError;
use sqlx::postgres::{PgConnection, PgDatabaseError, PgPool, Postgres};

use super::super::{
    ATTEMPTS, BarrierError, BarrierErrorKind, Branch, Entry, FirstWrite, Outcome, RowState, Step,
    backoff, first_write, first_write_entry, in_chain, rule,
};
pub use super::{BodyFuture, Tx};
use crate::phase::Phase;

/// The barrier's table, as [`migrate`] creates it: the same as
/// tokio-postgres's (`tcc::barrier::postgres::SCHEMA`). `updated_at` is the
/// database's clock at the start of the transaction that last changed the
/// row; the partial index serves [`cleanup`].
pub const SCHEMA: &str = super::super::POSTGRES_SCHEMA;

/// Creates the barrier's table and index if they do not exist: safe to call
/// at every start, from several processes at once (they take turns on an
/// advisory lock). The table lands in the first schema of the connection's
/// `search_path`.
pub async fn migrate(pool: &PgPool) -> Result<(), BarrierError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tcc_barrier'))")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Passes the barrier for `branch` on `tx` (a connection inside a
/// transaction: `&mut *tx` for a `sqlx::Transaction`), and says what the
/// phase may do. Call it before the phase's first statement, and commit
/// whatever it returns but an error (an empty cancel's row must commit).
///
/// Most phases want [`run`] or [`guard`] instead.
pub async fn enter(tx: &mut PgConnection, branch: &Branch) -> Result<Entry, BarrierError> {
    pass(tx, branch, Step::Phase(branch.phase())).await
}

/// Runs `body` in the caller's transaction `tx` if the barrier lets
/// `branch` through; does not commit. The outcome says whether `body` ran.
///
/// ```no_run
/// # async fn phase(pool: &sqlx::PgPool) -> Result<(), tcc::barrier::BarrierError> {
/// use tcc::barrier::{sqlx::postgres, Branch};
///
/// let branch = Branch::current()?;
/// let mut tx = pool.begin().await?;
/// postgres::guard(&mut tx, &branch, |tx| async move {
///     sqlx::query("UPDATE seats SET held = held - 1").execute(&mut **tx).await?;
///     Ok::<_, tcc::barrier::BarrierError>(())
/// })
/// .await?;
/// tx.commit().await?;
/// # Ok(())
/// # }
/// ```
pub async fn guard<'t, 'c, T, E, F, Fut>(
    tx: &'t mut sqlx::Transaction<'c, Postgres>,
    branch: &Branch,
    body: F,
) -> Result<Outcome<T>, E>
where
    F: FnOnce(&'t mut sqlx::Transaction<'c, Postgres>) -> Fut,
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
/// barrier: one transaction on a connection of `pool` holding the barrier's
/// row and whatever `body` does, committed together. See [`run_branch`].
pub async fn run<'a, T, E, F>(pool: &PgPool, body: F) -> Result<Outcome<T>, E>
where
    F: for<'t> FnMut(&'t mut Tx<'a, Postgres>) -> BodyFuture<'t, Result<T, E>>,
    E: From<BarrierError> + std::error::Error + 'static,
{
    let branch = Branch::current()?;
    run_branch(pool, &branch, body).await
}

/// Runs `branch` through the barrier in one transaction on a connection of
/// `pool` (at the connection's default isolation level): the barrier's
/// row, then `body` if the barrier lets the phase through, then the commit.
/// If `body` fails, everything rolls back and the error is returned.
///
/// A serialization failure (40001) or a deadlock report (40P01) anywhere in
/// the error's source chain, including `body`'s, runs the whole transaction
/// again, up to [`ATTEMPTS`] times, after a short random pause. So `body`
/// may be called more than once: keep its effects inside the transaction
/// (see [`announce`] for those that cannot be).
pub async fn run_branch<'a, T, E, F>(
    pool: &PgPool,
    branch: &Branch,
    body: F,
) -> Result<Outcome<T>, E>
where
    F: for<'t> FnMut(&'t mut Tx<'a, Postgres>) -> BodyFuture<'t, Result<T, E>>,
    E: From<BarrierError> + std::error::Error + 'static,
{
    run_step(pool, branch, Step::Phase(branch.phase()), body).await
}

/// [`run_branch`] for any step: the transaction, its retries.
async fn run_step<'a, T, E, F>(
    pool: &PgPool,
    branch: &Branch,
    step: Step,
    mut body: F,
) -> Result<Outcome<T>, E>
where
    F: for<'t> FnMut(&'t mut Tx<'a, Postgres>) -> BodyFuture<'t, Result<T, E>>,
    E: From<BarrierError> + std::error::Error + 'static,
{
    let mut attempt = 1;
    loop {
        let result = async {
            let mut tx = Tx::new(pool.begin().await.map_err(BarrierError::from)?);
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
            Err(error) if attempt < ATTEMPTS && is_retryable(&error) => {
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Records, in a transaction of its own (tried again on 40001 and 40P01, as
/// in [`run_branch`]), that the Try of `branch` is about to act outside the
/// database, before it does: a Cancel that comes after then runs its code
/// even if the Try's own transaction never commits. See
/// [the barrier's docs](crate::barrier#a-try-that-fails-after-acting-outside-the-database-seata-6374).
///
/// [`Outcome::Ran`] means go ahead; [`Outcome::Duplicate`] means this Try
/// was delivered before: skip it. A Try after its Cancel is refused
/// ([`BarrierErrorKind::TryAfterCancel`]).
pub async fn announce(pool: &PgPool, branch: &Branch) -> Result<Outcome<()>, BarrierError> {
    if branch.phase() != Phase::Try {
        return Err(BarrierError::new(
            BarrierErrorKind::AnnounceOutsideTry,
            Some(branch),
        ));
    }
    // Retried on 40001 and 40P01, like a phase: the rules let an announce
    // only run (a new row) or be a duplicate.
    run_step(pool, branch, Step::Announce, |_| {
        Box::pin(async { Ok::<_, BarrierError>(()) })
    })
    .await
}

/// The longest horizon [`cleanup`] passes on: 1,000 years.
const MAX_HORIZON_SECS: f64 = 1000.0 * 365.25 * 86_400.0;

/// Deletes the rows of finished branches (`confirmed`, `cancelled`,
/// `cancelled_before_try`) last changed more than `horizon` ago, at most
/// `batch` rows per statement, each its own transaction. Rows locked by a
/// running transaction are skipped (`SKIP LOCKED`), so cleanup never makes a
/// phase wait. Returns how many rows it deleted. Rows of unfinished
/// branches are kept. See [the barrier's docs](crate::barrier#cleanup) for
/// choosing `horizon`.
pub async fn cleanup(pool: &PgPool, horizon: Duration, batch: usize) -> Result<u64, BarrierError> {
    // now() minus a horizon of more than a few thousand years is out of
    // PostgreSQL's timestamp range: any longer horizon keeps every row.
    let horizon = horizon.as_secs_f64().min(MAX_HORIZON_SECS);
    let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
    let mut deleted = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM tcc_barrier WHERE (transaction_id, service) IN (
                 SELECT transaction_id, service FROM tcc_barrier
                 WHERE state IN ('confirmed', 'cancelled', 'cancelled_before_try')
                   AND updated_at < now() - make_interval(secs => $1)
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)",
        )
        .bind(horizon)
        .bind(batch)
        .execute(pool)
        .await?
        .rows_affected();
        deleted += n;
        if (n as i64) < batch {
            return Ok(deleted);
        }
    }
}

/// One step through the barrier: the first write, and, only if it did not
/// take effect, a locked read of the row and the rules' ruling.
async fn pass(tx: &mut PgConnection, branch: &Branch, step: Step) -> Result<Entry, BarrierError> {
    let id = branch.transaction_id().to_string();
    let service = branch.service_name();
    // A write first: it takes the row's lock (or waits for the transaction
    // holding it) before the phase touches any business row.
    let write = first_write(step);
    let changed = match write {
        FirstWrite::Insert(state) => sqlx::query(
            "INSERT INTO tcc_barrier (transaction_id, service, state)
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(service)
        .bind(state.name()),
        FirstWrite::Update { from, to } => sqlx::query(
            "UPDATE tcc_barrier SET state = $3, updated_at = now()
             WHERE transaction_id = $1 AND service = $2 AND state = $4",
        )
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
    let prior = sqlx::query(
        "SELECT state FROM tcc_barrier
         WHERE transaction_id = $1 AND service = $2 FOR UPDATE",
    )
    .bind(&id)
    .bind(service)
    .fetch_optional(&mut *tx)
    .await?
    .map(|row| RowState::parse(row.get::<&str, _>(0), branch))
    .transpose()?;
    let ruling = rule(step, prior).map_err(|kind| BarrierError::new(kind, Some(branch)))?;
    if let Some(next) = ruling.next {
        match prior {
            None => sqlx::query(
                "INSERT INTO tcc_barrier (transaction_id, service, state) VALUES ($1, $2, $3)",
            )
            .bind(&id)
            .bind(service)
            .bind(next.name()),
            Some(prior) => sqlx::query(
                "UPDATE tcc_barrier SET state = $3, updated_at = now()
                 WHERE transaction_id = $1 AND service = $2 AND state = $4",
            )
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

/// Whether `error` is a serialization failure (40001) or a deadlock report
/// (40P01) anywhere in its source chain: running the transaction again may
/// succeed. Looks for the server's error itself too, as an error wrapping a
/// `sqlx::Error` with `#[error(transparent)]` hides the wrapper from the
/// chain and shows only its source.
pub fn is_retryable(error: &(dyn std::error::Error + 'static)) -> bool {
    let retryable = |db: &dyn DatabaseError| {
        db.code()
            .is_some_and(|code| code == "40001" || code == "40P01")
    };
    // A `sqlx::Error` shows its database error as a boxed `DatabaseError`
    // in the chain, which is all a transparent wrapper leaves.
    in_chain::<sqlx::Error>(error, |e| e.as_database_error().is_some_and(retryable))
        || in_chain::<Box<dyn DatabaseError>>(error, |e| retryable(&**e))
        || in_chain::<PgDatabaseError>(error, |e| retryable(e))
}

/// Whether `error` says the barrier's table does not exist (SQLSTATE 42P01,
/// `undefined_table`, naming it): `migrate` was never called.
pub(crate) fn is_missing_table(error: &PgDatabaseError) -> bool {
    error.code() == "42P01" && error.message().contains(super::super::TABLE)
}
