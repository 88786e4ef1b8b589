//! The barrier on PostgreSQL, through tokio-postgres (feature `postgres`).
//!
//! Create the table once with [`migrate`] (or run [`SCHEMA`] yourself), then
//! wrap each phase's SQL in [`run`]: it opens a transaction on your
//! connection, passes the barrier, runs your code if the barrier lets it,
//! and commits; a serialization failure (40001) or a deadlock report
//! (40P01) runs the whole transaction again, up to
//! [`ATTEMPTS`] times. Inside a transaction of your own, use
//! [`guard`]; to decide yourself, [`enter`].
//!
//! A connection from deadpool-postgres works as it is: its `Object` derefs
//! to a [`Client`], so pass `&mut object`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tcc::barrier::{postgres, BarrierError};
//! use tcc::{tcc, tcc_service};
//! use tokio::sync::Mutex;
//! use tokio_postgres::{Client, NoTls};
//!
//! #[derive(Debug, thiserror::Error)]
//! enum StockError {
//!     #[error("sold out")]
//!     SoldOut,
//!     #[error(transparent)]
//!     Barrier(#[from] BarrierError),
//!     #[error(transparent)]
//!     Sql(#[from] tokio_postgres::Error),
//! }
//!
//! struct Seats {
//!     db: Arc<Mutex<Client>>,
//!     flight: String,
//! }
//!
//! #[tcc_service(name = "seats")]
//! impl Seats {
//!     #[try_phase]
//!     async fn hold(&self) -> Result<(), StockError> {
//!         let mut db = self.db.lock().await;
//!         // The body may borrow what the phase has (`self` here).
//!         postgres::run(&mut db, |tx| Box::pin(async move {
//!             let held = tx
//!                 .execute(
//!                     "UPDATE seats SET held = held + 1 WHERE flight = $1 AND free > held",
//!                     &[&self.flight],
//!                 )
//!                 .await?;
//!             if held == 0 {
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
//!         let mut db = self.db.lock().await;
//!         postgres::run(&mut db, |tx| Box::pin(async move {
//!             tx.execute("UPDATE seats SET held = held - 1, free = free - 1", &[]).await?;
//!             Ok::<_, StockError>(())
//!         }))
//!         .await?;
//!         Ok(())
//!     }
//!
//!     #[cancel]
//!     async fn release(&self) -> Result<(), StockError> {
//!         let mut db = self.db.lock().await;
//!         // Runs only if this branch's Try committed.
//!         postgres::run(&mut db, |tx| Box::pin(async move {
//!             tx.execute("UPDATE seats SET held = held - 1", &[]).await?;
//!             Ok::<_, StockError>(())
//!         }))
//!         .await?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, connection) = tokio_postgres::connect("host=localhost user=postgres", NoTls).await?;
//! tokio::spawn(connection);
//! postgres::migrate(&client).await?;
//! let db = Arc::new(Mutex::new(client));
//! tcc! { Seats { db: db.clone(), flight: "LH 123".into() } }.await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::time::Duration;

use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Transaction};

use super::{
    ATTEMPTS, BarrierError, BarrierErrorKind, Branch, Entry, FirstWrite, HeldBranch, Outcome,
    RowState, Step, backoff, first_write, first_write_entry, in_chain, rule,
};
use crate::phase::Phase;

/// The barrier's table, as [`migrate`] creates it. `updated_at` is the
/// database's clock at the start of the transaction that last changed the
/// row; the partial index serves [`cleanup`].
pub const SCHEMA: &str = super::POSTGRES_SCHEMA;

/// Creates the barrier's table and index if they do not exist: safe to call
/// at every start, from several processes at once (they take turns on an
/// advisory lock). The table lands in the first schema of the connection's
/// `search_path`.
pub async fn migrate(client: &Client) -> Result<(), BarrierError> {
    // One simple query is one implicit transaction: the advisory lock is
    // held until the table and index exist, and an error rolls back all.
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_xact_lock(hashtext('tcc_barrier')); {SCHEMA}"
        ))
        .await?;
    Ok(())
}

/// Passes the barrier for `branch` inside `tx`, and says what the phase may
/// do. Call it before the phase's first statement, and commit `tx` whatever
/// it returns but an error (an empty cancel's row must commit).
///
/// Most phases want [`run`] or [`guard`] instead.
pub async fn enter(tx: &Transaction<'_>, branch: &Branch) -> Result<Entry, BarrierError> {
    pass(tx, branch, Step::Phase(branch.phase())).await
}

/// Runs `body` in `tx` if the barrier lets `branch` through; does not
/// commit. The outcome says whether `body` ran.
///
/// ```no_run
/// # async fn phase(client: &mut tokio_postgres::Client) -> Result<(), tcc::barrier::BarrierError> {
/// use tcc::barrier::{postgres, Branch};
///
/// let branch = Branch::current()?;
/// let tx = client.transaction().await?;
/// postgres::guard(&tx, &branch, |tx| async move {
///     tx.execute("UPDATE seats SET held = held - 1", &[]).await?;
///     Ok::<_, tcc::barrier::BarrierError>(())
/// })
/// .await?;
/// tx.commit().await?;
/// # Ok(())
/// # }
/// ```
pub async fn guard<'t, 'c, T, E, F, Fut>(
    tx: &'t Transaction<'c>,
    branch: &Branch,
    body: F,
) -> Result<Outcome<T>, E>
where
    F: FnOnce(&'t Transaction<'c>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: From<BarrierError>,
{
    Ok(match enter(tx, branch).await? {
        Entry::Run | Entry::RunAfterUncommittedTry => Outcome::Ran(body(tx).await?),
        Entry::Duplicate => Outcome::Duplicate,
        Entry::EmptyCancel => Outcome::EmptyCancel,
    })
}

/// The future of a body given to [`run`] or [`run_branch`]: boxed and
/// `Send`, borrowing the transaction for `'t`. Write the body as
/// `|tx| Box::pin(async move { ... })`.
///
/// Why not an `async` closure: the future of an `async` closure that holds
/// a borrow across an `.await` is not provably `Send` today ("implementation
/// of `Send` is not general enough"), and a phase's future must be `Send`.
pub type BodyFuture<'t, R> = Pin<Box<dyn Future<Output = R> + Send + 't>>;

/// The transaction a body of [`run`] or [`run_branch`] runs in: it derefs
/// to [`tokio_postgres::Transaction`].
///
/// It exists for its second lifetime: `'a` is the lifetime of what the body
/// captures. The body is called with a fresh transaction at each attempt,
/// for a lifetime `'t` it cannot name; `&'t Tx<'t, 'a>` tells the compiler
/// that `'a` outlives `'t`, so the body's future may borrow what the
/// closure captured (`&self`, a `&Branch`). Without it, such a borrow would
/// have to be `'static`.
pub struct Tx<'c, 'a> {
    tx: Transaction<'c>,
    captures: PhantomData<&'a ()>,
}

impl<'c> Deref for Tx<'c, '_> {
    type Target = Transaction<'c>;

    fn deref(&self) -> &Transaction<'c> {
        &self.tx
    }
}

/// Runs the phase that is running now ([`Branch::current`]) through the
/// barrier: one transaction on `client` holding the barrier's row and
/// whatever `body` does, committed together. See [`run_branch`].
pub async fn run<'a, T, E, F>(client: &mut Client, body: F) -> Result<Outcome<T>, E>
where
    F: for<'t> FnMut(&'t Tx<'t, 'a>) -> BodyFuture<'t, Result<T, E>>,
    E: From<BarrierError> + std::error::Error + 'static,
{
    let branch = Branch::current()?;
    run_branch(client, &branch, body).await
}

/// Runs `branch` through the barrier in one transaction on `client` (at the
/// connection's default isolation level): the barrier's row, then `body` if
/// the barrier lets the phase through, then the commit. If `body` fails,
/// everything rolls back and the error is returned.
///
/// A serialization failure (40001) or a deadlock report (40P01) anywhere in
/// the error's source chain, including `body`'s, runs the whole transaction
/// again, up to [`ATTEMPTS`] times, after a short random pause. So `body`
/// may be called more than once: keep its effects inside the transaction
/// (see [`announce`] for those that cannot be).
pub async fn run_branch<'a, T, E, F>(
    client: &mut Client,
    branch: &Branch,
    body: F,
) -> Result<Outcome<T>, E>
where
    F: for<'t> FnMut(&'t Tx<'t, 'a>) -> BodyFuture<'t, Result<T, E>>,
    E: From<BarrierError> + std::error::Error + 'static,
{
    run_step(client, branch, Step::Phase(branch.phase()), body).await
}

/// [`run_branch`] for any step: the transaction, its retries.
async fn run_step<'a, T, E, F>(
    client: &mut Client,
    branch: &Branch,
    step: Step,
    mut body: F,
) -> Result<Outcome<T>, E>
where
    F: for<'t> FnMut(&'t Tx<'t, 'a>) -> BodyFuture<'t, Result<T, E>>,
    E: From<BarrierError> + std::error::Error + 'static,
{
    let mut attempt = 1;
    loop {
        let result = async {
            let tx = Tx {
                tx: client.transaction().await.map_err(BarrierError::from)?,
                captures: PhantomData,
            };
            let outcome = match pass(&tx, branch, step).await? {
                Entry::Run | Entry::RunAfterUncommittedTry => Outcome::Ran(body(&tx).await?),
                Entry::Duplicate => Outcome::Duplicate,
                Entry::EmptyCancel => Outcome::EmptyCancel,
            };
            tx.tx.commit().await.map_err(BarrierError::from)?;
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
/// [the module docs](super#a-try-that-fails-after-acting-outside-the-database-seata-6374).
///
/// [`Outcome::Ran`] means go ahead; [`Outcome::Duplicate`] means this Try
/// was delivered before: skip it. A Try after its Cancel is refused
/// ([`BarrierErrorKind::TryAfterCancel`]).
pub async fn announce(client: &mut Client, branch: &Branch) -> Result<Outcome<()>, BarrierError> {
    if branch.phase() != Phase::Try {
        return Err(BarrierError::new(
            BarrierErrorKind::AnnounceOutsideTry,
            Some(branch),
        ));
    }
    // Retried on 40001 and 40P01, like a phase: the rules let an announce
    // only run (a new row) or be a duplicate.
    run_step(client, branch, Step::Announce, |_| {
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
/// phase wait, and PostgreSQL has no gap locks to block inserts of new
/// branches. Returns how many rows it deleted. Rows of unfinished branches
/// are kept. See [the module docs](super#cleanup) for choosing `horizon`.
pub async fn cleanup(
    client: &Client,
    horizon: Duration,
    batch: usize,
) -> Result<u64, BarrierError> {
    // now() minus a horizon of more than a few thousand years is out of
    // PostgreSQL's timestamp range ("timestamp out of range"), and no row
    // is that old: any longer horizon keeps every row, as it should.
    let horizon = horizon.as_secs_f64().min(MAX_HORIZON_SECS);
    let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
    let delete = client
        .prepare(
            "DELETE FROM tcc_barrier WHERE (transaction_id, service) IN (
                 SELECT transaction_id, service FROM tcc_barrier
                 WHERE state IN ('confirmed', 'cancelled', 'cancelled_before_try')
                   AND updated_at < now() - make_interval(secs => $1)
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)",
        )
        .await?;
    let mut deleted = 0;
    loop {
        let n = client.execute(&delete, &[&horizon, &batch]).await?;
        deleted += n;
        if (n as i64) < batch {
            return Ok(deleted);
        }
    }
}

/// The branches whose rows still hold what their Try reserved (`tried` or
/// `started`) and last changed more than `age` ago, by the database's
/// clock, the oldest first: reservations that no one may ever release,
/// unless the transaction log still holds their transactions (see
/// [the module docs](super#reservations-no-one-will-release)). Reads only,
/// locking nothing.
pub async fn held_longer_than(
    client: &Client,
    age: Duration,
) -> Result<Vec<HeldBranch>, BarrierError> {
    // As in `cleanup`: no row is older than the timestamps' range.
    let age = age.as_secs_f64().min(MAX_HORIZON_SECS);
    let rows = client
        .query(
            "SELECT transaction_id, service, state,
                    extract(epoch FROM now() - updated_at)::float8
             FROM tcc_barrier
             WHERE state IN ('tried', 'started')
               AND updated_at < now() - make_interval(secs => $1)
             ORDER BY updated_at, transaction_id, service",
            &[&age],
        )
        .await?;
    let mut held = Vec::new();
    for row in rows {
        let state: String = row.try_get(2)?;
        if let Some(state) = HeldBranch::holding(&state) {
            let seconds: f64 = row.try_get(3)?;
            held.push(HeldBranch {
                transaction_id: row.try_get(0)?,
                service: row.try_get(1)?,
                state,
                age: Duration::try_from_secs_f64(seconds).unwrap_or_default(),
            });
        }
    }
    Ok(held)
}

/// One step through the barrier: the first write, and, only if it did not
/// take effect, a locked read of the row and the rules' ruling.
async fn pass(tx: &Transaction<'_>, branch: &Branch, step: Step) -> Result<Entry, BarrierError> {
    let id = branch.transaction_id().to_string();
    let service = branch.service_name();
    // A write first: it takes the row's lock (or waits for the transaction
    // holding it) before the phase touches any business row.
    let write = first_write(step);
    let changed = match write {
        FirstWrite::Insert(state) => {
            text_query(
                tx,
                "INSERT INTO tcc_barrier (transaction_id, service, state)
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1",
                &[&id, &service, &state.name()],
            )
            .await?
        }
        FirstWrite::Update { from, to } => {
            text_query(
                tx,
                "UPDATE tcc_barrier SET state = $3, updated_at = now()
                 WHERE transaction_id = $1 AND service = $2 AND state = $4 RETURNING 1",
                &[&id, &service, &to.name(), &from.name()],
            )
            .await?
        }
    };
    if changed.len() == 1 {
        return Ok(first_write_entry(step, write));
    }
    let prior = text_query(
        tx,
        "SELECT state FROM tcc_barrier
         WHERE transaction_id = $1 AND service = $2 FOR UPDATE",
        &[&id, &service],
    )
    .await?
    .first()
    .map(|row| RowState::parse(row.get(0), branch))
    .transpose()?;
    let ruling = rule(step, prior).map_err(|kind| BarrierError::new(kind, Some(branch)))?;
    if let Some(next) = ruling.next {
        match prior {
            None => {
                text_query(
                    tx,
                    "INSERT INTO tcc_barrier (transaction_id, service, state) VALUES ($1, $2, $3)",
                    &[&id, &service, &next.name()],
                )
                .await?
            }
            Some(prior) => {
                text_query(
                    tx,
                    "UPDATE tcc_barrier SET state = $3, updated_at = now()
                     WHERE transaction_id = $1 AND service = $2 AND state = $4",
                    &[&id, &service, &next.name(), &prior.name()],
                )
                .await?
            }
        };
    }
    Ok(ruling.entry)
}

/// Runs a barrier statement, all of whose parameters are text, without
/// preparing it first: one round trip to the server instead of two.
async fn text_query(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let typed: Vec<(&(dyn ToSql + Sync), Type)> =
        params.iter().map(|&param| (param, Type::TEXT)).collect();
    tx.query_typed(sql, &typed).await
}

/// Whether `error` is a serialization failure (40001) or a deadlock report
/// (40P01) anywhere in its source chain: running the transaction again may
/// succeed. Looks for the server's error itself too, as an error wrapping a
/// `tokio_postgres::Error` with `#[error(transparent)]` hides the wrapper
/// from the chain and shows only its source.
pub fn is_retryable(error: &(dyn std::error::Error + 'static)) -> bool {
    let retryable = |code: &SqlState| {
        *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
    };
    in_chain::<tokio_postgres::Error>(error, |e| e.code().is_some_and(retryable))
        || in_chain::<DbError>(error, |e| retryable(e.code()))
}

/// Whether `error` says the barrier's table does not exist (SQLSTATE 42P01,
/// `undefined_table`, naming it): `migrate` was never called.
pub(crate) fn is_missing_table(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::UNDEFINED_TABLE)
        && error
            .as_db_error()
            .is_some_and(|db| db.message().contains(super::TABLE))
}
