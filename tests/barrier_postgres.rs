//! The participant barrier on PostgreSQL, against a throwaway cluster
//! (`tests/barrier/cluster.rs`): the shared property suite, races,
//! serialization failures and deadlocks retried, cleanup, and one test per
//! anchor bug of DTM and Seata showing ours does not have it.
//!
//! Without PostgreSQL server binaries these tests print one line and pass;
//! `TCC_REQUIRE_POSTGRES=1` (set by `.ci/run`) makes that a failure.

mod barrier;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use barrier::cluster::Cluster;
use barrier::{Backend, BoxFuture, TestError};
use tcc::barrier::{BarrierErrorKind, Branch, Entry, Outcome, postgres};
use tcc::{Orchestrator, Permanent, Phase, RetryPolicy, Service, TransactionId};
use tokio::sync::Mutex;
use tokio_postgres::{Client, Transaction};

/// A fresh schema `name` with the barrier's table and the test tables, and
/// `n` connections to it.
async fn setup(cluster: &Cluster, name: &str, n: usize) -> Vec<Client> {
    let first = cluster.connect(name).await;
    first
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name};
             CREATE TABLE effects (transaction_id text, service text, phase text);
             CREATE TABLE outside (n integer); INSERT INTO outside VALUES (0);
             CREATE TABLE counters (id integer PRIMARY KEY, n integer);
             INSERT INTO counters VALUES (1, 0), (2, 0);"
        ))
        .await
        .unwrap();
    postgres::migrate(&first).await.unwrap();
    postgres::migrate(&first)
        .await
        .expect("migrate is idempotent");
    let mut clients = vec![first];
    for _ in 1..n {
        clients.push(cluster.connect(name).await);
    }
    clients
}

async fn effect(tx: &Transaction<'_>, branch: &Branch) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO effects VALUES ($1, $2, $3)",
        &[
            &branch.transaction_id().to_string(),
            &branch.service_name(),
            &branch.phase().as_str(),
        ],
    )
    .await
}

async fn effects(client: &Client, transaction: TransactionId) -> Vec<(String, String)> {
    client
        .query(
            "SELECT service, phase FROM effects WHERE transaction_id = $1 ORDER BY phase",
            &[&transaction.to_string()],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

async fn state(client: &Client, branch: &Branch) -> Option<String> {
    client
        .query_opt(
            "SELECT state FROM tcc_barrier WHERE transaction_id = $1 AND service = $2",
            &[&branch.transaction_id().to_string(), &branch.service_name()],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

/// A delivery through `run_branch`: the effect, then a failure if `fail`.
async fn deliver(
    client: &mut Client,
    branch: &Branch,
    fail: bool,
) -> Result<Outcome<()>, TestError> {
    postgres::run_branch(client, branch, |tx| {
        Box::pin(async move {
            effect(tx, branch).await?;
            if fail {
                Err(TestError::Injected)
            } else {
                Ok(())
            }
        })
    })
    .await
}

/// The runtime's retries, a millisecond apart. These tests run on tokio's
/// real clock: with a paused clock, time would jump ahead whenever every
/// task waits on the database, and fire the runtime's timeouts.
fn fast_retries(n: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(n)
        .with_initial_interval(Duration::from_millis(1))
}

fn branch(transaction: TransactionId, phase: Phase) -> Branch {
    Branch::new(transaction, "wallet", phase)
}

fn refused(result: Result<Outcome<()>, TestError>, kind: BarrierErrorKind) -> bool {
    matches!(result, Err(TestError::Barrier(e)) if e.kind() == kind && e.is_permanent())
}

struct Postgres {
    lanes: Vec<Mutex<Client>>,
}

impl Backend for Postgres {
    fn lanes(&self) -> usize {
        self.lanes.len()
    }

    fn deliver(
        &self,
        lane: usize,
        branch: Branch,
        fail: bool,
    ) -> BoxFuture<'_, Result<Outcome<()>, TestError>> {
        Box::pin(async move { deliver(&mut *self.lanes[lane].lock().await, &branch, fail).await })
    }

    fn announce(
        &self,
        lane: usize,
        branch: Branch,
    ) -> BoxFuture<'_, Result<Outcome<()>, TestError>> {
        Box::pin(async move {
            Ok(postgres::announce(&mut *self.lanes[lane].lock().await, &branch).await?)
        })
    }

    fn effects(&self, transaction: TransactionId) -> BoxFuture<'_, Vec<(String, String)>> {
        Box::pin(async move { effects(&*self.lanes[0].lock().await, transaction).await })
    }
}

fn property(schema: &'static str, isolation: &'static str) {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend = runtime.block_on(async {
        let clients = setup(cluster, schema, 4).await;
        for client in &clients {
            client
                .batch_execute(&format!(
                    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL {isolation}"
                ))
                .await
                .unwrap();
        }
        Postgres {
            lanes: clients.into_iter().map(Mutex::new).collect(),
        }
    });
    barrier::interleavings(&runtime, Arc::new(backend));
}

#[test]
fn interleavings_of_deliveries_follow_the_rules() {
    property("interleavings", "READ COMMITTED");
}

/// Under SERIALIZABLE, races end in serialization failures, which
/// `run_branch` retries: the outcomes must be the same.
#[test]
fn interleavings_under_serializable_follow_the_rules() {
    property("interleavings_serializable", "SERIALIZABLE");
}

/// A Try that holds its transaction open until told to finish, then
/// commits or rolls back.
async fn slow_try(
    mut client: Client,
    branch: Branch,
    commit: bool,
) -> tokio::sync::oneshot::Sender<()> {
    let (entered_tx, entered) = tokio::sync::oneshot::channel();
    let (finish, finish_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let tx = client.transaction().await.unwrap();
        assert_eq!(postgres::enter(&tx, &branch).await.unwrap(), Entry::Run);
        effect(&tx, &branch).await.unwrap();
        entered_tx.send(()).unwrap();
        let _ = finish_rx.await;
        if commit {
            tx.commit().await.unwrap();
        }
    });
    entered.await.unwrap();
    finish
}

async fn cancel_racing_a_slow_try(
    schema: &str,
    commit: bool,
) -> (Outcome<()>, Vec<(String, String)>) {
    let cluster = Cluster::get().unwrap();
    let mut clients = setup(cluster, schema, 2).await;
    let mut client = clients.pop().unwrap();
    let id = TransactionId::generate();
    let finish = slow_try(clients.pop().unwrap(), branch(id, Phase::Try), commit).await;
    let cancel = tokio::spawn(async move {
        let outcome = deliver(&mut client, &branch(id, Phase::Cancel), false).await;
        (outcome.unwrap(), client)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !cancel.is_finished(),
        "the cancel waits for the try's transaction"
    );
    finish.send(()).unwrap();
    let (outcome, client) = cancel.await.unwrap();
    (outcome, effects(&client, id).await)
}

#[tokio::test]
async fn a_cancel_racing_a_slow_try_runs_after_the_try_commits() {
    if Cluster::get().is_none() {
        return;
    }
    let (outcome, effects) = cancel_racing_a_slow_try("race_commit", true).await;
    assert_eq!(outcome, Outcome::Ran(()));
    assert_eq!(
        effects,
        [
            ("wallet".into(), "cancel".into()),
            ("wallet".into(), "try".into())
        ]
    );
}

#[tokio::test]
async fn a_cancel_racing_a_slow_try_that_fails_is_an_empty_cancel() {
    if Cluster::get().is_none() {
        return;
    }
    let (outcome, effects) = cancel_racing_a_slow_try("race_rollback", false).await;
    assert_eq!(outcome, Outcome::EmptyCancel);
    assert!(effects.is_empty());
}

/// Seata #6679: racing rollbacks of a branch with no fence row deadlocked
/// on MySQL gap locks. Here, at each isolation level: one empty cancel, the
/// others duplicates, no error.
#[tokio::test]
async fn seata_6679_racing_cancels_of_a_branch_without_a_row_do_not_deadlock() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    for isolation in ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"] {
        let clients = setup(cluster, "racing_cancels", 4).await;
        let id = TransactionId::generate();
        let start = Arc::new(tokio::sync::Barrier::new(clients.len()));
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|mut client| {
                let start = start.clone();
                tokio::spawn(async move {
                    client
                        .batch_execute(&format!(
                            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL {isolation}"
                        ))
                        .await
                        .unwrap();
                    start.wait().await;
                    deliver(&mut client, &branch(id, Phase::Cancel), false)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        outcomes.sort_by_key(|o| matches!(o, Outcome::Duplicate));
        assert_eq!(
            outcomes,
            [
                Outcome::EmptyCancel,
                Outcome::Duplicate,
                Outcome::Duplicate,
                Outcome::Duplicate
            ],
            "{isolation}"
        );
    }
}

/// A serialization failure inside the phase's own code (40001) runs the
/// whole transaction again: barrier and business change, once committed.
#[tokio::test]
async fn a_serialization_failure_is_tried_again() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let mut clients = setup(cluster, "serialization", 2).await;
    let other = clients.pop().unwrap();
    let mut client = clients.pop().unwrap();
    client
        .batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let id = TransactionId::generate();
    let calls = AtomicU32::new(0);
    let (calls, other) = (&calls, &other);
    let outcome = postgres::run_branch(&mut client, &branch(id, Phase::Try), |tx| {
        Box::pin(async move {
            // Take the snapshot, then let another transaction change the row.
            tx.query_one("SELECT n FROM counters WHERE id = 1", &[])
                .await?;
            if calls.fetch_add(1, Ordering::Relaxed) == 0 {
                other
                    .execute("UPDATE counters SET n = n + 1 WHERE id = 1", &[])
                    .await?;
            }
            effect(tx, &branch(id, Phase::Try)).await?;
            tx.execute("UPDATE counters SET n = n + 1 WHERE id = 1", &[])
                .await?;
            Ok::<_, TestError>(())
        })
    })
    .await;
    assert_eq!(outcome.unwrap(), Outcome::Ran(()));
    assert_eq!(
        calls.load(Ordering::Relaxed),
        2,
        "the first attempt hit 40001"
    );
    let n: i32 = other
        .query_one("SELECT n FROM counters WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    assert_eq!(effects(other, id).await.len(), 1);
    assert_eq!(
        state(other, &branch(id, Phase::Try)).await.as_deref(),
        Some("tried")
    );
}

/// Two phases of different branches that lock business rows in opposite
/// orders deadlock; PostgreSQL aborts one (40P01), which is run again.
#[tokio::test]
async fn a_deadlock_is_tried_again() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let mut clients = setup(cluster, "deadlock", 3).await;
    let observer = clients.pop().unwrap();
    let id = TransactionId::generate();
    let both_locked = Arc::new(tokio::sync::Barrier::new(2));
    let calls = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = clients
        .into_iter()
        .zip([(1, 2, "flight"), (2, 1, "hotel")])
        .map(|(mut client, (first, second, service))| {
            let (both_locked, calls) = (both_locked.clone(), calls.clone());
            tokio::spawn(async move {
                let mut attempt = 0;
                let branch = Branch::new(id, service, Phase::Try);
                let (both_locked, calls) = (&both_locked, &calls);
                postgres::run_branch(&mut client, &branch, |tx| {
                    attempt += 1;
                    let first_attempt = attempt == 1;
                    Box::pin(async move {
                        calls.fetch_add(1, Ordering::Relaxed);
                        tx.execute("UPDATE counters SET n = n + 1 WHERE id = $1", &[&first])
                            .await?;
                        if first_attempt {
                            both_locked.wait().await;
                        }
                        tx.execute("UPDATE counters SET n = n + 1 WHERE id = $1", &[&second])
                            .await?;
                        Ok::<_, TestError>(())
                    })
                })
                .await
                .unwrap()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Outcome::Ran(()));
    }
    // PostgreSQL may abort both (their detectors can run at once), and the
    // retries may deadlock again: at least one ran again, and each branch
    // committed its updates exactly once.
    assert!(
        calls.load(Ordering::Relaxed) >= 3,
        "a deadlocked phase ran again"
    );
    for row in observer
        .query("SELECT n FROM counters ORDER BY id", &[])
        .await
        .unwrap()
    {
        assert_eq!(row.get::<_, i32>(0), 2);
    }
}

/// DTM #453: a Try blocked by the barrier was reported as success. Here the
/// hanging Try of a transaction the runtime cancelled is refused with a
/// permanent error and reserves nothing.
// Real time: the phases wait on a real server, and under the paused clock
// the runtime, idle while it answers, would jump to the next timer (a retry
// delay, an attempt's time limit) and fire it at once.
#[tokio::test]
async fn dtm_453_a_try_after_its_cancel_is_refused_not_reported_as_success() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let client = Arc::new(Mutex::new(
        setup(cluster, "dtm_453", 1).await.pop().unwrap(),
    ));
    let cancel_client = client.clone();
    let late = Service::new(
        "wallet",
        std::future::pending::<Result<(), TestError>>,
        || async { Ok::<(), TestError>(()) },
        move || {
            let client = cancel_client.clone();
            async move {
                let mut client = client.lock().await;
                let outcome = postgres::run(&mut client, |tx| {
                    Box::pin(async move {
                        effect(tx, &Branch::current()?).await?;
                        Ok::<_, TestError>(())
                    })
                })
                .await?;
                assert_eq!(outcome, Outcome::EmptyCancel);
                Ok::<(), TestError>(())
            }
        },
    );
    let error = Orchestrator::new([late])
        .try_timeout(Duration::from_millis(50))
        .orchestrate()
        .await
        .unwrap_err();
    let id = error.report().expect("a report").transaction_id();
    let mut client = client.lock().await;
    let late = deliver(&mut client, &branch(id, Phase::Try), false).await;
    assert!(refused(late, BarrierErrorKind::TryAfterCancel));
    assert!(
        effects(&client, id).await.is_empty(),
        "the late try reserved nothing"
    );
}

/// DTM #559: a barrier in another database than the business data is not
/// atomic with it. Here a Confirm whose first attempt fails after its write
/// leaves neither the write nor the barrier's row; the retry runs it, once.
// Real time: the phases wait on a real server, and under the paused clock
// the runtime, idle while it answers, would jump to the next timer (a retry
// delay, an attempt's time limit) and fire it at once.
#[tokio::test]
async fn dtm_559_the_barrier_commits_and_rolls_back_with_the_business_change() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let client = Arc::new(Mutex::new(
        setup(cluster, "dtm_559", 1).await.pop().unwrap(),
    ));
    let confirm_attempts = Arc::new(AtomicU32::new(0));
    let phase = |client: Arc<Mutex<Client>>, fail_first: Option<Arc<AtomicU32>>| async move {
        let mut client = client.lock().await;
        let fail_first = &fail_first;
        postgres::run(&mut client, |tx| {
            Box::pin(async move {
                effect(tx, &Branch::current()?).await?;
                match fail_first {
                    Some(n) if n.fetch_add(1, Ordering::Relaxed) == 0 => Err(TestError::Injected),
                    _ => Ok(()),
                }
            })
        })
        .await
        .map(drop)
    };
    let (a, b, c) = (client.clone(), client.clone(), client.clone());
    let wallet = Service::new(
        "wallet",
        move || phase(a.clone(), None),
        move || phase(b.clone(), Some(confirm_attempts.clone())),
        move || phase(c.clone(), None),
    );
    let report = Orchestrator::new([wallet])
        .retry(fast_retries(3))
        .orchestrate()
        .await
        .unwrap();
    let id = report.transaction_id();
    assert_eq!(
        report.service("wallet").unwrap().attempts(Phase::Confirm),
        2
    );
    let client = client.lock().await;
    assert_eq!(
        effects(&client, id).await,
        [
            ("wallet".into(), "confirm".into()),
            ("wallet".into(), "try".into())
        ]
    );
    assert_eq!(
        state(&client, &branch(id, Phase::Confirm)).await.as_deref(),
        Some("confirmed")
    );
}

/// seata-go #685: an empty rollback failed and was retried until the server
/// gave up. Here it succeeds on its first attempt.
// Real time: the phases wait on a real server, and under the paused clock
// the runtime, idle while it answers, would jump to the next timer (a retry
// delay, an attempt's time limit) and fire it at once.
#[tokio::test]
async fn seata_go_685_an_empty_cancel_succeeds_at_once() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let client = Arc::new(Mutex::new(
        setup(cluster, "seata_go_685", 1).await.pop().unwrap(),
    ));
    let cancel_client = client.clone();
    let wallet = Service::new(
        "wallet",
        || async { Err::<(), _>(TestError::Injected) },
        || async { Ok::<(), TestError>(()) },
        move || {
            let client = cancel_client.clone();
            async move {
                let mut client = client.lock().await;
                postgres::run(&mut client, |tx| {
                    Box::pin(async move {
                        effect(tx, &Branch::current()?).await?;
                        Ok::<_, TestError>(())
                    })
                })
                .await
                .map(drop)
            }
        },
    );
    let error = Orchestrator::new([wallet])
        .retry(fast_retries(5))
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(error.failures().len(), 1, "only the try failed: {error}");
    let report = error.report().unwrap();
    assert_eq!(report.service("wallet").unwrap().attempts(Phase::Cancel), 1);
    let client = client.lock().await;
    let id = report.transaction_id();
    assert_eq!(
        state(&client, &branch(id, Phase::Cancel)).await.as_deref(),
        Some("cancelled_before_try")
    );
    assert!(effects(&client, id).await.is_empty());
}

/// Seata #5256, #6374, #4180: a failed Try rolled back its fence row, so its
/// Cancel was taken for an empty one and never undid what the Try did
/// outside the database. Here a Try that announces itself gets its Cancel.
#[tokio::test]
async fn seata_6374_a_failed_try_that_announced_its_outside_effects_is_cancelled() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let mut client = setup(cluster, "seata_6374", 1).await.pop().unwrap();
    let id = TransactionId::generate();
    let try_branch = branch(id, Phase::Try);
    assert_eq!(
        postgres::announce(&mut client, &try_branch).await.unwrap(),
        Outcome::Ran(())
    );
    client
        .execute("UPDATE outside SET n = n + 1", &[])
        .await
        .unwrap();
    assert!(matches!(
        deliver(&mut client, &try_branch, true).await,
        Err(TestError::Injected)
    ));
    assert_eq!(
        state(&client, &try_branch).await.as_deref(),
        Some("started")
    );

    let tx = client.transaction().await.unwrap();
    assert_eq!(
        postgres::enter(&tx, &branch(id, Phase::Cancel))
            .await
            .unwrap(),
        Entry::RunAfterUncommittedTry
    );
    drop(tx);
    let outcome = postgres::run_branch(&mut client, &branch(id, Phase::Cancel), |tx| {
        Box::pin(async move {
            Ok::<_, TestError>(tx.execute("UPDATE outside SET n = n - 1", &[]).await?)
        })
    })
    .await;
    assert_eq!(outcome.unwrap(), Outcome::Ran(1));
    let n: i32 = client
        .query_one("SELECT n FROM outside", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the cancel undid the outside effect");
    let again = postgres::announce(&mut client, &try_branch)
        .await
        .unwrap_err();
    assert_eq!(again.kind(), BarrierErrorKind::TryAfterCancel);

    // Without the announce, what the database rolled back is all there is.
    let id = TransactionId::generate();
    assert!(matches!(
        deliver(&mut client, &branch(id, Phase::Try), true).await,
        Err(TestError::Injected)
    ));
    assert_eq!(
        deliver(&mut client, &branch(id, Phase::Cancel), false)
            .await
            .unwrap(),
        Outcome::EmptyCancel
    );
}

/// Seata deletes `suspended` rows (after it rejects a late Try, and by
/// age), so a Try arriving later still passes. Here the row stays through
/// refusals and through cleanup within the horizon.
#[tokio::test]
async fn seata_suspended_rows_stay_after_a_refused_try_and_within_the_horizon() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let mut client = setup(cluster, "seata_suspended", 1).await.pop().unwrap();
    let id = TransactionId::generate();
    assert_eq!(
        deliver(&mut client, &branch(id, Phase::Cancel), false)
            .await
            .unwrap(),
        Outcome::EmptyCancel
    );
    for _ in 0..2 {
        let late = deliver(&mut client, &branch(id, Phase::Try), false).await;
        assert!(refused(late, BarrierErrorKind::TryAfterCancel));
        assert_eq!(
            state(&client, &branch(id, Phase::Try)).await.as_deref(),
            Some("cancelled_before_try")
        );
    }
    assert_eq!(
        postgres::cleanup(&client, Duration::from_secs(3600), 10)
            .await
            .unwrap(),
        0
    );
    assert!(
        deliver(&mut client, &branch(id, Phase::Try), false)
            .await
            .is_err()
    );
}

/// Seata #4489: deleting old fence rows in bulk blocked inserts. Here
/// cleanup deletes finished rows past the horizon in small batches, skips
/// a row a running phase holds, and new branches are never blocked, not
/// even by a bulk delete left open.
#[tokio::test]
async fn seata_4489_cleanup_neither_blocks_nor_waits() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let mut clients = setup(cluster, "seata_4489", 3).await;
    let mut bulk = clients.pop().unwrap();
    let mut holder = clients.pop().unwrap();
    let mut client = clients.pop().unwrap();
    let mut finished = Vec::new();
    let mut unfinished = Vec::new();
    for i in 0..30 {
        let id = TransactionId::generate();
        deliver(&mut client, &branch(id, Phase::Try), false)
            .await
            .unwrap();
        match i % 3 {
            0 => drop(
                deliver(&mut client, &branch(id, Phase::Confirm), false)
                    .await
                    .unwrap(),
            ),
            1 => drop(
                deliver(&mut client, &branch(id, Phase::Cancel), false)
                    .await
                    .unwrap(),
            ),
            _ => {
                unfinished.push(id);
                continue;
            }
        }
        finished.push(id);
    }
    client
        .execute(
            "UPDATE tcc_barrier SET updated_at = updated_at - interval '2 hours'",
            &[],
        )
        .await
        .unwrap();

    // A duplicate Cancel of an old branch is running: it holds the row.
    let held = finished[1];
    let tx = holder.transaction().await.unwrap();
    assert_eq!(
        postgres::enter(&tx, &branch(held, Phase::Cancel))
            .await
            .unwrap(),
        Entry::Duplicate
    );
    let deleted = tokio::time::timeout(
        Duration::from_secs(10),
        postgres::cleanup(&client, Duration::from_secs(3600), 4),
    )
    .await
    .expect("cleanup does not wait for a running phase")
    .unwrap();
    assert_eq!(deleted, finished.len() as u64 - 1);
    tx.commit().await.unwrap();
    assert_eq!(
        state(&client, &branch(held, Phase::Cancel))
            .await
            .as_deref(),
        Some("cancelled")
    );
    for id in &unfinished {
        assert_eq!(
            state(&client, &branch(*id, Phase::Try)).await.as_deref(),
            Some("tried")
        );
    }

    // A bulk delete left open does not block a new branch's Try.
    let bulk_tx = bulk.transaction().await.unwrap();
    bulk_tx
        .execute("DELETE FROM tcc_barrier WHERE state = 'cancelled'", &[])
        .await
        .unwrap();
    let id = TransactionId::generate();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        deliver(&mut client, &branch(id, Phase::Try), false),
    )
    .await
    .expect("a new branch is not blocked by a delete");
    assert_eq!(outcome.unwrap(), Outcome::Ran(()));
    bulk_tx.rollback().await.unwrap();
}

/// A horizon of `Duration::MAX` keeps every row, as SQLite's does, rather
/// than failing with "timestamp out of range".
#[tokio::test]
async fn cleanup_with_the_longest_horizon_keeps_every_row() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let mut client = setup(cluster, "cleanup_max_horizon", 1)
        .await
        .pop()
        .unwrap();
    let id = TransactionId::generate();
    deliver(&mut client, &branch(id, Phase::Try), false)
        .await
        .unwrap();
    deliver(&mut client, &branch(id, Phase::Confirm), false)
        .await
        .unwrap();
    client
        .execute(
            "UPDATE tcc_barrier SET updated_at = updated_at - interval '200 years'",
            &[],
        )
        .await
        .unwrap();
    for horizon in [Duration::MAX, Duration::from_secs(u64::MAX / 2)] {
        assert_eq!(
            postgres::cleanup(&client, horizon, 10).await.unwrap(),
            0,
            "{horizon:?}"
        );
    }
    assert_eq!(
        state(&client, &branch(id, Phase::Confirm)).await.as_deref(),
        Some("confirmed")
    );
    // The row was old enough for any shorter horizon.
    let century = Duration::from_secs(100 * 365 * 86_400);
    assert_eq!(postgres::cleanup(&client, century, 10).await.unwrap(), 1);
}

/// The reservations past an age, for `tcc orphans`: `tried` and `started`
/// rows, the oldest first, with their ages by the database's clock; never a
/// finished row or a younger one.
#[tokio::test]
async fn held_longer_than_lists_the_reservations_past_the_age_oldest_first() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let mut client = setup(cluster, "held_longer_than", 1).await.pop().unwrap();
    let (tried, started, finished, young) = (
        TransactionId::generate(),
        TransactionId::generate(),
        TransactionId::generate(),
        TransactionId::generate(),
    );
    deliver(&mut client, &branch(tried, Phase::Try), false)
        .await
        .unwrap();
    postgres::announce(&mut client, &branch(started, Phase::Try))
        .await
        .unwrap();
    deliver(&mut client, &branch(finished, Phase::Try), false)
        .await
        .unwrap();
    deliver(&mut client, &branch(finished, Phase::Confirm), false)
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "UPDATE tcc_barrier SET updated_at = updated_at - interval '2 hours';
             UPDATE tcc_barrier SET updated_at = updated_at - interval '1 hour'
             WHERE transaction_id = '{tried}'"
        ))
        .await
        .unwrap();
    deliver(&mut client, &branch(young, Phase::Try), false)
        .await
        .unwrap();

    let hour = Duration::from_secs(3600);
    let held = postgres::held_longer_than(&client, hour).await.unwrap();
    let found: Vec<_> = held.iter().map(|h| (h.transaction(), h.state)).collect();
    assert_eq!(found, [(Some(tried), "tried"), (Some(started), "started")]);
    let about = |age: Duration, hours: u32| age.abs_diff(hour * hours) < Duration::from_secs(60);
    assert!(about(held[0].age, 3), "{held:?}");
    assert!(about(held[1].age, 2), "{held:?}");
    let service = branch(tried, Phase::Try).service_name().to_owned();
    assert_eq!(held[0].service, service);
    assert!(
        postgres::held_longer_than(&client, 4 * hour)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        postgres::held_longer_than(&client, Duration::MAX)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A Confirm without a committed Try is a permanent error: the runtime does
/// not retry it.
// Real time: the phases wait on a real server, and under the paused clock
// the runtime, idle while it answers, would jump to the next timer (a retry
// delay, an attempt's time limit) and fire it at once.
#[tokio::test]
async fn a_confirm_without_a_try_is_permanent_to_the_runtime() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let client = Arc::new(Mutex::new(
        setup(cluster, "confirm_without_try", 1)
            .await
            .pop()
            .unwrap(),
    ));
    let confirm_client = client.clone();
    let wallet = Service::new(
        "wallet",
        || async { Ok::<(), TestError>(()) },
        move || {
            let client = confirm_client.clone();
            async move {
                let mut client = client.lock().await;
                postgres::run(&mut client, |tx| {
                    Box::pin(async move {
                        effect(tx, &Branch::current()?).await?;
                        Ok::<_, TestError>(())
                    })
                })
                .await
                .map(drop)
            }
        },
        || async { Ok::<(), TestError>(()) },
    );
    let error = Orchestrator::new([wallet])
        .retry(fast_retries(5))
        .orchestrate()
        .await
        .unwrap_err();
    let failure = &error.failures()[0];
    assert_eq!((failure.phase(), failure.attempts()), (Phase::Confirm, 1));
    assert!(failure.is_permanent());
    assert!(Permanent::is_in(failure));
}

/// A pooled connection from deadpool-postgres derefs to a `Client`: the
/// barrier takes it as it is.
#[tokio::test]
async fn a_pooled_connection_works() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    drop(setup(cluster, "pooled", 1).await);
    let manager = deadpool_postgres::Manager::new(cluster.config("pooled"), tokio_postgres::NoTls);
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(2)
        .build()
        .unwrap();
    let mut pooled = pool.get().await.unwrap();
    let id = TransactionId::generate();
    assert_eq!(
        deliver(&mut pooled, &branch(id, Phase::Cancel), false)
            .await
            .unwrap(),
        Outcome::EmptyCancel
    );
    let late = deliver(&mut pooled, &branch(id, Phase::Try), false).await;
    assert!(refused(late, BarrierErrorKind::TryAfterCancel));
}

/// `guard` inside the caller's own transaction: the caller commits, and the
/// barrier's decision commits with it.
#[tokio::test]
async fn guard_runs_inside_the_callers_transaction() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let mut client = setup(cluster, "guard", 1).await.pop().unwrap();
    let id = TransactionId::generate();
    let cancel = branch(id, Phase::Cancel);
    {
        let tx = client.transaction().await.unwrap();
        let cancel = &cancel;
        let outcome = postgres::guard(&tx, cancel, |tx| async move {
            effect(tx, cancel).await.map_err(TestError::from)
        })
        .await;
        assert_eq!(outcome.unwrap(), Outcome::EmptyCancel);
        // Dropped without commit: the empty cancel is not recorded.
    }
    assert_eq!(state(&client, &cancel).await, None);
    let tx = client.transaction().await.unwrap();
    let outcome = postgres::guard(&tx, &branch(id, Phase::Try), |tx| async move {
        effect(tx, &branch(id, Phase::Try))
            .await
            .map_err(TestError::from)
    })
    .await;
    assert_eq!(outcome.unwrap(), Outcome::Ran(1));
    tx.commit().await.unwrap();
    assert_eq!(state(&client, &cancel).await.as_deref(), Some("tried"));
    assert_eq!(
        effects(&client, id).await,
        [("wallet".into(), "try".into())]
    );
}

/// A schema whose barrier table `migrate` never created: the phase fails
/// at once with an error that says what to call (SQLSTATE 42P01), and is
/// not retried.
// Real time, as the other tests against the server.
#[tokio::test]
async fn the_barrier_without_migrate_fails_at_once_and_says_to_call_migrate() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let client = cluster.connect("no_migrate").await;
    client
        .batch_execute("DROP SCHEMA no_migrate CASCADE; CREATE SCHEMA no_migrate;")
        .await
        .unwrap();
    let client = Arc::new(Mutex::new(client));
    let attempts = Arc::new(AtomicU32::new(0));
    let phase = |client: Arc<Mutex<Client>>, attempts: Arc<AtomicU32>| {
        move || {
            let (client, attempts) = (client.clone(), attempts.clone());
            async move {
                attempts.fetch_add(1, Ordering::SeqCst);
                let mut client = client.lock().await;
                postgres::run(&mut client, |_| Box::pin(async { Ok::<_, TestError>(()) }))
                    .await
                    .map(drop)
            }
        }
    };
    let wallet = Service::new(
        "wallet",
        phase(client.clone(), Arc::default()),
        || async { Ok::<(), TestError>(()) },
        phase(client.clone(), attempts.clone()),
    );
    let error = Orchestrator::new([wallet])
        .retry(fast_retries(10))
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "the Cancel was retried");
    let cancel = error
        .failures()
        .iter()
        .find(|f| f.phase() == Phase::Cancel)
        .unwrap();
    assert_eq!(cancel.attempts(), 1);
    assert!(cancel.is_permanent());
    let Some(TestError::Barrier(barrier)) = cancel.cause().downcast_ref::<TestError>() else {
        panic!("not a barrier error: {error}");
    };
    assert_eq!(barrier.kind(), BarrierErrorKind::MissingTable);
    for text in [error.to_string(), barrier.to_string()] {
        assert!(
            text.contains("call `tcc::barrier::postgres::migrate`")
                && text.contains("relation \"tcc_barrier\" does not exist"),
            "{text}"
        );
    }
}
