//! The participant barrier: phases that are safe to deliver twice, out of
//! order, or after their transaction gave up on them.
//!
//! Recovery and retries mean a participant sees the same Confirm or Cancel
//! more than once, a Cancel for a Try that never ran (an *empty cancel*), and
//! a Try that arrives after its transaction was cancelled (a *hanging Try*).
//! The barrier guards each phase with one row of a table, written in **the
//! phase's own database transaction**, so the row and the business change
//! commit or roll back together. It never opens a connection of its own.
//!
//! Backends, each behind a cargo feature of `tcc` (off by default):
//! [`sqlite`] (rusqlite, feature `sqlite`), [`postgres`] (tokio-postgres,
//! feature `postgres`; a connection from deadpool-postgres works too), and
//! [`sqlx`](mod@sqlx) for either database (features `sqlx-postgres` and
//! `sqlx-sqlite`).
//!
//! ```toml
//! [dependencies]
//! tcc = { version = "0.1", features = ["postgres"] }  # or "sqlite", "sqlx-postgres", "sqlx-sqlite"
//! ```
//!
//! Each backend's page shows a `#[tcc_service]` whose phases wrap their SQL
//! in one call.
//!
//! # The rules, as a phase sees them
//!
//! A branch is one service in one transaction: the row is keyed by
//! (transaction id, service name), and the phase is read from the same
//! [`Context`] (or given with [`Branch::new`]).
//!
//! | the phase arrives | the branch's row says | the barrier | the phase's code |
//! |---|---|---|---|
//! | Try | nothing, `started` | records `tried` | runs |
//! | Try | `tried`, `confirmed` | [`Outcome::Duplicate`] | skipped |
//! | Try | `cancelled`, `cancelled_before_try` | [`TryAfterCancel`](BarrierErrorKind::TryAfterCancel), a permanent error | skipped |
//! | Confirm | `tried` | records `confirmed` | runs |
//! | Confirm | `confirmed` | [`Outcome::Duplicate`] | skipped |
//! | Confirm | nothing, `started` | [`ConfirmWithoutTry`](BarrierErrorKind::ConfirmWithoutTry), a permanent error | skipped |
//! | Confirm | `cancelled`, `cancelled_before_try` | [`ConfirmAfterCancel`](BarrierErrorKind::ConfirmAfterCancel), a permanent error | skipped |
//! | Cancel | `tried` | records `cancelled` | runs |
//! | Cancel | `started` | records `cancelled` | runs (the Try announced effects outside the database and never committed) |
//! | Cancel | nothing | records `cancelled_before_try`: [`Outcome::EmptyCancel`] | skipped |
//! | Cancel | `cancelled`, `cancelled_before_try` | [`Outcome::Duplicate`] | skipped |
//! | Cancel | `confirmed` | [`CancelAfterConfirm`](BarrierErrorKind::CancelAfterConfirm), a permanent error | skipped |
//!
//! (`started` is the row of a Try that announced effects outside the
//! database: see [below](#a-try-that-fails-after-acting-outside-the-database-seata-6374).)
//!
//! So: the phase's code runs at most once per branch and phase; a Try never
//! runs after its Cancel (and a refused Try is an error, never a success); a
//! Confirm never runs without a committed Try; a Cancel runs its code only
//! when there is something to cancel. A permanent error carries
//! [`Permanent`] in its source chain, so the runtime stops
//! retrying that phase at once.
//!
//! When the phase's code fails, its transaction rolls back with the row: the
//! phase left no trace and may be delivered again.
//!
//! # The table
//!
//! One row per branch, created by `migrate` ([`sqlite::migrate`],
//! [`postgres::migrate`]), which is idempotent: call it at start. A phase
//! that finds no table fails at once with
//! [`MissingTable`](BarrierErrorKind::MissingTable), a permanent error
//! whose message names the `migrate` to call, rather than being retried
//! until it needs repair. The SQL is in each backend's `SCHEMA` for those
//! who manage schemas themselves. PostgreSQL:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS tcc_barrier (
//!     transaction_id text        NOT NULL,  -- TransactionId, 32 hex digits
//!     service        text        NOT NULL,  -- the service's name
//!     state          text        NOT NULL CHECK (state IN
//!         ('started', 'tried', 'confirmed', 'cancelled', 'cancelled_before_try')),
//!     updated_at     timestamptz NOT NULL DEFAULT now(),
//!     PRIMARY KEY (transaction_id, service)
//! );
//! CREATE INDEX IF NOT EXISTS tcc_barrier_finished ON tcc_barrier (updated_at)
//!     WHERE state IN ('confirmed', 'cancelled', 'cancelled_before_try');
//! ```
//!
//! SQLite: the same columns, `WITHOUT ROWID`, with `updated_at` an
//! `INTEGER` of milliseconds since the Unix epoch (SQLite's clock).
//!
//! Why one row with a state, and how that avoids the rivals' bugs (DTM #453,
//! Seata #6679), is in `docs/design.md` (section 6) in the repository.
//!
//! # A Try that fails after acting outside the database (Seata #6374)
//!
//! The row of a Try commits with the Try's transaction. A Try that fails
//! rolls back its row with its database changes, so a later Cancel is an
//! empty cancel and skips its code, which is right for everything the
//! database rolled back. It is wrong for what the Try did *outside* the
//! database (a call to another system, a message sent) before it failed:
//! Seata's fence has this bug, and ours would too if the row were all there
//! is. The barrier cannot see outside effects, so such a Try says so first:
//! it calls `announce` (in [`sqlite::announce`] and [`postgres::announce`])
//! in a transaction of its own *before* it acts outside, which commits a
//! `started` row. From then on:
//!
//! | `announce` finds | the barrier | the Try |
//! |---|---|---|
//! | nothing | records `started`: [`Outcome::Ran`] | goes ahead |
//! | `started`, `tried`, `confirmed` | [`Outcome::Duplicate`] | was delivered before: skip it |
//! | `cancelled`, `cancelled_before_try` | [`TryAfterCancel`](BarrierErrorKind::TryAfterCancel), a permanent error | refused |
//!
//! - the Try's own transaction later turns `started` into `tried`, as usual;
//! - if it never does (the Try failed, its process died), a Cancel finds
//!   `started` and **runs** its code, with
//!   [`Entry::RunAfterUncommittedTry`]: the database holds nothing of the
//!   Try, so that code undoes only the outside effects;
//! - a Try still running when its Cancel came is refused when it reaches its
//!   transaction, so its database part never commits.
//!
//! What no database barrier can do: undo an outside effect that a Try makes
//! *after* its Cancel ran (the hanging Try outside the database). The other
//! system must refuse it itself, keyed by the transaction id, or the Try must
//! check the barrier (announce again is refused) right before each outside
//! call, which narrows the window but cannot close it.
//!
//! # Concurrency
//!
//! The barrier's row is the first thing a phase writes (with `run`, or with
//! `enter` and `guard` called first in the transaction), so every phase of a
//! branch takes the row's lock before any business row: two deliveries of a
//! branch wait for each other at the row and never deadlock on each other.
//! A Cancel racing a slow Try waits for the Try's transaction: if it
//! commits, the Cancel runs its code; if it rolls back, the Cancel is an
//! empty cancel.
//!
//! Under PostgreSQL's `REPEATABLE READ` or `SERIALIZABLE`, a race ends in a
//! serialization failure (40001) or a deadlock report (40P01) instead of a
//! wait; in SQLite, a writer may find the database busy. The `run` helpers of
//! both backends run the whole transaction again for those, up to
//! [`ATTEMPTS`] times.
//!
//! # Cleanup
//!
//! The rows of finished branches (`confirmed`, `cancelled`,
//! `cancelled_before_try`) can be deleted once they are older than a
//! *horizon*, with `cleanup` (in [`sqlite::cleanup`] and
//! [`postgres::cleanup`]), in small batches of their own. Rows of unfinished
//! branches (`started`, `tried`) are never deleted.
//!
//! Why that never lets a late Try through: a row's last change is its Confirm
//! or Cancel, which the coordinator sends only after it sent the Try. If
//! every delivery of a Try reaches the database within the horizon of being
//! sent, then by the time a row is older than the horizon, every delivery of
//! its Try has arrived, and met the row. **Choose a horizon longer than any
//! Try can be in flight** (queues, retries of the transport, a paused
//! process): days, not minutes. Make it longer than the coordinator retries
//! a Confirm or Cancel, too: a Confirm delivered again after its row was
//! deleted is refused ([`ConfirmWithoutTry`](BarrierErrorKind::ConfirmWithoutTry)),
//! and a Cancel is taken for an empty cancel. Neither runs its code twice.
//!
//! # Reservations no one will release
//!
//! A `tried` row (or a `started` one) holds what its Try reserved until its
//! Confirm or Cancel comes, which the coordinator sends as long as its
//! transaction log holds the transaction. When the log does not (it was
//! lost or replaced, the participant's data was restored from a backup
//! that predates the Confirm or Cancel, a transaction was resolved by hand
//! without this branch, a bug), no one ever will, and the reservation stays.
//! `held_longer_than` (in [`sqlite::held_longer_than`] and
//! [`postgres::held_longer_than`]) lists the branches still holding one
//! after an age; the `tcc orphans` command (cargo feature `cli`) checks
//! each against the log, and says what to do with those it does not hold.

// With `http-server` alone, only `Branch` (its extractor) is used: the
// rules wait for a backend.
#![cfg_attr(
    not(any(
        feature = "sqlite",
        feature = "postgres",
        feature = "sqlx-postgres",
        feature = "sqlx-sqlite"
    )),
    allow(dead_code)
)]

use std::fmt;
use std::time::Duration;

use crate::error::{BoxError, Chain, Permanent};
use crate::phase::Phase;
use crate::{Context, TransactionId};

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;
#[cfg(any(feature = "sqlx-postgres", feature = "sqlx-sqlite"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "sqlx-postgres", feature = "sqlx-sqlite")))
)]
pub mod sqlx;

/// How many times the `run` helpers try a transaction that hit a
/// serialization failure, a deadlock report, or a busy database.
pub const ATTEMPTS: u32 = 5;

/// The name of the barrier's table. In PostgreSQL it is resolved through the
/// connection's `search_path`, so a schema per application works.
pub const TABLE: &str = "tcc_barrier";

/// A branch whose row still holds what its Try reserved: `tried`, or
/// `started` (a Try that announced effects outside the database, whose own
/// transaction has not committed), listed by `held_longer_than` (see
/// [the module docs](self#reservations-no-one-will-release)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldBranch {
    /// The transaction id as the row holds it: a [`TransactionId`]'s 32
    /// hex digits, unless something else wrote the row
    /// ([`transaction`](HeldBranch::transaction) parses it).
    pub transaction_id: String,
    /// The service's name.
    pub service: String,
    /// `tried` or `started`.
    pub state: &'static str,
    /// How long ago the row last changed, by the database's clock.
    pub age: Duration,
}

impl HeldBranch {
    /// The row's transaction id, if it is one.
    pub fn transaction(&self) -> Option<TransactionId> {
        self.transaction_id.parse().ok()
    }

    /// The state of a row that holds a reservation, named as the table
    /// spells it; `None` for any other.
    // Used by the backends that list held branches: rusqlite and
    // tokio-postgres.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn holding(state: &str) -> Option<&'static str> {
        [RowState::Tried, RowState::Started]
            .into_iter()
            .map(RowState::name)
            .find(|name| *name == state)
    }
}

/// One service's part in one transaction, and the phase being delivered to
/// it: what the barrier keys its row by.
///
/// Inside a phase, [`Branch::current`] reads it from the running
/// [`Context`]. Capture it there, before moving work to another thread
/// (`spawn_blocking`), where no context is set. A participant that receives
/// its phases over the network builds it with [`Branch::new`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Branch {
    transaction_id: TransactionId,
    service: String,
    phase: Phase,
}

impl Branch {
    /// The branch of `service` in `transaction_id`, in `phase`.
    pub fn new(transaction_id: TransactionId, service: impl Into<String>, phase: Phase) -> Self {
        Branch {
            transaction_id,
            service: service.into(),
            phase,
        }
    }

    /// The branch of the phase running in this task, from
    /// [`Context::current`]; an error ([`BarrierErrorKind::NoContext`])
    /// outside a phase.
    pub fn current() -> Result<Self, BarrierError> {
        let context = Context::current()
            .ok_or_else(|| BarrierError::new(BarrierErrorKind::NoContext, None))?;
        Ok(Branch::new(
            context.transaction_id(),
            context.service_name(),
            context.phase(),
        ))
    }

    /// The transaction the branch belongs to.
    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// The service's name.
    pub fn service_name(&self) -> &str {
        &self.service
    }

    /// The phase being delivered.
    pub fn phase(&self) -> Phase {
        self.phase
    }
}

impl fmt::Display for Branch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of `{}` in transaction {}",
            self.phase, self.service, self.transaction_id
        )
    }
}

/// What the barrier let a phase do, from the low-level `enter` of each
/// backend ([`sqlite::enter`], [`postgres::enter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Entry {
    /// The first delivery of this phase: run its code in the same
    /// transaction.
    Run,
    /// A Cancel whose Try announced effects outside the database and never
    /// committed: run the code that undoes those outside effects. The
    /// database holds nothing of the Try.
    RunAfterUncommittedTry,
    /// This phase already ran (or, for a Try, the branch is past it): skip
    /// its code.
    Duplicate,
    /// A Cancel with no Try before it: it was recorded, and blocks a Try
    /// that comes later. Skip its code.
    EmptyCancel,
}

/// What became of a phase run through the barrier. A refusal is not an
/// outcome but an error ([`BarrierError`]), so it is never taken for success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The phase's code ran and its transaction committed with the
    /// barrier's row; here is what it returned.
    Ran(T),
    /// The phase had already run: its code was skipped.
    Duplicate,
    /// A Cancel with no Try before it: recorded, code skipped, and a Try of
    /// the branch arriving later will be refused.
    EmptyCancel,
}

impl<T> Outcome<T> {
    /// What the phase's code returned, if it ran.
    pub fn ran(self) -> Option<T> {
        match self {
            Outcome::Ran(value) => Some(value),
            Outcome::Duplicate | Outcome::EmptyCancel => None,
        }
    }
}

/// What kind of [`BarrierError`] this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BarrierErrorKind {
    /// A Try arrived after its Cancel: refused, so it reserves nothing.
    /// Permanent.
    TryAfterCancel,
    /// A Confirm arrived with no committed Try before it. Permanent.
    ConfirmWithoutTry,
    /// A Confirm arrived after the branch was cancelled. Permanent.
    ConfirmAfterCancel,
    /// A Cancel arrived after the branch was confirmed. Permanent.
    CancelAfterConfirm,
    /// `announce` was called for a phase other than Try. Permanent.
    AnnounceOutsideTry,
    /// No phase runs in this task, so there is no branch to guard. Permanent.
    NoContext,
    /// The table holds a state this version does not know. Permanent.
    UnknownState,
    /// The barrier's table does not exist: `migrate` was not called
    /// ([`sqlite::migrate`], [`postgres::migrate`]). Permanent: retrying
    /// cannot create it. `Display` says which `migrate` to call.
    MissingTable,
    /// The database failed; the cause is the error's source. Transient
    /// unless the cause says otherwise: retrying may help.
    Database,
}

/// Why the barrier did not let a phase through, or could not tell.
///
/// Every kind but [`Database`](BarrierErrorKind::Database) is permanent:
/// its source is a [`Permanent`], so a Confirm or Cancel that returns it (or
/// an error with it in its source chain) is not retried by the runtime.
#[derive(Debug)]
pub struct BarrierError {
    kind: BarrierErrorKind,
    branch: Option<Box<Branch>>,
    source: BoxError,
    /// For [`BarrierErrorKind::MissingTable`]: the `migrate` to call.
    migrate: &'static str,
}

impl BarrierError {
    pub(crate) fn new(kind: BarrierErrorKind, branch: Option<&Branch>) -> Self {
        BarrierError {
            kind,
            branch: branch.map(|branch| Box::new(branch.clone())),
            source: Box::new(Permanent::new(
                "retrying cannot change what the barrier found",
            )),
            migrate: "",
        }
    }

    pub(crate) fn database(cause: impl Into<BoxError>) -> Self {
        BarrierError {
            kind: BarrierErrorKind::Database,
            branch: None,
            source: cause.into(),
            migrate: "",
        }
    }

    /// The table is missing, as `cause` says; `migrate` is the function
    /// that creates it. Permanent: a phase that meets it is not retried, so
    /// the mistake shows at once, not after the retries run out.
    #[cfg(any(
        feature = "sqlite",
        feature = "postgres",
        feature = "sqlx-postgres",
        feature = "sqlx-sqlite"
    ))]
    fn missing_table(migrate: &'static str, cause: impl Into<BoxError>) -> Self {
        BarrierError {
            kind: BarrierErrorKind::MissingTable,
            branch: None,
            source: Box::new(Permanent::new(cause)),
            migrate,
        }
    }

    fn unknown_state(branch: &Branch, state: &str) -> Self {
        BarrierError {
            source: Box::new(Permanent::new(format!("unknown barrier state {state:?}"))),
            ..BarrierError::new(BarrierErrorKind::UnknownState, Some(branch))
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> BarrierErrorKind {
        self.kind
    }

    /// The branch the barrier was guarding, when it got that far.
    pub fn branch(&self) -> Option<&Branch> {
        self.branch.as_deref()
    }

    /// Whether retrying the phase cannot help.
    pub fn is_permanent(&self) -> bool {
        Permanent::is_in(self)
    }
}

impl fmt::Display for BarrierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            BarrierErrorKind::TryAfterCancel => "refused: its cancel came first",
            BarrierErrorKind::ConfirmWithoutTry => "refused: no try of the branch committed",
            BarrierErrorKind::ConfirmAfterCancel => "refused: the branch was cancelled",
            BarrierErrorKind::CancelAfterConfirm => "refused: the branch was confirmed",
            BarrierErrorKind::AnnounceOutsideTry => "cannot announce: only a try announces",
            BarrierErrorKind::UnknownState => {
                let what = "found a barrier row it cannot read";
                return match &self.branch {
                    Some(branch) => write!(f, "{branch} {what}: {}", Chain(&*self.source)),
                    None => write!(f, "{what}: {}", Chain(&*self.source)),
                };
            }
            BarrierErrorKind::MissingTable => {
                return write!(
                    f,
                    "the barrier's table `{TABLE}` does not exist: call `{}` at start, before any phase runs ({})",
                    self.migrate,
                    Chain(&*self.source)
                );
            }
            BarrierErrorKind::NoContext => {
                return f.write_str(
                    "no tcc phase runs in this task: capture barrier::Branch::current() \
                     inside the phase, or build one with Branch::new",
                );
            }
            // The cause's text too, as the source alone is lost on whoever
            // prints only `Display`.
            BarrierErrorKind::Database => {
                return write!(
                    f,
                    "the barrier's database query failed: {}",
                    Chain(&*self.source)
                );
            }
        };
        match &self.branch {
            Some(branch) => write!(f, "{branch} {what}"),
            None => f.write_str(what),
        }
    }
}

impl std::error::Error for BarrierError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(feature = "sqlite")]
impl From<rusqlite::Error> for BarrierError {
    fn from(error: rusqlite::Error) -> Self {
        if sqlite::is_missing_table(&error) {
            return BarrierError::missing_table("tcc::barrier::sqlite::migrate", error);
        }
        BarrierError::database(error)
    }
}

#[cfg(feature = "postgres")]
impl From<tokio_postgres::Error> for BarrierError {
    fn from(error: tokio_postgres::Error) -> Self {
        if postgres::is_missing_table(&error) {
            return BarrierError::missing_table("tcc::barrier::postgres::migrate", error);
        }
        BarrierError::database(error)
    }
}

#[cfg(any(feature = "sqlx-postgres", feature = "sqlx-sqlite"))]
impl From<::sqlx::Error> for BarrierError {
    fn from(error: ::sqlx::Error) -> Self {
        let database = error.as_database_error();
        #[cfg(feature = "sqlx-postgres")]
        if database
            .and_then(|db| db.try_downcast_ref::<::sqlx::postgres::PgDatabaseError>())
            .is_some_and(sqlx::postgres::is_missing_table)
        {
            return BarrierError::missing_table("tcc::barrier::sqlx::postgres::migrate", error);
        }
        #[cfg(feature = "sqlx-sqlite")]
        if database
            .and_then(|db| db.try_downcast_ref::<::sqlx_sqlite::SqliteError>())
            .is_some_and(sqlx::sqlite::is_missing_table)
        {
            return BarrierError::missing_table("tcc::barrier::sqlx::sqlite::migrate", error);
        }
        let _ = database;
        BarrierError::database(error)
    }
}

/// The barrier's table on PostgreSQL: the `SCHEMA` of the tokio-postgres
/// and sqlx backends alike, so that one database serves both.
#[cfg(any(feature = "postgres", feature = "sqlx-postgres"))]
pub(crate) const POSTGRES_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS tcc_barrier (
    transaction_id text        NOT NULL,
    service        text        NOT NULL,
    state          text        NOT NULL CHECK (state IN
        ('started', 'tried', 'confirmed', 'cancelled', 'cancelled_before_try')),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (transaction_id, service)
);
CREATE INDEX IF NOT EXISTS tcc_barrier_finished ON tcc_barrier (updated_at)
    WHERE state IN ('confirmed', 'cancelled', 'cancelled_before_try');
";

/// The barrier's table on SQLite: the `SCHEMA` of the rusqlite and sqlx
/// backends alike.
#[cfg(any(feature = "sqlite", feature = "sqlx-sqlite"))]
pub(crate) const SQLITE_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS tcc_barrier (
    transaction_id TEXT    NOT NULL,
    service        TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN
        ('started', 'tried', 'confirmed', 'cancelled', 'cancelled_before_try')),
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (transaction_id, service)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tcc_barrier_finished ON tcc_barrier (updated_at)
    WHERE state IN ('confirmed', 'cancelled', 'cancelled_before_try');
";

/// What a branch's row says. Stored as its [`name`](RowState::name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowState {
    /// A Try announced effects outside the database; its transaction has not
    /// committed (yet, or ever).
    Started,
    /// A Try committed.
    Tried,
    /// A Confirm committed.
    Confirmed,
    /// A Cancel committed after a Try (committed or announced).
    Cancelled,
    /// A Cancel committed with no Try before it. Blocks a later Try.
    CancelledBeforeTry,
}

impl RowState {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            RowState::Started => "started",
            RowState::Tried => "tried",
            RowState::Confirmed => "confirmed",
            RowState::Cancelled => "cancelled",
            RowState::CancelledBeforeTry => "cancelled_before_try",
        }
    }

    pub(crate) fn parse(text: &str, branch: &Branch) -> Result<Self, BarrierError> {
        Ok(match text {
            "started" => RowState::Started,
            "tried" => RowState::Tried,
            "confirmed" => RowState::Confirmed,
            "cancelled" => RowState::Cancelled,
            "cancelled_before_try" => RowState::CancelledBeforeTry,
            other => return Err(BarrierError::unknown_state(branch, other)),
        })
    }
}

/// What arrives at the barrier: a phase, or a Try announcing effects outside
/// the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Announce,
    Phase(Phase),
}

/// The barrier's ruling on a delivery: what the phase may do, and what the row becomes
/// (`None`: unchanged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ruling {
    pub(crate) entry: Entry,
    pub(crate) next: Option<RowState>,
}

/// The rules: the one place both backends take them from.
pub(crate) fn rule(step: Step, prior: Option<RowState>) -> Result<Ruling, BarrierErrorKind> {
    use BarrierErrorKind as K;
    use RowState as S;
    let go = |entry, next| {
        Ok(Ruling {
            entry,
            next: Some(next),
        })
    };
    let skip = |entry| Ok(Ruling { entry, next: None });
    match (step, prior) {
        (Step::Announce, None) => go(Entry::Run, S::Started),
        (Step::Phase(Phase::Try), None | Some(S::Started)) => go(Entry::Run, S::Tried),
        (Step::Announce | Step::Phase(Phase::Try), Some(S::Started | S::Tried | S::Confirmed)) => {
            skip(Entry::Duplicate)
        }
        (Step::Announce | Step::Phase(Phase::Try), Some(S::Cancelled | S::CancelledBeforeTry)) => {
            Err(K::TryAfterCancel)
        }

        (Step::Phase(Phase::Confirm), Some(S::Tried)) => go(Entry::Run, S::Confirmed),
        (Step::Phase(Phase::Confirm), Some(S::Confirmed)) => skip(Entry::Duplicate),
        (Step::Phase(Phase::Confirm), None | Some(S::Started)) => Err(K::ConfirmWithoutTry),
        (Step::Phase(Phase::Confirm), Some(S::Cancelled | S::CancelledBeforeTry)) => {
            Err(K::ConfirmAfterCancel)
        }

        (Step::Phase(Phase::Cancel), None) => go(Entry::EmptyCancel, S::CancelledBeforeTry),
        (Step::Phase(Phase::Cancel), Some(S::Tried)) => go(Entry::Run, S::Cancelled),
        (Step::Phase(Phase::Cancel), Some(S::Started)) => {
            go(Entry::RunAfterUncommittedTry, S::Cancelled)
        }
        (Step::Phase(Phase::Cancel), Some(S::Cancelled | S::CancelledBeforeTry)) => {
            skip(Entry::Duplicate)
        }
        (Step::Phase(Phase::Cancel), Some(S::Confirmed)) => Err(K::CancelAfterConfirm),
    }
}

/// The first statement a step runs: a write, so that it takes the row's
/// lock (and SQLite's write lock) before it reads anything. In the common
/// case it is also the only barrier statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FirstWrite {
    /// Insert the row in this state unless it exists.
    Insert(RowState),
    /// Move the row from one state to another, if it is in the first.
    Update { from: RowState, to: RowState },
}

pub(crate) fn first_write(step: Step) -> FirstWrite {
    match step {
        Step::Announce => FirstWrite::Insert(RowState::Started),
        Step::Phase(Phase::Try) => FirstWrite::Insert(RowState::Tried),
        Step::Phase(Phase::Cancel) => FirstWrite::Insert(RowState::CancelledBeforeTry),
        Step::Phase(Phase::Confirm) => FirstWrite::Update {
            from: RowState::Tried,
            to: RowState::Confirmed,
        },
    }
}

/// The entry of a first write that took effect.
pub(crate) fn first_write_entry(step: Step, write: FirstWrite) -> Entry {
    let prior = match write {
        FirstWrite::Insert(_) => None,
        FirstWrite::Update { from, .. } => Some(from),
    };
    rule(step, prior)
        .map(|ruling| ruling.entry)
        .expect("every first write is a transition the rules allow")
}

/// How long the `run` helpers wait before attempt `attempt + 1`: a random
/// time below 5 ms, doubled at each attempt. Random, so that two phases that
/// deadlocked each other do not retry in step and deadlock again.
pub(crate) fn backoff(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // RandomState draws its keys from the OS's randomness: no extra crate.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let ceiling_us = 5_000u64 << attempt.min(10);
    Duration::from_micros(random % ceiling_us)
}

/// Whether `error`, or an error in its source chain, satisfies `test`.
/// Bounded, like [`Permanent::is_in`], so a looping chain cannot hang.
pub(crate) fn in_chain<T: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
    test: impl Fn(&T) -> bool,
) -> bool {
    crate::error::links(error)
        .filter_map(|e| e.downcast_ref::<T>())
        .any(test)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [Option<RowState>; 6] = [
        None,
        Some(RowState::Started),
        Some(RowState::Tried),
        Some(RowState::Confirmed),
        Some(RowState::Cancelled),
        Some(RowState::CancelledBeforeTry),
    ];
    const STEPS: [Step; 4] = [
        Step::Announce,
        Step::Phase(Phase::Try),
        Step::Phase(Phase::Confirm),
        Step::Phase(Phase::Cancel),
    ];

    #[test]
    fn a_cancelled_branch_never_lets_a_try_or_confirm_run() {
        for prior in [RowState::Cancelled, RowState::CancelledBeforeTry] {
            for step in [
                Step::Announce,
                Step::Phase(Phase::Try),
                Step::Phase(Phase::Confirm),
            ] {
                assert!(rule(step, Some(prior)).is_err(), "{step:?} after {prior:?}");
            }
        }
    }

    #[test]
    fn code_runs_only_on_a_state_change_and_terminal_states_stay() {
        for step in STEPS {
            for prior in STATES {
                let Ok(ruling) = rule(step, prior) else {
                    continue;
                };
                let runs = matches!(ruling.entry, Entry::Run | Entry::RunAfterUncommittedTry);
                if runs {
                    assert!(
                        ruling.next.is_some() && ruling.next != prior,
                        "{step:?} {prior:?}"
                    );
                }
                if matches!(
                    prior,
                    Some(RowState::Confirmed | RowState::Cancelled | RowState::CancelledBeforeTry)
                ) {
                    assert_eq!(ruling.next, None, "{step:?} changed a finished branch");
                }
            }
        }
    }

    #[test]
    fn first_writes_agree_with_the_rules() {
        for step in STEPS {
            let write = first_write(step);
            let (prior, next) = match write {
                FirstWrite::Insert(state) => (None, state),
                FirstWrite::Update { from, to } => (Some(from), to),
            };
            assert_eq!(rule(step, prior).unwrap().next, Some(next));
            let _ = first_write_entry(step, write);
        }
    }

    #[test]
    fn states_read_back() {
        let branch = Branch::new(TransactionId::from_u128(7), "s", Phase::Try);
        for state in STATES.into_iter().flatten() {
            assert_eq!(RowState::parse(state.name(), &branch).unwrap(), state);
        }
        let error = RowState::parse("frozen", &branch).unwrap_err();
        assert_eq!(error.kind(), BarrierErrorKind::UnknownState);
        assert!(error.is_permanent());
        assert!(
            error
                .to_string()
                .ends_with("found a barrier row it cannot read: unknown barrier state \"frozen\""),
            "{error}"
        );
    }

    #[test]
    fn refusals_are_permanent_and_database_errors_are_not() {
        let branch = Branch::new(TransactionId::from_u128(7), "pay", Phase::Try);
        let refused = BarrierError::new(BarrierErrorKind::TryAfterCancel, Some(&branch));
        assert!(refused.is_permanent());
        assert_eq!(
            refused.to_string(),
            "try of `pay` in transaction 00000000000000000000000000000007 refused: its cancel came first"
        );
        let io = std::io::Error::other("connection reset");
        let database = BarrierError::database(io);
        assert!(!database.is_permanent());
        assert_eq!(
            database.to_string(),
            "the barrier's database query failed: connection reset"
        );
    }

    #[test]
    fn no_context_outside_a_phase() {
        let error = Branch::current().unwrap_err();
        assert_eq!(error.kind(), BarrierErrorKind::NoContext);
        assert!(error.is_permanent());
    }
}
