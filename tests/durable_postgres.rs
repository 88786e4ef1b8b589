//! What the PostgreSQL log adds to the store suite (`tests/durable_store.rs`
//! runs that on it too): many coordinators on one database.
//!
//! 1. Claims: concurrent claimers on their own connections claim each
//!    transaction at most once per epoch.
//! 2. Fencing: a coordinator whose lease expired and was claimed by another
//!    can write nothing; every write fails `Fenced` and changes nothing.
//!    Expiry is the database's clock; a renewal keeps a lease.
//! 3. The schema: `migrate` is idempotent (also when run concurrently);
//!    opening a missing, old, newer or foreign schema is refused, saying what
//!    to run; a schema of version 1 is upgraded, keeping its rows.
//! 4. A backend killed in the middle of a batch: that batch's calls fail,
//!    the next ones reconnect, nothing acknowledged is lost.
//! 5. `TransactionLog::postgres`: a transaction runs durably on it, and one
//!    left by a dead coordinator is finished by another one's recovery;
//!    four coordinators recovering at once carry each transaction out once
//!    (Hmily #71).
//! 6. Lease renewal by the engine: a long Try keeps its lease; a Try whose
//!    lease was taken stops before its next phase call.
//! 7. Names, data and errors with quotes, backslashes, braces, "NULL",
//!    unicode and every byte value come back exactly.
//! 8. A row the log cannot read is set aside as unreadable while the others
//!    are recovered, and fails only the writes to it.
//! 9. Two coordinators beginning the same id: begun once, the other begins
//!    are `Duplicate`, the rest of their batches goes through.
//! 10. PostgreSQL restarted (`-m immediate`, a crash) or every backend of
//!     the logs terminated under the load of two coordinators: they
//!     reconnect by themselves, every outcome acknowledged before stands,
//!     and recovery finishes the rest one way everywhere.
//! 11. Deadlocks and serialization failures: two batches writing the same
//!     rows in opposite orders (a read between the writes) wait in turn,
//!     never abort with 40P01; a default isolation above READ COMMITTED
//!     fails no batch with 40001.
//! 12. Clock skew: with the database's clock an hour off the coordinators'
//!     (and their sessions in other time zones), a lease lasts its TTL on
//!     the database's clock and is claimed just after it passes, not before.
//! 13. Opening by URL: a URL that does not parse is `Config` (and the
//!     message does not repeat its password), one that does not connect is
//!     `Io`, an unmigrated schema is refused unless `migrate(true)` asks.
//!
//! Against the throwaway cluster of `tests/pglog` (one per test binary, a
//! schema per test). Without PostgreSQL server binaries these tests print
//! one line and pass; `TCC_REQUIRE_POSTGRES=1` makes that a failure.

mod pglog;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pglog::cluster::Cluster;
use tcc::durable::{
    Decision, End, Intent, Lease, Log, LogErrorKind, ParticipantEntry, PhaseProgress, PostgresLog,
    Status,
};
use tcc::{
    BoxError, Phase, Recoverable, Resources, TccService, TransactionId, TransactionLog, tcc_service,
};

fn intent(n: usize) -> Intent {
    Intent {
        id: TransactionId::generate(),
        participants: (0..n)
            .map(|i| ParticipantEntry {
                name: format!("account-{i}"),
                kind: "bank".into(),
                data: vec![i as u8; 3],
            })
            .collect(),
    }
}

fn progress(attempts: u32, succeeded: bool) -> PhaseProgress {
    PhaseProgress {
        attempts,
        succeeded,
        last_error: None,
    }
}

/// `n` coordinators' logs on `schema`, each on a pool of its own, with
/// leases of `ttl`, owners `c0`, `c1` ...
async fn coordinators(
    cluster: &Cluster,
    schema: &str,
    n: usize,
    ttl: Duration,
) -> Vec<PostgresLog> {
    let mut logs = Vec::new();
    for i in 0..n {
        let pool = pglog::pool(cluster, schema, 2);
        let log = PostgresLog::options()
            .lease_ttl(ttl)
            .owner(format!("c{i}"))
            .open(pool)
            .await
            .unwrap();
        logs.push(log);
    }
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_claim_each_transaction_once_per_epoch() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let (schema, _) = pglog::migrated(cluster, "claims").await;
    // Leases of 50 ms: claimed rows expire again while the race runs, so
    // each transaction goes through several epochs.
    let ttl = Duration::from_millis(50);
    let logs = coordinators(cluster, &schema, 8, ttl).await;
    let mut ids = HashSet::new();
    for _ in 0..200 {
        let intent = intent(1);
        let lease = logs[0].begin(&intent).await.unwrap();
        logs[0].release(&lease);
        ids.insert(intent.id);
    }
    let logs: Vec<Arc<PostgresLog>> = logs.into_iter().map(Arc::new).collect();
    // Each claim, with when its call was made and when it returned.
    let claims = Arc::new(Mutex::new(Vec::<(Lease, Instant, Instant)>::new()));
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut claimers = tokio::task::JoinSet::new();
    for log in &logs {
        let (log, claims) = (log.clone(), claims.clone());
        claimers.spawn(async move {
            while Instant::now() < deadline {
                let asked = Instant::now();
                let claimed = log.claim_unfinished(16).await.unwrap();
                let returned = Instant::now();
                if claimed.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let mut claims = claims.lock().unwrap();
                claims.extend(
                    claimed
                        .into_iter()
                        .map(|(lease, _)| (lease, asked, returned)),
                );
            }
        });
    }
    while let Some(joined) = claimers.join_next().await {
        joined.unwrap();
    }
    let claims = claims.lock().unwrap();
    let mut seen = HashMap::new();
    for (lease, asked, returned) in claims.iter() {
        assert!(ids.contains(&lease.id), "claimed an unknown id {lease:?}");
        assert!(
            seen.insert((lease.id, lease.epoch), (*asked, *returned))
                .is_none(),
            "{} claimed twice at epoch {}",
            lease.id,
            lease.epoch
        );
    }
    // A live lease is never claimed: the claim of epoch e + 1 came after
    // epoch e's lease expired, at least a lease's length after the claim of
    // epoch e was asked for (the database's clock is this machine's).
    for ((id, epoch), (_, returned)) in &seen {
        if let Some((asked, _)) = seen.get(&(*id, epoch - 1)) {
            assert!(
                returned.duration_since(*asked) >= ttl,
                "{id} claimed at epoch {epoch} {:?} after epoch {} was asked for",
                returned.duration_since(*asked),
                epoch - 1
            );
        }
    }
    let claimed: HashSet<_> = claims.iter().map(|(l, ..)| l.id).collect();
    assert_eq!(claimed, ids, "every transaction was claimed");
    assert!(
        claims.len() > ids.len(),
        "leases expired and were claimed again: {} claims of {} transactions",
        claims.len(),
        ids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_whose_lease_was_claimed_writes_nothing() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let (schema, pool) = pglog::migrated(cluster, "fenced").await;
    let ttl = Duration::from_millis(300);
    let mut logs = coordinators(cluster, &schema, 2, ttl).await;
    let (b, a) = (logs.pop().unwrap(), logs.pop().unwrap());
    let intent = intent(2);
    let stale = a.begin(&intent).await.unwrap();
    a.note(&stale, 0, Phase::Try, progress(1, true));
    // Live on the database's clock: no one else may claim it yet.
    assert!(b.claim_unfinished(10).await.unwrap().is_empty());
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let mut claimed = b.claim_unfinished(10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let (lease, before) = claimed.pop().unwrap();
    assert_eq!(lease.id, intent.id);
    assert!(lease.epoch > stale.epoch);
    assert_eq!(
        before.phase_progress(0, Phase::Try),
        Some(&progress(1, true))
    );

    // Every write of the stale owner is refused, and changes nothing.
    let fenced = |kind: LogErrorKind| assert_eq!(kind, LogErrorKind::Fenced);
    fenced(
        a.decide(&stale, Decision::Confirm)
            .await
            .unwrap_err()
            .kind(),
    );
    fenced(a.renew(&stale).await.unwrap_err().kind());
    fenced(a.finish(&stale, End::NeedsRepair).await.unwrap_err().kind());
    fenced(a.finish(&stale, End::Done).await.unwrap_err().kind());
    a.note(&stale, 1, Phase::Try, progress(9, false));
    a.release(&stale);
    let after = a.get(intent.id).await.unwrap().unwrap();
    assert_eq!(after, before);
    assert!(
        b.claim_unfinished(10).await.unwrap().is_empty(),
        "still B's"
    );
    let client = pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT owner, epoch FROM tcc_log_transactions WHERE id = $1",
            &[&intent.id.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("c1"));
    assert_eq!(row.get::<_, i64>(1) as u64, lease.epoch);

    // The new owner's writes go through.
    assert_eq!(
        b.decide(&lease, Decision::Cancel).await.unwrap(),
        Decision::Cancel
    );
    b.finish(&lease, End::Done).await.unwrap();
    // A lazy finish resolves before its commit: B's next read follows it.
    for log in [&b, &a] {
        assert_eq!(
            log.get(intent.id).await.unwrap().unwrap().status,
            Status::Done(Decision::Cancel)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_lease_is_not_claimed_and_a_moved_epoch_fails_the_renewal() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let (schema, _) = pglog::migrated(cluster, "renew").await;
    let ttl = Duration::from_millis(300);
    let mut logs = coordinators(cluster, &schema, 2, ttl).await;
    let (b, a) = (logs.pop().unwrap(), logs.pop().unwrap());
    let intent = intent(1);
    let lease = a.begin(&intent).await.unwrap();
    // Renewed every 100 ms for three lease lengths: never claimable.
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.renew(&lease).await.unwrap();
        assert!(b.claim_unfinished(10).await.unwrap().is_empty());
    }
    // Left to expire: claimed, and the old owner's renewal is refused.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let claimed = b.claim_unfinished(10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let error = a.renew(&lease).await.unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Fenced);
    assert!(
        error.to_string().contains(&intent.id.to_string()),
        "{error}"
    );
    b.renew(&claimed[0].0).await.unwrap();
}

/// The schema of version 1, as `migrate` made it before version 2 added the
/// times and the notes: frozen here, as a database of then holds it.
const SCHEMA_1: &str = "
CREATE TABLE tcc_log_schema (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   integer NOT NULL
);
INSERT INTO tcc_log_schema (version) VALUES (1);
CREATE TABLE tcc_log_transactions (
    id         text        PRIMARY KEY,
    status     smallint    NOT NULL CHECK (status IN (0, 1, 2)),
    decision   smallint    CHECK (decision IN (0, 1)),
    epoch      bigint      NOT NULL,
    owner      text,
    expires    timestamptz NOT NULL,
    started_at timestamptz NOT NULL,
    names      text[]      NOT NULL,
    kinds      text[]      NOT NULL,
    data       bytea[]     NOT NULL,
    attempts   bigint[]    NOT NULL,
    succeeded  boolean[]   NOT NULL,
    errors     text[]      NOT NULL,
    damage     text
) WITH (fillfactor = 70);
CREATE INDEX tcc_log_expires ON tcc_log_transactions (expires);
CREATE TABLE tcc_log_outcomes (
    id          text        PRIMARY KEY,
    decision    smallint    NOT NULL CHECK (decision IN (0, 1)),
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    seq         bigint      GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX tcc_log_outcomes_seq ON tcc_log_outcomes (seq);
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_of_version_1_is_refused_until_migrate_upgrades_it_keeping_its_rows() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let schema = pglog::fresh_schema("version_1");
    let admin = cluster.connect(&schema).await;
    admin.batch_execute(SCHEMA_1).await.unwrap();
    // A transaction needing repair and an outcome, as version 1 wrote them.
    let (repair, done) = (TransactionId::generate(), TransactionId::generate());
    admin
        .execute(
            "INSERT INTO tcc_log_transactions VALUES ($1, 2, 0, 3, NULL, now(),
                 now() - interval '1 hour', '{payee}', '{account}', ARRAY['\\x7b7d'::bytea],
                 '{1,4,0}', '{t,f,f}', '{NULL,down,NULL}', NULL)",
            &[&repair.to_string()],
        )
        .await
        .unwrap();
    admin
        .execute(
            "INSERT INTO tcc_log_outcomes (id, decision, started_at, finished_at)
             VALUES ($1, 1, now() - interval '2 hours', now() - interval '1 hour')",
            &[&done.to_string()],
        )
        .await
        .unwrap();

    let pool = pglog::pool(cluster, &schema, 4);
    let error = PostgresLog::open(pool.clone()).await.unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Schema);
    let text = error.to_string();
    assert!(text.contains("version 1"), "{text}");
    assert!(text.contains("needs 2"), "{text}");
    assert!(text.contains("PostgresLog::migrate"), "{text}");

    PostgresLog::migrate(&pool).await.unwrap();
    let log = PostgresLog::open(pool).await.unwrap();
    let record = log.get(repair).await.unwrap().unwrap();
    assert_eq!(record.status, Status::NeedsRepair(Decision::Confirm));
    assert_eq!(record.intent.participants[0].name, "payee");
    assert_eq!(record.intent.participants[0].data, b"{}");
    let confirm = record.phase_progress(0, Phase::Confirm).unwrap();
    assert_eq!(confirm.attempts, 4);
    assert_eq!(confirm.last_error.as_deref(), Some("down"));
    assert_eq!((record.decided_at, record.ended_at), (None, None));
    let outcome = log.get(done).await.unwrap().unwrap();
    assert_eq!(outcome.status, Status::Done(Decision::Cancel));
    assert_eq!((outcome.decided_at, outcome.resolution), (None, None));
    assert!(outcome.ended_at.is_some());
    // And what version 2 adds works on them.
    let by_hand = tcc::durable::Resolution::new("ada", "paid by hand");
    assert!(log.resolve(repair, &by_hand).await.unwrap());
    let resolved = log.get(repair).await.unwrap().unwrap();
    assert_eq!(resolved.resolution, Some(by_hand));
    let version: i32 = admin
        .query_one("SELECT version FROM tcc_log_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_open_refuses_a_schema_it_cannot_use() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    // Missing: refused, naming the call to run.
    let schema = pglog::fresh_schema("schema");
    let admin = cluster.connect(&schema).await;
    let pool = pglog::pool(cluster, &schema, 4);
    let error = PostgresLog::open(pool.clone()).await.unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Schema);
    assert!(
        error.to_string().contains("PostgresLog::migrate(&pool)"),
        "{error}"
    );
    assert!(error.to_string().contains(&schema), "{error}");

    // Run twice, then four at once: the same tables, each time.
    PostgresLog::migrate(&pool).await.unwrap();
    let log = PostgresLog::open(pool.clone()).await.unwrap();
    let kept = intent(1);
    let lease = log.begin(&kept).await.unwrap();
    PostgresLog::migrate(&pool).await.unwrap();
    let racing: Vec<_> = (0..4)
        .map(|_| {
            let pool = pglog::pool(cluster, &schema, 1);
            tokio::spawn(async move { PostgresLog::migrate(&pool).await })
        })
        .collect();
    for migration in racing {
        migration.await.unwrap().unwrap();
    }
    assert_eq!(
        log.decide(&lease, Decision::Confirm).await.unwrap(),
        Decision::Confirm
    );
    PostgresLog::open(pool.clone()).await.unwrap();
    let version: i32 = admin
        .query_one("SELECT version FROM tcc_log_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 2);

    // Written by a newer version: refused by open and by migrate.
    admin
        .execute("UPDATE tcc_log_schema SET version = 99", &[])
        .await
        .unwrap();
    for error in [
        PostgresLog::open(pool.clone()).await.unwrap_err(),
        PostgresLog::migrate(&pool).await.unwrap_err(),
    ] {
        assert_eq!(error.kind(), LogErrorKind::Schema);
        assert!(error.to_string().contains("newer version"), "{error}");
    }
    // An older one (here: none recorded): open says to migrate.
    admin
        .execute("UPDATE tcc_log_schema SET version = 0", &[])
        .await
        .unwrap();
    let error = PostgresLog::open(pool.clone()).await.unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Schema);
    assert!(error.to_string().contains("version 0"), "{error}");
    assert!(
        error.to_string().contains("PostgresLog::migrate"),
        "{error}"
    );

    // Tables of the log's names that are someone else's: refused, named.
    let foreign = pglog::fresh_schema("foreign");
    let admin = cluster.connect(&foreign).await;
    admin
        .batch_execute("CREATE TABLE tcc_log_transactions (id integer, note text)")
        .await
        .unwrap();
    let pool = pglog::pool(cluster, &foreign, 2);
    let error = PostgresLog::migrate(&pool).await.unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Schema);
    assert!(
        error.to_string().contains("not the transaction log's"),
        "{error}"
    );
    // Left as it was: the migration rolled back whole.
    let tables: i64 = admin
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
            &[&foreign],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1);
    admin
        .batch_execute(
            "CREATE TABLE tcc_log_schema (singleton boolean PRIMARY KEY, version integer);
             INSERT INTO tcc_log_schema VALUES (true, 2)",
        )
        .await
        .unwrap();
    let error = PostgresLog::open(pool).await.unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Schema);
    assert!(
        error.to_string().contains("not the transaction log's"),
        "{error}"
    );

    // The log's tables with a column of another type (changed by hand):
    // refused at open, naming the column, before anything is written.
    let (schema, pool) = pglog::migrated(cluster, "retyped").await;
    let admin = cluster.connect(&schema).await;
    admin
        .batch_execute("ALTER TABLE tcc_log_transactions ALTER COLUMN epoch TYPE text")
        .await
        .unwrap();
    let error = PostgresLog::open(pool).await.unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Schema);
    let text = error.to_string();
    assert!(
        text.contains("column `epoch` is `text`, the log's is `bigint`"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_batch_loses_nothing_acknowledged() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let (schema, pool) = pglog::migrated(cluster, "killed").await;
    let log = Arc::new(PostgresLog::open(pool).await.unwrap());
    let mut acknowledged = Vec::new();
    for _ in 0..20 {
        let intent = intent(2);
        let lease = log.begin(&intent).await.unwrap();
        log.decide(&lease, Decision::Confirm).await.unwrap();
        acknowledged.push((intent.id, Status::Decided(Decision::Confirm)));
    }
    // Hold the writer's next batch inside its database transaction: it
    // waits on a lock the test holds, and its backend is killed there.
    let mut admin = cluster.connect(&schema).await;
    let blocker = admin.transaction().await.unwrap();
    blocker
        .batch_execute("LOCK TABLE tcc_log_transactions IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let in_flight: Vec<_> = (0..8)
        .map(|_| {
            let log = log.clone();
            let intent = intent(1);
            let id = intent.id;
            (id, tokio::spawn(async move { log.begin(&intent).await }))
        })
        .collect();
    assert!(
        kill_the_waiting_writer(cluster, &schema).await,
        "the writer's backend was never seen waiting"
    );
    blocker.rollback().await.unwrap();
    // Those of the killed batch fail; any sent after it was taken went into
    // the next batch, on a new connection, and are acknowledged.
    let mut failed = 0;
    for (id, begin) in in_flight {
        match begin.await.unwrap() {
            Ok(_) => acknowledged.push((id, Status::Undecided)),
            Err(error) => {
                assert_eq!(error.kind(), LogErrorKind::Io, "{id}: {error}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "the killed batch failed its callers");
    // The next calls reconnect; what was acknowledged is all there.
    for _ in 0..5 {
        let intent = intent(1);
        let lease = log.begin(&intent).await.unwrap();
        log.decide(&lease, Decision::Cancel).await.unwrap();
        acknowledged.push((intent.id, Status::Decided(Decision::Cancel)));
    }
    for (id, status) in &acknowledged {
        let record = log.get(*id).await.unwrap().expect("acknowledged, so kept");
        assert_eq!(record.status, *status, "{id}");
    }
    // The killed batch was rolled back whole: none of its begins landed.
    assert_eq!(
        log.unfinished_count().await.unwrap(),
        acknowledged.len() as u64
    );
}

/// Kills the log's backend once it is seen waiting on a lock (the test
/// holds one), within 5 s; whether it was.
async fn kill_the_waiting_writer(cluster: &Cluster, schema: &str) -> bool {
    let killer = cluster.connect(schema).await;
    for _ in 0..500 {
        let row = killer
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name = 'tcc-log' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 1 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A `finish(Done)` is answered before its batch commits (it is lazy). If
/// that commit then fails, the row is back, decided, under a lease its
/// caller no longer holds: the log gives it back at once, so the next claim
/// takes it instead of waiting out the lease.
#[tokio::test]
async fn an_end_answered_before_a_failed_commit_is_given_back_at_once() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let (schema, pool) = pglog::migrated(cluster, "early_end").await;
    let log = PostgresLog::open(pool).await.unwrap();
    let done = intent(1);
    let lease = log.begin(&done).await.unwrap();
    log.decide(&lease, Decision::Confirm).await.unwrap();
    // A row inserted by another session, not committed: a begin of its
    // id, after the finish (and a read, so in a segment of its own) in one
    // batch, waits there, and its backend is killed. (Every row there is
    // is locked at the batch's start, so a row lock would stop the batch
    // before the finish.)
    let taken = intent(1);
    let mut admin = cluster.connect(&schema).await;
    let blocker = admin.transaction().await.unwrap();
    blocker
        .execute(
            "INSERT INTO tcc_log_transactions
                 (id, status, epoch, expires, started_at, names, kinds, data,
                  attempts, succeeded, errors)
             VALUES ($1, 0, 1, now(), now(), '{}', '{}', '{}', '{}', '{}', '{}')",
            &[&taken.id.to_string()],
        )
        .await
        .unwrap();
    // All sent before the writer runs (this runtime has one thread): one
    // batch.
    let finish = log.finish(&lease, End::Done);
    let read = log.get(done.id);
    let begin = log.begin(&taken);
    let kill = kill_the_waiting_writer(cluster, &schema);
    let (finished, _, begun, killed) = tokio::join!(finish, read, begin, kill);
    assert!(killed, "the writer's backend was never seen waiting");
    finished.expect("answered before the commit");
    begun.expect_err("its batch failed");
    blocker.rollback().await.unwrap();
    // Rolled back: decided again. (The first call after the kill may get
    // the killed connection back from the pool: it costs a retry.)
    let mut record = log.get(done.id).await;
    for _ in 0..5 {
        if record.is_ok() {
            break;
        }
        record = log.get(done.id).await;
    }
    assert_eq!(
        record.unwrap().unwrap().status,
        Status::Decided(Decision::Confirm)
    );
    // The next claim takes it, long before its lease (60 s) would have run
    // out.
    let claimed = log.claim_unfinished(10).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|(lease, _)| lease.id).collect();
    assert_eq!(ids, [done.id]);
}

/// The application's resource for the end-to-end test: one balance.
#[derive(Clone, Default)]
struct Bank(Arc<AtomicI64>);

/// One debit; its amount is its data.
struct Debit {
    bank: Bank,
    amount: i64,
}

#[tcc_service(name = "debit")]
impl Debit {
    #[try_phase]
    async fn hold(&self) -> Result<(), BoxError> {
        Ok(())
    }
    #[confirm]
    async fn take(&self) -> Result<(), BoxError> {
        self.bank.0.fetch_sub(self.amount, Ordering::SeqCst);
        Ok(())
    }
    #[cancel]
    async fn release(&self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl Recoverable for Debit {
    const KIND: &'static str = "debit";
    fn save(&self) -> Result<Vec<u8>, BoxError> {
        Ok(self.amount.to_le_bytes().to_vec())
    }
    fn rebuild(data: &[u8], resources: &Resources) -> Result<Self, BoxError> {
        let amount = i64::from_le_bytes(data.try_into()?);
        Ok(Debit {
            bank: resources.get::<Bank>()?.clone(),
            amount,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_log_on_postgres_runs_and_recovers_transactions() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let (schema, pool) = pglog::migrated(cluster, "engine").await;
    let bank = Bank::default();
    let log = TransactionLog::postgres(pool).await.unwrap();
    log.provide(bank.clone())
        .and_then(|log| log.register::<Debit>())
        .expect("one resource and one kind");
    let report = tcc::tcc! {
        log = &log;
        Debit { bank: bank.clone(), amount: 30 },
    }
    .await
    .unwrap();
    assert_eq!(bank.0.load(Ordering::SeqCst), -30);
    let state = log.status(report.transaction_id()).await.unwrap().unwrap();
    assert_eq!(state.status, Status::Done(Decision::Confirm));

    // A coordinator decides to confirm and dies before phase 2 (its log is
    // dropped: nothing released). Another one's recovery takes it over once
    // the lease expired on the database's clock.
    let ttl = Duration::from_millis(200);
    let dead = coordinators(cluster, &schema, 1, ttl).await.pop().unwrap();
    let debit = Debit {
        bank: bank.clone(),
        amount: 12,
    };
    let orphan = Intent {
        id: TransactionId::generate(),
        participants: vec![ParticipantEntry {
            name: "debit".into(),
            kind: "debit".into(),
            data: debit.save().unwrap(),
        }],
    };
    let lease = dead.begin(&orphan).await.unwrap();
    dead.decide(&lease, Decision::Confirm).await.unwrap();
    drop(dead);
    let summary = log.recover().await.unwrap();
    assert_eq!(summary.finished, 0, "still leased by the dead one");
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let summary = log.recover().await.unwrap();
    assert_eq!(summary.finished, 1);
    assert_eq!(bank.0.load(Ordering::SeqCst), -42);
    assert_eq!(
        log.status(orphan.id).await.unwrap().unwrap().status,
        Status::Done(Decision::Confirm)
    );
    assert_eq!(log.unfinished_count().await.unwrap(), 0);
}

/// Calls of the slow service, for the renewal tests.
#[derive(Default)]
struct Calls {
    tries: AtomicI64,
    confirms: AtomicI64,
    cancels: AtomicI64,
}

/// A service whose Try takes its data's milliseconds.
struct Slow {
    calls: Arc<Calls>,
    millis: u64,
}

#[tcc_service(name = "slow")]
impl Slow {
    #[try_phase]
    async fn hold(&self) -> Result<(), BoxError> {
        self.calls.tries.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        Ok(())
    }
    #[confirm]
    async fn take(&self) -> Result<(), BoxError> {
        self.calls.confirms.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    #[cancel]
    async fn release(&self) -> Result<(), BoxError> {
        self.calls.cancels.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Recoverable for Slow {
    const KIND: &'static str = "slow";
    fn save(&self) -> Result<Vec<u8>, BoxError> {
        Ok(self.millis.to_le_bytes().to_vec())
    }
    fn rebuild(data: &[u8], resources: &Resources) -> Result<Self, BoxError> {
        Ok(Slow {
            calls: resources.get::<Arc<Calls>>()?.clone(),
            millis: u64::from_le_bytes(data.try_into()?),
        })
    }
}

/// A coordinator's transaction log on `schema` with leases of `ttl`, that
/// can rebuild [`Slow`].
async fn slow_coordinator(
    cluster: &Cluster,
    schema: &str,
    ttl: Duration,
    calls: &Arc<Calls>,
) -> TransactionLog {
    let log = coordinators(cluster, schema, 1, ttl).await.pop().unwrap();
    let log = TransactionLog::new(log);
    log.provide(calls.clone())
        .and_then(|log| log.register::<Slow>())
        .expect("one resource and one kind");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_try_keeps_its_lease_by_renewing_it() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let (schema, _) = pglog::migrated(cluster, "renewing").await;
    let ttl = Duration::from_millis(300);
    let calls = Arc::new(Calls::default());
    let log = slow_coordinator(cluster, &schema, ttl, &calls).await;
    let other = coordinators(cluster, &schema, 1, ttl).await.pop().unwrap();
    let running = tokio::spawn({
        let calls = calls.clone();
        async move {
            tcc::tcc! {
                log = &log;
                Slow { calls, millis: 1200 },
            }
            .await
        }
    });
    // Four lease lengths: the lease is renewed all along, so another
    // coordinator never claims the transaction.
    while !running.is_finished() {
        assert!(other.claim_unfinished(10).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.await.unwrap().unwrap();
    assert_eq!(calls.confirms.load(Ordering::SeqCst), 1);
    assert_eq!(calls.cancels.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_lease_was_taken_stops_before_its_next_phase() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let (schema, pool) = pglog::migrated(cluster, "taken").await;
    let ttl = Duration::from_millis(300);
    let calls = Arc::new(Calls::default());
    let log = slow_coordinator(cluster, &schema, ttl, &calls).await;
    let running = tokio::spawn({
        let calls = calls.clone();
        async move {
            tcc::tcc! {
                log = &log;
                Slow { calls, millis: 1000 },
            }
            .await
        }
    });
    // While the Try runs, the epoch moves, as a claim by a coordinator that
    // saw the lease expired would move it.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let admin = pool.get().await.unwrap();
    let moved = admin
        .execute("UPDATE tcc_log_transactions SET epoch = epoch + 1", &[])
        .await
        .unwrap();
    assert_eq!(moved, 1);
    let error = running.await.unwrap().unwrap_err();
    assert_eq!(error.kind(), tcc::ErrorKind::LogFailed);
    assert!(error.to_string().contains("lease"), "{error}");
    assert!(error.to_string().contains("before its next"), "{error}");
    // Stopped in its Try: no Confirm, and no Cancel either (the new owner's
    // to make).
    assert_eq!(calls.tries.load(Ordering::SeqCst), 1);
    assert_eq!(calls.confirms.load(Ordering::SeqCst), 0);
    assert_eq!(calls.cancels.load(Ordering::SeqCst), 0);
    let row = admin
        .query_one("SELECT status FROM tcc_log_transactions", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i16>(0), 0, "still undecided");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_names_data_and_errors_are_kept_exactly() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let log = pglog::open(cluster, PostgresLog::options()).await;
    let awkward = [
        "",
        "NULL",
        "null",
        "a,b",
        "{braces}",
        "\"quoted\"",
        "back\\slash\\",
        "\\x00",
        " spaces ",
        "line\nbreak\ttab",
        "ünïcødé ✓",
    ];
    let intent = Intent {
        id: TransactionId::generate(),
        participants: awkward
            .iter()
            .enumerate()
            .map(|(i, text)| ParticipantEntry {
                name: format!("{text}{i}"),
                kind: (*text).to_owned(),
                data: match i {
                    0 => Vec::new(),
                    1 => (0..=255).collect(),
                    _ => text.as_bytes().to_vec(),
                },
            })
            .collect(),
    };
    let lease = log.begin(&intent).await.unwrap();
    for (i, text) in awkward.iter().enumerate() {
        let error = (i % 2 == 0).then(|| (*text).to_owned());
        let progress = PhaseProgress {
            attempts: u32::MAX - i as u32,
            succeeded: i % 3 == 0,
            last_error: error,
        };
        log.note(&lease, i as u32, Phase::Cancel, progress);
    }
    let record = log.get(intent.id).await.unwrap().unwrap();
    assert_eq!(record.intent, intent);
    for (i, text) in awkward.iter().enumerate() {
        let progress = record.phase_progress(i, Phase::Cancel).unwrap();
        assert_eq!(progress.attempts, u32::MAX - i as u32);
        assert_eq!(progress.succeeded, i % 3 == 0);
        assert_eq!(
            progress.last_error.as_deref(),
            (i % 2 == 0).then_some(*text)
        );
        assert_eq!(
            record.phase_progress(i, Phase::Try),
            Some(&PhaseProgress::default())
        );
    }
}

/// Confirms and cancels per transaction, for the recovery race.
#[derive(Default)]
struct Tally {
    confirms: Mutex<HashMap<TransactionId, u32>>,
    cancels: Mutex<HashMap<TransactionId, u32>>,
}

/// A service that counts its phase 2 calls per transaction.
struct Counted {
    tally: Arc<Tally>,
}

impl Counted {
    fn count(map: &Mutex<HashMap<TransactionId, u32>>) {
        let id = tcc::Context::current()
            .expect("inside a phase")
            .transaction_id();
        *map.lock().unwrap().entry(id).or_default() += 1;
    }
}

#[tcc_service(name = "counted")]
impl Counted {
    #[try_phase]
    async fn hold(&self) -> Result<(), BoxError> {
        Ok(())
    }
    #[confirm]
    async fn take(&self) -> Result<(), BoxError> {
        Counted::count(&self.tally.confirms);
        Ok(())
    }
    #[cancel]
    async fn release(&self) -> Result<(), BoxError> {
        Counted::count(&self.tally.cancels);
        Ok(())
    }
}

impl Recoverable for Counted {
    const KIND: &'static str = "counted";
    fn save(&self) -> Result<Vec<u8>, BoxError> {
        Ok(Vec::new())
    }
    fn rebuild(_: &[u8], resources: &Resources) -> Result<Self, BoxError> {
        Ok(Counted {
            tally: resources.get::<Arc<Tally>>()?.clone(),
        })
    }
}

/// A transaction of `participants` [`Counted`] services, as a coordinator
/// that then died would have begun it.
fn counted_intent(participants: usize) -> Intent {
    let participant = ParticipantEntry {
        name: "counted".into(),
        kind: "counted".into(),
        data: Vec::new(),
    };
    Intent {
        id: TransactionId::generate(),
        participants: vec![participant; participants],
    }
}

/// A coordinator on `log` that rebuilds [`Counted`] with `tally`.
fn counting(log: PostgresLog, tally: &Arc<Tally>) -> TransactionLog {
    let log = TransactionLog::new(log);
    log.provide(tally.clone())
        .and_then(|log| log.register::<Counted>())
        .expect("one resource and one kind");
    log
}

/// Hmily #71: clustered recovery ran one transaction twice. Here four
/// coordinators recover at once what a dead one left: each transaction is
/// carried out by exactly one of them, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_recovering_at_once_finish_each_transaction_once() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let (schema, _) = pglog::migrated(cluster, "recovery").await;
    let ttl = Duration::from_millis(200);
    let dead = coordinators(cluster, &schema, 1, ttl).await.pop().unwrap();
    let mut expected = HashMap::new();
    for i in 0..60 {
        let intent = counted_intent(1);
        let lease = dead.begin(&intent).await.unwrap();
        // A third left undecided: presumed abort.
        let decision = if i % 3 == 0 {
            Decision::Cancel
        } else {
            dead.decide(&lease, Decision::Confirm).await.unwrap()
        };
        expected.insert(intent.id, decision);
    }
    drop(dead);
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;

    let tally = Arc::new(Tally::default());
    let mut recovering = tokio::task::JoinSet::new();
    for log in coordinators(cluster, &schema, 4, Duration::from_secs(30)).await {
        let log = counting(log, &tally);
        recovering.spawn(async move { log.recover().await.unwrap().finished });
    }
    let mut finished = 0;
    while let Some(joined) = recovering.join_next().await {
        finished += joined.unwrap();
    }
    assert_eq!(finished, expected.len());
    let confirms = tally.confirms.lock().unwrap();
    let cancels = tally.cancels.lock().unwrap();
    for (id, decision) in &expected {
        let (confirmed, cancelled) = (confirms.get(id), cancels.get(id));
        match decision {
            Decision::Confirm => assert_eq!((confirmed, cancelled), (Some(&1), None), "{id}"),
            Decision::Cancel => assert_eq!((confirmed, cancelled), (None, Some(&1)), "{id}"),
        }
    }
}

#[tokio::test]
async fn a_log_opened_by_url_says_what_is_wrong_with_the_url() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let error = TransactionLog::postgres_url("postgres://tcc:s3cret@host:notaport/db")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Config, "{error}");
    assert!(!error.to_string().contains("s3cret"), "{error}");

    // A socket directory with no server in it.
    let nowhere = "postgresql://postgres@%2Fnonexistent-tcc:5432/postgres";
    let error = TransactionLog::postgres_url(nowhere).await.unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Io, "{error}");

    let schema = pglog::fresh_schema("url");
    cluster.connect(&schema).await;
    let url = cluster.url(&schema);
    let error = TransactionLog::postgres_url(&url).await.unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Schema, "{error}");
    assert!(error.to_string().contains("migrate(true)"), "{error}");

    let store = PostgresLog::options()
        .migrate(true)
        .owner("by-url")
        .connect(&url)
        .await
        .expect("migrated and opened by URL");
    let log = TransactionLog::new(store);
    assert_eq!(log.unfinished_count().await.unwrap(), 0);
    // Opened again, without migrating: the tables are there now.
    TransactionLog::postgres_url(&url)
        .await
        .expect("opened by URL");
}

/// Connections that commit without waiting for the WAL flush could lose an
/// acknowledged decision in a crash of the database: refused at open,
/// saying what to set. So is a lease of no length.
#[tokio::test]
async fn open_refuses_commits_that_may_not_reach_the_disk_and_leases_of_no_length() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let (schema, pool) = pglog::migrated(cluster, "unsynced").await;
    let mut config = cluster.config(&schema);
    config.options(format!("-c search_path={schema} -c synchronous_commit=off"));
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig::default(),
    );
    let unsynced = deadpool_postgres::Pool::builder(manager)
        .max_size(1)
        .build()
        .unwrap();
    let error = PostgresLog::open(unsynced).await.unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Schema);
    assert!(error.to_string().contains("synchronous_commit"), "{error}");

    let error = PostgresLog::options()
        .lease_ttl(Duration::ZERO)
        .open(pool.clone())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Config);
    assert!(error.to_string().contains("lease TTL of zero"), "{error}");
    // The same pool, as it is: opens.
    PostgresLog::open(pool).await.unwrap();
}

/// One row the log cannot read (its participants' arrays differ in length)
/// among good unfinished ones: recovery finishes the good ones and sets the
/// bad one aside, listed by `needs_repair` and `get` as unreadable with the
/// reason, until `resolve` removes it; a write of the batch that does not
/// touch it goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreadable_row_is_set_aside_and_the_others_are_recovered() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let (schema, pool) = pglog::migrated(cluster, "unreadable").await;
    let ttl = Duration::from_millis(200);
    let dead = coordinators(cluster, &schema, 1, ttl).await.pop().unwrap();
    let mut good = Vec::new();
    let mut bad = None;
    for i in 0..6 {
        let intent = counted_intent(2);
        let lease = dead.begin(&intent).await.unwrap();
        dead.decide(&lease, Decision::Confirm).await.unwrap();
        if i == 2 {
            bad = Some(intent.id);
        } else {
            good.push(intent.id);
        }
    }
    let bad = bad.unwrap();
    drop(dead);
    let client = pool.get().await.unwrap();
    let changed = client
        .execute(
            "UPDATE tcc_log_transactions SET kinds = kinds[1:1] WHERE id = $1",
            &[&bad.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;

    let tally = Arc::new(Tally::default());
    let recovering = coordinators(cluster, &schema, 1, Duration::from_secs(30))
        .await
        .pop()
        .unwrap();
    let log = counting(recovering, &tally);
    let raw = log.store().clone();
    let summary = log.recover().await.unwrap();
    assert_eq!(summary.finished, good.len());
    assert_eq!(summary.unreadable.len(), 1, "{summary:?}");
    assert_eq!(summary.unreadable[0].0, bad);
    assert!(
        summary.unreadable[0].1.contains(&bad.to_string()),
        "{}",
        summary.unreadable[0].1
    );
    let confirms = tally.confirms.lock().unwrap().clone();
    for id in &good {
        assert_eq!(confirms.get(id), Some(&2), "{id}");
    }
    assert_eq!(confirms.get(&bad), None);

    let repair = raw.needs_repair(10).await.unwrap();
    assert_eq!(repair.len(), 1);
    assert_eq!(repair[0].intent.id, bad);
    assert_eq!(repair[0].status, Status::Unreadable);
    assert!(
        repair[0]
            .damage
            .as_deref()
            .unwrap()
            .contains("differ in length")
    );
    let record = raw.get(bad).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Unreadable);
    assert!(raw.reopen(bad).await.unwrap().is_none());
    // Recovery again: nothing claimable is left, the bad row stays aside.
    let summary = log.recover().await.unwrap();
    assert_eq!((summary.finished, summary.unreadable.len()), (0, 0));
    let by_hand = tcc::durable::Resolution::new("ada", "removed the damaged row");
    assert!(raw.resolve(bad, &by_hand).await.unwrap());
    assert!(raw.get(bad).await.unwrap().is_none(), "no outcome kept");
    assert_eq!(raw.unfinished_count().await.unwrap(), 0);
}

/// A row that cannot be read fails only the writes to it: a write of the
/// same batch to another row goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_an_unreadable_row_fails_alone() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let (schema, pool) = pglog::migrated(cluster, "unreadable_write").await;
    let log = coordinators(cluster, &schema, 1, Duration::from_secs(30))
        .await
        .pop()
        .unwrap();
    let (a, b) = (intent(2), intent(2));
    let lease_a = log.begin(&a).await.unwrap();
    let lease_b = log.begin(&b).await.unwrap();
    let client = pool.get().await.unwrap();
    // A NULL where a number belongs.
    client
        .execute(
            "UPDATE tcc_log_transactions SET attempts[1] = NULL WHERE id = $1",
            &[&a.id.to_string()],
        )
        .await
        .unwrap();
    let (to_a, to_b) = tokio::join!(
        log.decide(&lease_a, Decision::Confirm),
        log.decide(&lease_b, Decision::Confirm)
    );
    let error = to_a.unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Corrupt, "{error}");
    assert!(error.to_string().contains(&a.id.to_string()), "{error}");
    assert_eq!(to_b.unwrap(), Decision::Confirm);
}

/// Two coordinators beginning the same caller-chosen ids at once: each id
/// is begun exactly once, every other begin of it is a `Duplicate` (never
/// an I/O error), and the begins of other ids in the same batches go
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_begins_of_one_id_on_two_coordinators_begin_it_once() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let (schema, _) = pglog::migrated(cluster, "duplicates").await;
    let logs: Vec<Arc<PostgresLog>> = coordinators(cluster, &schema, 2, Duration::from_secs(30))
        .await
        .into_iter()
        .map(Arc::new)
        .collect();
    let shared: Vec<Intent> = (0..40).map(|_| intent(1)).collect();
    let mut begins = tokio::task::JoinSet::new();
    for _ in 0..3 {
        for log in &logs {
            for intent in &shared {
                let (log, intent) = (log.clone(), intent.clone());
                begins.spawn(async move { (intent.id, log.begin(&intent).await) });
            }
            // And one id of its own each time, in the same batches.
            let (log, own) = (log.clone(), intent(1));
            begins.spawn(async move { (own.id, log.begin(&own).await) });
        }
    }
    let mut begun: HashMap<TransactionId, u32> = HashMap::new();
    let mut duplicates = 0;
    while let Some(joined) = begins.join_next().await {
        let (id, result) = joined.unwrap();
        match result {
            Ok(_) => *begun.entry(id).or_default() += 1,
            Err(error) => {
                assert_eq!(error.kind(), LogErrorKind::Duplicate, "{error}");
                duplicates += 1;
            }
        }
    }
    for intent in &shared {
        assert_eq!(begun.get(&intent.id), Some(&1), "{}", intent.id);
    }
    assert_eq!(begun.len(), shared.len() + 6, "every own id begun");
    assert!(begun.values().all(|&n| n == 1));
    assert_eq!(duplicates, shared.len() * 5);
    assert_eq!(
        logs[0].unfinished_count().await.unwrap(),
        shared.len() as u64 + 6
    );
}

/// Each branch's phase calls, per transaction and branch, for the tests
/// under load.
#[derive(Default)]
struct Phases {
    calls: Mutex<HashMap<(TransactionId, String), [u32; 3]>>,
}

impl Phases {
    fn count(&self, branch: &str, phase: Phase) {
        let id = tcc::Context::current()
            .expect("inside a phase")
            .transaction_id();
        let mut calls = self.calls.lock().unwrap();
        calls.entry((id, branch.to_owned())).or_default()[phase as usize] += 1;
    }

    /// The Try, Confirm and Cancel calls of `branch` in `id`.
    fn of(&self, id: TransactionId, branch: &str) -> [u32; 3] {
        let calls = self.calls.lock().unwrap();
        calls
            .get(&(id, branch.to_owned()))
            .copied()
            .unwrap_or_default()
    }
}

/// One branch of a transaction under load: `branch` names it, `refuse`
/// fails its Try.
#[derive(Recoverable)]
#[recoverable(kind = "branch")]
struct Branch {
    #[recoverable(resource)]
    phases: Arc<Phases>,
    branch: String,
    refuse: bool,
}

impl TccService for Branch {
    fn service_name(&self) -> &str {
        &self.branch
    }

    async fn try_phase(&self) -> Result<(), BoxError> {
        self.phases.count(&self.branch, Phase::Try);
        if self.refuse {
            return Err(tcc::Permanent::new("refused").into());
        }
        // Long enough that many transactions are in flight at any moment.
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }

    async fn confirm(&self) -> Result<(), BoxError> {
        self.phases.count(&self.branch, Phase::Confirm);
        Ok(())
    }

    async fn cancel(&self) -> Result<(), BoxError> {
        self.phases.count(&self.branch, Phase::Cancel);
        Ok(())
    }
}

/// What happens to PostgreSQL in the middle of the load.
#[derive(Clone, Copy, Debug)]
enum Interruption {
    /// `pg_ctl restart -m immediate`: the server crashes and comes back.
    Restart,
    /// `pg_terminate_backend` of every connection of the logs, three times.
    TerminateBackends,
}

/// What one caller saw of one transaction.
struct Call {
    id: TransactionId,
    /// Begun once the database was back.
    after: bool,
    result: Result<(), tcc::ErrorKind>,
}

/// Two coordinators, each with many concurrent callers of durable
/// transactions of two branches (a quarter of them refused in their Try),
/// while PostgreSQL is interrupted: they reconnect by themselves (no call
/// made once the database is back fails); recovery then leaves nothing
/// unfinished, every acknowledged outcome stands (`Ok`: both branches
/// confirmed, neither cancelled; a Try failure: nothing confirmed, the
/// branch that held cancelled), and every other transaction ended one way
/// everywhere, the way its log says.
async fn coordinators_ride_out(interruption: Interruption) {
    // Its own cluster: the interruption would break every other test's
    // connections on the shared one.
    let Some(cluster) = Cluster::private().map(Arc::new) else {
        return;
    };
    let (schema, _) = pglog::migrated(&cluster, "interrupted").await;
    let ttl = Duration::from_secs(1);
    let phases = Arc::new(Phases::default());
    let logs: Vec<Arc<TransactionLog>> = coordinators(&cluster, &schema, 2, ttl)
        .await
        .into_iter()
        .map(|log| {
            let log = TransactionLog::new(log);
            log.provide(phases.clone())
                .and_then(|log| log.register::<Branch>())
                .expect("one resource and one kind");
            Arc::new(log)
        })
        .collect();
    let back = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..32 {
        let log = logs[caller % 2].clone();
        let (phases, back, stop) = (phases.clone(), back.clone(), stop.clone());
        callers.spawn(async move {
            let mut calls = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let id = TransactionId::generate();
                let after = back.load(Ordering::SeqCst);
                let branch = |name: &str, refuse| Branch {
                    phases: phases.clone(),
                    branch: name.to_owned(),
                    refuse,
                };
                let result = tcc::tcc! {
                    log = &*log;
                    id = id;
                    branch("a", false),
                    branch("b", n % 4 == 0),
                }
                .await;
                let result = result.map(|_| ()).map_err(|e| e.kind());
                calls.push(Call { id, after, result });
                if calls.last().is_some_and(|c| c.result.is_err()) {
                    // Not a busy loop while the database is down.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            calls
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    match interruption {
        Interruption::Restart => {
            let cluster = cluster.clone();
            tokio::task::spawn_blocking(move || cluster.restart_immediate())
                .await
                .unwrap()
        }
        Interruption::TerminateBackends => {
            let killer = cluster.connect(&schema).await;
            for _ in 0..3 {
                // Waits (up to 5 s) for each backend to be gone.
                killer
                    .execute(
                        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
                         WHERE application_name = 'tcc-log'",
                        &[],
                    )
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // A pooled connection broken a moment ago may not know it yet: the
    // callers begin their next transactions a little later.
    tokio::time::sleep(Duration::from_millis(100)).await;
    back.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    let mut calls = Vec::new();
    while let Some(joined) = callers.join_next().await {
        calls.extend(joined.unwrap());
    }

    // Recovery, again until nothing is unfinished: transactions the
    // interruption stopped are claimable once their leases expired.
    let log = &logs[0];
    for round in 0.. {
        let summary = log.recover().await.unwrap();
        assert_eq!(summary.needs_repair, 0, "{summary:?}");
        if log.unfinished_count().await.unwrap() == 0 {
            break;
        }
        assert!(round < 20, "still unfinished after 20 recoveries");
        tokio::time::sleep(ttl / 2).await;
    }

    let interrupted = calls
        .iter()
        .filter(|c| !c.after && c.result.is_err())
        .count();
    assert!(
        interrupted > 0,
        "{interruption:?} failed no transaction: it did not hit the load"
    );
    let after: Vec<&Call> = calls.iter().filter(|c| c.after).collect();
    assert!(
        after.iter().filter(|c| c.result.is_ok()).count() >= 20,
        "few transactions confirmed after the {interruption:?}"
    );
    for call in &calls {
        let id = call.id;
        let (a, b) = (phases.of(id, "a"), phases.of(id, "b"));
        let [confirm, cancel] = [Phase::Confirm, Phase::Cancel].map(|p| p as usize);
        // Never both ways, in any transaction.
        assert!(
            a[confirm] + b[confirm] == 0 || a[cancel] + b[cancel] == 0,
            "{id}: confirmed and cancelled: a {a:?}, b {b:?}"
        );
        let status = log.status(id).await.unwrap().map(|record| record.status);
        match call.result {
            Ok(()) => {
                assert!(a[confirm] >= 1 && b[confirm] >= 1, "{id}: a {a:?}, b {b:?}");
                assert_eq!(status, Some(Status::Done(Decision::Confirm)), "{id}");
            }
            Err(tcc::ErrorKind::TryFailed) => {
                assert_eq!(a[confirm] + b[confirm], 0, "{id}");
                assert!(a[cancel] >= 1, "{id}: the held branch not cancelled");
                assert_eq!(status, Some(Status::Done(Decision::Cancel)), "{id}");
            }
            Err(kind) => {
                assert!(
                    !call.after,
                    "{id} began after the {interruption:?} and failed: {kind:?}"
                );
                // Unknown to its caller: the log's outcome is carried out
                // everywhere, or it never began and nothing ran.
                match status {
                    Some(Status::Done(Decision::Confirm)) => {
                        assert!(a[confirm] >= 1 && b[confirm] >= 1, "{id}: a {a:?}, b {b:?}")
                    }
                    Some(Status::Done(Decision::Cancel)) => {
                        assert_eq!(a[confirm] + b[confirm], 0, "{id}")
                    }
                    None => assert_eq!(a, [0; 3], "{id}: never begun, yet a Try ran"),
                    other => panic!("{id} left {other:?}"),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_ride_out_a_restart_of_postgres_under_load() {
    coordinators_ride_out(Interruption::Restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_ride_out_their_backends_terminated_under_load() {
    coordinators_ride_out(Interruption::TerminateBackends).await;
}

/// Whether `n` backends named `name` wait on a lock, within 5 s.
async fn waiting(cluster: &Cluster, schema: &str, name: &str, n: i64) -> bool {
    let observer = cluster.connect(schema).await;
    for _ in 0..500 {
        let row = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&name],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Two coordinators' batches write the same two rows in opposite orders,
/// with a read between the writes (a read or a claim splits a batch into
/// segments, each of which reads and locks its rows when it comes). Were
/// each segment to lock its rows only then, each batch would hold its
/// first row and wait for its second, which the other holds, and
/// PostgreSQL would abort one with 40P01 (deadlock detected), failing its
/// every call. The rows of a batch are locked up front, in one order, so
/// the batches wait on each other in turn.
#[tokio::test]
async fn batches_writing_the_same_rows_in_opposite_orders_do_not_deadlock() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let (schema, _) = pglog::migrated(cluster, "deadlock").await;
    let mut logs = Vec::new();
    for owner in ["a", "b"] {
        let pool = pglog::pool_with(cluster, &schema, 2, "tcc-log-deadlock", "");
        let log = PostgresLog::options().owner(owner).open(pool).await;
        logs.push(log.unwrap());
    }
    let (a, b) = (&logs[0], &logs[1]);
    let (x, y) = (intent(1), intent(1));
    let (x_lease, y_lease) = (a.begin(&x).await.unwrap(), a.begin(&y).await.unwrap());
    // B's leases are stale: its writes are fenced, once they have locked
    // the rows as every write does.
    let stale = |lease: &Lease| Lease {
        id: lease.id,
        epoch: lease.epoch + 7,
    };
    // Both rows locked by another session, so that both batches are sent
    // and started before either takes a row.
    let mut admin = cluster.connect(&schema).await;
    let blocker = admin.transaction().await.unwrap();
    blocker
        .query("SELECT 1 FROM tcc_log_transactions FOR UPDATE", &[])
        .await
        .unwrap();
    // A batch each (the writers run once this task awaits, on this
    // runtime's one thread): a write, a read, a write; A's x then y, B's y
    // then x.
    let a_calls = (a.renew(&x_lease), a.get(x.id), a.renew(&y_lease));
    let b_calls = (
        b.renew(&stale(&y_lease)),
        b.get(y.id),
        b.renew(&stale(&x_lease)),
    );
    assert!(
        waiting(cluster, &schema, "tcc-log-deadlock", 2).await,
        "both writers waiting"
    );
    blocker.rollback().await.unwrap();
    let ((a_x, a_read, a_y), (b_y, b_read, b_x)) = tokio::join!(
        async { tokio::join!(a_calls.0, a_calls.1, a_calls.2) },
        async { tokio::join!(b_calls.0, b_calls.1, b_calls.2) }
    );
    a_x.unwrap();
    a_y.unwrap();
    assert!(a_read.unwrap().is_some());
    assert!(b_read.unwrap().is_some());
    for fenced in [b_y, b_x] {
        assert_eq!(fenced.unwrap_err().kind(), LogErrorKind::Fenced);
    }
}

/// A database or role whose default isolation is REPEATABLE READ or
/// SERIALIZABLE: a batch that waited for a row another session changed
/// would fail with 40001 (could not serialize) at those levels. Fencing
/// rests on row locks, which READ COMMITTED gives (a write waits, then
/// reads the row as committed), so the log's transactions run at READ
/// COMMITTED whatever the default.
#[tokio::test]
async fn a_default_isolation_above_read_committed_fails_no_batch() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    for isolation in ["repeatable\\ read", "serializable"] {
        let (schema, _) = pglog::migrated(cluster, "isolation").await;
        let setting = format!("-c default_transaction_isolation={isolation}");
        let pool = pglog::pool_with(cluster, &schema, 2, "tcc-log-isolation", &setting);
        let log = PostgresLog::open(pool).await.unwrap();
        let intent = intent(1);
        let lease = log.begin(&intent).await.unwrap();
        // The row changed by another session, which commits while the
        // renewal waits for it.
        let mut admin = cluster.connect(&schema).await;
        let other = admin.transaction().await.unwrap();
        other
            .execute("UPDATE tcc_log_transactions SET owner = owner", &[])
            .await
            .unwrap();
        let renewal = log.renew(&lease);
        let decision = log.decide(&lease, Decision::Confirm);
        assert!(
            waiting(cluster, &schema, "tcc-log-isolation", 1).await,
            "the writer waiting on the other session"
        );
        other.commit().await.unwrap();
        renewal.await.unwrap();
        assert_eq!(decision.await.unwrap(), Decision::Confirm, "{isolation}");
        log.finish(&lease, End::Done).await.unwrap();
        let claims = log.claim_unfinished(10).await.unwrap();
        assert!(claims.is_empty(), "{isolation}");
    }
}

/// Lease expiry is judged on the database's clock alone, never a
/// coordinator's: with the database's clock an hour behind the
/// coordinators' or an hour ahead (and each coordinator's session in
/// another time zone), a lease still lasts its TTL on the database's
/// clock, from its begin and from its renewal, and a claim takes it only
/// once that clock has passed its expiry: the clock is moved (to just
/// before, then just after) while only milliseconds pass for the
/// coordinators. Any coordinator-side time in an expiry or in a claim's
/// comparison would be an hour off.
///
/// The database's clock, for the log's sessions: a `now()` in the test's
/// schema, ahead of `pg_catalog` in their `search_path`, that adds an
/// offset kept in a table (`pg_catalog.now()` plus `offset_secs`).
#[tokio::test]
async fn lease_expiry_follows_the_database_clock_not_the_coordinators() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let (schema, _) = pglog::migrated(cluster, "clock").await;
    let clocked = |name: &str, zone: &str| {
        let settings = format!("-c search_path={schema},pg_catalog -c TimeZone={zone}");
        pglog::pool_with(cluster, &schema, 2, name, &settings)
    };
    let admin = clocked("tcc-clock-admin", "UTC").get().await.unwrap();
    admin
        .batch_execute(
            "CREATE TABLE tcc_test_clock (offset_secs float8 NOT NULL);
             INSERT INTO tcc_test_clock VALUES (0);
             CREATE FUNCTION now() RETURNS timestamptz LANGUAGE sql STABLE AS $$
                 SELECT pg_catalog.now() + make_interval(secs => offset_secs)
                 FROM tcc_test_clock
             $$;",
        )
        .await
        .unwrap();
    let ttl = Duration::from_secs(60);
    let open = |pool| PostgresLog::options().lease_ttl(ttl).open(pool);
    let a = open(clocked("tcc-clock-a", "Pacific/Kiritimati"))
        .await
        .unwrap();
    let b = open(clocked("tcc-clock-b", "Etc/GMT+12")).await.unwrap();
    // Seconds from the database's now to the expiry of `id`'s lease.
    let left = async |id: TransactionId| -> f64 {
        admin
            .query_one(
                "SELECT extract(epoch FROM expires - now())::float8
                 FROM tcc_log_transactions WHERE id = $1",
                &[&id.to_string()],
            )
            .await
            .unwrap()
            .get(0)
    };
    // Moves the database's clock to `secs` from the expiry of `id`'s lease.
    let set_clock = async |id: TransactionId, secs: f64| {
        admin
            .execute(
                "UPDATE tcc_test_clock SET offset_secs = offset_secs + $2 + (
                     SELECT extract(epoch FROM expires - now())::float8
                     FROM tcc_log_transactions WHERE id = $1)",
                &[&id.to_string(), &secs],
            )
            .await
            .unwrap();
    };
    let lasts_a_ttl = |left: f64| left > ttl.as_secs_f64() - 5.0 && left <= ttl.as_secs_f64();
    for offset in [-3600.0_f64, 3600.0] {
        admin
            .execute("UPDATE tcc_test_clock SET offset_secs = $1", &[&offset])
            .await
            .unwrap();
        let intent = intent(1);
        let lease = a.begin(&intent).await.unwrap();
        let id = intent.id;
        assert!(lasts_a_ttl(left(id).await), "{offset}: {}", left(id).await);
        assert!(b.claim_unfinished(10).await.unwrap().is_empty(), "{offset}");
        // Just before the expiry: not claimable. A renewal there runs a
        // TTL from the database's now.
        set_clock(id, -2.0).await;
        assert!(b.claim_unfinished(10).await.unwrap().is_empty(), "{offset}");
        a.renew(&lease).await.unwrap();
        assert!(lasts_a_ttl(left(id).await), "{offset}: {}", left(id).await);
        // Past the expiry the renewal replaced: still A's.
        set_clock(id, -ttl.as_secs_f64() + 3.0).await;
        assert!(b.claim_unfinished(10).await.unwrap().is_empty(), "{offset}");
        // Just past the renewed expiry: claimed.
        set_clock(id, 1.0).await;
        let claimed = b.claim_unfinished(10).await.unwrap();
        let ids: Vec<_> = claimed.iter().map(|(lease, _)| lease.id).collect();
        assert_eq!(ids, [id], "{offset}");
        assert_eq!(
            a.renew(&lease).await.unwrap_err().kind(),
            LogErrorKind::Fenced
        );
        b.finish(&claimed[0].0, End::Done).await.unwrap();
    }
}

/// Migrations racing on a database whose default isolation is above READ
/// COMMITTED: each takes the lock in turn and then sees what the one
/// before committed (a snapshot from before the lock would find no
/// version, create the tables again, and fail as if they were foreign).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_at_a_stricter_default_isolation_all_succeed() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    for isolation in ["repeatable\\ read", "serializable"] {
        let schema = pglog::fresh_schema("migrate_isolation");
        cluster.connect(&schema).await;
        let setting = format!("-c default_transaction_isolation={isolation}");
        let racing: Vec<_> = (0..4)
            .map(|_| {
                let pool = pglog::pool_with(cluster, &schema, 1, "tcc-log-migrate", &setting);
                tokio::spawn(async move { PostgresLog::migrate(&pool).await })
            })
            .collect();
        for migration in racing {
            migration.await.unwrap().expect(isolation);
        }
        let pool = pglog::pool_with(cluster, &schema, 2, "tcc-log-migrate", &setting);
        PostgresLog::open(pool).await.expect(isolation);
    }
}
