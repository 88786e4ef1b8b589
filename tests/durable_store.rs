//! The log's stores against one suite: every case in `cases` runs for
//! [`MemoryLog`], for [`RedbLog`] and for [`PostgresLog`] (on the throwaway
//! cluster of `tests/pglog`; passed after one line on stderr when PostgreSQL
//! is not installed, unless `TCC_REQUIRE_POSTGRES=1`); the cases after it
//! are the file's own (reopening, a second opener, a killed writer), then
//! [`FaultyLog`].
//!
//! A case takes `open(retention)`, which gives a fresh, empty log.

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tcc::durable::{
    Decision, End, Fault, FaultyLog, Filter, Intent, Lease, Log, LogErrorKind, MemoryLog,
    ParticipantEntry, PhaseProgress, PostgresLog, RedbLog, Resolution, Status, StatusGroup,
    TransactionRecord,
};
use tcc::{Phase, TransactionId};

/// A log, and the directory of its file if it has one (removed after the log
/// is dropped: fields drop in order).
pub struct Store<L> {
    log: L,
    _dir: Option<tempfile::TempDir>,
}

impl<L> Deref for Store<L> {
    type Target = L;
    fn deref(&self) -> &L {
        &self.log
    }
}

fn memory(retention: u64) -> Store<MemoryLog> {
    Store {
        log: MemoryLog::with_retention(retention),
        _dir: None,
    }
}

fn redb(retention: u64) -> Store<RedbLog> {
    let dir = tempfile::tempdir().unwrap();
    let log = RedbLog::options()
        .retention(retention)
        .create(dir.path().join("log.redb"))
        .unwrap();
    Store {
        log,
        _dir: Some(dir),
    }
}

mod pglog;

/// A log on a fresh schema of the test cluster. The suite's cases open
/// their store synchronously: this runs on a multi-threaded runtime
/// (`suite_on_postgres!`), whose other worker keeps the log's writer going.
fn postgres(retention: u64) -> Store<PostgresLog> {
    let cluster = pglog::cluster::Cluster::get().expect("checked by the test first");
    let options = PostgresLog::options().retention(retention).writers(2);
    let log = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(pglog::open(cluster, options))
    });
    Store { log, _dir: None }
}

/// An intent with `n` participants, each with some serde data.
fn intent(n: usize) -> Intent {
    Intent {
        id: TransactionId::generate(),
        participants: (0..n)
            .map(|i| ParticipantEntry {
                name: format!("account-{i}"),
                kind: "bank".into(),
                data: format!(r#"{{"account":"a{i}","amount":{}}}"#, 10 * i).into_bytes(),
            })
            .collect(),
    }
}

/// An intent whose participants are named `names`.
fn intent_of(names: &[&str]) -> Intent {
    Intent {
        id: TransactionId::generate(),
        participants: names
            .iter()
            .map(|name| ParticipantEntry {
                name: (*name).into(),
                kind: format!("{name}-kind"),
                data: b"{}".to_vec(),
            })
            .collect(),
    }
}

/// An operator's account, for `resolve`.
fn by_hand(note: &str) -> Resolution {
    Resolution::new("ada", note)
}

fn ids(records: &[TransactionRecord]) -> Vec<TransactionId> {
    records.iter().map(|record| record.intent.id).collect()
}

/// Whether `at` lies between `before` and `after`, with a second's slack
/// either side (the database's clock is the machine's, read at another
/// instant).
fn between(at: Option<SystemTime>, before: SystemTime, after: SystemTime) -> bool {
    let slack = Duration::from_secs(1);
    at.is_some_and(|at| at + slack >= before && at <= after + slack)
}

fn progress(attempts: u32, succeeded: bool, error: Option<&str>) -> PhaseProgress {
    PhaseProgress {
        attempts,
        succeeded,
        last_error: error.map(str::to_owned),
    }
}

async fn record(log: &impl Log, id: TransactionId) -> TransactionRecord {
    log.get(id).await.unwrap().expect("the log has it")
}

async fn status(log: &impl Log, id: TransactionId) -> Option<Status> {
    log.get(id).await.unwrap().map(|r| r.status)
}

/// A transaction taken to NeedsRepair with `decision`; its lease has ended.
async fn in_repair(log: &impl Log, decision: Decision) -> (Intent, Lease) {
    let intent = intent(2);
    let lease = log.begin(&intent).await.unwrap();
    log.decide(&lease, decision).await.unwrap();
    log.finish(&lease, End::NeedsRepair).await.unwrap();
    (intent, lease)
}

mod cases {
    use super::*;

    type Open<L> = fn(u64) -> Store<L>;

    pub async fn begin_writes_an_undecided_intent<L: Log>(open: Open<L>) {
        let log = open(100);
        let before = SystemTime::now();
        let intent = intent(2);
        let lease = log.begin(&intent).await.unwrap();
        assert_eq!(lease.id, intent.id);
        let record = record(&*log, intent.id).await;
        assert_eq!(record.intent, intent);
        assert_eq!(record.status, Status::Undecided);
        assert_eq!(record.progress, vec![<[PhaseProgress; 3]>::default(); 2]);
        assert!(record.started_at >= before - Duration::from_secs(1));
        assert_eq!(log.unfinished_count().await.unwrap(), 1);
        assert_eq!(log.get(TransactionId::generate()).await.unwrap(), None);
    }

    pub async fn begin_refuses_an_id_it_has<L: Log>(open: Open<L>) {
        let log = open(100);
        let intent = intent(1);
        let lease = log.begin(&intent).await.unwrap();
        let error = log.begin(&intent).await.unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::Duplicate);
        assert!(
            error.to_string().contains(&intent.id.to_string()),
            "{error}"
        );
        // Still refused once finished, while its outcome is kept.
        log.finish(&lease, End::Done).await.unwrap();
        let error = log.begin(&intent).await.unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::Duplicate);
    }

    pub async fn decide_is_a_compare_and_set<L: Log>(open: Open<L>) {
        let log = open(100);
        let intent = intent(2);
        let lease = log.begin(&intent).await.unwrap();
        assert_eq!(
            log.decide(&lease, Decision::Cancel).await.unwrap(),
            Decision::Cancel
        );
        assert_eq!(
            log.decide(&lease, Decision::Confirm).await.unwrap(),
            Decision::Cancel
        );
        assert_eq!(
            status(&*log, intent.id).await,
            Some(Status::Decided(Decision::Cancel))
        );

        // Racing decisions, sent before any is awaited (one batch for the
        // file store): all agree with the first.
        let intent = self::intent(2);
        let lease = log.begin(&intent).await.unwrap();
        let racing: Vec<_> = (0..16)
            .map(|i| {
                let decision = if i % 2 == 0 {
                    Decision::Confirm
                } else {
                    Decision::Cancel
                };
                log.decide(&lease, decision)
            })
            .collect();
        for decided in racing {
            assert_eq!(decided.await.unwrap(), Decision::Confirm);
        }
    }

    pub async fn notes_apply_in_order<L: Log>(open: Open<L>) {
        let log = open(100);
        let intent = intent(2);
        let lease = log.begin(&intent).await.unwrap();
        log.note(&lease, 0, Phase::Try, progress(1, true, None));
        log.note(&lease, 1, Phase::Try, progress(1, true, None));
        log.decide(&lease, Decision::Confirm).await.unwrap();
        log.note(
            &lease,
            1,
            Phase::Confirm,
            progress(1, false, Some("timeout")),
        );
        log.note(
            &lease,
            1,
            Phase::Confirm,
            progress(2, false, Some("refused")),
        );
        log.note(
            &lease,
            1,
            Phase::Confirm,
            progress(3, true, Some("refused")),
        );
        // Out of range: dropped, nothing else changes.
        log.note(&lease, 2, Phase::Confirm, progress(9, true, None));
        // A read after notes that were not awaited sees them all.
        let record = record(&*log, intent.id).await;
        assert_eq!(record.progress.len(), 2);
        assert_eq!(
            record.progress[0][Phase::Try as usize],
            progress(1, true, None)
        );
        assert_eq!(
            record.progress[0][Phase::Confirm as usize],
            progress(0, false, None)
        );
        assert_eq!(
            record.phase_progress(1, Phase::Confirm),
            Some(&progress(3, true, Some("refused")))
        );
        assert_eq!(
            record.progress[1][Phase::Cancel as usize],
            PhaseProgress::default()
        );
        assert_eq!(record.status, Status::Decided(Decision::Confirm));
    }

    /// Notes are kept apart from the record they belong to: the writes that
    /// rewrite or move the record (decide, needs repair, reopen, claim)
    /// keep every note made before them.
    pub async fn notes_survive_every_later_write<L: Log>(open: Open<L>) {
        let log = open(100);
        let intent = intent(3);
        let lease = log.begin(&intent).await.unwrap();
        log.note(&lease, 2, Phase::Try, progress(1, true, None));
        log.decide(&lease, Decision::Confirm).await.unwrap();
        log.note(&lease, 0, Phase::Confirm, progress(4, false, Some("down")));
        log.finish(&lease, End::NeedsRepair).await.unwrap();
        let noted = |record: &TransactionRecord| {
            record.phase_progress(2, Phase::Try) == Some(&progress(1, true, None))
                && record.phase_progress(0, Phase::Confirm)
                    == Some(&progress(4, false, Some("down")))
                && record.phase_progress(1, Phase::Confirm) == Some(&progress(0, false, None))
        };
        let repair = log.needs_repair(10).await.unwrap();
        assert!(noted(&repair[0]), "{repair:?}");
        let (lease, record) = log.reopen(intent.id).await.unwrap().unwrap();
        assert!(noted(&record), "{record:?}");
        log.release(&lease);
        let (lease, record) = log.claim_unfinished(10).await.unwrap().pop().unwrap();
        assert!(noted(&record), "{record:?}");
        log.finish(&lease, End::Done).await.unwrap();
        // A note under the ended lease changes nothing.
        log.note(&lease, 1, Phase::Confirm, progress(1, true, None));
        assert_eq!(
            status(&*log, intent.id).await,
            Some(Status::Done(Decision::Confirm))
        );
        assert_eq!(log.unfinished_count().await.unwrap(), 0);
    }

    pub async fn finish_done_keeps_only_the_outcome<L: Log>(open: Open<L>) {
        let log = open(100);
        let intent = intent(2);
        let lease = log.begin(&intent).await.unwrap();
        let started_at = record(&*log, intent.id).await.started_at;
        log.decide(&lease, Decision::Confirm).await.unwrap();
        log.finish(&lease, End::Done).await.unwrap();
        let record = record(&*log, intent.id).await;
        assert_eq!(record.status, Status::Done(Decision::Confirm));
        assert!(record.intent.participants.is_empty());
        assert!(record.progress.is_empty());
        assert_eq!(record.intent.id, intent.id);
        assert_eq!(record.started_at, started_at);
        assert_eq!(log.unfinished_count().await.unwrap(), 0);
        assert!(log.claim_unfinished(10).await.unwrap().is_empty());
        // The lease ended with it.
        let error = log.decide(&lease, Decision::Cancel).await.unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::Fenced);
        let error = log.finish(&lease, End::Done).await.unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::Fenced);
    }

    pub async fn an_undecided_transaction_finishes_cancelled<L: Log>(open: Open<L>) {
        let log = open(100);
        let done = intent(1);
        let lease = log.begin(&done).await.unwrap();
        log.finish(&lease, End::Done).await.unwrap();
        assert_eq!(
            status(&*log, done.id).await,
            Some(Status::Done(Decision::Cancel))
        );
        let repair = intent(1);
        let lease = log.begin(&repair).await.unwrap();
        log.finish(&lease, End::NeedsRepair).await.unwrap();
        assert_eq!(
            status(&*log, repair.id).await,
            Some(Status::NeedsRepair(Decision::Cancel))
        );
    }

    pub async fn finish_needs_repair_keeps_the_record<L: Log>(open: Open<L>) {
        let log = open(100);
        let intent = intent(2);
        let lease = log.begin(&intent).await.unwrap();
        log.decide(&lease, Decision::Confirm).await.unwrap();
        log.note(&lease, 0, Phase::Confirm, progress(5, false, Some("down")));
        log.finish(&lease, End::NeedsRepair).await.unwrap();
        let record = record(&*log, intent.id).await;
        assert_eq!(record.status, Status::NeedsRepair(Decision::Confirm));
        assert_eq!(record.intent, intent);
        assert_eq!(
            record.phase_progress(0, Phase::Confirm),
            Some(&progress(5, false, Some("down")))
        );
        assert_eq!(log.unfinished_count().await.unwrap(), 1);
        assert_eq!(log.needs_repair_count().await.unwrap(), 1);
        assert_eq!(log.needs_repair(10).await.unwrap(), vec![record]);
        // Not claimed: an operator's, not recovery's.
        assert!(log.claim_unfinished(10).await.unwrap().is_empty());
        // The lease ended.
        let error = log.finish(&lease, End::Done).await.unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::Fenced);
    }

    pub async fn claim_skips_live_leases_and_repairs<L: Log>(open: Open<L>) {
        let log = open(100);
        let running = intent(1);
        let _running = log.begin(&running).await.unwrap();
        let (_repair, _) = in_repair(&*log, Decision::Cancel).await;
        let orphan = intent(2);
        let first = log.begin(&orphan).await.unwrap();
        log.decide(&first, Decision::Confirm).await.unwrap();
        log.note(&first, 1, Phase::Confirm, progress(2, true, None));
        log.release(&first);

        let claimed = log.claim_unfinished(10).await.unwrap();
        assert_eq!(claimed.len(), 1, "only the released one: {claimed:?}");
        let (lease, record) = &claimed[0];
        assert_eq!(lease.id, orphan.id);
        assert!(lease.epoch > first.epoch);
        assert_eq!(record.status, Status::Decided(Decision::Confirm));
        assert_eq!(record.intent, orphan);
        assert_eq!(
            record.phase_progress(1, Phase::Confirm),
            Some(&progress(2, true, None))
        );
        // Claimed: live now, so not claimed twice.
        assert!(log.claim_unfinished(10).await.unwrap().is_empty());
        // The first lease is fenced: nothing it writes lands.
        log.note(&first, 0, Phase::Confirm, progress(7, true, None));
        let error = log.finish(&first, End::Done).await.unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::Fenced);
        assert!(
            error.to_string().contains(&orphan.id.to_string()),
            "{error}"
        );
        let now = super::record(&*log, orphan.id).await;
        assert_eq!(now.status, Status::Decided(Decision::Confirm));
        assert_eq!(now.progress, record.progress);
        // The claim's lease writes.
        log.finish(lease, End::Done).await.unwrap();
        assert_eq!(
            status(&*log, orphan.id).await,
            Some(Status::Done(Decision::Confirm))
        );
    }

    pub async fn claim_takes_at_most_its_limit<L: Log>(open: Open<L>) {
        let log = open(100);
        for _ in 0..5 {
            let lease = log.begin(&intent(1)).await.unwrap();
            log.release(&lease);
        }
        assert_eq!(log.claim_unfinished(2).await.unwrap().len(), 2);
        assert_eq!(log.claim_unfinished(10).await.unwrap().len(), 3);
        assert_eq!(log.claim_unfinished(10).await.unwrap().len(), 0);
        assert_eq!(log.unfinished_count().await.unwrap(), 5);
    }

    pub async fn release_gives_a_claim_back_unchanged<L: Log>(open: Open<L>) {
        let log = open(100);
        let intent = intent(2);
        let lease = log.begin(&intent).await.unwrap();
        log.note(&lease, 0, Phase::Try, progress(1, true, None));
        log.release(&lease);
        let before = record(&*log, intent.id).await;
        let (claimed, _) = log.claim_unfinished(10).await.unwrap().pop().unwrap();
        log.release(&claimed);
        assert_eq!(record(&*log, intent.id).await, before);
        // Released twice is still released once: it is claimable again.
        log.release(&claimed);
        let (again, record) = log.claim_unfinished(10).await.unwrap().pop().unwrap();
        assert_eq!(record, before);
        assert!(again.epoch > claimed.epoch);
        // A release under a stale lease does not free the live claim.
        log.release(&claimed);
        assert!(log.claim_unfinished(10).await.unwrap().is_empty());
    }

    pub async fn reopen_claims_a_repair_again<L: Log>(open: Open<L>) {
        let log = open(100);
        let (intent, old) = in_repair(&*log, Decision::Confirm).await;
        let (lease, record) = log.reopen(intent.id).await.unwrap().unwrap();
        assert_eq!(lease.id, intent.id);
        assert!(lease.epoch > old.epoch);
        assert_eq!(record.status, Status::Decided(Decision::Confirm));
        assert_eq!(record.intent, intent);
        assert_eq!(
            status(&*log, intent.id).await,
            Some(Status::Decided(Decision::Confirm))
        );
        assert!(log.needs_repair(10).await.unwrap().is_empty());
        // Not in repair any more: a second reopen finds nothing.
        assert!(log.reopen(intent.id).await.unwrap().is_none());
        // Live: not claimed by recovery meanwhile.
        assert!(log.claim_unfinished(10).await.unwrap().is_empty());
        let error = log.decide(&old, Decision::Cancel).await.unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::Fenced);
        log.finish(&lease, End::Done).await.unwrap();
        assert_eq!(
            status(&*log, intent.id).await,
            Some(Status::Done(Decision::Confirm))
        );
        assert!(log.reopen(intent.id).await.unwrap().is_none());
        assert!(
            log.reopen(TransactionId::generate())
                .await
                .unwrap()
                .is_none()
        );
        let running = self::intent(1);
        log.begin(&running).await.unwrap();
        assert!(log.reopen(running.id).await.unwrap().is_none());
    }

    pub async fn resolve_ends_a_repair_keeping_who_and_why<L: Log>(open: Open<L>) {
        let log = open(100);
        let (intent, _) = in_repair(&*log, Decision::Cancel).await;
        let running = self::intent(1);
        log.begin(&running).await.unwrap();
        assert_eq!(log.unfinished_count().await.unwrap(), 2);
        assert_eq!(log.needs_repair_count().await.unwrap(), 1);
        let note = by_hand("refunded the payer by hand");
        assert!(!log.resolve(running.id, &note).await.unwrap());
        assert!(!log.resolve(TransactionId::generate(), &note).await.unwrap());
        let before = SystemTime::now();
        assert!(log.resolve(intent.id, &note).await.unwrap());
        let after = SystemTime::now();
        let resolved = record(&*log, intent.id).await;
        assert_eq!(resolved.status, Status::Done(Decision::Cancel));
        assert_eq!(resolved.resolution, Some(note.clone()));
        assert!(between(resolved.ended_at, before, after), "{resolved:?}");
        assert!(!log.resolve(intent.id, &by_hand("again")).await.unwrap());
        assert_eq!(log.unfinished_count().await.unwrap(), 1);
        assert_eq!(log.needs_repair_count().await.unwrap(), 0);
        assert!(log.needs_repair(10).await.unwrap().is_empty());
        // Listed with the other outcomes, the note with it.
        let done = log
            .list(&Filter::new().with_status(StatusGroup::Done))
            .await
            .unwrap();
        assert_eq!(done, vec![resolved]);
    }

    pub async fn decisions_and_ends_are_timed<L: Log>(open: Open<L>) {
        let log = open(100);
        let intent = intent(1);
        let lease = log.begin(&intent).await.unwrap();
        let begun = record(&*log, intent.id).await;
        assert_eq!((begun.decided_at, begun.ended_at), (None, None));
        assert_eq!(begun.resolution, None);

        let before = SystemTime::now();
        log.decide(&lease, Decision::Confirm).await.unwrap();
        let after = SystemTime::now();
        let decided = record(&*log, intent.id).await;
        assert!(between(decided.decided_at, before, after), "{decided:?}");
        assert_eq!(decided.ended_at, None);
        // A second decision changes neither the decision nor its time.
        log.decide(&lease, Decision::Cancel).await.unwrap();
        assert_eq!(
            record(&*log, intent.id).await.decided_at,
            decided.decided_at
        );

        let before = SystemTime::now();
        log.finish(&lease, End::NeedsRepair).await.unwrap();
        let after = SystemTime::now();
        let repair = record(&*log, intent.id).await;
        assert_eq!(repair.decided_at, decided.decided_at);
        assert!(between(repair.ended_at, before, after), "{repair:?}");

        // Finished: its outcome keeps the start, the decision's time and
        // the end.
        let other = self::intent(1);
        let lease = log.begin(&other).await.unwrap();
        log.decide(&lease, Decision::Cancel).await.unwrap();
        let decided_at = record(&*log, other.id).await.decided_at;
        let before = SystemTime::now();
        log.finish(&lease, End::Done).await.unwrap();
        let after = SystemTime::now();
        let done = record(&*log, other.id).await;
        assert_eq!(done.status, Status::Done(Decision::Cancel));
        assert_eq!(done.decided_at, decided_at);
        assert!(between(done.ended_at, before, after), "{done:?}");
        assert_eq!(done.resolution, None);

        // Cancelled with no decision (presumed abort): no decision time.
        let undecided = self::intent(1);
        let lease = log.begin(&undecided).await.unwrap();
        log.finish(&lease, End::Done).await.unwrap();
        let done = record(&*log, undecided.id).await;
        assert_eq!(done.status, Status::Done(Decision::Cancel));
        assert_eq!(done.decided_at, None);
        assert!(done.ended_at.is_some());
    }

    pub async fn requeue_hands_a_repair_to_the_next_claim<L: Log>(open: Open<L>) {
        let log = open(100);
        let intent = intent(2);
        let old = log.begin(&intent).await.unwrap();
        log.note(&old, 0, Phase::Try, progress(1, true, None));
        log.note(&old, 1, Phase::Try, progress(1, true, None));
        log.decide(&old, Decision::Confirm).await.unwrap();
        log.note(&old, 0, Phase::Confirm, progress(2, true, None));
        log.note(&old, 1, Phase::Confirm, progress(4, false, Some("down")));
        log.finish(&old, End::NeedsRepair).await.unwrap();
        let repair = record(&*log, intent.id).await;

        // Only a transaction needing repair is requeued.
        let running = self::intent(1);
        let _running = log.begin(&running).await.unwrap();
        assert!(!log.requeue(running.id).await.unwrap());
        assert!(!log.requeue(TransactionId::generate()).await.unwrap());

        assert!(log.requeue(intent.id).await.unwrap());
        assert!(!log.requeue(intent.id).await.unwrap(), "only once");
        let requeued = record(&*log, intent.id).await;
        assert_eq!(requeued.status, Status::Decided(Decision::Confirm));
        assert!(log.needs_repair(10).await.unwrap().is_empty());
        // The times and the intent are as they were.
        assert_eq!(requeued.intent, intent);
        assert_eq!(requeued.started_at, repair.started_at);
        assert_eq!(requeued.decided_at, repair.decided_at);
        assert_eq!(requeued.ended_at, repair.ended_at);
        // A fresh retry budget in phase 2; the rest of the progress kept.
        assert_eq!(
            requeued.phase_progress(0, Phase::Try),
            Some(&progress(1, true, None))
        );
        assert_eq!(
            requeued.phase_progress(0, Phase::Confirm),
            Some(&progress(0, true, None))
        );
        assert_eq!(
            requeued.phase_progress(1, Phase::Confirm),
            Some(&progress(0, false, Some("down")))
        );

        // Held by no one: the next claim takes it (the running one stays
        // with its lease), under an epoch past the old lease's.
        let claimed = log.claim_unfinished(10).await.unwrap();
        assert_eq!(claimed.len(), 1, "{claimed:?}");
        let (lease, record) = &claimed[0];
        assert_eq!(lease.id, intent.id);
        assert!(lease.epoch > old.epoch);
        assert_eq!(record, &requeued);
        let error = log.decide(&old, Decision::Cancel).await.unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::Fenced);
        log.finish(lease, End::Done).await.unwrap();
        assert_eq!(
            status(&*log, intent.id).await,
            Some(Status::Done(Decision::Confirm))
        );
    }

    pub async fn list_returns_each_group_in_its_order<L: Log>(open: Open<L>) {
        let log = open(100);
        // Begun in this order, a few milliseconds apart: each group is
        // listed oldest first, bar the finished, newest finished first.
        let mut begun = Vec::new();
        for names in [
            &["flight", "hotel"][..],
            &["hotel"],
            &["flight"],
            &["car"],
            &["flight", "car"],
            &["hotel", "car"],
        ] {
            let intent = intent_of(names);
            let lease = log.begin(&intent).await.unwrap();
            begun.push((intent.id, lease));
            std::thread::sleep(Duration::from_millis(3));
        }
        let id = |i: usize| begun[i].0;
        let lease = |i: usize| &begun[i].1;
        // 0 and 3 need repair, 1 is decided, 4 undecided, 5 and then 2
        // finished.
        for i in [0, 3] {
            log.decide(lease(i), Decision::Confirm).await.unwrap();
            log.finish(lease(i), End::NeedsRepair).await.unwrap();
        }
        log.decide(lease(1), Decision::Confirm).await.unwrap();
        log.finish(lease(5), End::Done).await.unwrap();
        std::thread::sleep(Duration::from_millis(3));
        log.finish(lease(2), End::Done).await.unwrap();

        let listed = |filter: Filter| {
            let log = &log;
            async move { ids(&log.list(&filter).await.unwrap()) }
        };
        let all = Filter::new();
        assert_eq!(
            listed(all.clone()).await,
            [id(0), id(3), id(1), id(4), id(2), id(5)]
        );
        let group = |group| Filter::new().with_status(group);
        assert_eq!(
            listed(group(StatusGroup::NeedsRepair)).await,
            [id(0), id(3)]
        );
        assert_eq!(listed(group(StatusGroup::Unfinished)).await, [id(1), id(4)]);
        assert_eq!(listed(group(StatusGroup::Done)).await, [id(2), id(5)]);
        // The limit counts across the groups, in their order.
        assert_eq!(
            listed(all.clone().with_limit(3)).await,
            [id(0), id(3), id(1)]
        );
        assert_eq!(
            listed(group(StatusGroup::Done).with_limit(1)).await,
            [id(2)]
        );
        assert!(listed(all.clone().with_limit(0)).await.is_empty());
        // By service: outcomes keep no participants, so none is listed.
        assert_eq!(
            listed(all.clone().with_service("hotel")).await,
            [id(0), id(1)]
        );
        assert_eq!(
            listed(all.clone().with_service("car")).await,
            [id(3), id(4)]
        );
        assert!(listed(all.clone().with_service("train")).await.is_empty());
        // What the list holds is the record, progress and all.
        let listed = log
            .list(&group(StatusGroup::NeedsRepair).with_limit(1))
            .await
            .unwrap();
        assert_eq!(listed, vec![record(&*log, id(0)).await]);
    }

    pub async fn list_by_age_counts_from_the_start<L: Log>(open: Open<L>) {
        let log = open(100);
        let (older, younger) = (intent(1), intent(1));
        let (old_repair, young_repair) = (intent(1), intent(1));
        let first = log.begin(&older).await.unwrap();
        let repair = log.begin(&old_repair).await.unwrap();
        log.decide(&first, Decision::Confirm).await.unwrap();
        log.finish(&first, End::Done).await.unwrap();
        log.finish(&repair, End::NeedsRepair).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let second = log.begin(&younger).await.unwrap();
        log.finish(&second, End::Done).await.unwrap();
        let repair = log.begin(&young_repair).await.unwrap();
        log.finish(&repair, End::NeedsRepair).await.unwrap();
        log.begin(&intent(1)).await.unwrap();

        // Begun over a second ago: the first two only, whatever group.
        let old = Filter::new().with_older_than(Duration::from_secs(1));
        assert_eq!(
            ids(&log.list(&old).await.unwrap()),
            [old_repair.id, older.id]
        );
        for age in [Duration::from_secs(3600), Duration::MAX] {
            let none = Filter::new().with_older_than(age);
            assert!(log.list(&none).await.unwrap().is_empty(), "{age:?}");
        }
        assert_eq!(log.list(&Filter::new()).await.unwrap().len(), 5);
    }

    pub async fn summary_counts_what_the_log_holds<L: Log>(open: Open<L>) {
        let log = open(100);
        let empty = log.summary().await.unwrap();
        assert_eq!(
            (
                empty.undecided,
                empty.decided,
                empty.needs_repair,
                empty.done
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(empty.oldest_unfinished, None);
        assert_eq!(empty.oldest_needs_repair, None);

        let (first_repair, _) = in_repair(&*log, Decision::Confirm).await;
        std::thread::sleep(Duration::from_millis(3));
        let oldest = intent(1);
        log.begin(&oldest).await.unwrap();
        std::thread::sleep(Duration::from_millis(3));
        in_repair(&*log, Decision::Cancel).await;
        let decided = log.begin(&intent(2)).await.unwrap();
        log.decide(&decided, Decision::Confirm).await.unwrap();
        log.begin(&intent(1)).await.unwrap();
        for _ in 0..3 {
            let lease = log.begin(&intent(1)).await.unwrap();
            log.finish(&lease, End::Done).await.unwrap();
        }

        let summary = log.summary().await.unwrap();
        assert_eq!(summary.undecided, 2, "{summary:?}");
        assert_eq!(summary.decided, 1, "{summary:?}");
        assert_eq!(summary.needs_repair, 2, "{summary:?}");
        assert_eq!(summary.unreadable, 0, "{summary:?}");
        assert_eq!(summary.done, 3, "{summary:?}");
        let started = record(&*log, oldest.id).await.started_at;
        assert_eq!(summary.oldest_unfinished, Some((oldest.id, started)));
        let started = record(&*log, first_repair.id).await.started_at;
        assert_eq!(
            summary.oldest_needs_repair,
            Some((first_repair.id, started))
        );
        if let Some(bytes) = summary.bytes {
            assert!(bytes > 0, "{summary:?}");
        }
        // Its count of the unfinished is unfinished_count's.
        assert_eq!(
            summary.undecided + summary.decided + summary.needs_repair,
            log.unfinished_count().await.unwrap()
        );
    }

    pub async fn needs_repair_lists_the_oldest_first<L: Log>(open: Open<L>) {
        let log = open(100);
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(in_repair(&*log, Decision::Confirm).await.0.id);
            // Distinct start times, whatever the clock's resolution.
            std::thread::sleep(Duration::from_millis(2));
        }
        let listed: Vec<_> = log
            .needs_repair(3)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.intent.id)
            .collect();
        assert_eq!(listed, ids[..3]);
        assert_eq!(log.needs_repair_count().await.unwrap(), 4);
    }

    pub async fn outcomes_beyond_the_retention_are_pruned<L: Log>(open: Open<L>) {
        let log = open(3);
        let mut ids = Vec::new();
        for i in 0..10 {
            let intent = intent(1);
            let lease = log.begin(&intent).await.unwrap();
            if i % 3 == 0 {
                log.decide(&lease, Decision::Confirm).await.unwrap();
            }
            log.finish(&lease, End::Done).await.unwrap();
            ids.push(intent.id);
        }
        for (i, id) in ids.iter().enumerate() {
            let decision = if i % 3 == 0 {
                Decision::Confirm
            } else {
                Decision::Cancel
            };
            let expected = (i >= 7).then_some(Status::Done(decision));
            assert_eq!(status(&*log, *id).await, expected, "transaction {i}");
        }
        // A pruned id is unknown again.
        log.begin(&Intent {
            id: ids[0],
            participants: vec![],
        })
        .await
        .unwrap();
    }

    /// Calls that take leases, their futures dropped before they are read
    /// (a dropped recovery pass, an aborted task), at two moments: before
    /// the store answered, and after. Either way the store gives the leases
    /// back, and a claim of this process takes the transactions.
    pub async fn a_log_call_dropped_unread_gives_its_leases_back<L: Log>(open: Open<L>) {
        let log = open(100);
        let unanswered = intent(1);
        drop(log.begin(&unanswered));
        let answered = intent(1);
        let begin = log.begin(&answered);
        // Answered in order: once this read is, so is the begin before it.
        assert!(log.get(answered.id).await.unwrap().is_some());
        drop(begin);
        let (repair, _) = in_repair(&*log, Decision::Cancel).await;
        drop(log.reopen(repair.id));
        let mut expected = vec![unanswered.id, answered.id, repair.id];
        expected.sort();
        let ids = |claimed: &[(Lease, TransactionRecord)]| {
            let mut ids: Vec<_> = claimed.iter().map(|(lease, _)| lease.id).collect();
            ids.sort();
            ids
        };
        let claimed = log.claim_unfinished(10).await.unwrap();
        assert_eq!(ids(&claimed), expected);
        for (lease, _) in &claimed {
            log.release(lease);
        }
        // A claim dropped unread, before and after its answer.
        drop(log.claim_unfinished(10));
        let claim = log.claim_unfinished(10);
        assert!(log.get(repair.id).await.unwrap().is_some());
        drop(claim);
        let claimed = log.claim_unfinished(10).await.unwrap();
        assert_eq!(ids(&claimed), expected);
    }
}

/// One test per case and store.
macro_rules! suite {
    ($store:ident: $($case:ident),* $(,)?) => {
        mod $store {
            $(
                #[tokio::test]
                async fn $case() {
                    super::cases::$case(super::$store).await;
                }
            )*
        }
    };
}

/// The same, for [`PostgresLog`]: on a multi-threaded runtime (see
/// [`postgres`]), and only when the test cluster runs.
macro_rules! suite_on_postgres {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if super::pglog::cluster::Cluster::get().is_none() {
                        return;
                    }
                    super::cases::$case(super::postgres).await;
                }
            )*
        }
    };
}

macro_rules! every_store {
    ($($case:ident),* $(,)?) => {
        suite!(memory: $($case),*);
        suite!(redb: $($case),*);
        suite_on_postgres!($($case),*);
    };
}

every_store!(
    begin_writes_an_undecided_intent,
    begin_refuses_an_id_it_has,
    decide_is_a_compare_and_set,
    notes_apply_in_order,
    notes_survive_every_later_write,
    finish_done_keeps_only_the_outcome,
    an_undecided_transaction_finishes_cancelled,
    finish_needs_repair_keeps_the_record,
    claim_skips_live_leases_and_repairs,
    claim_takes_at_most_its_limit,
    release_gives_a_claim_back_unchanged,
    reopen_claims_a_repair_again,
    resolve_ends_a_repair_keeping_who_and_why,
    decisions_and_ends_are_timed,
    requeue_hands_a_repair_to_the_next_claim,
    list_returns_each_group_in_its_order,
    list_by_age_counts_from_the_start,
    summary_counts_what_the_log_holds,
    needs_repair_lists_the_oldest_first,
    outcomes_beyond_the_retention_are_pruned,
    a_log_call_dropped_unread_gives_its_leases_back,
);

/// The file's own cases: what survives closing it, and who may open it.
mod file {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// Set in a child process of this test binary: what it must do, and the
    /// log file it must do it on.
    const CHILD: &str = "TCC_DURABLE_STORE_CHILD";
    const CHILD_PATH: &str = "TCC_DURABLE_STORE_PATH";

    #[tokio::test]
    async fn what_was_written_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        let (undecided, decided, repair, done) = (intent(1), intent(2), intent(2), intent(1));
        {
            let log = RedbLog::options().retention(3).create(&path).unwrap();
            log.begin(&undecided).await.unwrap();
            let lease = log.begin(&decided).await.unwrap();
            log.decide(&lease, Decision::Confirm).await.unwrap();
            log.note(&lease, 1, Phase::Confirm, progress(2, true, None));
            let lease = log.begin(&repair).await.unwrap();
            log.decide(&lease, Decision::Cancel).await.unwrap();
            log.finish(&lease, End::NeedsRepair).await.unwrap();
            let lease = log.begin(&done).await.unwrap();
            log.finish(&lease, End::Done).await.unwrap();
            // Dropped with two transactions unfinished, as a stopped process
            // leaves them.
        }
        let log = RedbLog::options().retention(3).open(&path).unwrap();
        assert_eq!(log.unfinished_count().await.unwrap(), 3);
        let mut claimed = log.claim_unfinished(10).await.unwrap();
        claimed.sort_by_key(|(_, r)| r.intent.participants.len());
        let statuses: Vec<_> = claimed
            .iter()
            .map(|(_, r)| (r.intent.id, r.status))
            .collect();
        assert_eq!(
            statuses,
            [
                (undecided.id, Status::Undecided),
                (decided.id, Status::Decided(Decision::Confirm))
            ]
        );
        assert_eq!(
            claimed[1].1.phase_progress(1, Phase::Confirm),
            Some(&progress(2, true, None))
        );
        assert_eq!(claimed[1].1.intent, decided);
        assert_eq!(
            status(&log, repair.id).await,
            Some(Status::NeedsRepair(Decision::Cancel))
        );
        assert_eq!(
            status(&log, done.id).await,
            Some(Status::Done(Decision::Cancel))
        );
        // The pruning order goes on where it stopped: three more finished,
        // the first one is pruned.
        for (lease, _) in claimed {
            log.finish(&lease, End::Done).await.unwrap();
        }
        assert!(log.resolve(repair.id, &by_hand("seen to")).await.unwrap());
        assert_eq!(status(&log, done.id).await, None);
        assert_eq!(
            status(&log, undecided.id).await,
            Some(Status::Done(Decision::Cancel))
        );
        assert_eq!(log.unfinished_count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn concurrent_durable_writes_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let log = RedbLog::create(dir.path().join("log.redb")).unwrap();
        let intents: Vec<_> = (0..32).map(|_| intent(2)).collect();
        // Each call sends its request at once; none is awaited yet.
        let begins: Vec<_> = intents.iter().map(|i| log.begin(i)).collect();
        for begin in begins {
            begin.await.unwrap();
        }
        let stats = log.stats();
        assert_eq!(stats.requests, 32);
        assert!(stats.durable_commits >= 1);
        assert!(
            stats.durable_commits < 32,
            "no commit was shared: {stats:?}"
        );
        assert_eq!(stats.commits, stats.durable_commits);
        // Reads commit nothing; a lazy write commits without fsync.
        let lease = log.claim_unfinished(1).await.unwrap();
        assert!(lease.is_empty(), "all 32 are live");
        let lease = log.begin(&intent(1)).await.unwrap();
        let before = log.stats();
        log.note(&lease, 0, Phase::Try, progress(1, true, None));
        log.get(lease.id).await.unwrap();
        let after = log.stats();
        assert_eq!(after.commits, before.commits + 1);
        assert_eq!(after.durable_commits, before.durable_commits);
    }

    #[test]
    fn a_second_open_in_this_process_is_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        let log = RedbLog::create(&path).unwrap();
        let error = RedbLog::open(&path).unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::AlreadyOpen);
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
        drop(log);
        // Dropping the first releases the file.
        RedbLog::open(&path).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("log.redb");
        let error = RedbLog::create(&path).unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::Io);
        assert!(error.to_string().contains("missing"), "{error}");
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(
            &path,
            "not a log, just some text that is long enough ".repeat(100),
        )
        .unwrap();
        let error = RedbLog::open(&path).unwrap_err();
        assert!(error.kind() == LogErrorKind::Corrupt, "{error:?}");
        assert!(error.to_string().contains("notes.txt"), "{error}");
        // And it is left as it was.
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .starts_with("not a log")
        );
    }

    /// Runs this test binary again, as a child doing `role` on `path`.
    fn child(test: &str, role: &str, path: &Path) -> Command {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, role)
            .env(CHILD_PATH, path)
            .stdout(Stdio::piped());
        command
    }

    fn role() -> Option<(String, std::path::PathBuf)> {
        Some((
            std::env::var(CHILD).ok()?,
            std::env::var_os(CHILD_PATH)?.into(),
        ))
    }

    #[test]
    fn a_second_process_is_refused() {
        const TEST: &str = "file::a_second_process_is_refused";
        if let Some((role, path)) = role() {
            assert_eq!(role, "open");
            match RedbLog::open(&path) {
                Err(error) if error.kind() == LogErrorKind::AlreadyOpen => {
                    println!("refused: {error}");
                }
                other => panic!("expected AlreadyOpen, got {other:?}"),
            }
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        let log = RedbLog::create(&path).unwrap();
        let output = child(TEST, "open", &path).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "child failed: {stdout}");
        assert!(
            stdout.contains(&format!(
                "refused: the log {} is already open",
                path.display()
            )),
            "{stdout}"
        );
        drop(log);
    }

    /// A child begins and decides transactions, printing each id once its
    /// decision resolved, and is killed with SIGKILL; every id printed must
    /// be in the file, decided, when it is opened again. Round 0: the child
    /// decides one transaction and then waits, writing nothing more, so that
    /// no later commit can make up for a decision that was not durable on its
    /// own; later rounds: 8 workers, killed while running.
    #[test]
    fn what_a_killed_process_was_told_is_durable() {
        const TEST: &str = "file::what_a_killed_process_was_told_is_durable";
        if let Some((role, path)) = role() {
            let workers = match role.as_str() {
                "decide-once" => 1,
                "decide" => 8,
                other => panic!("unknown role {other}"),
            };
            let once = workers == 1;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let log = Arc::new(RedbLog::open(&path).unwrap());
                for _ in 0..workers {
                    let log = log.clone();
                    tokio::spawn(async move {
                        loop {
                            let intent = intent(2);
                            let lease = log.begin(&intent).await.unwrap();
                            log.note(&lease, 0, Phase::Try, progress(1, true, None));
                            let decision = log.decide(&lease, Decision::Confirm).await.unwrap();
                            assert_eq!(decision, Decision::Confirm);
                            {
                                use std::io::Write;
                                let mut out = std::io::stdout().lock();
                                writeln!(out, "decided {}", intent.id).unwrap();
                                out.flush().unwrap();
                            }
                            if once {
                                std::future::pending::<()>().await;
                            }
                        }
                    });
                }
                // Until killed.
                std::future::pending::<()>().await;
            });
            return;
        }
        let rounds: usize = std::env::var("TCC_CRASH_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        drop(RedbLog::create(&path).unwrap());
        let mut told = Vec::new();
        for round in 0..rounds.max(1) {
            let role = if round == 0 { "decide-once" } else { "decide" };
            let mut process = child(TEST, role, &path).spawn().unwrap();
            let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
            // Kill it at a different point in each round.
            let wanted = if round == 0 { 1 } else { round * 37 };
            let mut seen = 0;
            for line in lines.by_ref() {
                let line = line.unwrap();
                // The test harness prints the test's name before the first
                // line, on the same line.
                if let Some((_, id)) = line.split_once("decided ") {
                    told.push(id.parse::<TransactionId>().unwrap());
                    seen += 1;
                    if seen == wanted {
                        break;
                    }
                }
            }
            process.kill().unwrap(); // SIGKILL
            // Lines already written before the kill were told too.
            for line in lines {
                let Ok(line) = line else { break };
                if let Some((_, id)) = line.split_once("decided ") {
                    told.push(id.parse().unwrap());
                }
            }
            process.wait().unwrap();
            assert_eq!(seen, wanted, "the child stopped early");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let log = RedbLog::open(&path).unwrap();
            for id in &told {
                let record = log.get(*id).await.unwrap();
                let record = record.unwrap_or_else(|| panic!("{id} was told decided, and is lost"));
                assert_eq!(record.status, Status::Decided(Decision::Confirm), "{id}");
                assert_eq!(record.intent.participants.len(), 2);
                // The note sent before the decision was carried by its
                // durable commit.
                assert_eq!(
                    record.phase_progress(0, Phase::Try),
                    Some(&progress(1, true, None)),
                    "{id}"
                );
            }
            // Everything else is an intent, decided or not: recovery's.
            let unfinished = log.unfinished_count().await.unwrap();
            assert!(unfinished >= told.len() as u64);
            let claimed = log.claim_unfinished(usize::MAX).await.unwrap();
            assert_eq!(claimed.len() as u64, unfinished);
        });
    }
}

/// The fault-injecting wrapper: what reaches the inner log, for every k.
mod faulty {
    use super::*;

    /// The writes of one whole transaction: begin, decide, two notes,
    /// finish: five writes. Stops at the first failure; returns the lease.
    async fn scenario(log: &impl Log, intent: &Intent) -> Result<(), LogErrorKind> {
        let lease = log.begin(intent).await.map_err(|e| e.kind())?;
        log.decide(&lease, Decision::Confirm)
            .await
            .map_err(|e| e.kind())?;
        log.note(&lease, 0, Phase::Confirm, progress(1, true, None));
        log.note(&lease, 1, Phase::Confirm, progress(1, true, None));
        log.finish(&lease, End::Done).await.map_err(|e| e.kind())?;
        Ok(())
    }

    /// What a clean log holds after exactly the first `n` writes of the
    /// scenario.
    async fn after_writes(intent: &Intent, n: u64) -> Option<TransactionRecord> {
        let log = MemoryLog::new();
        let mut made = 0;
        let mut lease = None;
        if made < n {
            lease = Some(log.begin(intent).await.unwrap());
            made += 1;
        }
        let lease = lease?;
        if made < n {
            log.decide(&lease, Decision::Confirm).await.unwrap();
            made += 1;
        }
        for participant in 0..2 {
            if made < n {
                log.note(&lease, participant, Phase::Confirm, progress(1, true, None));
                made += 1;
            }
        }
        if made < n {
            log.finish(&lease, End::Done).await.unwrap();
        }
        log.get(intent.id).await.unwrap()
    }

    fn same(a: Option<TransactionRecord>, b: Option<TransactionRecord>) -> bool {
        // Times differ between two logs (whether each is there must not);
        // everything else must not differ.
        let strip = |r: Option<TransactionRecord>| {
            r.map(|mut r| {
                r.started_at = SystemTime::UNIX_EPOCH;
                r.decided_at = r.decided_at.map(|_| SystemTime::UNIX_EPOCH);
                r.ended_at = r.ended_at.map(|_| SystemTime::UNIX_EPOCH);
                r
            })
        };
        strip(a) == strip(b)
    }

    #[tokio::test]
    async fn it_wraps_a_log_behind_dyn() {
        let inner: Arc<dyn Log> = Arc::new(MemoryLog::new());
        let log = FaultyLog::new(inner.clone()).with_fault(1, Fault::Fail);
        let error = log.begin(&intent(1)).await.unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::Injected);
        assert_eq!(inner.unfinished_count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn it_counts_every_write() {
        let log = FaultyLog::new(Arc::new(MemoryLog::new()));
        scenario(&log, &intent(2)).await.unwrap();
        assert_eq!(log.writes(), 5);
        assert!(!log.crashed());
    }

    /// Crashes at every write `k`, with and without losing the lazy writes;
    /// what the inner log keeps must be what a clean log holds after
    /// `kept(k, fault, lose_lazy)` writes.
    async fn crash_at_every_write(lose_lazy: bool, kept: impl Fn(u64, Fault) -> u64) {
        let writes = 5;
        for k in 1..=writes {
            for fault in [Fault::Crash, Fault::CrashAfterWrite] {
                let inner = Arc::new(MemoryLog::new());
                let mut log = FaultyLog::new(inner.clone()).with_fault(k, fault);
                if lose_lazy {
                    log = log.lose_lazy_writes();
                }
                let intent = intent(2);
                let result = scenario(&log, &intent).await;
                // Notes are not awaited: a crash at one shows at the finish.
                assert_eq!(result, Err(LogErrorKind::Injected), "k={k} {fault:?}");
                assert!(log.crashed());
                let left = inner.get(intent.id).await.unwrap();
                let expected = after_writes(&intent, kept(k, fault)).await;
                assert!(
                    same(left.clone(), expected.clone()),
                    "k={k} {fault:?}: {left:?}, expected {expected:?}"
                );
                // The dead process holds nothing: recovery claims what is
                // unfinished.
                let unfinished = left.is_some_and(|r| !matches!(r.status, Status::Done(_)));
                let claimed = inner.claim_unfinished(10).await.unwrap();
                assert_eq!(claimed.len(), usize::from(unfinished), "k={k} {fault:?}");
                // And the crashed log refuses everything, reads included.
                let error = log.get(intent.id).await.unwrap_err();
                assert_eq!(error.kind(), LogErrorKind::Injected);
                assert_eq!(
                    log.claim_unfinished(10).await.unwrap_err().kind(),
                    LogErrorKind::Injected
                );
            }
        }
    }

    #[tokio::test]
    async fn a_crash_at_every_write_leaves_exactly_the_writes_before_it() {
        crash_at_every_write(false, |k, fault| match fault {
            Fault::CrashAfterWrite => k,
            _ => k - 1,
        })
        .await;
    }

    #[tokio::test]
    async fn a_crash_losing_lazy_writes_leaves_the_durable_ones_before_it() {
        // Writes 1 and 2 (begin, decide) are durable; 3 to 5 (two notes and
        // the end) are lazy, and no durable write follows them.
        crash_at_every_write(true, |k, fault| match (k, fault) {
            (1..=2, Fault::CrashAfterWrite) => k,
            (1..=2, _) => k - 1,
            _ => 2,
        })
        .await;
    }

    #[tokio::test]
    async fn held_back_writes_reach_the_inner_log_with_its_next_call() {
        let inner = Arc::new(MemoryLog::new());
        let log = FaultyLog::new(inner.clone())
            .lose_lazy_writes()
            .with_fault(4, Fault::Crash);
        let intent = intent(2);
        let lease = log.begin(&intent).await.unwrap();
        log.note(&lease, 0, Phase::Try, progress(1, true, None));
        // Held back: the inner log does not have it yet...
        let record = super::record(&*inner, intent.id).await;
        assert_eq!(
            record.phase_progress(0, Phase::Try),
            Some(&progress(0, false, None))
        );
        // ... and a read through the wrapper passes it on first.
        let record = super::record(&log, intent.id).await;
        assert_eq!(
            record.phase_progress(0, Phase::Try),
            Some(&progress(1, true, None))
        );
        // A finish held back resolves at once; the crash at the next write
        // loses it, and the transaction is recovery's again.
        log.finish(&lease, End::Done).await.unwrap();
        let error = log.begin(&self::intent(1)).await.unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::Injected);
        let claimed = inner.claim_unfinished(10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].1.intent.id, intent.id);
        assert_eq!(
            claimed[0].1.phase_progress(0, Phase::Try),
            Some(&progress(1, true, None))
        );
    }

    #[tokio::test]
    async fn held_back_writes_are_passed_on_in_order() {
        let inner = Arc::new(MemoryLog::new());
        let log = FaultyLog::new(inner.clone()).lose_lazy_writes();
        let first = intent(1);
        let lease = log.begin(&first).await.unwrap();
        log.note(&lease, 0, Phase::Try, progress(1, true, None));
        log.finish(&lease, End::Done).await.unwrap();
        let second = intent(1);
        let released = log.begin(&second).await.unwrap();
        log.release(&released);
        // The next call passes the note, the finish and the release on, in
        // that order.
        assert_eq!(
            status(&log, first.id).await,
            Some(Status::Done(Decision::Cancel))
        );
        let claimed = log.claim_unfinished(10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].0.id, second.id);
    }

    #[tokio::test]
    async fn a_failure_at_a_write_skips_it_or_not_and_later_writes_go_through() {
        // Fail at the decision: not written, the transaction stays undecided,
        // and its finish (a later write) goes through.
        let inner = Arc::new(MemoryLog::new());
        let log = FaultyLog::new(inner.clone()).with_fault(2, Fault::Fail);
        let intent = intent(2);
        let lease = log.begin(&intent).await.unwrap();
        let error = log.decide(&lease, Decision::Confirm).await.unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::Injected);
        assert_eq!(status(&*inner, intent.id).await, Some(Status::Undecided));
        log.finish(&lease, End::Done).await.unwrap();
        assert_eq!(
            status(&*inner, intent.id).await,
            Some(Status::Done(Decision::Cancel))
        );
        assert!(!log.crashed());

        // Fail after the decision reached the log: the caller saw an error,
        // yet the decision stands; a retry returns it.
        let log = FaultyLog::new(inner.clone()).with_fault(2, Fault::FailAfterWrite);
        let intent = self::intent(2);
        let lease = log.begin(&intent).await.unwrap();
        let error = log.decide(&lease, Decision::Confirm).await.unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::Injected);
        assert_eq!(
            log.decide(&lease, Decision::Cancel).await.unwrap(),
            Decision::Confirm
        );
    }

    #[tokio::test]
    async fn a_crash_releases_the_claims_of_the_dead_process() {
        let dir = tempfile::tempdir().unwrap();
        let inner = Arc::new(RedbLog::create(dir.path().join("log.redb")).unwrap());
        let orphan = intent(1);
        let lease = inner.begin(&orphan).await.unwrap();
        inner.release(&lease);
        // The wrapped process claims it, begins another, then crashes.
        let log = FaultyLog::new(inner.clone()).with_fault(2, Fault::Crash);
        let claimed = log.claim_unfinished(10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let running = intent(1);
        log.begin(&running).await.unwrap();
        let error = log
            .decide(&claimed[0].0, Decision::Cancel)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::Injected);
        // A fresh engine on the inner log finds both.
        let mut found: Vec<_> = inner
            .claim_unfinished(10)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, r)| (r.intent.id, r.status))
            .collect();
        found.sort_by_key(|(id, _)| *id);
        let mut expected = vec![
            (orphan.id, Status::Undecided),
            (running.id, Status::Undecided),
        ];
        expected.sort_by_key(|(id, _)| *id);
        assert_eq!(found, expected);
    }
}
