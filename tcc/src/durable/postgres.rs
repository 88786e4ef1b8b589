//! [`PostgresLog`]: the log in PostgreSQL tables, shared by many coordinator
//! processes.
//!
//! A writer task owns the traffic to the database: every call is a request
//! on a channel; the writer takes every request queued, applies them in
//! order in one database transaction, a few multi-row statements per kind of
//! write, commits it (with `synchronous_commit` off when no request needs
//! durability), and only then replies (but to a `finish(Done)`, answered
//! once applied). Concurrent transactions therefore share statements and
//! commits. While a batch commits, on its connection, the writer applies
//! the next one on another, so that the callers of the next batch do not
//! also wait for the previous commit's WAL flush; a claim, a read or a
//! flush waits for it. With several writers ([`PostgresOptions::writers`]), each has
//! the transactions whose id hashes to it, and a claim, a repair listing or
//! a count first waits for every other writer to commit what it was sent
//! before.
//!
//! Each transaction is one row; a batch's writes are, per segment of the
//! batch: one `INSERT ... SELECT FROM unnest(...)` of the begun rows
//! (`ON CONFLICT DO NOTHING`: a begin of an id another coordinator began
//! meanwhile is a [`Duplicate`](LogErrorKind::Duplicate), the rest of the
//! batch goes through), one
//! `UPDATE ... FROM unnest(...)` of the rows decided, noted, released,
//! renewed or ended in repair, one `DELETE` of the finished, one `INSERT`
//! of their outcomes and one pruning `DELETE`, sent pipelined. A segment is
//! a run of such writes; a claim or a read between them is a statement of
//! its own, after the writes before it.
//!
//! Fencing: before applying its writes, a batch locks the rows they touch
//! (`SELECT ... FOR NO KEY UPDATE`) and reads their epochs; a write under a
//! lease whose epoch is not the row's is refused
//! ([`Fenced`](LogErrorKind::Fenced)) and changes nothing. A claim takes
//! only rows no one has locked (`FOR UPDATE SKIP LOCKED`), so a claim and a
//! write of the previous owner never interleave: the write either commits
//! before the claim sees the row, or sees the claim's epoch.
//!
//! Deadlocks: every row any request of a batch touches is locked at the
//! batch's start, in one statement, in id order (a batch of one segment
//! locks them so when it loads them, which is the same statement); the
//! segments' reads then find them locked already. Two batches (of two coordinators) therefore
//! wait on each other in one order, never in a cycle, however their
//! segments interleave the same rows; a claim never waits (it skips locked
//! rows). Locking each segment's rows only when it came would hold the
//! first segment's rows while waiting for the next one's, and PostgreSQL
//! would abort one of two batches writing the same rows in opposite orders
//! (40P01), failing its every call. The batches run at READ COMMITTED
//! whatever the database's default: fencing rests on row locks, and at
//! REPEATABLE READ or SERIALIZABLE a batch that waited for a row another
//! committed meanwhile would fail (40001) instead of reading it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{ClientWrapper, Object, Pool};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::IsolationLevel;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::rules::{Counted, Unreadable};
use super::{
    Decision, End, Filter, Intent, Lease, Leases, Log, LogError, LogErrorKind, LogFuture,
    LogSummary, ParticipantEntry, PhaseProgress, Resolution, Status, StatusGroup,
    TransactionRecord, Unread,
};
use crate::{Phase, TransactionId};

/// The schema versions, in order: `MIGRATIONS[v]` takes a database from
/// version `v` to `v + 1`. A released version is never edited; a change is a
/// new entry.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE tcc_log_transactions (
    id         text        PRIMARY KEY,
    status     smallint    NOT NULL CHECK (status IN (0, 1, 2)),
    decision   smallint    CHECK (decision IN (0, 1)),
    epoch      bigint      NOT NULL,
    owner      text,
    expires    timestamptz NOT NULL,
    started_at timestamptz NOT NULL,
    -- The intent: participant i (from 1) is names[i], kinds[i], data[i].
    names      text[]      NOT NULL,
    kinds      text[]      NOT NULL,
    data       bytea[]     NOT NULL,
    -- Progress of participant i in phase p (1 Try, 2 Confirm, 3 Cancel) at
    -- 3 * (i - 1) + p.
    attempts   bigint[]    NOT NULL,
    succeeded  boolean[]   NOT NULL,
    errors     text[]      NOT NULL,
    -- Why the row cannot be read, once a claim set it aside (status 2):
    -- then nothing else in it is trusted.
    damage     text
-- Room in each page, so that decisions and notes update rows in place (HOT).
) WITH (fillfactor = 70);
-- For claims. No index names status or progress: a decision or a note then
-- updates its row in place (no index entry); needs_repair scans this table,
-- which holds only the transactions running and those needing repair.
CREATE INDEX tcc_log_expires ON tcc_log_transactions (expires);
CREATE TABLE tcc_log_outcomes (
    id          text        PRIMARY KEY,
    decision    smallint    NOT NULL CHECK (decision IN (0, 1)),
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    seq         bigint      GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX tcc_log_outcomes_seq ON tcc_log_outcomes (seq);
",
    "
-- When a row was decided, and when its phase 2 last gave up (needs repair);
-- an outcome's decision time, and who resolved it by hand and how. Without
-- defaults: adding them rewrites no row.
ALTER TABLE tcc_log_transactions
    ADD COLUMN decided_at timestamptz,
    ADD COLUMN ended_at   timestamptz;
ALTER TABLE tcc_log_outcomes
    ADD COLUMN decided_at  timestamptz,
    ADD COLUMN resolved_by text,
    ADD COLUMN note        text;
",
];

/// The columns a record is read from, in the order [`record_of`] reads them.
macro_rules! record_columns {
    () => {
        "id, status, decision, started_at, epoch, names, kinds, data, attempts, succeeded, errors, damage, decided_at, ended_at"
    };
}

/// The columns an outcome is read from, in the order [`outcome_of`] reads
/// them.
macro_rules! outcome_columns {
    () => {
        "id, decision, started_at, decided_at, finished_at, resolved_by, note"
    };
}

/// The schema version this version of tcc reads and writes.
const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// What to run, in every error about a missing or old schema.
const MIGRATE_HINT: &str = "run `PostgresLog::migrate(&pool)` (tcc::durable::PostgresLog) once, with the same `search_path`, or open with `PostgresLog::options().migrate(true)`";

/// How many requests one database transaction takes at most.
const MAX_BATCH: usize = 4096;

/// How many old outcomes one finished transaction may prune: more than one,
/// so that a lowered retention is caught up with.
const PRUNE_PER_OUTCOME: i64 = 8;

/// How many finished transactions keep their outcome unless told otherwise.
const DEFAULT_RETENTION: u64 = 100_000;

/// The longest age a listing passes on: 1,000 years.
const MAX_AGE_SECS: f64 = 1000.0 * 365.25 * 86_400.0;

/// How long a lease lasts unless told otherwise.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);

/// How to open a [`PostgresLog`]:
/// `PostgresLog::options().lease_ttl(Duration::from_secs(30)).open(pool)`.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    lease_ttl: Duration,
    retention: u64,
    owner: Option<String>,
    writers: usize,
    migrate: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            lease_ttl: DEFAULT_LEASE_TTL,
            retention: DEFAULT_RETENTION,
            owner: None,
            writers: 1,
            migrate: false,
        }
    }
}

impl PostgresOptions {
    /// How long a lease taken by this log lasts on the database's clock
    /// (default 60 s), from [`begin`](Log::begin),
    /// [`claim_unfinished`](Log::claim_unfinished), [`reopen`](Log::reopen)
    /// or the last [`renew`](Log::renew). Once it has passed, another
    /// coordinator's recovery may claim the transaction, and every later
    /// write of this one is refused ([`Fenced`](LogErrorKind::Fenced)). Make
    /// it longer than a transaction runs, or renew it.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How many finished transactions keep their outcome for
    /// [`Log::get`] (default 100,000), counted over every coordinator of the
    /// database. Beyond it the oldest are removed, a few at each later
    /// finish.
    pub fn retention(mut self, finished: u64) -> Self {
        self.retention = finished;
        self
    }

    /// The name this coordinator writes in the `owner` column of the rows it
    /// holds, for operators (default `pid-<process id>-<random>`). Fencing
    /// does not depend on it.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// How many writer tasks share the transactions (default 1), each
    /// applying its batches on connections of its own (two at most: one
    /// batch committing while the next is applied): a transaction's calls
    /// all go to one writer, so their order is kept. More writers use more
    /// of the database's cores; the pool should have two connections for
    /// each.
    pub fn writers(mut self, writers: usize) -> Self {
        self.writers = writers.max(1);
        self
    }

    /// Whether opening runs [`PostgresLog::migrate`] first (default
    /// false: an application that owns its schema changes runs it apart).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Opens the log on `pool`; see [`PostgresLog::open`].
    pub async fn open(self, pool: Pool) -> Result<PostgresLog, LogError> {
        PostgresLog::open_with(pool, self).await
    }

    /// Opens the log on a pool of its own, of one connection per writer and
    /// one more, to the database at `url`: a URL
    /// (`postgres://user:password@host:port/db?options=-csearch_path%3Dtcc`)
    /// or a `key=value` string, as [`tokio_postgres::Config`] parses them.
    /// The connections use no TLS (build a pool with a TLS connector and
    /// [`open`](PostgresOptions::open) it for that), give up connecting
    /// after 10 s unless the URL says otherwise, and are named `tcc-log` in
    /// `pg_stat_activity` unless it names them.
    ///
    /// Fails with [`Config`](LogErrorKind::Config) if `url` does not parse
    /// (the message does not repeat it: it may hold a password), with
    /// [`Io`](LogErrorKind::Io) if the database cannot be reached, and as
    /// [`open`](PostgresOptions::open) does.
    pub async fn connect(self, url: &str) -> Result<PostgresLog, LogError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|error| {
            LogError::new(
                LogErrorKind::Config,
                "the log's address is neither a `postgres://` URL nor a `key=value` connection string",
            )
            .with_source(error)
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("tcc-log");
        }
        let manager = deadpool_postgres::Manager::from_config(
            config,
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.writers + 1)
            .build()
            .map_err(|error| {
                LogError::new(LogErrorKind::Config, "cannot build the log's pool")
                    .with_source(error)
            })?;
        self.open(pool).await
    }
}

/// A [`Log`] in PostgreSQL tables, shared by many coordinator processes.
/// Cargo feature `postgres-log`.
///
/// Create its tables once with [`PostgresLog::migrate`] (idempotent: safe at
/// every start), then [`open`](PostgresLog::open) it on a deadpool-postgres
/// pool. The tables live in the first schema of the connections'
/// `search_path`. Every coordinator of one set of services opens a log on
/// the same database; each runs [`TransactionLog::recover`] now and then,
/// and finishes what the others left.
///
/// What it guarantees, as the embedded store: the intent is committed
/// before [`begin`](Log::begin) resolves (before any Try), the decision, a
/// compare-and-set on the transaction's row, before [`decide`](Log::decide)
/// resolves (before any Confirm or Cancel); notes and `finish(Done)` are
/// committed with `synchronous_commit` off, and reach the disk with the next
/// durable commit (PostgreSQL writes its WAL in order). Durable commits use
/// the connections' own `synchronous_commit`, which must not be `off`:
/// [`open`](PostgresLog::open) refuses a database whose connections have it
/// off, since an acknowledged decision could then be lost.
///
/// Leases: [`begin`](Log::begin), [`claim_unfinished`](Log::claim_unfinished)
/// and [`reopen`](Log::reopen) set the row's owner, bump its epoch (begin:
/// epoch 1) and set its expiry to the database's `now()` plus the lease's
/// time to live ([`PostgresOptions::lease_ttl`]); [`renew`](Log::renew)
/// pushes the expiry forward. [`claim_unfinished`](Log::claim_unfinished)
/// takes only rows whose lease expired on the database's clock, so the
/// coordinators' clocks never matter. While a transaction's phases run, the
/// engine renews its lease every third of the TTL ([`Log::lease_ttl`]); a
/// renewal that fails stops the transaction before its next phase call.
/// Every write under a lease is conditional on the row's epoch (the rows a
/// batch writes are locked and their epochs read first; a claim skips locked
/// rows): a coordinator that lost its lease (it
/// paused past its expiry and another claimed the transaction) can write
/// nothing, its calls fail with [`Fenced`](LogErrorKind::Fenced), and two
/// coordinators never decide one transaction differently.
///
/// What a crash leaves: a coordinator that dies holds its transactions
/// until their leases expire; then any coordinator's recovery claims them
/// and finishes them (presumed abort for the undecided). A database that
/// crashes keeps every durable write that resolved; lazy ones since the last
/// durable commit may be lost, which recovery repeats. A lost connection
/// fails the calls of the batch it carried (their writes were rolled back,
/// unless the connection broke during the commit itself: then they may have
/// landed, as after a crash) and the next batch takes a new connection from
/// the pool.
///
/// Reads ([`get`](Log::get), [`claim_unfinished`](Log::claim_unfinished)
/// ...) go through the writer too, so that a read sees every write sent
/// before it, including [`note`](Log::note)s that were not awaited. Another
/// coordinator sees a write once its batch is committed: a `finish(Done)`
/// resolves just before. [`needs_repair`](Log::needs_repair) scans the
/// unfinished transactions: meant for an operator, now and then.
///
/// Each writer holds up to two pooled connections: one while it applies a
/// batch, one while the batch before commits. Give the log a pool of its
/// own (two connections per writer), or one large enough that the
/// application cannot starve it; with fewer, batches wait for each other's
/// commits (nothing deadlocks: a commit waits for nothing but the disk).
///
/// # Tables
///
/// - `tcc_log_transactions`: one row per unfinished or repair-needing
///   transaction: `id` (the 32 hex digits of its [`TransactionId`]),
///   `status` (0 undecided, 1 decided, 2 needs repair), `decision` (0
///   confirm, 1 cancel), the lease (`epoch`, `owner`, `expires`),
///   `started_at`, `decided_at`, `ended_at` (when it last gave up, for one
///   needing repair), the intent (`names`, `kinds`, `data`, one element per
///   participant) and the progress (`attempts`, `succeeded`, `errors`: three
///   elements per participant, Try, Confirm, Cancel); `damage`, for a row
///   the log could not read, says why.
///
/// A row the log cannot read (edited by hand, say) fails only the calls
/// that touch it, with [`Corrupt`](LogErrorKind::Corrupt) naming its id. A
/// claim that picks one sets it aside (status 2, `damage` set) and returns
/// it once as [`Status::Unreadable`]; `needs_repair` and `get` show it so,
/// and `resolve` removes it, keeping no outcome.
/// - `tcc_log_outcomes`: `id`, `decision`, `started_at`, `decided_at`,
///   `finished_at` of finished transactions, and `resolved_by`, `note` for
///   one an operator resolved by hand; the oldest pruned beyond the
///   retention.
/// - `tcc_log_schema`: the schema's version (2; [`migrate`](PostgresLog::migrate)
///   upgrades version 1, which had none of the times and notes).
///
/// # Cancel safety
///
/// A call's request is sent when the call is made: dropping its future
/// before it resolves does not withdraw it (a `begin` may still be written;
/// its transaction is then left to recovery once its lease expires).
///
/// ```no_run
/// use deadpool_postgres::{Manager, Pool};
/// use tcc::durable::PostgresLog;
/// use tcc::TransactionLog;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config: tokio_postgres::Config = "host=/run/postgresql user=tcc dbname=orders".parse()?;
/// let pool = Pool::builder(Manager::new(config, tokio_postgres::NoTls)).max_size(8).build()?;
/// // Once per database (safe at every start, from many processes at once).
/// PostgresLog::migrate(&pool).await?;
/// let log = TransactionLog::new(PostgresLog::open(pool).await?);
/// log.recover().await?;
/// # Ok(())
/// # }
/// ```
///
/// [`TransactionLog::recover`]: crate::TransactionLog::recover
pub struct PostgresLog {
    writers: Vec<mpsc::UnboundedSender<Request>>,
    owner: Arc<str>,
    lease_ttl: Duration,
}

impl PostgresLog {
    /// Creates the log's tables in the first schema of the connection's
    /// `search_path`, or upgrades them to this version's schema. Idempotent:
    /// safe to call at every start, from several processes at once (they take
    /// turns on an advisory lock; each step runs in one transaction, so a
    /// crash leaves the old schema or the new one).
    ///
    /// Fails with [`LogErrorKind::Schema`] if the tables were written by a
    /// newer version of tcc, or tables of the same names exist that are not
    /// the log's; with [`Io`](LogErrorKind::Io) if the database cannot be
    /// reached.
    pub async fn migrate(pool: &Pool) -> Result<(), LogError> {
        let mut client = pool.get().await.map_err(pool_error)?;
        // READ COMMITTED whatever the default: each statement sees what a
        // migration that held the lock before committed (a snapshot taken
        // before the lock would not, and would create its tables again).
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(|e| sql_error("cannot migrate the log", e))?;
        let migrate_error = |e| sql_error("cannot migrate the log", e);
        tx.batch_execute(
            "SELECT pg_advisory_xact_lock(hashtext('tcc_log_schema'));
             CREATE TABLE IF NOT EXISTS tcc_log_schema (
                 singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                 version   integer NOT NULL
             );",
        )
        .await
        .map_err(migrate_error)?;
        let version: i32 = tx
            .query_opt("SELECT version FROM tcc_log_schema", &[])
            .await
            .map_err(|e| foreign_or(e, "cannot migrate the log"))?
            .map_or(0, |row| row.get(0));
        if version > SCHEMA_VERSION {
            return Err(newer(version));
        }
        for step in &MIGRATIONS[version as usize..] {
            tx.batch_execute(step)
                .await
                .map_err(|e| foreign_or(e, "cannot migrate the log"))?;
        }
        tx.execute(
            "INSERT INTO tcc_log_schema (version) VALUES ($1)
             ON CONFLICT (singleton) DO UPDATE SET version = excluded.version",
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(migrate_error)?;
        tx.commit().await.map_err(migrate_error)
    }

    /// Opens the log on `pool`, with the default options (leases of 60 s,
    /// 100,000 outcomes kept): checks the schema, then starts the writer
    /// task on the current tokio runtime.
    ///
    /// Fails with [`LogErrorKind::Schema`], saying to run
    /// [`migrate`](PostgresLog::migrate), if the database has no log tables
    /// or older ones, or tables of those names that are not the log's; with
    /// [`Io`](LogErrorKind::Io) if it cannot be reached. Panics outside a
    /// tokio runtime.
    pub async fn open(pool: Pool) -> Result<PostgresLog, LogError> {
        PostgresLog::open_with(pool, PostgresOptions::default()).await
    }

    /// Opens the log at `url` with the default options, on a pool of its
    /// own: see [`PostgresOptions::connect`].
    pub async fn connect(url: &str) -> Result<PostgresLog, LogError> {
        PostgresOptions::default().connect(url).await
    }

    /// Options for [`PostgresOptions::open`] and
    /// [`connect`](PostgresOptions::connect).
    pub fn options() -> PostgresOptions {
        PostgresOptions::default()
    }

    /// The name written in the `owner` column of the rows this log holds.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    async fn open_with(pool: Pool, options: PostgresOptions) -> Result<PostgresLog, LogError> {
        if options.lease_ttl.is_zero() {
            return Err(LogError::new(
                LogErrorKind::Config,
                "a lease TTL of zero would let any coordinator claim every transaction at once: give `PostgresOptions::lease_ttl` a length longer than a transaction's phases take",
            ));
        }
        if options.migrate {
            PostgresLog::migrate(&pool).await?;
        }
        check_schema(&pool).await?;
        check_durability(&pool).await?;
        let owner: Arc<str> = match options.owner {
            Some(owner) => owner.into(),
            None => format!(
                "pid-{}-{:08x}",
                std::process::id(),
                (TransactionId::generate().as_u128() >> 64) as u32
            )
            .into(),
        };
        let mut writers = Vec::with_capacity(options.writers);
        for _ in 0..options.writers {
            let (requests, inbox) = mpsc::unbounded_channel();
            let writer = Writer {
                pool: pool.clone(),
                owner: owner.to_string(),
                ttl_secs: options.lease_ttl.as_secs_f64(),
                retention: i64::try_from(options.retention).unwrap_or(i64::MAX),
            };
            tokio::spawn(writer.run(inbox));
            writers.push(requests);
        }
        Ok(PostgresLog {
            writers,
            owner,
            lease_ttl: options.lease_ttl,
        })
    }

    /// The writer of transaction `id`.
    fn writer(&self, id: TransactionId) -> &mpsc::UnboundedSender<Request> {
        let bits = id.as_u128();
        let mixed = ((bits >> 64) as u64 ^ bits as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.writers[((mixed >> 32) % self.writers.len() as u64) as usize]
    }

    /// Sends a request about transaction `id` to its writer and awaits the
    /// reply.
    fn call<T: Leases + Send + 'static>(
        &self,
        id: TransactionId,
        request: impl FnOnce(Reply<T>) -> Request,
    ) -> LogFuture<'_, T> {
        self.send(self.writer(id), request)
    }

    /// A call about no one transaction: it runs on the first writer once
    /// every other has committed what was sent to it before, so that it sees
    /// every write sent before it.
    fn call_after_all<T: Leases + Send + 'static>(
        &self,
        request: impl FnOnce(Reply<T>) -> Request + Send + 'static,
    ) -> LogFuture<'_, T> {
        let flushed: Vec<_> = self.writers[1..]
            .iter()
            .map(|writer| self.send(writer, Request::Flush))
            .collect();
        Box::pin(async move {
            for flush in flushed {
                flush.await?;
            }
            self.send(&self.writers[0], request).await
        })
    }

    /// Sends a request to a writer and awaits its reply; dropped unread,
    /// the reply's leases are given back ([`Unread`]).
    fn send<T: Leases + Send + 'static>(
        &self,
        writer: &mpsc::UnboundedSender<Request>,
        request: impl FnOnce(Reply<T>) -> Request,
    ) -> LogFuture<'_, T> {
        let (reply, answer) = oneshot::channel();
        let sent = writer.send(request(reply)).map_err(|_| closed());
        // Outside the async block, so that it guards the reply even if the
        // block is dropped before it is first polled.
        let answer = Unread::new(self, answer);
        Box::pin(async move {
            sent?;
            answer.await.map_err(|_| closed())?
        })
    }
}

impl fmt::Debug for PostgresLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLog")
            .field("owner", &self.owner)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

impl Log for PostgresLog {
    fn begin(&self, intent: &Intent) -> LogFuture<'_, Lease> {
        let intent = intent.clone();
        self.call(intent.id, |reply| Request::Begin(intent, reply))
    }

    fn decide(&self, lease: &Lease, decision: Decision) -> LogFuture<'_, Decision> {
        let lease = lease.clone();
        self.call(lease.id, |reply| Request::Decide(lease, decision, reply))
    }

    fn note(&self, lease: &Lease, participant: u32, phase: Phase, progress: PhaseProgress) {
        // A stopped writer fails every later awaited call, which says so.
        let _ =
            self.writer(lease.id)
                .send(Request::Note(lease.clone(), participant, phase, progress));
    }

    fn finish(&self, lease: &Lease, end: End) -> LogFuture<'_, ()> {
        let lease = lease.clone();
        self.call(lease.id, |reply| Request::Finish(lease, end, reply))
    }

    fn claim_unfinished(&self, limit: usize) -> LogFuture<'_, Vec<(Lease, TransactionRecord)>> {
        self.call_after_all(move |reply| Request::Claim(limit, reply))
    }

    fn release(&self, lease: &Lease) {
        let _ = self.writer(lease.id).send(Request::Release(lease.clone()));
    }

    fn renew(&self, lease: &Lease) -> LogFuture<'_, ()> {
        let lease = lease.clone();
        self.call(lease.id, |reply| Request::Renew(lease, reply))
    }

    fn lease_ttl(&self) -> Option<Duration> {
        Some(self.lease_ttl)
    }

    fn get(&self, id: TransactionId) -> LogFuture<'_, Option<TransactionRecord>> {
        self.call(id, |reply| Request::Get(id, reply))
    }

    fn needs_repair(&self, limit: usize) -> LogFuture<'_, Vec<TransactionRecord>> {
        self.call_after_all(move |reply| Request::NeedsRepair(limit, reply))
    }

    fn reopen(&self, id: TransactionId) -> LogFuture<'_, Option<(Lease, TransactionRecord)>> {
        self.call(id, |reply| Request::Reopen(id, reply))
    }

    fn requeue(&self, id: TransactionId) -> LogFuture<'_, bool> {
        self.call(id, |reply| Request::Requeue(id, reply))
    }

    fn resolve(&self, id: TransactionId, resolution: &Resolution) -> LogFuture<'_, bool> {
        let resolution = resolution.clone();
        self.call(id, |reply| Request::Resolve(id, resolution, reply))
    }

    fn unfinished_count(&self) -> LogFuture<'_, u64> {
        self.call_after_all(|reply| Request::Count(Counted::Unfinished, reply))
    }

    fn needs_repair_count(&self) -> LogFuture<'_, u64> {
        self.call_after_all(|reply| Request::Count(Counted::NeedsRepair, reply))
    }

    fn list(&self, filter: &Filter) -> LogFuture<'_, Vec<TransactionRecord>> {
        let filter = filter.clone();
        self.call_after_all(move |reply| Request::List(filter, reply))
    }

    fn summary(&self) -> LogFuture<'_, LogSummary> {
        self.call_after_all(Request::Summary)
    }
}

type Reply<T> = oneshot::Sender<Result<T, LogError>>;

/// One call of [`Log`], as the writer receives it.
enum Request {
    Begin(Intent, Reply<Lease>),
    Decide(Lease, Decision, Reply<Decision>),
    Note(Lease, u32, Phase, PhaseProgress),
    Finish(Lease, End, Reply<()>),
    Release(Lease),
    Renew(Lease, Reply<()>),
    Claim(usize, Reply<Vec<(Lease, TransactionRecord)>>),
    Get(TransactionId, Reply<Option<TransactionRecord>>),
    NeedsRepair(usize, Reply<Vec<TransactionRecord>>),
    Reopen(TransactionId, Reply<Option<(Lease, TransactionRecord)>>),
    Requeue(TransactionId, Reply<bool>),
    Resolve(TransactionId, Resolution, Reply<bool>),
    Count(Counted, Reply<u64>),
    List(Filter, Reply<Vec<TransactionRecord>>),
    Summary(Reply<LogSummary>),
    /// Answered once everything sent before it is committed.
    Flush(Reply<()>),
}

impl Request {
    /// Whether its caller may only hear back once the batch is on disk.
    ///
    /// Claims too, unlike the embedded store's: a claim lost in a database
    /// crash would give its epoch to the next claimer as well, and the first
    /// one's later writes would then pass for the second's.
    fn durable(&self) -> bool {
        matches!(
            self,
            Request::Begin(..)
                | Request::Decide(..)
                | Request::Claim(..)
                | Request::Finish(_, End::NeedsRepair, _)
                | Request::Renew(..)
                | Request::Reopen(..)
                | Request::Requeue(..)
                | Request::Resolve(..)
        )
    }

    /// The transaction a write under a lease (or a begin) concerns; `None`
    /// for the calls that run as statements of their own.
    fn row(&self) -> Option<TransactionId> {
        match self {
            Request::Begin(intent, _) => Some(intent.id),
            Request::Decide(lease, ..)
            | Request::Note(lease, ..)
            | Request::Finish(lease, ..)
            | Request::Release(lease)
            | Request::Renew(lease, _) => Some(lease.id),
            _ => None,
        }
    }

    /// The row it locks: the row of a write under a lease or a begin, or
    /// the row an operator's call changes.
    fn locks(&self) -> Option<TransactionId> {
        match self {
            Request::Reopen(id, _) | Request::Requeue(id, _) | Request::Resolve(id, ..) => {
                Some(*id)
            }
            other => other.row(),
        }
    }

    /// Gives a request the writer did not apply the batch's failure.
    fn abandon(self, error: &LogError) {
        fn fail<T>(reply: Reply<T>, error: &LogError) {
            let _ = reply.send(Err(error.copy_for_caller()));
        }
        match self {
            Request::Begin(_, reply) => fail(reply, error),
            Request::Decide(_, _, reply) => fail(reply, error),
            Request::Finish(_, _, reply) | Request::Renew(_, reply) => fail(reply, error),
            Request::Claim(_, reply) => fail(reply, error),
            Request::Get(_, reply) => fail(reply, error),
            Request::NeedsRepair(_, reply) => fail(reply, error),
            Request::Reopen(_, reply) => fail(reply, error),
            Request::Requeue(_, reply) | Request::Resolve(_, _, reply) => fail(reply, error),
            Request::Count(_, reply) => fail(reply, error),
            Request::List(_, reply) => fail(reply, error),
            Request::Summary(reply) => fail(reply, error),
            Request::Flush(reply) => fail(reply, error),
            Request::Note(..) | Request::Release(_) => {}
        }
    }
}

/// A reply held until its batch is committed: it then sends its result, or
/// the commit's failure.
/// A reply whose caller went away meanwhile leaves the leases it carried in
/// the last argument, for the writer to give back.
type Pending = Box<dyn FnOnce(Option<&LogError>, &mut Vec<Lease>) + Send>;

fn hold<T: Leases + Send + 'static>(
    pending: &mut Vec<Pending>,
    reply: Reply<T>,
    result: Result<T, LogError>,
) {
    pending.push(Box::new(
        move |failed: Option<&LogError>, orphans: &mut Vec<Lease>| {
            let answer = match failed {
                Some(error) => Err(error.copy_for_caller()),
                None => result,
            };
            if let Err(Ok(answer)) = reply.send(answer) {
                orphans.extend(answer.leases().into_iter().cloned());
            }
        },
    ));
}

/// Holds a reply with its result; a failed statement fails the batch.
fn keep<T: Leases + Send + 'static>(
    pending: &mut Vec<Pending>,
    reply: Reply<T>,
    result: Result<T, LogError>,
) -> Result<(), LogError> {
    let failed = result.as_ref().err().map(LogError::copy_for_caller);
    hold(pending, reply, result);
    failed.map_or(Ok(()), Err)
}

/// How many transactions are unfinished or need repair, or need repair.
async fn count(tx: &InTransaction, counted: Counted) -> Result<u64, LogError> {
    let statement = match counted {
        Counted::Unfinished => "SELECT count(*) FROM tcc_log_transactions",
        Counted::NeedsRepair => "SELECT count(*) FROM tcc_log_transactions WHERE status = 2",
    };
    let rows = query(tx, statement, &[], read_error).await?;
    let count: i64 = rows[0].try_get(0).map_err(read_error)?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// The leases a finished batch task left to give back; none if it
/// panicked (their leases then expire).
fn joined(task: Result<Vec<Lease>, tokio::task::JoinError>) -> Vec<Lease> {
    task.unwrap_or_else(|error| {
        tracing::error!(%error, "a batch of the PostgreSQL log panicked");
        Vec::new()
    })
}

/// The replies of one batch.
#[derive(Default)]
struct Replies {
    /// Sent once the batch is committed.
    held: Vec<Pending>,
    /// `finish(Done)`: sent once its statements ran, before the commit.
    early: Vec<Reply<()>>,
    /// The leases those `finish(Done)` ended: if the batch then fails, the
    /// rows are back, decided, under leases their callers no longer hold.
    ended: Vec<Lease>,
}

impl Replies {
    fn fail(self, error: &LogError) {
        for reply in self.early {
            let _ = reply.send(Err(error.copy_for_caller()));
        }
        // A failed batch took no lease: nothing to give back.
        for reply in self.held {
            reply(Some(error), &mut Vec::new());
        }
    }
}

struct Writer {
    pool: Pool,
    owner: String,
    ttl_secs: f64,
    retention: i64,
}

impl Writer {
    async fn run(self, mut inbox: mpsc::UnboundedReceiver<Request>) {
        let writer = Arc::new(self);
        let mut batch = Vec::new();
        // Leases of callers that went away while their batch ran: given
        // back first thing in a later batch, before any claim in it.
        let mut orphans = Vec::new();
        // The batch whose statements ran and whose commit may still be
        // under way, on a connection of its own: the next batch's
        // statements run meanwhile, so that its callers need not wait for
        // that commit's WAL flush as well. Their writes never depend on
        // what it wrote: a write under a lease comes after the reply that
        // gave the lease, sent only once its batch committed (a row it
        // locked is waited for until then), and a request that reads or
        // claims waits for it to commit first. Two batches at most: one
        // committing, one running. Measured by `benches/postgres_log.rs`
        // (issue 17): see BENCHMARKS.md.
        let mut committing: Option<tokio::task::JoinHandle<Vec<Lease>>> = None;
        // Ends once every handle is dropped and every request sent applied.
        while inbox.recv_many(&mut batch, MAX_BATCH).await > 0 {
            // A claim, a read or a flush sees every write sent before it,
            // committed; and the leases given back before a claim.
            if batch.iter().any(|request| request.row().is_none())
                && let Some(before) = committing.take()
            {
                orphans.extend(joined(before.await));
            }
            let giving_back: Vec<Lease> = std::mem::take(&mut orphans);
            batch.splice(0..0, giving_back.iter().cloned().map(Request::Release));
            // Every row the batch writes, locked first in id order; but a
            // batch of one segment (no claim or read in it, the common case
            // under load) locks the same rows in the same order when it
            // loads them, and this statement would only cost a round trip
            // (about 15 % of the throughput of benches/postgres_log.rs).
            let one_segment = batch.iter().all(|request| request.row().is_some());
            let mut rows = Vec::new();
            if !one_segment {
                rows.extend(
                    batch
                        .iter()
                        .filter_map(Request::locks)
                        .map(|id| id.to_string()),
                );
                rows.sort_unstable();
                rows.dedup();
            }
            let requests = std::mem::take(&mut batch);
            let (ran, statements_ran) = oneshot::channel();
            let task = tokio::spawn(writer.clone().batch(rows, requests, giving_back, ran));
            // Dropped unsent if the batch failed before its commit.
            let _ = statements_ran.await;
            if let Some(before) = committing.replace(task) {
                orphans.extend(joined(before.await));
            }
        }
        if let Some(last) = committing {
            joined(last.await);
        }
    }

    /// Applies one batch, commits it and answers its callers; returns the
    /// leases to give back in a later batch. Sends on `ran` once the
    /// statements ran, before the commit.
    async fn batch(
        self: Arc<Self>,
        rows: Vec<String>,
        batch: Vec<Request>,
        giving_back: Vec<Lease>,
        ran: oneshot::Sender<()>,
    ) -> Vec<Lease> {
        let mut orphans = Vec::new();
        let durable = batch.iter().any(Request::durable);
        let (started, size) = (std::time::Instant::now(), batch.len());
        let mut requests = batch.into_iter();
        let mut replies = Replies::default();
        match self
            .apply(&rows, &mut requests, durable, &mut replies, ran)
            .await
        {
            Ok(()) => {
                crate::metrics::log_committed("postgres", started.elapsed(), size);
                for reply in replies.held {
                    reply(None, &mut orphans);
                }
            }
            Err(error) => {
                tracing::error!(%error, "a batch of the PostgreSQL log failed");
                requests.for_each(|r| r.abandon(&error));
                // Ends told before a commit that failed: the rows are
                // back, decided, held by no one. Given back at once, so
                // that recovery finishes them without waiting out their
                // leases. (A release that finds the epoch moved, its
                // caller having given the lease back itself, does
                // nothing.)
                orphans.append(&mut replies.ended);
                // And what this batch was giving back, rolled back with
                // it: tried again with the next.
                orphans.extend(giving_back);
                replies.fail(&error);
            }
        }
        orphans
    }

    /// Applies a batch in one database transaction and commits it; `rows`
    /// are the ids of the rows its requests touch, in order.
    async fn apply(
        &self,
        rows: &[String],
        requests: &mut impl Iterator<Item = Request>,
        durable: bool,
        replies: &mut Replies,
        ran: oneshot::Sender<()>,
    ) -> Result<(), LogError> {
        let batch = Batch(Some(self.pool.get().await.map_err(pool_error)?));
        self.apply_on(batch.connection(), rows, requests, durable, replies, ran)
            .await?;
        batch.done();
        Ok(())
    }

    /// [`apply`](Self::apply), on the batch's connection `tx`.
    async fn apply_on(
        &self,
        tx: &InTransaction,
        rows: &[String],
        requests: &mut impl Iterator<Item = Request>,
        durable: bool,
        replies: &mut Replies,
        ran: oneshot::Sender<()>,
    ) -> Result<(), LogError> {
        // READ COMMITTED, whatever the database's default (see the module's
        // docs): a statement that waited for a row reads it as committed.
        // With lazy writes only, committed without waiting for the WAL
        // flush: the next durable commit carries them to disk (the WAL is
        // written in order), a database crash before it loses them, and
        // recovery repeats what they recorded.
        let mut begun = Ahead::send(
            tx,
            if durable {
                "BEGIN ISOLATION LEVEL READ COMMITTED"
            } else {
                "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL synchronous_commit TO off"
            },
        )
        .await;
        // Every row of the batch locked now, in one statement, in id order
        // (see the module's docs: no deadlock between two batches). A row
        // another coordinator begins after this is not locked here; its
        // segment's read locks it (a duplicate begin, nothing written to
        // it). That read, and an insert waiting for another's uncommitted
        // insert of the same id, are the only waits left after this
        // statement: a cycle through them needs two coordinators beginning
        // the same ids at once, in opposite orders across segments.
        if !rows.is_empty() {
            let params: [&(dyn ToSql + Sync); 1] = [&rows];
            let locked = query(
                tx,
                "SELECT 1 FROM tcc_log_transactions WHERE id = ANY($1)
                 ORDER BY id FOR NO KEY UPDATE",
                &params,
                write_error,
            );
            let begin = async { begun.answered().await.map_err(write_error) };
            futures_util::future::try_join(locked, begin).await?;
        }
        let mut segment = Segment::default();
        for request in requests.by_ref() {
            if request.row().is_some() {
                segment.requests.push(request);
                continue;
            }
            // A call with a statement of its own sees every write before it.
            if let Err(error) = self
                .flush(tx, &mut begun, &mut segment, replies, Then::GoOn)
                .await
            {
                request.abandon(&error);
                return Err(error);
            }
            if let Err(error) = begun.answered().await {
                let error = write_error(error);
                request.abandon(&error);
                return Err(error);
            }
            let gone = self.direct(tx, request, &mut replies.held).await?;
            segment
                .requests
                .extend(gone.into_iter().map(Request::Release));
        }
        let mut commit = match self
            .flush(tx, &mut begun, &mut segment, replies, Then::Commit)
            .await?
        {
            Some(commit) => commit,
            None => Ahead::send(tx, "COMMIT").await,
        };
        let _ = ran.send(());
        // The commit, durable if any request of the batch needs it: every
        // intent, decision, repair state and lease change of the batch is
        // then on disk, and only then does a caller of those hear back. A
        // crash (of this process or of the database) before it leaves the
        // tables as the last commit left them: no caller was told of a
        // durable write of this batch, so none ran a Try or a phase 2
        // because of it. (A statement of the batch that failed has failed
        // the batch before this: PostgreSQL answers the commit of a failed
        // transaction by rolling it back.)
        commit
            .answered()
            .await
            .map_err(|e| sql_error("cannot commit to the log", e))
    }

    /// Applies the writes gathered in `segment` under the rules, as a few
    /// multi-row statements, and answers each `finish(Done)`. With
    /// [`Then::Commit`], sends the commit behind its writes and returns it,
    /// its answer still to wait for.
    async fn flush<'t>(
        &self,
        tx: &'t InTransaction,
        begun: &mut Ahead<'t>,
        segment: &mut Segment,
        replies: &mut Replies,
        then: Then,
    ) -> Result<Option<Ahead<'t>>, LogError> {
        if segment.requests.is_empty() {
            return Ok(None);
        }
        let requests = std::mem::take(&mut segment.requests);
        // BEGIN's answer read with the load's (it comes first: a connection
        // holds little of an answer no one reads before it stops reading
        // the next ones), and checked before any write.
        let begin = async { begun.answered().await.map_err(write_error) };
        let loaded = futures_util::future::try_join(Rows::load(tx, &requests), begin);
        let mut rows = match loaded.await.map(|(rows, ())| rows) {
            Ok(rows) => rows,
            Err(error) => {
                requests.into_iter().for_each(|r| r.abandon(&error));
                return Err(error);
            }
        };
        for request in requests {
            match rows.unreadable(&request) {
                Some(error) => request.abandon(&error),
                None => rows.apply(request, replies),
            }
        }
        let begins = std::mem::take(&mut rows.begins);
        let (inserted, commit) = match rows.write(tx, self, then).await {
            Ok(written) => written,
            Err(error) => {
                for (_, reply, _) in begins {
                    let _ = reply.send(Err(error.copy_for_caller()));
                }
                return Err(error);
            }
        };
        for (id, reply, result) in begins {
            // Not inserted: another coordinator began the same id (or has
            // its outcome) since this segment read the rows.
            let result = result.and_then(|lease| match inserted.contains(&id) {
                true => Ok(lease),
                false => Err(duplicate(id)),
            });
            hold(&mut replies.held, reply, result);
        }
        for reply in replies.early.drain(..) {
            // Lazy, so its caller need not wait for the commit: it hears
            // back once the end is written in the transaction. Were the
            // commit to fail, the end would be lost as in a crash, and
            // recovery would finish the transaction again.
            let _ = reply.send(Ok(()));
        }
        Ok(commit)
    }

    /// A call that runs as a statement of its own: claims, reads, and the
    /// operator's calls. Returns the leases it took for a caller that is
    /// gone already (its future dropped): no one will drive those
    /// transactions, so they are given back in this batch, before any
    /// later claim.
    async fn direct(
        &self,
        tx: &InTransaction,
        request: Request,
        held: &mut Vec<Pending>,
    ) -> Result<Vec<Lease>, LogError> {
        fn gone<T: Leases>(reply: &Reply<T>, result: &Result<T, LogError>) -> Vec<Lease> {
            match result {
                Ok(answer) if reply.is_closed() => answer.leases().into_iter().cloned().collect(),
                _ => Vec::new(),
            }
        }
        match request {
            Request::Claim(limit, reply) => {
                let result = self.claim(tx, limit).await;
                let given_back = gone(&reply, &result);
                keep(held, reply, result).map(|()| given_back)
            }
            Request::Reopen(id, reply) => {
                let result = self.reopen(tx, id).await;
                let given_back = gone(&reply, &result);
                keep(held, reply, result).map(|()| given_back)
            }
            Request::Get(id, reply) => keep(held, reply, get(tx, id).await).map(|()| Vec::new()),
            Request::NeedsRepair(limit, reply) => {
                let result = self.needs_repair(tx, limit).await;
                keep(held, reply, result).map(|()| Vec::new())
            }
            Request::Requeue(id, reply) => {
                let result = requeue(tx, id).await;
                keep(held, reply, result).map(|()| Vec::new())
            }
            Request::Resolve(id, resolution, reply) => {
                let result = self.resolve(tx, id, resolution).await;
                keep(held, reply, result).map(|()| Vec::new())
            }
            Request::Count(counted, reply) => {
                let result = count(tx, counted).await;
                keep(held, reply, result).map(|()| Vec::new())
            }
            Request::List(filter, reply) => {
                let result = list(tx, &filter).await;
                keep(held, reply, result).map(|()| Vec::new())
            }
            Request::Summary(reply) => {
                let result = summary(tx).await;
                keep(held, reply, result).map(|()| Vec::new())
            }
            Request::Flush(reply) => keep(held, reply, Ok(())).map(|()| Vec::new()),
            other => unreachable!("{} is applied in a segment", other.name()),
        }
    }

    async fn needs_repair(
        &self,
        tx: &InTransaction,
        limit: usize,
    ) -> Result<Vec<TransactionRecord>, LogError> {
        let rows = query(
            tx,
            concat!(
                "SELECT ",
                record_columns!(),
                // Damaged rows first (false sorts before true).
                " FROM tcc_log_transactions WHERE status = 2
                  ORDER BY damage IS NULL, started_at, id LIMIT $1"
            ),
            &[&limit_param(limit)],
            read_error,
        )
        .await?;
        // A row that cannot be read is listed as unreadable, never fails
        // the listing.
        Ok(rows
            .iter()
            .filter_map(|row| match record_of(row) {
                Ok((_, record)) => Some(record),
                Err((Some(id), error)) => Some(unreadable(id, &error)),
                Err((None, error)) => {
                    tracing::error!(%error, "a row needing repair has no transaction id");
                    None
                }
            })
            .collect())
    }

    async fn reopen(
        &self,
        tx: &InTransaction,
        id: TransactionId,
    ) -> Result<Option<(Lease, TransactionRecord)>, LogError> {
        // Durable (the batch is). A crash before the commit: still
        // needing repair, the operator reopens it again. After:
        // decided and held by this coordinator, so recovery drives it
        // once the lease expires if this process dies.
        let rows = query(
            tx,
            concat!(
                "UPDATE tcc_log_transactions
             SET status = 1, epoch = epoch + 1, owner = $2,
                 expires = now() + make_interval(secs => $3)
             WHERE id = $1 AND status = 2 AND damage IS NULL
             RETURNING ",
                record_columns!()
            ),
            &[&id.to_string(), &self.owner, &self.ttl_secs],
            write_error,
        )
        .await?;
        rows.first()
            .map(|row| record_of(row).map_err(|(_, error)| error))
            .transpose()
    }

    async fn resolve(
        &self,
        tx: &InTransaction,
        id: TransactionId,
        resolution: Resolution,
    ) -> Result<bool, LogError> {
        // Durable (the batch is). A crash before the commit: still
        // needing repair. After: its outcome only, with the operator's
        // account.
        let rows = query(
            tx,
            "DELETE FROM tcc_log_transactions WHERE id = $1 AND status = 2
             RETURNING decision, started_at, damage IS NOT NULL, decided_at",
            &[&id.to_string()],
            write_error,
        )
        .await?;
        Ok(match rows.first() {
            // Set aside unreadable: no outcome, its decision is unknown.
            Some(row) if row.try_get(2).map_err(read_error)? => true,
            Some(row) => {
                let outcome = OutcomeRow {
                    id: id.to_string(),
                    decision: row.try_get(0).map_err(read_error)?,
                    started_at: Some(row.try_get(1).map_err(read_error)?),
                    decided_at: row.try_get(3).map_err(read_error)?,
                };
                let outcomes = [outcome];
                let mut pipeline = Pipeline::default();
                self.add_outcomes(&mut pipeline, &outcomes);
                pipeline.push(
                    "UPDATE tcc_log_outcomes SET resolved_by = $2, note = $3 WHERE id = $1",
                    vec![
                        Box::new(id.to_string()),
                        Box::new(resolution.by),
                        Box::new(resolution.note),
                    ],
                );
                pipeline.run(tx, Then::GoOn).await?;
                true
            }
            None => false,
        })
    }

    /// Takes up to `limit` transactions whose lease expired on the
    /// database's clock, skipping rows another coordinator has locked.
    async fn claim(
        &self,
        tx: &InTransaction,
        limit: usize,
    ) -> Result<Vec<(Lease, TransactionRecord)>, LogError> {
        // Durable (the batch is). A crash before the commit: the rows stay
        // as they were, claimable once their leases expire. After: claimed
        // under this epoch, which no later claim can hand out again.
        let rows = query(
            tx,
            // MATERIALIZED: the rows are picked (and locked) once, so the
            // limit holds whatever plan the update gets.
            "WITH picked AS MATERIALIZED (
                 SELECT id FROM tcc_log_transactions
                 WHERE status < 2 AND expires <= now()
                 ORDER BY expires
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             UPDATE tcc_log_transactions t
             SET epoch = t.epoch + 1, owner = $2,
                 expires = now() + make_interval(secs => $3)
             FROM picked
             WHERE t.id = picked.id
             RETURNING t.id, t.status, t.decision, t.started_at, t.epoch, t.names, t.kinds,
                       t.data, t.attempts, t.succeeded, t.errors, t.damage, t.decided_at,
                       t.ended_at",
            &[&limit_param(limit), &self.owner, &self.ttl_secs],
            write_error,
        )
        .await?;
        // Each row on its own: one that cannot be read is set aside, never
        // fails the claim (the next claim would pick it first again).
        let mut claimed = Vec::with_capacity(rows.len());
        let (mut damaged, mut reasons) = (Vec::new(), Vec::new());
        for row in &rows {
            match record_of(row) {
                Ok(taken) => claimed.push(taken),
                Err((id, error)) => {
                    tracing::error!(%error, "an unreadable row is set aside as needing repair");
                    let Ok(raw) = row.try_get::<_, String>(0) else {
                        continue;
                    };
                    damaged.push(raw);
                    reasons.push(error.to_string());
                    // Epoch 0 is no row's: every write under it is fenced.
                    if let Some(id) = id {
                        claimed.push((Lease { id, epoch: 0 }, unreadable(id, &error)));
                    }
                }
            }
        }
        if !damaged.is_empty() {
            // Durable (the batch is). A crash before the commit: still
            // unfinished, and the next claim sets it aside again. After:
            // listed by needs_repair, never driven (its decision cannot be
            // trusted); the epoch moves, so no lease on it writes again.
            query(
                tx,
                "UPDATE tcc_log_transactions t
                 SET status = 2, owner = NULL, epoch = t.epoch + 1, expires = now(),
                     damage = u.reason
                 FROM unnest($1::text[], $2::text[]) AS u(id, reason)
                 WHERE t.id = u.id",
                &[&damaged, &reasons],
                write_error,
            )
            .await?;
        }
        Ok(claimed)
    }

    /// Keeps the outcomes of finished transactions, then prunes the oldest
    /// beyond the retention, a few for each added.
    fn add_outcomes<'a>(&self, pipeline: &mut Pipeline<'a>, outcomes: &'a [OutcomeRow]) {
        if outcomes.is_empty() {
            return;
        }
        let ids: Vec<&str> = outcomes.iter().map(|o| o.id.as_str()).collect();
        let decisions: Vec<i16> = outcomes.iter().map(|o| o.decision).collect();
        let started: Vec<Option<SystemTime>> = outcomes.iter().map(|o| o.started_at).collect();
        let decided: Vec<Option<SystemTime>> = outcomes.iter().map(|o| o.decided_at).collect();
        pipeline.push(
            "INSERT INTO tcc_log_outcomes (id, decision, started_at, decided_at, finished_at)
             SELECT u.id, u.decision, coalesce(u.started_at, now()), u.decided_at, now()
             FROM unnest($1::text[], $2::smallint[], $3::timestamptz[], $4::timestamptz[])
                 AS u(id, decision, started_at, decided_at)",
            vec![
                Box::new(ids),
                Box::new(decisions),
                Box::new(started),
                Box::new(decided),
            ],
        );
        // The newest outcome's number less the retention: what is older goes.
        // Numbers lost to rolled-back transactions make it keep a few less.
        // SKIP LOCKED: two coordinators pruning at once never wait on each
        // other.
        let most = PRUNE_PER_OUTCOME * outcomes.len() as i64;
        pipeline.push(
            "DELETE FROM tcc_log_outcomes WHERE seq IN (
                 SELECT seq FROM tcc_log_outcomes
                 WHERE seq <= (SELECT max(seq) FROM tcc_log_outcomes) - $1
                 ORDER BY seq LIMIT $2
                 FOR UPDATE SKIP LOCKED)",
            vec![Box::new(self.retention), Box::new(most)],
        );
    }
}

impl Request {
    fn name(&self) -> &'static str {
        match self {
            Request::Begin(..) => "begin",
            Request::Decide(..) => "decide",
            Request::Note(..) => "note",
            Request::Finish(..) => "finish",
            Request::Release(..) => "release",
            Request::Renew(..) => "renew",
            Request::Claim(..) => "claim_unfinished",
            Request::Get(..) => "get",
            Request::NeedsRepair(..) => "needs_repair",
            Request::Reopen(..) => "reopen",
            Request::Requeue(..) => "requeue",
            Request::Resolve(..) => "resolve",
            Request::Count(Counted::Unfinished, _) => "unfinished_count",
            Request::Count(Counted::NeedsRepair, _) => "needs_repair_count",
            Request::List(..) => "list",
            Request::Summary(..) => "summary",
            Request::Flush(..) => "flush",
        }
    }
}

/// Consecutive writes of a batch under leases (and begins): applied together.
#[derive(Default)]
struct Segment {
    requests: Vec<Request>,
}

/// What a segment does to a row's lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// Unchanged.
    Keep,
    /// Now plus the lease's time to live: taken or renewed.
    Extend,
    /// Now: given back, claimable at once.
    Expire,
}

impl Expiry {
    fn code(self) -> i16 {
        match self {
            Expiry::Keep => 0,
            Expiry::Extend => 1,
            Expiry::Expire => 2,
        }
    }
}

/// A transaction's row as a segment sees it.
struct RowState {
    status: i16,
    decision: Option<i16>,
    epoch: i64,
    owner: Option<String>,
    /// `None` for a row begun in this segment: the database's `now()`.
    started_at: Option<SystemTime>,
    /// When it was decided, as loaded (a decision written in this segment
    /// is timed by the database, in the update).
    decided_at: Option<SystemTime>,
    /// Each participant's progress in each phase.
    progress: Vec<[PhaseProgress; 3]>,
    /// The participants of a row begun in this segment.
    intent: Vec<ParticipantEntry>,
    expiry: Expiry,
    /// Begun in this segment: inserted, not updated.
    new: bool,
    changed: bool,
    /// Notes changed its progress.
    noted: bool,
}

/// The rows a segment's writes touch, locked and read at its start, then
/// changed in memory by the rules, request by request, in order; then
/// written.
struct Rows {
    rows: HashMap<TransactionId, RowState>,
    /// Rows that cannot be read: the requests to them fail with this.
    damaged: HashMap<TransactionId, LogError>,
    /// The begins of the segment, answered once the insert says which rows
    /// it wrote.
    begins: Vec<(TransactionId, Reply<Lease>, Result<Lease, LogError>)>,
    /// Ids with an outcome (a begin of one is a duplicate).
    finished: HashSet<TransactionId>,
    /// Rows deleted that the database has.
    deleted: Vec<TransactionId>,
    outcomes: Vec<OutcomeRow>,
}

/// A finished transaction's outcome, to be kept.
struct OutcomeRow {
    id: String,
    decision: i16,
    started_at: Option<SystemTime>,
    decided_at: Option<SystemTime>,
}

const UNDECIDED: i16 = 0;
const DECIDED: i16 = 1;
const NEEDS_REPAIR: i16 = 2;

/// The compare-and-set of a decision on a row this writer holds: the one
/// already there, if any, else `decision`.
fn decide(row: &mut RowState, decision: Decision) -> Result<Decision, LogError> {
    match row.decision {
        Some(existing) if row.status != UNDECIDED => decision_of(existing),
        _ => {
            // The decision (durable: the batch is). A crash before the
            // commit: still undecided, so recovery cancels; no phase 2 ran,
            // as the caller waits for the commit. After: recovery drives
            // this decision to its end, never the other one.
            row.status = DECIDED;
            row.decision = Some(decision_code(decision));
            Ok(decision)
        }
    }
}

fn decision_code(decision: Decision) -> i16 {
    match decision {
        Decision::Confirm => 0,
        Decision::Cancel => 1,
    }
}

fn decision_of(code: i16) -> Result<Decision, LogError> {
    match code {
        0 => Ok(Decision::Confirm),
        1 => Ok(Decision::Cancel),
        other => Err(LogError::new(
            LogErrorKind::Corrupt,
            format!("the log holds an unknown decision code {other}"),
        )),
    }
}

fn status_of(status: i16, decision: Option<i16>) -> Result<Status, LogError> {
    Ok(match (status, decision) {
        (UNDECIDED, _) => Status::Undecided,
        (DECIDED, Some(d)) => Status::Decided(decision_of(d)?),
        (NEEDS_REPAIR, Some(d)) => Status::NeedsRepair(decision_of(d)?),
        // Finished in repair before deciding: presumed abort.
        (NEEDS_REPAIR, None) => Status::NeedsRepair(Decision::Cancel),
        (status, decision) => {
            return Err(LogError::new(
                LogErrorKind::Corrupt,
                format!("the log holds an unknown status {status} (decision {decision:?})"),
            ));
        }
    })
}

fn epoch_param(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(i64::MAX)
}

fn epoch_of(epoch: i64) -> u64 {
    u64::try_from(epoch).unwrap_or(0)
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A row as [`Rows::load`] reads it (columns `status, decision, epoch,
/// owner, started_at, attempts, succeeded, errors, decided_at` from 1).
fn row_state(id: TransactionId, row: &tokio_postgres::Row) -> Result<RowState, LogError> {
    let column = |e| from_sql(id, e);
    Ok(RowState {
        status: row.try_get(1).map_err(column)?,
        decision: row.try_get(2).map_err(column)?,
        epoch: row.try_get(3).map_err(column)?,
        owner: row.try_get(4).map_err(column)?,
        started_at: Some(row.try_get(5).map_err(column)?),
        decided_at: row.try_get(9).map_err(column)?,
        progress: progress_of(id, row, 6)?,
        intent: Vec::new(),
        expiry: Expiry::Keep,
        new: false,
        changed: false,
        noted: false,
    })
}

impl Rows {
    /// Locks and reads the rows `requests` touch, and which of the begun ids
    /// have an outcome.
    async fn load(tx: &InTransaction, requests: &[Request]) -> Result<Rows, LogError> {
        let mut ids: Vec<String> = requests
            .iter()
            .filter_map(Request::row)
            .map(|id| id.to_string())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        // Locked at the batch's start already (or by a claim of this batch),
        // bar a row begun since by another coordinator; until the commit, no
        // claim can take them (claims skip locked rows), so the epochs read
        // here stay the rows'.
        let begun: Vec<String> = requests
            .iter()
            .filter_map(|r| match r {
                Request::Begin(intent, _) => Some(intent.id.to_string()),
                _ => None,
            })
            .collect();
        // Both sent at once (pipelined): one round trip.
        let (found, outcomes) = futures_util::future::try_join(
            query(
                tx,
                "SELECT id, status, decision, epoch, owner, started_at,
                        attempts, succeeded, errors, decided_at
                 FROM tcc_log_transactions WHERE id = ANY($1)
                 ORDER BY id FOR NO KEY UPDATE",
                &[&ids],
                read_error,
            ),
            query(
                tx,
                "SELECT id FROM tcc_log_outcomes WHERE id = ANY($1)",
                &[&begun],
                read_error,
            ),
        )
        .await?;
        let mut rows = HashMap::with_capacity(found.len());
        let mut damaged = HashMap::new();
        for row in &found {
            // Its id is one of `ids`, so it parses.
            let id = parse_id(row.try_get(0).map_err(read_error)?)?;
            // A row that cannot be read fails the requests to it alone.
            match row_state(id, row) {
                Ok(state) => {
                    rows.insert(id, state);
                }
                Err(error) => {
                    damaged.insert(id, error);
                }
            }
        }
        let mut finished = HashSet::new();
        for row in &outcomes {
            finished.insert(parse_id(row.try_get(0).map_err(read_error)?)?);
        }
        Ok(Rows {
            rows,
            damaged,
            begins: Vec::new(),
            finished,
            deleted: Vec::new(),
            outcomes: Vec::new(),
        })
    }

    /// Why a request cannot be applied to its row, if the row cannot be
    /// read.
    fn unreadable(&self, request: &Request) -> Option<LogError> {
        request
            .row()
            .and_then(|id| self.damaged.get(&id))
            .map(LogError::copy_for_caller)
    }

    /// The row a write under `lease` may change, or why it may not: the row
    /// is gone (finished) or its epoch moved (claimed, released, ended).
    fn held(&mut self, lease: &Lease) -> Result<&mut RowState, LogError> {
        match self.rows.get_mut(&lease.id) {
            Some(row) if row.epoch == epoch_param(lease.epoch) => Ok(row),
            _ => Err(LogError::fenced(lease)),
        }
    }

    /// Applies one request under the rules; its reply goes to `replies`.
    fn apply(&mut self, request: Request, replies: &mut Replies) {
        match request {
            Request::Begin(intent, reply) => {
                let result = self.begin(&intent);
                // Its caller is gone already (its future dropped): no one
                // will drive it, so the lease goes back at once, and a claim
                // later in the batch takes the transaction.
                if reply.is_closed()
                    && let Ok(lease) = &result
                {
                    self.release(lease);
                }
                self.begins.push((intent.id, reply, result));
            }
            Request::Decide(lease, decision, reply) => {
                let result = self.held(&lease).and_then(|row| {
                    // The lease runs a whole TTL from the decision: the
                    // engine calls phase 2 at once, before its next renewal.
                    row.expiry = Expiry::Extend;
                    row.changed = true;
                    decide(row, decision)
                });
                hold(&mut replies.held, reply, result);
            }
            Request::Note(lease, participant, phase, progress) => match self.held(&lease) {
                Ok(row) if (participant as usize) < row.progress.len() => {
                    // Lazy: lost in a crash before the next durable commit,
                    // and then recovery calls this participant's phase again
                    // (phases repeat safely) with a lower attempt count.
                    row.progress[participant as usize][phase as usize] = progress;
                    row.noted = true;
                    row.changed = true;
                }
                Ok(_) => {
                    tracing::debug!(id = %lease.id, participant, "note dropped: no such participant")
                }
                Err(error) => tracing::debug!(%error, "note dropped"),
            },
            Request::Finish(lease, End::Done, reply) => match self.held(&lease) {
                Ok(row) => {
                    // Presumed abort: a transaction that never decided was
                    // cancelled.
                    let decision = row.decision.unwrap_or(decision_code(Decision::Cancel));
                    let (started_at, decided_at) = (row.started_at, row.decided_at);
                    let new = row.new;
                    // Lazy: a crash before the next durable commit brings
                    // the decided row back, and recovery runs phase 2 again.
                    self.rows.remove(&lease.id);
                    if !new {
                        self.deleted.push(lease.id);
                    }
                    self.finished.insert(lease.id);
                    self.outcomes.push(OutcomeRow {
                        id: lease.id.to_string(),
                        decision,
                        started_at,
                        decided_at,
                    });
                    replies.early.push(reply);
                    replies.ended.push(lease);
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Request::Finish(lease, End::NeedsRepair, reply) => {
                let result = self.held(&lease).map(|row| {
                    // Durable (the batch is). A crash before the commit:
                    // still decided, and recovery retries phase 2 (once more,
                    // then here again). After: listed by needs_repair for an
                    // operator. The epoch moves: the lease has ended.
                    row.status = NEEDS_REPAIR;
                    row.decision = Some(row.decision.unwrap_or(decision_code(Decision::Cancel)));
                    row.epoch += 1;
                    row.owner = None;
                    row.expiry = Expiry::Expire;
                    row.changed = true;
                });
                hold(&mut replies.held, reply, result);
            }
            Request::Release(lease) => self.release(&lease),
            Request::Renew(lease, reply) => {
                let result = self.held(&lease).map(|row| {
                    // Durable (the batch is), so that a renewal this
                    // coordinator was told of survives a database crash.
                    row.expiry = Expiry::Extend;
                    row.changed = true;
                });
                hold(&mut replies.held, reply, result);
            }
            other => unreachable!("{} runs as a statement of its own", other.name()),
        }
    }

    fn release(&mut self, lease: &Lease) {
        if let Ok(row) = self.held(lease) {
            // Lazy: a release lost in a crash leaves the lease to expire
            // instead. The epoch moves, so the given-back lease can write
            // nothing more.
            row.epoch += 1;
            row.owner = None;
            row.expiry = Expiry::Expire;
            row.changed = true;
        }
    }

    fn begin(&mut self, intent: &Intent) -> Result<Lease, LogError> {
        let id = intent.id;
        if self.rows.contains_key(&id) || self.finished.contains(&id) {
            return Err(duplicate(id));
        }
        // The intent (durable: the batch is). A crash before the commit: no
        // Try ran, nothing to undo. After: an undecided row, which recovery
        // cancels everywhere (presumed abort) once its lease expires.
        self.rows.insert(
            id,
            RowState {
                status: UNDECIDED,
                decision: None,
                epoch: 1,
                owner: None,
                started_at: None,
                decided_at: None,
                progress: vec![Default::default(); intent.participants.len()],
                intent: intent.participants.clone(),
                expiry: Expiry::Extend,
                new: true,
                changed: true,
                noted: true,
            },
        );
        Ok(Lease { id, epoch: 1 })
    }

    /// Writes what the segment changed: new rows, changed rows (their
    /// decisions, leases and notes), removed rows, outcomes. Returns the ids
    /// of the rows it inserted.
    async fn write<'t>(
        self,
        tx: &'t InTransaction,
        writer: &Writer,
        then: Then,
    ) -> Result<(HashSet<TransactionId>, Option<Ahead<'t>>), LogError> {
        let mut inserted = RowParams::default();
        let mut updated = RowParams::default();
        // The intents of the inserted rows, in PostgreSQL's text form.
        let (mut names, mut kinds, mut data) = (Vec::new(), Vec::new(), Vec::new());
        // In id order, as the rows are locked: two coordinators inserting
        // the same ids wait on each other's in one order, never in a cycle.
        let mut rows: Vec<(String, &TransactionId, &RowState)> = self
            .rows
            .iter()
            .map(|(id, row)| (id.to_string(), id, row))
            .collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (_, id, row) in rows {
            if row.new {
                inserted.push(*id, row, Some(&writer.owner));
                names.push(text_array(row.intent.iter().map(|p| Some(p.name.as_str()))));
                kinds.push(text_array(row.intent.iter().map(|p| Some(p.kind.as_str()))));
                data.push(bytea_array(row.intent.iter().map(|p| p.data.as_slice())));
            } else if row.changed {
                updated.push(*id, row, None);
            }
        }
        let mut pipeline = Pipeline::default();
        let inserting = !inserted.ids.is_empty();
        if inserting {
            // A row that does not exist yet cannot be locked, so another
            // coordinator may begin the same id meanwhile: its row (waited
            // for until its batch commits) or its outcome wins, and this
            // begin is a duplicate, without failing the rest of the batch.
            pipeline.push(
                "INSERT INTO tcc_log_transactions
                     (id, status, decision, epoch, owner, expires, started_at,
                      names, kinds, data, attempts, succeeded, errors)
                 SELECT u.id, u.status, u.decision, u.epoch, u.owner,
                        CASE u.expiry WHEN 1 THEN now() + make_interval(secs => $13)
                                      ELSE now() END,
                        now(), u.names::text[], u.kinds::text[], u.data::bytea[],
                        u.attempts::bigint[], u.succeeded::boolean[], u.errors::text[]
                 FROM unnest($1::text[], $2::smallint[], $3::smallint[], $4::bigint[],
                             $5::text[], $6::smallint[], $7::text[], $8::text[], $9::text[],
                             $10::text[], $11::text[], $12::text[])
                     AS u(id, status, decision, epoch, owner, expiry, names, kinds, data,
                          attempts, succeeded, errors)
                 WHERE NOT EXISTS (SELECT 1 FROM tcc_log_outcomes o WHERE o.id = u.id)
                 ON CONFLICT (id) DO NOTHING
                 RETURNING id",
                vec![
                    Box::new(inserted.ids),
                    Box::new(inserted.status),
                    Box::new(inserted.decision),
                    Box::new(inserted.epoch),
                    Box::new(inserted.owner),
                    Box::new(inserted.expiry),
                    Box::new(names),
                    Box::new(kinds),
                    Box::new(data),
                    Box::new(inserted.attempts),
                    Box::new(inserted.succeeded),
                    Box::new(inserted.errors),
                    Box::new(writer.ttl_secs),
                ],
            );
        }
        if !updated.ids.is_empty() {
            // Progress arrays only for the rows notes changed (NULL: kept).
            pipeline.push(
                "UPDATE tcc_log_transactions t
                 SET status = u.status, decision = u.decision, epoch = u.epoch,
                     owner = u.owner,
                     decided_at = CASE WHEN t.status = 0 AND u.status = 1 THEN now()
                                       ELSE t.decided_at END,
                     ended_at = CASE WHEN u.status = 2 AND t.status <> 2 THEN now()
                                     ELSE t.ended_at END,
                     expires = CASE u.expiry WHEN 0 THEN t.expires
                                             WHEN 1 THEN now() + make_interval(secs => $10)
                                             ELSE now() END,
                     attempts = coalesce(u.attempts::bigint[], t.attempts),
                     succeeded = coalesce(u.succeeded::boolean[], t.succeeded),
                     errors = coalesce(u.errors::text[], t.errors)
                 FROM unnest($1::text[], $2::smallint[], $3::smallint[], $4::bigint[],
                             $5::text[], $6::smallint[], $7::text[], $8::text[], $9::text[])
                     AS u(id, status, decision, epoch, owner, expiry, attempts, succeeded,
                          errors)
                 WHERE t.id = u.id",
                vec![
                    Box::new(updated.ids),
                    Box::new(updated.status),
                    Box::new(updated.decision),
                    Box::new(updated.epoch),
                    Box::new(updated.owner),
                    Box::new(updated.expiry),
                    Box::new(updated.attempts),
                    Box::new(updated.succeeded),
                    Box::new(updated.errors),
                    Box::new(writer.ttl_secs),
                ],
            );
        }
        if !self.deleted.is_empty() {
            let ids: Vec<String> = self.deleted.iter().map(ToString::to_string).collect();
            pipeline.push(
                "DELETE FROM tcc_log_transactions WHERE id = ANY($1)",
                vec![Box::new(ids)],
            );
        }
        writer.add_outcomes(&mut pipeline, &self.outcomes);
        let (answers, commit) = pipeline.run(tx, then).await?;
        let mut begun = HashSet::new();
        if inserting {
            for row in &answers[0] {
                begun.insert(parse_id(row.try_get(0).map_err(write_error)?)?);
            }
        }
        Ok((begun, commit))
    }
}

/// A parameter of a pipelined statement.
type Param<'a> = Box<dyn ToSql + Sync + Send + 'a>;

/// Write statements sent together: PostgreSQL runs them in order, and the
/// writer waits once for all their answers rather than once for each (one
/// round trip, not one per statement). The first that fails fails the
/// batch; the database then refuses the rest of its transaction.
#[derive(Default)]
struct Pipeline<'a> {
    statements: Vec<(&'static str, Vec<Param<'a>>)>,
}

impl<'a> Pipeline<'a> {
    fn push(&mut self, sql: &'static str, params: Vec<Param<'a>>) {
        self.statements.push((sql, params));
    }

    /// Runs the statements; returns the rows each returned, in order, and
    /// with [`Then::Commit`] the commit, sent behind them.
    async fn run<'t>(
        self,
        tx: &'t InTransaction,
        then: Then,
    ) -> Result<(Vec<Vec<tokio_postgres::Row>>, Option<Ahead<'t>>), LogError> {
        let mut prepared = Vec::with_capacity(self.statements.len());
        for (sql, _) in &self.statements {
            // A round trip the first time a connection sees a statement.
            prepared.push(tx.prepare_cached(sql).await.map_err(write_error)?);
        }
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = self
            .statements
            .iter()
            .map(|(_, params)| params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect())
            .collect();
        let runs = prepared
            .iter()
            .zip(&params)
            .map(|(statement, params)| tx.query(statement, params));
        // Polled in order, each sent when first polled: all of them on the
        // first poll (a few, so `try_join_all` polls them in order).
        let mut answers = std::pin::pin!(futures_util::future::try_join_all(runs));
        let first = poll_once(answers.as_mut()).await;
        // A statement that failed before it was sent (its parameters could
        // not be encoded) leaves the ones after it unsent: no commit then.
        if let Poll::Ready(Err(error)) = first {
            return Err(write_error(error));
        }
        let commit = match then {
            Then::Commit => Some(Ahead::send(tx, "COMMIT").await),
            Then::GoOn => None,
        };
        let answers = match first {
            Poll::Ready(answers) => answers,
            Poll::Pending => answers.await,
        };
        Ok((answers.map_err(write_error)?, commit))
    }
}

/// What comes after a segment's writes.
#[derive(Clone, Copy)]
enum Then {
    /// More statements of the batch.
    GoOn,
    /// The batch's commit, sent at once behind the writes.
    Commit,
}

/// A pooled connection inside a batch's transaction (see [`Batch`]).
type InTransaction = ClientWrapper;

/// The connection a batch runs on. Its transaction is begun and committed
/// with plain statements, each sent with the statements next to it rather
/// than waited for alone: a round trip saved at each end of every batch
/// (see BENCHMARKS.md, issue 17). Dropped before [`Batch::done`] (a
/// statement failed), the connection is closed rather than given back to
/// the pool in the middle of a transaction, and the database rolls it
/// back; or, if its COMMIT was sent already (an answer that could not be
/// read after that), commits it: the batch's callers are told it failed
/// when it may not have, as when a connection is lost at the commit, and
/// recovery sorts that out.
struct Batch(Option<Object>);

impl Batch {
    fn connection(&self) -> &InTransaction {
        self.0
            .as_ref()
            .expect("a batch's connection is there until done")
    }

    /// Gives the connection back to the pool, its transaction ended.
    fn done(mut self) {
        self.0.take();
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(connection) = self.0.take() {
            drop(Object::take(connection));
        }
    }
}

/// The answer to a plain statement, still to come.
type Answer<'t> = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send + 't>>;

/// A statement sent ahead of the statements after it, its answer waited
/// for only when needed.
struct Ahead<'t>(Option<Answer<'t>>);

impl<'t> Ahead<'t> {
    /// Sends `sql` (a request is sent when its future is first polled)
    /// without waiting for its answer.
    async fn send(tx: &'t InTransaction, sql: &'t str) -> Ahead<'t> {
        let mut answer = Box::pin(tx.batch_execute(sql));
        Ahead(Some(match poll_once(answer.as_mut()).await {
            Poll::Ready(result) => Box::pin(std::future::ready(result)),
            Poll::Pending => answer,
        }))
    }

    /// Its answer: waited for the first time, `Ok` after.
    async fn answered(&mut self) -> Result<(), tokio_postgres::Error> {
        match self.0.take() {
            Some(answer) => answer.await,
            None => Ok(()),
        }
    }
}

/// Polls `future` once.
async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

/// The columns of rows to insert or update, as arrays for `unnest`.
#[derive(Default)]
struct RowParams {
    ids: Vec<String>,
    status: Vec<i16>,
    decision: Vec<Option<i16>>,
    epoch: Vec<i64>,
    owner: Vec<Option<String>>,
    expiry: Vec<i16>,
    /// Progress arrays in PostgreSQL's text form, `None` if unchanged.
    attempts: Vec<Option<String>>,
    succeeded: Vec<Option<String>>,
    errors: Vec<Option<String>>,
}

impl RowParams {
    fn push(&mut self, id: TransactionId, row: &RowState, owner: Option<&str>) {
        self.ids.push(id.to_string());
        self.status.push(row.status);
        self.decision.push(row.decision);
        self.epoch.push(row.epoch);
        let owner = match row.expiry {
            Expiry::Expire => None,
            _ => owner.map(str::to_owned).or_else(|| row.owner.clone()),
        };
        self.owner.push(owner);
        self.expiry.push(row.expiry.code());
        let phases = || row.progress.iter().flat_map(|phases| phases.iter());
        let noted = |text: String| row.noted.then_some(text);
        self.attempts
            .push(noted(int_array(phases().map(|p| p.attempts))));
        self.succeeded
            .push(noted(bool_array(phases().map(|p| p.succeeded))));
        self.errors
            .push(noted(text_array(phases().map(|p| p.last_error.as_deref()))));
    }
}

/// Runs a statement (prepared once per connection) and returns its rows;
/// a failure is described by `error`.
async fn query(
    tx: &InTransaction,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    error: fn(tokio_postgres::Error) -> LogError,
) -> Result<Vec<tokio_postgres::Row>, LogError> {
    let statement = tx.prepare_cached(sql).await.map_err(error)?;
    tx.query(&statement, params).await.map_err(error)
}

/// A record, and its lease when the row was just claimed, from the
/// columns of [`record_columns!`]; a row set aside as damaged is
/// [`Status::Unreadable`], under a lease that writes nothing. A row that
/// cannot be read fails with [`Corrupt`](LogErrorKind::Corrupt), and with
/// its id if that can be read.
fn record_of(
    row: &tokio_postgres::Row,
) -> Result<(Lease, TransactionRecord), (Option<TransactionId>, LogError)> {
    let id = row
        .try_get(0)
        .map_err(read_error)
        .and_then(parse_id)
        .map_err(|error| (None, error))?;
    let damage: Option<String> = row.try_get(11).map_err(|e| (Some(id), from_sql(id, e)))?;
    if let Some(reason) = damage {
        let record = Unreadable { id, reason }.record();
        return Ok((Lease { id, epoch: 0 }, record));
    }
    read_record(id, row).map_err(|error| (Some(id), error))
}

/// The record in a row that is not set aside.
fn read_record(
    id: TransactionId,
    row: &tokio_postgres::Row,
) -> Result<(Lease, TransactionRecord), LogError> {
    let column = |e| from_sql(id, e);
    let status = status_of(
        row.try_get(1).map_err(column)?,
        row.try_get(2).map_err(column)?,
    )
    .map_err(|e| corrupt(id, &e.to_string()))?;
    let started_at: SystemTime = row.try_get(3).map_err(column)?;
    let epoch: i64 = row.try_get(4).map_err(column)?;
    let names: Vec<String> = row.try_get(5).map_err(column)?;
    let kinds: Vec<String> = row.try_get(6).map_err(column)?;
    let data: Vec<Vec<u8>> = row.try_get(7).map_err(column)?;
    let progress = progress_of(id, row, 8)?;
    if kinds.len() != names.len() || data.len() != names.len() || progress.len() != names.len() {
        return Err(corrupt(id, "its participants' columns differ in length"));
    }
    let participants = names
        .into_iter()
        .zip(kinds)
        .zip(data)
        .map(|((name, kind), data)| ParticipantEntry { name, kind, data })
        .collect();
    let record = TransactionRecord {
        intent: Intent { id, participants },
        progress,
        decided_at: row.try_get(12).map_err(column)?,
        ended_at: row.try_get(13).map_err(column)?,
        ..TransactionRecord::bare(id, status, started_at)
    };
    Ok((
        Lease {
            id,
            epoch: epoch_of(epoch),
        },
        record,
    ))
}

/// The progress in the columns `attempts, succeeded, errors` from `first`.
fn progress_of(
    id: TransactionId,
    row: &tokio_postgres::Row,
    first: usize,
) -> Result<Vec<[PhaseProgress; 3]>, LogError> {
    let column = |e| from_sql(id, e);
    let attempts: Vec<i64> = row.try_get(first).map_err(column)?;
    let succeeded: Vec<bool> = row.try_get(first + 1).map_err(column)?;
    let errors: Vec<Option<String>> = row.try_get(first + 2).map_err(column)?;
    if !attempts.len().is_multiple_of(3)
        || succeeded.len() != attempts.len()
        || errors.len() != attempts.len()
    {
        return Err(corrupt(
            id,
            "its progress is not three phases per participant",
        ));
    }
    let mut errors = errors.into_iter();
    Ok(attempts
        .chunks(3)
        .zip(succeeded.chunks(3))
        .map(|(attempts, succeeded)| {
            std::array::from_fn(|phase| PhaseProgress {
                attempts: u32::try_from(attempts[phase]).unwrap_or(u32::MAX),
                succeeded: succeeded[phase],
                last_error: errors.next().flatten(),
            })
        })
        .collect())
}

fn duplicate(id: TransactionId) -> LogError {
    LogError::new(
        LogErrorKind::Duplicate,
        format!("transaction {id} is already in the log"),
    )
}

fn corrupt(id: TransactionId, what: &str) -> LogError {
    LogError::new(
        LogErrorKind::Corrupt,
        format!("the log's row of transaction {id} is damaged: {what}"),
    )
}

/// A column of the row of `id` does not hold what the log wrote (a NULL,
/// another type).
fn from_sql(id: TransactionId, error: tokio_postgres::Error) -> LogError {
    corrupt(id, "a column cannot be read").with_source(error)
}

/// How a row that cannot be read is listed: [`Status::Unreadable`], with
/// the reason.
fn unreadable(id: TransactionId, error: &LogError) -> TransactionRecord {
    Unreadable {
        id,
        reason: error.to_string(),
    }
    .record()
}

/// The text form of a PostgreSQL array of text (`None`: NULL), for a
/// statement that writes one array per row (`unnest` cannot carry arrays of
/// different lengths).
fn text_array<'a>(items: impl Iterator<Item = Option<&'a str>>) -> String {
    let mut out = String::from("{");
    for (index, item) in items.enumerate() {
        if index > 0 {
            out.push(',');
        }
        match item {
            None => out.push_str("NULL"),
            Some(text) => {
                out.push('"');
                for c in text.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
    out
}

/// The text form of a PostgreSQL `bytea[]`: each element in hex (`\x..`).
fn bytea_array<'a>(items: impl Iterator<Item = &'a [u8]>) -> String {
    let hex: Vec<String> = items
        .map(|bytes| {
            let mut text = String::with_capacity(2 + 2 * bytes.len());
            text.push_str("\\x");
            for byte in bytes {
                text.push_str(&format!("{byte:02x}"));
            }
            text
        })
        .collect();
    text_array(hex.iter().map(|h| Some(h.as_str())))
}

fn int_array(items: impl Iterator<Item = u32>) -> String {
    let items: Vec<String> = items.map(|n| n.to_string()).collect();
    format!("{{{}}}", items.join(","))
}

fn bool_array(items: impl Iterator<Item = bool>) -> String {
    let items: Vec<&str> = items.map(|b| if b { "t" } else { "f" }).collect();
    format!("{{{}}}", items.join(","))
}

/// One transaction's state: its row, else its outcome.
async fn get(tx: &InTransaction, id: TransactionId) -> Result<Option<TransactionRecord>, LogError> {
    let key = id.to_string();
    let (rows, outcomes) = futures_util::future::try_join(
        query(
            tx,
            concat!(
                "SELECT ",
                record_columns!(),
                " FROM tcc_log_transactions WHERE id = $1"
            ),
            &[&key],
            read_error,
        ),
        query(
            tx,
            concat!(
                "SELECT ",
                outcome_columns!(),
                " FROM tcc_log_outcomes WHERE id = $1"
            ),
            &[&key],
            read_error,
        ),
    )
    .await?;
    if let Some(row) = rows.first() {
        return record_of(row)
            .map(|(_, record)| Some(record))
            .map_err(|(_, error)| error);
    }
    outcomes.first().map(outcome_of).transpose()
}

/// The record of a finished transaction, from the columns of
/// [`outcome_columns!`].
fn outcome_of(row: &tokio_postgres::Row) -> Result<TransactionRecord, LogError> {
    let id = parse_id(row.try_get(0).map_err(read_error)?)?;
    let column = |e| from_sql(id, e);
    let decision = decision_of(row.try_get(1).map_err(column)?)?;
    let by: Option<String> = row.try_get(5).map_err(column)?;
    let note: Option<String> = row.try_get(6).map_err(column)?;
    Ok(TransactionRecord {
        decided_at: row.try_get(3).map_err(column)?,
        ended_at: Some(row.try_get(4).map_err(column)?),
        resolution: by.zip(note).map(|(by, note)| Resolution { by, note }),
        ..TransactionRecord::bare(id, Status::Done(decision), row.try_get(2).map_err(column)?)
    })
}

/// Marks a transaction needing repair for the next claim (see
/// [`Log::requeue`]).
async fn requeue(tx: &InTransaction, id: TransactionId) -> Result<bool, LogError> {
    // Durable (the batch is). A crash before the commit: still needing
    // repair, the operator requeues it again. After: decided, held by no
    // one (the epoch moves, the lease has expired), so the next claim of
    // any coordinator takes it. The attempts of Confirm and Cancel go back
    // to 0 (participant i, phase p at 3 * (i - 1) + p: Try at 1, 4, ...),
    // a fresh retry budget for that pass; the rest of the progress stays.
    let rows = query(
        tx,
        "UPDATE tcc_log_transactions
         SET status = 1, epoch = epoch + 1, owner = NULL, expires = now(),
             attempts = array(SELECT CASE WHEN u.i % 3 = 1 THEN u.a ELSE 0 END
                              FROM unnest(attempts) WITH ORDINALITY AS u(a, i)
                              ORDER BY u.i)
         WHERE id = $1 AND status = 2 AND damage IS NULL
         RETURNING id",
        &[&id.to_string()],
        write_error,
    )
    .await?;
    Ok(!rows.is_empty())
}

/// The transactions `filter` asks for (see [`Log::list`]): a statement per
/// group, in the order of [`StatusGroup::ALL`].
async fn list(tx: &InTransaction, filter: &Filter) -> Result<Vec<TransactionRecord>, LogError> {
    let service = filter.service();
    // now() less an age of more than a few thousand years is out of
    // PostgreSQL's range, and no transaction is that old: any longer age
    // lists none, as it should.
    let older_than = filter
        .older_than()
        .map(|age| age.as_secs_f64().min(MAX_AGE_SECS));
    let mut listed = Vec::new();
    for group in StatusGroup::ALL {
        let left = filter.limit().saturating_sub(listed.len());
        if !filter.includes(group) || left == 0 {
            continue;
        }
        let limit = limit_param(left);
        let rows = match group {
            // A row set aside as unreadable has no participants and no age
            // to trust: listed, as the other stores do, only when no
            // service is asked for, whatever the age.
            StatusGroup::NeedsRepair => {
                query(
                    tx,
                    concat!(
                        "SELECT ",
                        record_columns!(),
                        " FROM tcc_log_transactions WHERE status = 2
                          AND ($1::text IS NULL OR (damage IS NULL AND $1 = ANY(names)))
                          AND ($2::float8 IS NULL OR damage IS NOT NULL
                               OR started_at < now() - make_interval(secs => $2))
                          ORDER BY damage IS NULL, started_at, id LIMIT $3"
                    ),
                    &[&service, &older_than, &limit],
                    read_error,
                )
                .await?
            }
            StatusGroup::Unfinished => {
                query(
                    tx,
                    concat!(
                        "SELECT ",
                        record_columns!(),
                        " FROM tcc_log_transactions WHERE status < 2
                          AND ($1::text IS NULL OR $1 = ANY(names))
                          AND ($2::float8 IS NULL
                               OR started_at < now() - make_interval(secs => $2))
                          ORDER BY started_at, id LIMIT $3"
                    ),
                    &[&service, &older_than, &limit],
                    read_error,
                )
                .await?
            }
            // An outcome keeps no participants.
            StatusGroup::Done if service.is_some() => Vec::new(),
            StatusGroup::Done => {
                let rows = query(
                    tx,
                    concat!(
                        "SELECT ",
                        outcome_columns!(),
                        " FROM tcc_log_outcomes
                          WHERE $1::float8 IS NULL
                             OR started_at < now() - make_interval(secs => $1)
                          ORDER BY seq DESC LIMIT $2"
                    ),
                    &[&older_than, &limit],
                    read_error,
                )
                .await?;
                for row in &rows {
                    listed.push(outcome_of(row)?);
                }
                continue;
            }
        };
        // A row that cannot be read is listed as unreadable, never fails
        // the listing.
        listed.extend(rows.iter().filter_map(|row| match record_of(row) {
            Ok((_, record)) => Some(record),
            Err((Some(id), error)) => Some(unreadable(id, &error)),
            Err((None, error)) => {
                tracing::error!(%error, "a row of the log has no transaction id");
                None
            }
        }));
    }
    Ok(listed)
}

/// What the tables hold, counted (see [`Log::summary`]): its statements
/// sent at once.
async fn summary(tx: &InTransaction) -> Result<LogSummary, LogError> {
    let (counts, unfinished, repair, sizes) = futures_util::future::try_join4(
        query(
            tx,
            "SELECT status, damage IS NOT NULL, count(*) FROM tcc_log_transactions
             GROUP BY 1, 2",
            &[],
            read_error,
        ),
        query(
            tx,
            "SELECT id, started_at FROM tcc_log_transactions
             WHERE status < 2 AND damage IS NULL ORDER BY started_at, id LIMIT 1",
            &[],
            read_error,
        ),
        query(
            tx,
            "SELECT id, started_at FROM tcc_log_transactions
             WHERE status = 2 AND damage IS NULL ORDER BY started_at, id LIMIT 1",
            &[],
            read_error,
        ),
        query(
            tx,
            "SELECT (SELECT count(*) FROM tcc_log_outcomes),
                    pg_total_relation_size('tcc_log_transactions')
                    + pg_total_relation_size('tcc_log_outcomes')",
            &[],
            read_error,
        ),
    )
    .await?;
    let mut summary = LogSummary::default();
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    for row in &counts {
        let status: i16 = row.try_get(0).map_err(read_error)?;
        let damaged: bool = row.try_get(1).map_err(read_error)?;
        let n = count(row.try_get(2).map_err(read_error)?);
        match (status, damaged) {
            (_, true) => summary.unreadable += n,
            (UNDECIDED, false) => summary.undecided += n,
            (DECIDED, false) => summary.decided += n,
            (_, false) => summary.needs_repair += n,
        }
    }
    let first = |rows: &[tokio_postgres::Row]| -> Result<_, LogError> {
        rows.first()
            .map(|row| {
                let id = parse_id(row.try_get(0).map_err(read_error)?)?;
                Ok((id, row.try_get(1).map_err(read_error)?))
            })
            .transpose()
    };
    summary.oldest_unfinished = first(&unfinished)?;
    summary.oldest_needs_repair = first(&repair)?;
    summary.done = count(sizes[0].try_get(0).map_err(read_error)?);
    summary.bytes = Some(count(sizes[0].try_get(1).map_err(read_error)?));
    Ok(summary)
}

/// Refuses a database without the log's tables, with older ones, or with
/// tables of those names that are not the log's.
async fn check_schema(pool: &Pool) -> Result<(), LogError> {
    let client = pool.get().await.map_err(pool_error)?;
    let current = client
        .query_one("SELECT current_schema()", &[])
        .await
        .map_err(read_error)?;
    let schema: Option<String> = current.try_get(0).map_err(read_error)?;
    let schema = schema.unwrap_or_else(|| "(none: the search_path names no schema)".into());
    let version = match client
        .query_opt("SELECT version FROM tcc_log_schema", &[])
        .await
    {
        Ok(Some(row)) => Some(row.try_get::<_, i32>(0).map_err(read_error)?),
        Ok(None) => None,
        Err(error) if error.code() == Some(&SqlState::UNDEFINED_TABLE) => {
            return Err(LogError::new(
                LogErrorKind::Schema,
                format!(
                    "the database has no transaction log tables in schema {schema}: {MIGRATE_HINT}"
                ),
            ));
        }
        Err(error) => return Err(foreign_or(error, "cannot read the log's schema version")),
    };
    match version {
        Some(SCHEMA_VERSION) => {}
        Some(version) if version > SCHEMA_VERSION => return Err(newer(version)),
        found => {
            return Err(LogError::new(
                LogErrorKind::Schema,
                format!(
                    "the transaction log tables in schema {schema} are at version {}, this version of tcc needs {SCHEMA_VERSION}: {MIGRATE_HINT}",
                    found.unwrap_or(0)
                ),
            ));
        }
    }
    // Tables of the same names made by something else, or changed by hand:
    // refused before any write, naming the column.
    let rows = client
        .query(
            "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a JOIN pg_class c ON a.attrelid = c.oid
              WHERE c.relnamespace = current_schema()::regnamespace
                AND c.relname IN ('tcc_log_transactions', 'tcc_log_outcomes')
                AND a.attnum > 0 AND NOT a.attisdropped",
            &[],
        )
        .await
        .map_err(|e| foreign_or(e, "cannot read the log's tables"))?;
    let mut found = HashMap::new();
    for row in &rows {
        let (table, column, kind): (String, String, String) = (
            row.try_get(0).map_err(read_error)?,
            row.try_get(1).map_err(read_error)?,
            row.try_get(2).map_err(read_error)?,
        );
        found.insert((table, column), kind);
    }
    for (table, column, kind) in COLUMNS {
        match found.get(&(table.to_string(), column.to_string())) {
            Some(found) if found == kind => {}
            found => {
                let what = match found {
                    Some(found) => {
                        format!("its column `{column}` is `{found}`, the log's is `{kind}`")
                    }
                    None => format!("it has no column `{column}`"),
                };
                return Err(LogError::new(
                    LogErrorKind::Schema,
                    format!(
                        "the table {table} in schema {schema} is not the transaction log's: {what}; move it away, or give the log a schema of its own (its `search_path`), then {MIGRATE_HINT}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Every column the log reads and writes, with its type as `format_type`
/// names it.
const COLUMNS: [(&str, &str, &str); 24] = [
    ("tcc_log_transactions", "id", "text"),
    ("tcc_log_transactions", "status", "smallint"),
    ("tcc_log_transactions", "decision", "smallint"),
    ("tcc_log_transactions", "epoch", "bigint"),
    ("tcc_log_transactions", "owner", "text"),
    (
        "tcc_log_transactions",
        "expires",
        "timestamp with time zone",
    ),
    (
        "tcc_log_transactions",
        "started_at",
        "timestamp with time zone",
    ),
    ("tcc_log_transactions", "names", "text[]"),
    ("tcc_log_transactions", "kinds", "text[]"),
    ("tcc_log_transactions", "data", "bytea[]"),
    ("tcc_log_transactions", "attempts", "bigint[]"),
    ("tcc_log_transactions", "succeeded", "boolean[]"),
    ("tcc_log_transactions", "errors", "text[]"),
    ("tcc_log_transactions", "damage", "text"),
    (
        "tcc_log_transactions",
        "decided_at",
        "timestamp with time zone",
    ),
    (
        "tcc_log_transactions",
        "ended_at",
        "timestamp with time zone",
    ),
    ("tcc_log_outcomes", "id", "text"),
    ("tcc_log_outcomes", "decision", "smallint"),
    ("tcc_log_outcomes", "started_at", "timestamp with time zone"),
    (
        "tcc_log_outcomes",
        "finished_at",
        "timestamp with time zone",
    ),
    ("tcc_log_outcomes", "seq", "bigint"),
    ("tcc_log_outcomes", "decided_at", "timestamp with time zone"),
    ("tcc_log_outcomes", "resolved_by", "text"),
    ("tcc_log_outcomes", "note", "text"),
];

fn newer(version: i32) -> LogError {
    LogError::new(
        LogErrorKind::Schema,
        format!(
            "the transaction log tables are at schema version {version}, written by a newer version of tcc; this one reads version {SCHEMA_VERSION}"
        ),
    )
}

/// A statement on the log's tables failed: tables of the log's names that
/// are not the log's are a [`Schema`](LogErrorKind::Schema) error, anything
/// else an I/O one.
fn foreign_or(error: tokio_postgres::Error, what: &str) -> LogError {
    let foreign = [
        SqlState::UNDEFINED_COLUMN,
        SqlState::DUPLICATE_TABLE,
        SqlState::DATATYPE_MISMATCH,
        SqlState::UNDEFINED_TABLE,
    ];
    match error.code() {
        Some(code) if foreign.contains(code) => LogError::new(
            LogErrorKind::Schema,
            format!(
                "{what}: tables named tcc_log_* exist that are not the transaction log's ({}); drop or rename them, or give the log another schema in the search_path, then {MIGRATE_HINT}",
                error
                    .as_db_error()
                    .map_or_else(|| error.to_string(), |e| e.message().to_owned())
            ),
        ),
        _ => sql_error(what, error),
    }
}

fn parse_id(text: String) -> Result<TransactionId, LogError> {
    text.parse().map_err(|e| {
        LogError::new(
            LogErrorKind::Corrupt,
            "the log holds a row whose id is not a transaction id",
        )
        .with_source(e)
    })
}

fn sql_error(what: &str, error: tokio_postgres::Error) -> LogError {
    LogError::new(LogErrorKind::Io, format!("{what} (PostgreSQL)")).with_source(error)
}

fn read_error(error: tokio_postgres::Error) -> LogError {
    sql_error("cannot read the log", error)
}

fn write_error(error: tokio_postgres::Error) -> LogError {
    sql_error("cannot write the log", error)
}

/// Refuses connections that commit without waiting for the WAL flush
/// (`synchronous_commit = off`, set for the server, the database or the
/// role): a decision acknowledged by such a commit can be lost in a crash
/// of the database, and the other coordinators would then cancel a
/// transaction whose Confirms ran.
async fn check_durability(pool: &Pool) -> Result<(), LogError> {
    let client = pool.get().await.map_err(pool_error)?;
    let row = client
        .query_one("SHOW synchronous_commit", &[])
        .await
        .map_err(read_error)?;
    let setting: String = row.try_get(0).map_err(read_error)?;
    if setting == "off" {
        return Err(LogError::new(
            LogErrorKind::Schema,
            "the log's database connections have `synchronous_commit = off`, so a commit the log waits for (an intent, a decision) could be lost in a crash of the database: set it to `on` for the log's role (`ALTER ROLE ... SET synchronous_commit = on`) or database",
        ));
    }
    Ok(())
}

fn pool_error(error: deadpool_postgres::PoolError) -> LogError {
    LogError::new(
        LogErrorKind::Io,
        "cannot get a connection to the log's database",
    )
    .with_source(error)
}

fn closed() -> LogError {
    LogError::new(
        LogErrorKind::Closed,
        "the writer of the PostgreSQL log has stopped (its runtime shut down)",
    )
}
