//! The participant barrier on SQLite: the shared property suite, races on a
//! real database file, busy retries, cleanup, and one test per anchor bug
//! of DTM and Seata showing ours does not have it.

mod barrier;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use barrier::{Backend, BoxFuture, TestError};
use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use tcc::barrier::{self as tb, BarrierErrorKind, Branch, Entry, Outcome, sqlite};
use tcc::{Orchestrator, Permanent, Phase, Service, TransactionId};

/// A database file in the temporary directory, removed on drop.
struct Db {
    path: PathBuf,
}

impl Db {
    fn new() -> Db {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "tcc-barrier-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let db = Db { path };
        let conn = db.open();
        sqlite::migrate(&conn).unwrap();
        sqlite::migrate(&conn).expect("migrate is idempotent");
        conn.execute_batch(
            "CREATE TABLE effects (transaction_id TEXT, service TEXT, phase TEXT);
             CREATE TABLE outside (n INTEGER); INSERT INTO outside VALUES (0);",
        )
        .unwrap();
        db
    }

    fn open(&self) -> Connection {
        let conn = Connection::open(&self.path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

/// The business write of a test phase: one `effects` row.
fn effect(tx: &Transaction<'_>, branch: &Branch) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO effects VALUES (?1, ?2, ?3)",
        params![
            branch.transaction_id().to_string(),
            branch.service_name(),
            branch.phase().as_str()
        ],
    )
}

fn effects(conn: &Connection, transaction: TransactionId) -> Vec<(String, String)> {
    let mut statement = conn
        .prepare("SELECT service, phase FROM effects WHERE transaction_id = ?1")
        .unwrap();
    statement
        .query_map([transaction.to_string()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn state(conn: &Connection, branch: &Branch) -> Option<String> {
    conn.query_row(
        "SELECT state FROM tcc_barrier WHERE transaction_id = ?1 AND service = ?2",
        params![branch.transaction_id().to_string(), branch.service_name()],
        |row| row.get(0),
    )
    .ok()
}

/// A delivery through `run_branch`: the effect, then a failure if `fail`.
fn deliver(conn: &mut Connection, branch: &Branch, fail: bool) -> Result<Outcome<()>, TestError> {
    sqlite::run_branch(conn, branch, |tx| {
        effect(tx, branch)?;
        if fail {
            Err(TestError::Injected)
        } else {
            Ok(())
        }
    })
}

struct Sqlite {
    _db: Db,
    lanes: Vec<Arc<Mutex<Connection>>>,
}

impl Sqlite {
    fn new(lanes: usize) -> Sqlite {
        let db = Db::new();
        let lanes = (0..lanes)
            .map(|_| Arc::new(Mutex::new(db.open())))
            .collect();
        Sqlite { _db: db, lanes }
    }
}

impl Backend for Sqlite {
    fn lanes(&self) -> usize {
        self.lanes.len()
    }

    fn deliver(
        &self,
        lane: usize,
        branch: Branch,
        fail: bool,
    ) -> BoxFuture<'_, Result<Outcome<()>, TestError>> {
        let conn = self.lanes[lane].clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || deliver(&mut conn.lock().unwrap(), &branch, fail))
                .await
                .unwrap()
        })
    }

    fn announce(
        &self,
        lane: usize,
        branch: Branch,
    ) -> BoxFuture<'_, Result<Outcome<()>, TestError>> {
        let conn = self.lanes[lane].clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                Ok(sqlite::announce(&mut conn.lock().unwrap(), &branch)?)
            })
            .await
            .unwrap()
        })
    }

    fn effects(&self, transaction: TransactionId) -> BoxFuture<'_, Vec<(String, String)>> {
        Box::pin(async move { effects(&self.lanes[0].lock().unwrap(), transaction) })
    }
}

#[test]
fn interleavings_of_deliveries_follow_the_rules() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    barrier::interleavings(&runtime, Arc::new(Sqlite::new(4)));
}

#[test]
fn the_model_follows_the_rules() {
    barrier::model_follows_the_rules();
}

fn branch(transaction: TransactionId, phase: Phase) -> Branch {
    Branch::new(transaction, "wallet", phase)
}

/// A Try that holds its transaction open until told to finish, then
/// commits or fails. Returns once the Try's row is written.
fn slow_try(db: &Db, branch: Branch, commit: bool) -> (mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (entered_tx, entered) = mpsc::channel();
    let (finish, finish_rx) = mpsc::channel::<()>();
    let mut conn = db.open();
    let handle = thread::spawn(move || {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        assert_eq!(sqlite::enter(&tx, &branch).unwrap(), Entry::Run);
        effect(&tx, &branch).unwrap();
        entered_tx.send(()).unwrap();
        finish_rx.recv().unwrap();
        if commit {
            tx.commit().unwrap();
        }
    });
    entered.recv().unwrap();
    (finish, handle)
}

#[test]
fn a_cancel_racing_a_slow_try_runs_after_the_try_commits() {
    let db = Db::new();
    let id = TransactionId::generate();
    let (finish, try_thread) = slow_try(&db, branch(id, Phase::Try), true);
    let mut conn = db.open();
    let cancel = thread::spawn(move || {
        let outcome = deliver(&mut conn, &branch(id, Phase::Cancel), false);
        (outcome.unwrap(), conn)
    });
    thread::sleep(Duration::from_millis(20));
    assert!(
        !cancel.is_finished(),
        "the cancel waits for the try's transaction"
    );
    finish.send(()).unwrap();
    try_thread.join().unwrap();
    let (outcome, conn) = cancel.join().unwrap();
    assert_eq!(outcome, Outcome::Ran(()));
    let mut seen = effects(&conn, id);
    seen.sort();
    assert_eq!(
        seen,
        [
            ("wallet".into(), "cancel".into()),
            ("wallet".into(), "try".into())
        ]
    );
}

#[test]
fn a_cancel_racing_a_slow_try_that_fails_is_an_empty_cancel() {
    let db = Db::new();
    let id = TransactionId::generate();
    let (finish, try_thread) = slow_try(&db, branch(id, Phase::Try), false);
    let mut conn = db.open();
    let cancel = thread::spawn(move || {
        let outcome = deliver(&mut conn, &branch(id, Phase::Cancel), false);
        (outcome.unwrap(), conn)
    });
    finish.send(()).unwrap();
    try_thread.join().unwrap();
    let (outcome, mut conn) = cancel.join().unwrap();
    assert_eq!(outcome, Outcome::EmptyCancel);
    assert!(effects(&conn, id).is_empty());
    // And the Try, delivered again, is refused.
    let late = deliver(&mut conn, &branch(id, Phase::Try), false).unwrap_err();
    assert!(matches!(late, TestError::Barrier(e) if e.kind() == BarrierErrorKind::TryAfterCancel));
}

/// Seata #6679: racing rollbacks of a branch with no fence row deadlocked
/// on MySQL gap locks. Here: one empty cancel, the others duplicates.
#[test]
fn seata_6679_racing_cancels_of_a_branch_without_a_row_do_not_deadlock() {
    let db = Db::new();
    let id = TransactionId::generate();
    let start = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let mut conn = db.open();
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                deliver(&mut conn, &branch(id, Phase::Cancel), false).unwrap()
            })
        })
        .collect();
    let mut outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    outcomes.sort_by_key(|o| matches!(o, Outcome::Duplicate));
    assert_eq!(
        outcomes,
        [
            Outcome::EmptyCancel,
            Outcome::Duplicate,
            Outcome::Duplicate,
            Outcome::Duplicate
        ]
    );
    assert_eq!(
        state(&db.open(), &branch(id, Phase::Cancel)).as_deref(),
        Some("cancelled_before_try")
    );
}

/// Holds SQLite's write lock from another connection until told to stop.
fn hold_write_lock(db: &Db) -> (mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (locked_tx, locked) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let mut conn = db.open();
    let handle = thread::spawn(move || {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        locked_tx.send(()).unwrap();
        let _ = release_rx.recv();
        tx.commit().unwrap();
    });
    locked.recv().unwrap();
    (release, handle)
}

/// The lock held for [`a_busy_database_is_tried_again`], given up by the
/// first busy attempt: its release, and the thread that commits then.
type HeldLock = (mpsc::Sender<()>, thread::JoinHandle<()>);
static HELD: Mutex<Option<HeldLock>> = Mutex::new(None);

#[test]
fn a_busy_database_is_tried_again() {
    let db = Db::new();
    let mut conn = db.open();
    conn.busy_timeout(Duration::ZERO).unwrap();
    let (release, holder) = hold_write_lock(&db);
    // Without the retry, this is the error a phase would see.
    let busy = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap_err();
    assert!(sqlite::is_busy(&busy), "{busy}");
    // The first attempt that finds the database busy releases the lock and
    // waits for its holder to commit, then fails busy all the same: the
    // attempt after it, and only a retry, finds the database free. (A
    // release timed by a sleep raced the random backoff.)
    *HELD.lock().unwrap() = Some((release, holder));
    conn.busy_handler(Some(|_| {
        if let Some((release, holder)) = HELD.lock().unwrap().take() {
            release.send(()).unwrap();
            holder.join().unwrap();
        }
        false
    }))
    .unwrap();
    let id = TransactionId::generate();
    let calls = AtomicU32::new(0);
    let outcome = sqlite::run_branch(&mut conn, &branch(id, Phase::Try), |tx| {
        calls.fetch_add(1, Ordering::Relaxed);
        effect(tx, &branch(id, Phase::Try)).map_err(TestError::from)
    });
    assert_eq!(outcome.unwrap(), Outcome::Ran(1));
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert!(
        HELD.lock().unwrap().is_none(),
        "the database was found busy"
    );
}

#[test]
fn busy_retries_are_bounded() {
    let db = Db::new();
    let mut conn = db.open();
    conn.busy_timeout(Duration::ZERO).unwrap();
    let (release, holder) = hold_write_lock(&db);
    let id = TransactionId::generate();
    let error = deliver(&mut conn, &branch(id, Phase::Try), false).unwrap_err();
    assert!(sqlite::is_busy(&error), "{error}");
    assert!(
        !Permanent::is_in(&error),
        "busy is transient: the runtime may retry"
    );
    release.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(
        deliver(&mut conn, &branch(id, Phase::Try), false).unwrap(),
        Outcome::Ran(())
    );
}

/// DTM #453: a Try blocked by the barrier was reported as success, so the
/// coordinator went on as if it had reserved. Here the hanging Try of a
/// transaction the runtime cancelled (its Try timed out) is refused with a
/// permanent error and reserves nothing.
#[tokio::test(start_paused = true)]
async fn dtm_453_a_try_after_its_cancel_is_refused_not_reported_as_success() {
    let db = Db::new();
    let conn = Arc::new(Mutex::new(db.open()));
    let cancel_conn = conn.clone();
    let late = Service::new(
        "wallet",
        std::future::pending::<Result<(), TestError>>,
        || async { Ok::<(), TestError>(()) },
        move || {
            let conn = cancel_conn.clone();
            async move {
                let outcome = sqlite::run(&mut conn.lock().unwrap(), |tx| {
                    effect(tx, &Branch::current()?)?;
                    Ok::<_, TestError>(())
                })?;
                assert_eq!(outcome, Outcome::EmptyCancel);
                Ok::<(), TestError>(())
            }
        },
    );
    let error = Orchestrator::new([late])
        .try_timeout(Duration::from_secs(1))
        .orchestrate()
        .await
        .unwrap_err();
    let id = error.report().expect("a report").transaction_id();
    // The Try's request reaches the database now, after its Cancel.
    let mut conn = conn.lock().unwrap();
    let refused = deliver(&mut conn, &branch(id, Phase::Try), false).unwrap_err();
    assert!(
        matches!(&refused, TestError::Barrier(e) if e.kind() == BarrierErrorKind::TryAfterCancel)
    );
    assert!(Permanent::is_in(&refused));
    assert!(
        effects(&conn, id).is_empty(),
        "the late try reserved nothing"
    );
}

/// DTM #559: a barrier kept in another database than the business data is
/// not atomic with it. Here the barrier runs in the phase's own transaction:
/// a Confirm whose first attempt fails after its write leaves neither the
/// write nor the barrier's row, so the retry runs it, once.
#[tokio::test(start_paused = true)]
async fn dtm_559_the_barrier_commits_and_rolls_back_with_the_business_change() {
    let db = Db::new();
    let conn = Arc::new(Mutex::new(db.open()));
    let attempts = Arc::new(AtomicU32::new(0));
    let (try_conn, confirm_conn, cancel_conn) = (conn.clone(), conn.clone(), conn.clone());
    let confirm_attempts = attempts.clone();
    let phase = move |conn: Arc<Mutex<Connection>>, fail_first: Option<Arc<AtomicU32>>| async move {
        let mut conn = conn.lock().unwrap();
        sqlite::run(&mut conn, |tx| {
            effect(tx, &Branch::current()?)?;
            match &fail_first {
                Some(n) if n.fetch_add(1, Ordering::Relaxed) == 0 => Err(TestError::Injected),
                _ => Ok(()),
            }
        })
        .map(drop)
    };
    let wallet = Service::new(
        "wallet",
        move || phase(try_conn.clone(), None),
        move || phase(confirm_conn.clone(), Some(confirm_attempts.clone())),
        move || phase(cancel_conn.clone(), None),
    );
    let report = Orchestrator::new([wallet])
        .max_retries(3)
        .orchestrate()
        .await
        .unwrap();
    let id = report.transaction_id();
    assert_eq!(
        report.service("wallet").unwrap().attempts(Phase::Confirm),
        2
    );
    let conn = conn.lock().unwrap();
    let mut seen = effects(&conn, id);
    seen.sort();
    assert_eq!(
        seen,
        [
            ("wallet".into(), "confirm".into()),
            ("wallet".into(), "try".into())
        ]
    );
    assert_eq!(
        state(&conn, &branch(id, Phase::Confirm)).as_deref(),
        Some("confirmed")
    );
}

/// seata-go #685: an empty rollback failed, so it was retried until the
/// server gave up. Here a Cancel after a Try that failed before touching
/// the database succeeds on its first attempt.
#[tokio::test(start_paused = true)]
async fn seata_go_685_an_empty_cancel_succeeds_at_once() {
    let db = Db::new();
    let conn = Arc::new(Mutex::new(db.open()));
    let cancel_conn = conn.clone();
    let wallet = Service::new(
        "wallet",
        || async { Err::<(), _>(TestError::Injected) },
        || async { Ok::<(), TestError>(()) },
        move || {
            let conn = cancel_conn.clone();
            async move {
                sqlite::run(&mut conn.lock().unwrap(), |tx| {
                    effect(tx, &Branch::current()?)?;
                    Ok::<_, TestError>(())
                })
                .map(drop)
            }
        },
    );
    let error = Orchestrator::new([wallet])
        .max_retries(5)
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(error.failures().len(), 1, "only the try failed: {error}");
    let report = error.report().unwrap();
    assert_eq!(report.service("wallet").unwrap().attempts(Phase::Cancel), 1);
    let conn = conn.lock().unwrap();
    assert_eq!(
        state(&conn, &branch(report.transaction_id(), Phase::Cancel)).as_deref(),
        Some("cancelled_before_try")
    );
    assert!(effects(&conn, report.transaction_id()).is_empty());
}

/// Seata #5256, #6374, #4180: a Try that failed rolled back its fence row,
/// so its Cancel was taken for an empty one and never undid what the Try had
/// done outside the database. Here a Try that announces itself first gets
/// its Cancel run; one that does not is an empty cancel, as documented.
#[test]
fn seata_6374_a_failed_try_that_announced_its_outside_effects_is_cancelled() {
    let db = Db::new();
    let mut conn = db.open();
    let outside = |conn: &Connection| -> i64 {
        conn.query_row("SELECT n FROM outside", [], |row| row.get(0))
            .unwrap()
    };
    let id = TransactionId::generate();
    let try_branch = branch(id, Phase::Try);
    assert_eq!(
        sqlite::announce(&mut conn, &try_branch).unwrap(),
        Outcome::Ran(())
    );
    // The outside effect (another system, standing in as its own table).
    conn.execute("UPDATE outside SET n = n + 1", []).unwrap();
    // The Try's own transaction then fails.
    assert!(matches!(
        deliver(&mut conn, &try_branch, true),
        Err(TestError::Injected)
    ));
    assert_eq!(state(&conn, &try_branch).as_deref(), Some("started"));

    let tx = conn.transaction().unwrap();
    assert_eq!(
        sqlite::enter(&tx, &branch(id, Phase::Cancel)).unwrap(),
        Entry::RunAfterUncommittedTry
    );
    drop(tx);
    let outcome = sqlite::run_branch(&mut conn, &branch(id, Phase::Cancel), |tx| {
        tx.execute("UPDATE outside SET n = n - 1", [])
            .map_err(TestError::from)
    });
    assert_eq!(outcome.unwrap(), Outcome::Ran(1));
    assert_eq!(outside(&conn), 0, "the cancel undid the outside effect");
    // A retried announce, or the Try itself, now comes after the Cancel.
    let again = sqlite::announce(&mut conn, &try_branch).unwrap_err();
    assert_eq!(again.kind(), BarrierErrorKind::TryAfterCancel);
    // Announcing from another phase is a mistake, not a silent no-op.
    let wrong = sqlite::announce(&mut conn, &branch(id, Phase::Cancel)).unwrap_err();
    assert_eq!(wrong.kind(), BarrierErrorKind::AnnounceOutsideTry);

    // Without the announce, what the database rolled back is all there is.
    let id = TransactionId::generate();
    assert!(matches!(
        deliver(&mut conn, &branch(id, Phase::Try), true),
        Err(TestError::Injected)
    ));
    assert_eq!(
        deliver(&mut conn, &branch(id, Phase::Cancel), false).unwrap(),
        Outcome::EmptyCancel
    );
}

/// Seata deletes `suspended` rows (after it rejects a late Try, and by age),
/// so a Try arriving later still passes. Here the row that blocks a late Try
/// stays through refusals and through cleanup within the horizon.
#[test]
fn seata_suspended_rows_stay_after_a_refused_try_and_within_the_horizon() {
    let db = Db::new();
    let mut conn = db.open();
    let id = TransactionId::generate();
    assert_eq!(
        deliver(&mut conn, &branch(id, Phase::Cancel), false).unwrap(),
        Outcome::EmptyCancel
    );
    for _ in 0..2 {
        let late = deliver(&mut conn, &branch(id, Phase::Try), false).unwrap_err();
        assert!(
            matches!(late, TestError::Barrier(e) if e.kind() == BarrierErrorKind::TryAfterCancel)
        );
        assert_eq!(
            state(&conn, &branch(id, Phase::Try)).as_deref(),
            Some("cancelled_before_try")
        );
    }
    assert_eq!(
        sqlite::cleanup(&mut conn, Duration::from_secs(3600), 10).unwrap(),
        0
    );
    assert!(deliver(&mut conn, &branch(id, Phase::Try), false).is_err());
}

/// Ages every row of the table by `age`.
fn age_rows(conn: &Connection, age: Duration) {
    conn.execute(
        "UPDATE tcc_barrier SET updated_at = updated_at - ?1",
        [age.as_millis() as i64],
    )
    .unwrap();
}

/// Seata #4489: deleting old fence rows in bulk blocked inserts. Here
/// cleanup deletes in batches of its own (a writer waits one batch at most),
/// only finished rows past the horizon, and phases keep going meanwhile.
#[test]
fn seata_4489_cleanup_deletes_finished_rows_past_the_horizon_in_batches() {
    let db = Db::new();
    let mut conn = db.open();
    let mut unfinished = Vec::new();
    for i in 0..60 {
        let id = TransactionId::generate();
        deliver(&mut conn, &branch(id, Phase::Try), false).unwrap();
        match i % 3 {
            0 => drop(deliver(&mut conn, &branch(id, Phase::Confirm), false).unwrap()),
            1 => drop(deliver(&mut conn, &branch(id, Phase::Cancel), false).unwrap()),
            _ => unfinished.push(id),
        }
        let empty = TransactionId::generate();
        deliver(&mut conn, &branch(empty, Phase::Cancel), false).unwrap();
    }
    let started = TransactionId::generate();
    sqlite::announce(&mut conn, &branch(started, Phase::Try)).unwrap();
    age_rows(&conn, Duration::from_secs(7200));
    let recent = TransactionId::generate();
    deliver(&mut conn, &branch(recent, Phase::Cancel), false).unwrap();

    // Phases of new branches run while cleanup deletes, on another connection.
    let mut writer = db.open();
    let phases = thread::spawn(move || {
        for _ in 0..20 {
            let id = TransactionId::generate();
            assert_eq!(
                deliver(&mut writer, &branch(id, Phase::Try), false).unwrap(),
                Outcome::Ran(())
            );
        }
    });
    let deleted = sqlite::cleanup(&mut conn, Duration::from_secs(3600), 7).unwrap();
    phases.join().unwrap();
    assert_eq!(
        deleted,
        40 + 60,
        "confirmed, cancelled and empty-cancelled rows past the horizon"
    );
    for id in unfinished {
        assert_eq!(
            state(&conn, &branch(id, Phase::Try)).as_deref(),
            Some("tried")
        );
        // A tried branch keeps its row: its Confirm or Cancel is still due.
        assert_eq!(
            deliver(&mut conn, &branch(id, Phase::Cancel), false).unwrap(),
            Outcome::Ran(())
        );
    }
    assert_eq!(
        state(&conn, &branch(started, Phase::Try)).as_deref(),
        Some("started")
    );
    assert_eq!(
        state(&conn, &branch(recent, Phase::Try)).as_deref(),
        Some("cancelled_before_try")
    );
    assert!(deliver(&mut conn, &branch(recent, Phase::Try), false).is_err());
}

/// A Confirm without a committed Try is a permanent error: the runtime does
/// not retry it.
#[tokio::test(start_paused = true)]
async fn a_confirm_without_a_try_is_permanent_to_the_runtime() {
    let db = Db::new();
    let conn = Arc::new(Mutex::new(db.open()));
    let confirm_conn = conn.clone();
    // The Try "succeeds" without passing the barrier: a participant wired
    // wrong, or whose Try row was lost.
    let wallet = Service::new(
        "wallet",
        || async { Ok::<(), TestError>(()) },
        move || {
            let conn = confirm_conn.clone();
            async move {
                sqlite::run(&mut conn.lock().unwrap(), |tx| {
                    effect(tx, &Branch::current()?)?;
                    Ok::<_, TestError>(())
                })
                .map(drop)
            }
        },
        || async { Ok::<(), TestError>(()) },
    );
    let error = Orchestrator::new([wallet])
        .max_retries(5)
        .orchestrate()
        .await
        .unwrap_err();
    let failure = &error.failures()[0];
    assert_eq!(failure.phase(), Phase::Confirm);
    assert_eq!(failure.attempts(), 1);
    assert!(failure.is_permanent());
    assert!(
        error.to_string().contains("no try of the branch committed"),
        "{error}"
    );
    let id = error.report().unwrap().transaction_id();
    assert!(effects(&conn.lock().unwrap(), id).is_empty());
}

/// `guard` inside the caller's own transaction: the caller commits, and the
/// barrier's decision commits with it.
#[test]
fn guard_runs_inside_the_callers_transaction() {
    let db = Db::new();
    let mut conn = db.open();
    let id = TransactionId::generate();
    let cancel = branch(id, Phase::Cancel);
    {
        let tx = conn.transaction().unwrap();
        let outcome = sqlite::guard(&tx, &cancel, |tx| {
            effect(tx, &cancel).map_err(TestError::from)
        });
        assert_eq!(outcome.unwrap(), Outcome::EmptyCancel);
        // Dropped without commit: the empty cancel is not recorded.
    }
    assert_eq!(state(&conn, &cancel), None);
    let tx = conn.transaction().unwrap();
    sqlite::guard(&tx, &cancel, |tx| {
        effect(tx, &cancel).map_err(TestError::from)
    })
    .unwrap();
    tx.commit().unwrap();
    assert_eq!(
        state(&conn, &cancel).as_deref(),
        Some("cancelled_before_try")
    );
    assert_eq!(tb::TABLE, "tcc_barrier");
}

/// Outside a phase there is no branch to read: a clear error, no panic.
#[test]
fn run_outside_a_phase_is_an_error() {
    let db = Db::new();
    let mut conn = db.open();
    let error = sqlite::run(&mut conn, |_| Ok::<_, TestError>(())).unwrap_err();
    assert!(matches!(error, TestError::Barrier(e) if e.kind() == BarrierErrorKind::NoContext));
}

/// A row this version cannot read is refused, not guessed at.
#[test]
fn an_unknown_state_is_an_error() {
    let db = Db::new();
    let mut conn = db.open();
    let id = TransactionId::generate();
    deliver(&mut conn, &branch(id, Phase::Try), false).unwrap();
    conn.execute_batch(
        "PRAGMA ignore_check_constraints = ON; UPDATE tcc_barrier SET state = 'frozen';",
    )
    .unwrap();
    let error = deliver(&mut conn, &branch(id, Phase::Confirm), false).unwrap_err();
    assert!(matches!(error, TestError::Barrier(e) if e.kind() == BarrierErrorKind::UnknownState));
}

/// A busy error is found behind an `#[error(transparent)]` wrapper too,
/// which shows only SQLite's own error in the source chain.
#[test]
fn busy_is_found_behind_a_transparent_wrapper() {
    let busy =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
    assert!(sqlite::is_busy(&TestError::Sqlite(busy)));
    let other =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
    assert!(!sqlite::is_busy(&TestError::Sqlite(other)));
    assert!(!sqlite::is_busy(&TestError::Injected));
}

/// A Try that announced itself and is still acting outside the database
/// when its Cancel comes: the Cancel runs (to undo the outside effects),
/// and the Try's own transaction is then refused, so it reserves nothing.
#[test]
fn an_announced_try_overtaken_by_its_cancel_is_refused() {
    let db = Db::new();
    let mut conn = db.open();
    let id = TransactionId::generate();
    let try_branch = branch(id, Phase::Try);
    assert_eq!(
        sqlite::announce(&mut conn, &try_branch).unwrap(),
        Outcome::Ran(())
    );
    // A duplicate delivery of the same Try is told to skip.
    assert_eq!(
        sqlite::announce(&mut conn, &try_branch).unwrap(),
        Outcome::Duplicate
    );
    assert_eq!(
        deliver(&mut conn, &branch(id, Phase::Cancel), false).unwrap(),
        Outcome::Ran(())
    );
    let late = deliver(&mut conn, &try_branch, false).unwrap_err();
    assert!(matches!(late, TestError::Barrier(e) if e.kind() == BarrierErrorKind::TryAfterCancel));
    assert_eq!(effects(&conn, id), [("wallet".into(), "cancel".into())]);
    let confirm = deliver(&mut conn, &branch(id, Phase::Confirm), false).unwrap_err();
    assert!(
        matches!(confirm, TestError::Barrier(e) if e.kind() == BarrierErrorKind::ConfirmAfterCancel)
    );
}

/// Cleanup started its next batch as soon as it committed one, so a phase
/// on another connection, whose busy handler sleeps between its tries,
/// found the database locked again each time it woke, and waited for the
/// whole cleanup. Here it waits about one batch.
// Real time: SQLite's busy handler sleeps on the real clock.
#[test]
fn cleanup_lets_a_phase_on_another_connection_in_between_batches() {
    // Enough batches (100) that a phase on a loaded machine, whose busy
    // handler sleeps up to 100 ms between tries, wakes in a pause often.
    const ROWS: i64 = 100_000;
    const BATCH: usize = 1_000;
    let db = Db::new();
    let mut conn = db.open();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO tcc_barrier (transaction_id, service, state, updated_at)
         SELECT printf('%032x', i), 'wallet', 'confirmed', 0 FROM n",
        [ROWS],
    )
    .unwrap();
    let (started_tx, started) = mpsc::channel();
    let cleanup = thread::spawn(move || {
        let begin = std::time::Instant::now();
        started_tx.send(()).unwrap();
        let deleted = sqlite::cleanup(&mut conn, Duration::from_secs(3600), BATCH).unwrap();
        (deleted, begin.elapsed())
    });
    started.recv().unwrap();
    let mut writer = db.open();
    let mut waits = Vec::new();
    while !cleanup.is_finished() {
        let id = TransactionId::generate();
        let begin = std::time::Instant::now();
        assert_eq!(
            deliver(&mut writer, &branch(id, Phase::Try), false).unwrap(),
            Outcome::Ran(())
        );
        waits.push(begin.elapsed());
        thread::sleep(Duration::from_millis(20));
    }
    let (deleted, total) = cleanup.join().unwrap();
    assert_eq!(deleted, ROWS as u64);
    // Cleanup takes 100 batches and as many pauses (about 1 + 1 s in a
    // debug build), and phases ran all along, most waiting a batch or two
    // (under 30 ms); before, the first one waited for all of it, so the
    // loop above ran one phase. On a loaded machine one phase may miss a
    // few pauses, and SQLite's busy handler then sleeps longer each time:
    // so the bound is on the median wait, not the longest.
    assert!(waits.len() >= 3, "phases ran during cleanup: {waits:?}");
    let mut sorted = waits.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(
        median < total / 4,
        "the median phase waited {median:?} of cleanup's {total:?}: {waits:?}"
    );
}

/// The reservations past an age, for `tcc orphans`: `tried` and `started`
/// rows, the oldest first, with their ages; never a finished row or a
/// younger one.
#[test]
fn held_longer_than_lists_the_reservations_past_the_age_oldest_first() {
    let db = Db::new();
    let mut conn = db.open();
    let (tried, started, finished, young) = (
        TransactionId::generate(),
        TransactionId::generate(),
        TransactionId::generate(),
        TransactionId::generate(),
    );
    deliver(&mut conn, &branch(tried, Phase::Try), false).unwrap();
    sqlite::announce(&mut conn, &branch(started, Phase::Try)).unwrap();
    deliver(&mut conn, &branch(finished, Phase::Try), false).unwrap();
    deliver(&mut conn, &branch(finished, Phase::Confirm), false).unwrap();
    let hour = Duration::from_secs(3600);
    age_rows(&conn, 2 * hour);
    conn.execute(
        "UPDATE tcc_barrier SET updated_at = updated_at - ?2 WHERE transaction_id = ?1",
        rusqlite::params![tried.to_string(), hour.as_millis() as i64],
    )
    .unwrap();
    deliver(&mut conn, &branch(young, Phase::Try), false).unwrap();

    let held = sqlite::held_longer_than(&conn, hour).unwrap();
    let found: Vec<_> = held
        .iter()
        .map(|h| (h.transaction(), h.service.as_str(), h.state))
        .collect();
    assert_eq!(
        found,
        [
            (Some(tried), "wallet", "tried"),
            (Some(started), "wallet", "started")
        ]
    );
    let about = |age: Duration, hours: u32| age.abs_diff(hour * hours) < Duration::from_secs(60);
    assert!(about(held[0].age, 3), "{held:?}");
    assert!(about(held[1].age, 2), "{held:?}");
    assert!(
        sqlite::held_longer_than(&conn, 4 * hour)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        sqlite::held_longer_than(&conn, Duration::MAX).unwrap(),
        vec![]
    );
}

/// As PostgreSQL's: a horizon of `Duration::MAX` keeps every row.
#[test]
fn cleanup_with_the_longest_horizon_keeps_every_row() {
    let db = Db::new();
    let mut conn = db.open();
    let id = TransactionId::generate();
    deliver(&mut conn, &branch(id, Phase::Try), false).unwrap();
    deliver(&mut conn, &branch(id, Phase::Confirm), false).unwrap();
    age_rows(&conn, Duration::from_secs(200 * 365 * 86_400));
    assert_eq!(sqlite::cleanup(&mut conn, Duration::MAX, 10).unwrap(), 0);
    assert_eq!(
        state(&conn, &branch(id, Phase::Confirm)).as_deref(),
        Some("confirmed")
    );
    let century = Duration::from_secs(100 * 365 * 86_400);
    assert_eq!(sqlite::cleanup(&mut conn, century, 10).unwrap(), 1);
}

/// A database whose barrier table `migrate` never created: the phase fails
/// at once with an error that says what to call, and is not retried (it
/// was, for about 52 s, ending in "needs repair" with the cause only in
/// `Debug`).
#[tokio::test(start_paused = true)]
async fn the_barrier_without_migrate_fails_at_once_and_says_to_call_migrate() {
    let conn = Arc::new(Mutex::new(Connection::open_in_memory().unwrap()));
    let attempts = Arc::new(AtomicU32::new(0));
    let phase = |conn: Arc<Mutex<Connection>>, attempts: Arc<AtomicU32>| {
        move || {
            let (conn, attempts) = (conn.clone(), attempts.clone());
            async move {
                attempts.fetch_add(1, Ordering::SeqCst);
                sqlite::run(&mut conn.lock().unwrap(), |_| Ok::<_, TestError>(())).map(drop)
            }
        }
    };
    let wallet = Service::new(
        "wallet",
        phase(conn.clone(), Arc::default()),
        || async { Ok::<(), TestError>(()) },
        phase(conn.clone(), attempts.clone()),
    );
    let started = tokio::time::Instant::now();
    let error = Orchestrator::new([wallet])
        .max_retries(10)
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "the Cancel was retried");
    assert_eq!(started.elapsed(), Duration::ZERO, "no backoff was waited");
    let cancel = error
        .failures()
        .iter()
        .find(|f| f.phase() == Phase::Cancel)
        .unwrap();
    assert_eq!(cancel.attempts(), 1);
    assert!(cancel.is_permanent());
    let barrier = cancel
        .cause()
        .downcast_ref::<TestError>()
        .and_then(|e| match e {
            TestError::Barrier(e) => Some(e),
            _ => None,
        })
        .expect("a barrier error");
    assert_eq!(barrier.kind(), BarrierErrorKind::MissingTable);
    for text in [error.to_string(), barrier.to_string()] {
        assert!(
            text.contains("call `tcc::barrier::sqlite::migrate`")
                && text.contains("no such table: tcc_barrier"),
            "{text}"
        );
    }
}
