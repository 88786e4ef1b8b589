//! The participant barrier through sqlx, on PostgreSQL (the throwaway
//! cluster of `tests/barrier/cluster.rs`) and on SQLite (a file): the
//! shared property suite on each, retries on serialization failures and a
//! busy database, the caller's own transaction, announce, cleanup, a
//! missing table, and one table shared with the tokio-postgres backend.
//!
//! Without PostgreSQL server binaries the PostgreSQL tests print one line
//! and pass; `TCC_REQUIRE_POSTGRES=1` (set by `.ci/run`) makes that a
//! failure.

mod barrier;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use barrier::cluster::Cluster;
use barrier::{Backend, BoxFuture, TestError};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tcc::barrier::sqlx::{postgres as pg, sqlite as lite};
use tcc::barrier::{BarrierErrorKind, Branch, Entry, Outcome};
use tcc::{Phase, TransactionId};

fn branch(transaction: TransactionId, phase: Phase) -> Branch {
    Branch::new(transaction, "wallet", phase)
}

/// The text of a branch's phase, as the `effects` rows hold it.
fn row_of(branch: &Branch) -> (String, String, &'static str) {
    (
        branch.transaction_id().to_string(),
        branch.service_name().to_owned(),
        branch.phase().as_str(),
    )
}

// PostgreSQL.

/// A fresh schema `name` with the test tables, a pool of `connections` to
/// it whose transactions run at `isolation`, and the barrier's table made
/// by `migrate` (twice: it is idempotent).
async fn pg_setup(cluster: &Cluster, name: &str, connections: u32, isolation: &str) -> PgPool {
    let admin = cluster.connect(name).await;
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name};
             CREATE TABLE effects (transaction_id text, service text, phase text);
             CREATE TABLE outside (n integer); INSERT INTO outside VALUES (0);
             CREATE TABLE counters (id integer PRIMARY KEY, n integer);
             INSERT INTO counters VALUES (1, 0), (2, 0);"
        ))
        .await
        .unwrap();
    let options: PgConnectOptions = cluster.url(name).parse().expect("the cluster's URL");
    let options = options.options([("default_transaction_isolation", isolation)]);
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await
        .unwrap();
    pg::migrate(&pool).await.unwrap();
    pg::migrate(&pool).await.expect("migrate is idempotent");
    pool
}

/// A delivery through `run_branch`: the effect, then a failure if `fail`.
async fn pg_deliver(pool: &PgPool, branch: &Branch, fail: bool) -> Result<Outcome<()>, TestError> {
    pg::run_branch(pool, branch, |tx| {
        Box::pin(async move {
            let (id, service, phase) = row_of(branch);
            sqlx::query("INSERT INTO effects VALUES ($1, $2, $3)")
                .bind(id)
                .bind(service)
                .bind(phase)
                .execute(&mut **tx)
                .await?;
            if fail {
                Err(TestError::Injected)
            } else {
                Ok(())
            }
        })
    })
    .await
}

async fn pg_effects(pool: &PgPool, transaction: TransactionId) -> Vec<(String, String)> {
    sqlx::query_as("SELECT service, phase FROM effects WHERE transaction_id = $1 ORDER BY phase")
        .bind(transaction.to_string())
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn pg_state(pool: &PgPool, branch: &Branch) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM tcc_barrier WHERE transaction_id = $1 AND service = $2")
        .bind(branch.transaction_id().to_string())
        .bind(branch.service_name())
        .fetch_optional(pool)
        .await
        .unwrap()
}

struct SqlxPostgres {
    pool: PgPool,
    lanes: usize,
}

impl Backend for SqlxPostgres {
    fn lanes(&self) -> usize {
        self.lanes
    }

    /// Each delivery takes a connection of its own from the pool, which
    /// has one per lane.
    fn deliver(
        &self,
        _lane: usize,
        branch: Branch,
        fail: bool,
    ) -> BoxFuture<'_, Result<Outcome<()>, TestError>> {
        Box::pin(async move { pg_deliver(&self.pool, &branch, fail).await })
    }

    fn announce(
        &self,
        _lane: usize,
        branch: Branch,
    ) -> BoxFuture<'_, Result<Outcome<()>, TestError>> {
        Box::pin(async move { Ok(pg::announce(&self.pool, &branch).await?) })
    }

    fn effects(&self, transaction: TransactionId) -> BoxFuture<'_, Vec<(String, String)>> {
        Box::pin(async move { pg_effects(&self.pool, transaction).await })
    }
}

fn pg_property(schema: &'static str, isolation: &'static str) {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = runtime.block_on(pg_setup(cluster, schema, 4, isolation));
    barrier::interleavings(&runtime, Arc::new(SqlxPostgres { pool, lanes: 4 }));
}

#[test]
fn postgres_interleavings_of_deliveries_follow_the_rules() {
    pg_property("sqlx_interleavings", "read committed");
}

/// Under SERIALIZABLE, races end in serialization failures, which
/// `run_branch` retries: the outcomes must be the same.
#[test]
fn postgres_interleavings_under_serializable_follow_the_rules() {
    pg_property("sqlx_interleavings_serializable", "serializable");
}

/// A real serialization failure: write skew between two SERIALIZABLE
/// transactions.
async fn serialization_failure(pool: &PgPool) -> sqlx::Error {
    let mut one = pool.begin().await.unwrap();
    let mut two = pool.begin().await.unwrap();
    let sum = "SELECT sum(n)::integer FROM counters";
    let _: i32 = sqlx::query_scalar(sum).fetch_one(&mut *one).await.unwrap();
    let _: i32 = sqlx::query_scalar(sum).fetch_one(&mut *two).await.unwrap();
    sqlx::query("UPDATE counters SET n = n + 1 WHERE id = 1")
        .execute(&mut *one)
        .await
        .unwrap();
    sqlx::query("UPDATE counters SET n = n + 1 WHERE id = 2")
        .execute(&mut *two)
        .await
        .unwrap();
    one.commit().await.unwrap();
    two.commit().await.unwrap_err()
}

/// A serialization failure is retryable, also behind a
/// `#[error(transparent)]` wrapper; a unique violation is not.
#[tokio::test]
async fn postgres_a_serialization_failure_is_tried_again_a_bounded_number_of_times() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let pool = pg_setup(cluster, "sqlx_serialization", 2, "serializable").await;
    let failure = serialization_failure(&pool).await;
    assert!(pg::is_retryable(&failure), "{failure}");
    let failure = TestError::Sqlx(failure);
    assert!(pg::is_retryable(&failure));

    // A body that fails with it is run again, its first attempt rolled
    // back; one that always does is given up after `ATTEMPTS` calls.
    let failure = std::sync::Mutex::new(Some(failure));
    let id = TransactionId::generate();
    let calls = AtomicU32::new(0);
    let outcome = pg::run_branch(&pool, &branch(id, Phase::Try), |tx| {
        let (failure, calls) = (&failure, &calls);
        Box::pin(async move {
            calls.fetch_add(1, Ordering::Relaxed);
            sqlx::query("INSERT INTO effects VALUES ($1, 'wallet', 'try')")
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
            match failure.lock().unwrap().take() {
                Some(error) => Err(error),
                None => Ok(()),
            }
        })
    })
    .await;
    assert_eq!(outcome.unwrap(), Outcome::Ran(()));
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    assert_eq!(
        pg_effects(&pool, id).await.len(),
        1,
        "the first rolled back"
    );
    let mut failures = Vec::new();
    for _ in 0..tcc::barrier::ATTEMPTS {
        failures.push(TestError::Sqlx(serialization_failure(&pool).await));
    }
    let failures = std::sync::Mutex::new(failures);
    let outcome = pg::run_branch(
        &pool,
        &branch(TransactionId::generate(), Phase::Try),
        |_| {
            let failures = &failures;
            Box::pin(async move { Err::<(), _>(failures.lock().unwrap().pop().unwrap()) })
        },
    )
    .await;
    assert!(
        matches!(&outcome, Err(e) if pg::is_retryable(e)),
        "{outcome:?}"
    );
    assert!(failures.lock().unwrap().is_empty(), "called ATTEMPTS times");

    let duplicate = sqlx::query("INSERT INTO counters VALUES (1, 0)")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(!pg::is_retryable(&duplicate), "{duplicate}");
}

/// The barrier of a participant on sqlx and of one on tokio-postgres are
/// one table: a Try through one and a Confirm through the other.
#[tokio::test]
async fn postgres_the_table_is_the_tokio_postgres_backends() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let pool = pg_setup(cluster, "sqlx_shared_table", 1, "read committed").await;
    let mut client = cluster.connect("sqlx_shared_table").await;
    let id = TransactionId::generate();
    let tried = tcc::barrier::postgres::run_branch(&mut client, &branch(id, Phase::Try), |_| {
        Box::pin(async { Ok::<_, TestError>(()) })
    })
    .await;
    assert_eq!(tried.unwrap(), Outcome::Ran(()));
    assert_eq!(
        pg_deliver(&pool, &branch(id, Phase::Confirm), false)
            .await
            .unwrap(),
        Outcome::Ran(())
    );
    let again =
        tcc::barrier::postgres::run_branch(&mut client, &branch(id, Phase::Confirm), |_| {
            Box::pin(async { Ok::<_, TestError>(()) })
        })
        .await;
    assert_eq!(again.unwrap(), Outcome::Duplicate);
}

/// The business write of a test phase, on the caller's transaction.
async fn pg_insert(tx: &mut sqlx::PgConnection, branch: &Branch) -> Result<(), TestError> {
    let (id, service, phase) = row_of(branch);
    sqlx::query("INSERT INTO effects VALUES ($1, $2, $3)")
        .bind(id)
        .bind(service)
        .bind(phase)
        .execute(tx)
        .await?;
    Ok(())
}

#[tokio::test]
async fn postgres_guard_runs_inside_the_callers_transaction() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let pool = pg_setup(cluster, "sqlx_guard", 1, "read committed").await;
    let id = TransactionId::generate();
    let try_branch = branch(id, Phase::Try);

    // Rolled back by the caller: neither the row nor the effect stays.
    let mut tx = pool.begin().await.unwrap();
    let outcome = pg::guard(&mut tx, &try_branch, |tx| pg_insert(tx, &try_branch)).await;
    assert!(matches!(outcome, Ok(Outcome::Ran(()))));
    tx.rollback().await.unwrap();
    assert_eq!(pg_state(&pool, &try_branch).await, None);
    assert!(pg_effects(&pool, id).await.is_empty());

    // Committed by the caller: both; delivered again, a duplicate.
    let mut tx = pool.begin().await.unwrap();
    let outcome = pg::guard(&mut tx, &try_branch, |tx| pg_insert(tx, &try_branch)).await;
    assert!(matches!(outcome, Ok(Outcome::Ran(()))));
    tx.commit().await.unwrap();
    assert_eq!(pg_state(&pool, &try_branch).await.as_deref(), Some("tried"));
    let mut tx = pool.begin().await.unwrap();
    let outcome = pg::guard(&mut tx, &try_branch, |tx| pg_insert(tx, &try_branch)).await;
    assert!(matches!(outcome, Ok(Outcome::Duplicate)));
    tx.commit().await.unwrap();
    assert_eq!(pg_effects(&pool, id).await.len(), 1);
}

#[tokio::test]
async fn postgres_dtm_453_a_try_after_its_cancel_is_refused_and_559_rolls_back_with_the_business() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let pool = pg_setup(cluster, "sqlx_dtm", 1, "read committed").await;
    // DTM #559: a failed phase leaves neither its row nor its effect.
    let id = TransactionId::generate();
    let failed = pg_deliver(&pool, &branch(id, Phase::Try), true).await;
    assert!(matches!(failed, Err(TestError::Injected)));
    assert_eq!(pg_state(&pool, &branch(id, Phase::Try)).await, None);
    assert!(pg_effects(&pool, id).await.is_empty());
    // DTM #453: the Cancel, then the late Try, refused (not a success).
    let cancel = pg_deliver(&pool, &branch(id, Phase::Cancel), false).await;
    assert_eq!(cancel.unwrap(), Outcome::EmptyCancel);
    let late = pg_deliver(&pool, &branch(id, Phase::Try), false).await;
    assert!(
        matches!(&late, Err(TestError::Barrier(e)) if e.kind() == BarrierErrorKind::TryAfterCancel && e.is_permanent()),
        "{late:?}"
    );
    assert!(pg_effects(&pool, id).await.is_empty());
}

#[tokio::test]
async fn postgres_seata_6374_a_failed_try_that_announced_its_outside_effects_is_cancelled() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let pool = pg_setup(cluster, "sqlx_seata_6374", 2, "read committed").await;
    let id = TransactionId::generate();
    let try_branch = branch(id, Phase::Try);
    assert_eq!(
        pg::announce(&pool, &try_branch).await.unwrap(),
        Outcome::Ran(())
    );
    let failed = pg_deliver(&pool, &try_branch, true).await;
    assert!(matches!(failed, Err(TestError::Injected)));
    assert_eq!(
        pg_state(&pool, &try_branch).await.as_deref(),
        Some("started")
    );

    let mut tx = pool.begin().await.unwrap();
    let entry = pg::enter(&mut tx, &branch(id, Phase::Cancel))
        .await
        .unwrap();
    assert_eq!(entry, Entry::RunAfterUncommittedTry);
    tx.rollback().await.unwrap();
    assert_eq!(
        pg_deliver(&pool, &branch(id, Phase::Cancel), false)
            .await
            .unwrap(),
        Outcome::Ran(())
    );
    let again = pg::announce(&pool, &try_branch).await.unwrap_err();
    assert_eq!(again.kind(), BarrierErrorKind::TryAfterCancel);
    let refused = pg::announce(&pool, &branch(id, Phase::Confirm))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), BarrierErrorKind::AnnounceOutsideTry);
}

#[tokio::test]
async fn postgres_cleanup_deletes_old_finished_rows_only() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let pool = pg_setup(cluster, "sqlx_cleanup", 1, "read committed").await;
    let mut unfinished = Vec::new();
    for i in 0..7 {
        let id = TransactionId::generate();
        pg_deliver(&pool, &branch(id, Phase::Try), false)
            .await
            .unwrap();
        if i % 2 == 0 {
            pg_deliver(&pool, &branch(id, Phase::Confirm), false)
                .await
                .unwrap();
        } else {
            unfinished.push(id);
        }
    }
    // 4 finished, 3 tried: all a day old but one finished row.
    sqlx::query("UPDATE tcc_barrier SET updated_at = now() - interval '1 day'")
        .execute(&pool)
        .await
        .unwrap();
    let id = TransactionId::generate();
    pg_deliver(&pool, &branch(id, Phase::Cancel), false)
        .await
        .unwrap();
    let deleted = pg::cleanup(&pool, Duration::from_secs(3600), 3)
        .await
        .unwrap();
    assert_eq!(deleted, 4);
    let left: Vec<String> = sqlx::query_scalar("SELECT state FROM tcc_barrier ORDER BY state")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["cancelled_before_try", "tried", "tried", "tried"]);
    let kept = pg::cleanup(&pool, Duration::MAX, 3).await.unwrap();
    assert_eq!(kept, 0, "the longest horizon keeps every row");
}

#[tokio::test]
async fn postgres_the_barrier_without_migrate_fails_at_once_and_says_to_call_migrate() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let admin = cluster.connect("sqlx_no_table").await;
    admin
        .batch_execute("DROP SCHEMA IF EXISTS sqlx_no_table CASCADE; CREATE SCHEMA sqlx_no_table;")
        .await
        .unwrap();
    let options: PgConnectOptions = cluster.url("sqlx_no_table").parse().unwrap();
    let pool = PgPool::connect_with(options).await.unwrap();
    let error = pg::announce(&pool, &branch(TransactionId::generate(), Phase::Try))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), BarrierErrorKind::MissingTable);
    assert!(error.is_permanent());
    assert!(
        error
            .to_string()
            .contains("tcc::barrier::sqlx::postgres::migrate"),
        "{error}"
    );
}

// SQLite.

/// A database file in the temporary directory, removed on drop, with the
/// barrier's table and the test tables.
struct Db {
    path: PathBuf,
}

impl Db {
    async fn new(migrate: bool) -> Db {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "tcc-barrier-sqlx-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let db = Db { path };
        let pool = db.pool(1, Duration::from_secs(10)).await;
        if migrate {
            lite::migrate(&pool).await.unwrap();
            lite::migrate(&pool).await.expect("migrate is idempotent");
        }
        sqlx::raw_sql(
            "CREATE TABLE effects (transaction_id TEXT, service TEXT, phase TEXT);
             CREATE TABLE outside (n INTEGER); INSERT INTO outside VALUES (0);",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        db
    }

    fn options(&self, busy_timeout: Duration) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(busy_timeout)
    }

    async fn pool(&self, connections: u32, busy_timeout: Duration) -> SqlitePool {
        SqlitePoolOptions::new()
            .max_connections(connections)
            .connect_with(self.options(busy_timeout))
            .await
            .unwrap()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

async fn lite_deliver(
    pool: &SqlitePool,
    branch: &Branch,
    fail: bool,
) -> Result<Outcome<()>, TestError> {
    lite::run_branch(pool, branch, |tx| {
        Box::pin(async move {
            let (id, service, phase) = row_of(branch);
            sqlx::query("INSERT INTO effects VALUES (?1, ?2, ?3)")
                .bind(id)
                .bind(service)
                .bind(phase)
                .execute(&mut **tx)
                .await?;
            if fail {
                Err(TestError::Injected)
            } else {
                Ok(())
            }
        })
    })
    .await
}

async fn lite_effects(pool: &SqlitePool, transaction: TransactionId) -> Vec<(String, String)> {
    sqlx::query_as("SELECT service, phase FROM effects WHERE transaction_id = ?1 ORDER BY phase")
        .bind(transaction.to_string())
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn lite_state(pool: &SqlitePool, branch: &Branch) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM tcc_barrier WHERE transaction_id = ?1 AND service = ?2")
        .bind(branch.transaction_id().to_string())
        .bind(branch.service_name())
        .fetch_optional(pool)
        .await
        .unwrap()
}

struct SqlxSqlite {
    _db: Db,
    pool: SqlitePool,
    lanes: usize,
}

impl Backend for SqlxSqlite {
    fn lanes(&self) -> usize {
        self.lanes
    }

    fn deliver(
        &self,
        _lane: usize,
        branch: Branch,
        fail: bool,
    ) -> BoxFuture<'_, Result<Outcome<()>, TestError>> {
        Box::pin(async move { lite_deliver(&self.pool, &branch, fail).await })
    }

    fn announce(
        &self,
        _lane: usize,
        branch: Branch,
    ) -> BoxFuture<'_, Result<Outcome<()>, TestError>> {
        Box::pin(async move { Ok(lite::announce(&self.pool, &branch).await?) })
    }

    fn effects(&self, transaction: TransactionId) -> BoxFuture<'_, Vec<(String, String)>> {
        Box::pin(async move { lite_effects(&self.pool, transaction).await })
    }
}

#[test]
fn sqlite_interleavings_of_deliveries_follow_the_rules() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend = runtime.block_on(async {
        let db = Db::new(true).await;
        let pool = db.pool(4, Duration::from_secs(10)).await;
        SqlxSqlite {
            _db: db,
            pool,
            lanes: 4,
        }
    });
    barrier::interleavings(&runtime, Arc::new(backend));
}

/// Another connection holds the write lock and the pool waits for no one
/// (busy timeout zero): the error is busy, also behind a transparent
/// wrapper. A body that fails with it is run again, its first attempt
/// rolled back; one that always does is given up after `ATTEMPTS` calls.
#[tokio::test]
async fn sqlite_a_busy_database_is_tried_again_a_bounded_number_of_times() {
    let db = Db::new(true).await;
    let pool = db.pool(1, Duration::ZERO).await;
    let mut holder = sqlx::SqliteConnection::connect_with(&db.options(Duration::ZERO))
        .await
        .unwrap();
    let held = holder.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let busy = pool.begin_with("BEGIN IMMEDIATE").await.unwrap_err();
    assert!(lite::is_busy(&busy), "{busy}");
    let wrapped = TestError::Sqlx(busy);
    assert!(lite::is_busy(&wrapped));
    held.commit().await.unwrap();
    let not_busy = sqlx::query("SELECT * FROM no_such_table")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(!lite::is_busy(&not_busy), "{not_busy}");

    let busy = std::sync::Mutex::new(Some(wrapped));
    let id = TransactionId::generate();
    let calls = AtomicU32::new(0);
    let outcome = lite::run_branch(&pool, &branch(id, Phase::Try), |tx| {
        let (busy, calls) = (&busy, &calls);
        Box::pin(async move {
            calls.fetch_add(1, Ordering::Relaxed);
            sqlx::query("INSERT INTO effects VALUES (?1, 'wallet', 'try')")
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
            match busy.lock().unwrap().take() {
                Some(error) => Err(error),
                None => Ok(()),
            }
        })
    })
    .await;
    assert_eq!(outcome.unwrap(), Outcome::Ran(()));
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    assert_eq!(
        lite_effects(&pool, id).await.len(),
        1,
        "the first rolled back"
    );

    // A body that is always busy: given up after `ATTEMPTS` calls, busy.
    let mut holder = sqlx::SqliteConnection::connect_with(&db.options(Duration::ZERO))
        .await
        .unwrap();
    let mut failures = Vec::new();
    {
        let held = holder.begin_with("BEGIN IMMEDIATE").await.unwrap();
        for _ in 0..tcc::barrier::ATTEMPTS {
            let busy = pool.begin_with("BEGIN IMMEDIATE").await.unwrap_err();
            failures.push(TestError::Sqlx(busy));
        }
        held.commit().await.unwrap();
    }
    let failures = std::sync::Mutex::new(failures);
    let outcome = lite::run_branch(
        &pool,
        &branch(TransactionId::generate(), Phase::Try),
        |_| {
            let failures = &failures;
            Box::pin(async move { Err::<(), _>(failures.lock().unwrap().pop().unwrap()) })
        },
    )
    .await;
    assert!(
        matches!(&outcome, Err(e) if lite::is_busy(e)),
        "{outcome:?}"
    );
    assert!(failures.lock().unwrap().is_empty(), "called ATTEMPTS times");
}

/// The business write of a test phase, on the caller's transaction.
async fn lite_insert(tx: &mut sqlx::SqliteConnection, branch: &Branch) -> Result<(), TestError> {
    let (id, service, phase) = row_of(branch);
    sqlx::query("INSERT INTO effects VALUES (?1, ?2, ?3)")
        .bind(id)
        .bind(service)
        .bind(phase)
        .execute(tx)
        .await?;
    Ok(())
}

#[tokio::test]
async fn sqlite_guard_runs_inside_the_callers_transaction() {
    let db = Db::new(true).await;
    let pool = db.pool(1, Duration::from_secs(10)).await;
    let id = TransactionId::generate();
    let try_branch = branch(id, Phase::Try);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let outcome = lite::guard(&mut tx, &try_branch, |tx| lite_insert(tx, &try_branch)).await;
    assert!(matches!(outcome, Ok(Outcome::Ran(()))));
    tx.rollback().await.unwrap();
    assert_eq!(lite_state(&pool, &try_branch).await, None);
    assert!(lite_effects(&pool, id).await.is_empty());

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let outcome = lite::guard(&mut tx, &try_branch, |tx| lite_insert(tx, &try_branch)).await;
    assert!(matches!(outcome, Ok(Outcome::Ran(()))));
    tx.commit().await.unwrap();
    assert_eq!(
        lite_state(&pool, &try_branch).await.as_deref(),
        Some("tried")
    );
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let outcome = lite::guard(&mut tx, &try_branch, |tx| lite_insert(tx, &try_branch)).await;
    assert!(matches!(outcome, Ok(Outcome::Duplicate)));
    tx.commit().await.unwrap();
    assert_eq!(lite_effects(&pool, id).await.len(), 1);
}

#[tokio::test]
async fn sqlite_dtm_453_a_try_after_its_cancel_is_refused_and_559_rolls_back_with_the_business() {
    let db = Db::new(true).await;
    let pool = db.pool(1, Duration::from_secs(10)).await;
    let id = TransactionId::generate();
    let failed = lite_deliver(&pool, &branch(id, Phase::Try), true).await;
    assert!(matches!(failed, Err(TestError::Injected)));
    assert_eq!(lite_state(&pool, &branch(id, Phase::Try)).await, None);
    assert!(lite_effects(&pool, id).await.is_empty());
    let cancel = lite_deliver(&pool, &branch(id, Phase::Cancel), false).await;
    assert_eq!(cancel.unwrap(), Outcome::EmptyCancel);
    let late = lite_deliver(&pool, &branch(id, Phase::Try), false).await;
    assert!(
        matches!(&late, Err(TestError::Barrier(e)) if e.kind() == BarrierErrorKind::TryAfterCancel && e.is_permanent()),
        "{late:?}"
    );
    assert!(lite_effects(&pool, id).await.is_empty());
}

#[tokio::test]
async fn sqlite_seata_6374_a_failed_try_that_announced_its_outside_effects_is_cancelled() {
    let db = Db::new(true).await;
    let pool = db.pool(1, Duration::from_secs(10)).await;
    let id = TransactionId::generate();
    let try_branch = branch(id, Phase::Try);
    assert_eq!(
        lite::announce(&pool, &try_branch).await.unwrap(),
        Outcome::Ran(())
    );
    let failed = lite_deliver(&pool, &try_branch, true).await;
    assert!(matches!(failed, Err(TestError::Injected)));
    assert_eq!(
        lite_state(&pool, &try_branch).await.as_deref(),
        Some("started")
    );
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let entry = lite::enter(&mut tx, &branch(id, Phase::Cancel))
        .await
        .unwrap();
    assert_eq!(entry, Entry::RunAfterUncommittedTry);
    tx.rollback().await.unwrap();
    assert_eq!(
        lite_deliver(&pool, &branch(id, Phase::Cancel), false)
            .await
            .unwrap(),
        Outcome::Ran(())
    );
    let again = lite::announce(&pool, &try_branch).await.unwrap_err();
    assert_eq!(again.kind(), BarrierErrorKind::TryAfterCancel);
}

#[tokio::test]
async fn sqlite_cleanup_deletes_old_finished_rows_only() {
    let db = Db::new(true).await;
    let pool = db.pool(1, Duration::from_secs(10)).await;
    for i in 0..7 {
        let id = TransactionId::generate();
        lite_deliver(&pool, &branch(id, Phase::Try), false)
            .await
            .unwrap();
        if i % 2 == 0 {
            lite_deliver(&pool, &branch(id, Phase::Confirm), false)
                .await
                .unwrap();
        }
    }
    sqlx::query("UPDATE tcc_barrier SET updated_at = updated_at - 86400000")
        .execute(&pool)
        .await
        .unwrap();
    let id = TransactionId::generate();
    lite_deliver(&pool, &branch(id, Phase::Cancel), false)
        .await
        .unwrap();
    let deleted = lite::cleanup(&pool, Duration::from_secs(3600), 3)
        .await
        .unwrap();
    assert_eq!(deleted, 4);
    let left: Vec<String> = sqlx::query_scalar("SELECT state FROM tcc_barrier ORDER BY state")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["cancelled_before_try", "tried", "tried", "tried"]);
    let kept = lite::cleanup(&pool, Duration::MAX, 3).await.unwrap();
    assert_eq!(kept, 0, "the longest horizon keeps every row");
}

#[tokio::test]
async fn sqlite_the_barrier_without_migrate_fails_at_once_and_says_to_call_migrate() {
    let db = Db::new(false).await;
    let pool = db.pool(1, Duration::from_secs(10)).await;
    let error = lite::announce(&pool, &branch(TransactionId::generate(), Phase::Try))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), BarrierErrorKind::MissingTable);
    assert!(error.is_permanent());
    assert!(
        error
            .to_string()
            .contains("tcc::barrier::sqlx::sqlite::migrate"),
        "{error}"
    );
}
