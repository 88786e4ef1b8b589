//! Metrics (`tcc::metrics`): every series a run of transactions records,
//! with exact values and labels, through a recorder local to each test.
//!
//! Each test sets a `DebuggingRecorder` as its thread's recorder for its
//! whole run (the runtime is the test's own current thread), so tests in
//! this binary do not see each other's metrics; the one that needs the
//! global recorder (for the embedded log's writer thread) reads only the
//! log's metrics from it. A snapshot resets what it
//! read: each step asserts what that step alone recorded, and that nothing
//! else was.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Step, healthy, scripted};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tcc::durable::{Decision, Fault, FaultyLog, Intent, Log, MemoryLog, ParticipantEntry, RedbLog};
use tcc::{
    BoxError, ErrorKind, Orchestrator, Recoverable, RetryPolicy, Service, TccService,
    TransactionId, TransactionLog,
};

const SECOND: Duration = Duration::from_secs(1);

/// The label names a metric may carry: none says which transaction.
const LABELS: [&str; 5] = ["outcome", "service", "phase", "result", "log"];

/// What one series recorded since the last snapshot: a counter's count, a
/// gauge's value, or a histogram's samples.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Count(u64),
    Gauge(f64),
    Samples(Vec<f64>),
}

/// Every series recorded since the last snapshot, each written as
/// Prometheus writes it, `name{label="value",...}`, after checking that no
/// label names a transaction of `ids`.
fn take(snapshotter: &Snapshotter, ids: &[TransactionId]) -> BTreeMap<String, Value> {
    let mut taken = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut labels = Vec::new();
        for label in key.labels() {
            assert!(
                LABELS.contains(&label.key()),
                "{}: label {} is not one of {LABELS:?}",
                key.name(),
                label.key()
            );
            for id in ids {
                let id = id.to_string();
                assert!(
                    !label.value().contains(&id) && !id.contains(label.value()),
                    "{}: label {}={} names a transaction",
                    key.name(),
                    label.key(),
                    label.value()
                );
            }
            labels.push(format!("{}=\"{}\"", label.key(), label.value()));
        }
        let series = if labels.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        let value = match value {
            DebugValue::Counter(n) => Value::Count(n),
            DebugValue::Gauge(v) => Value::Gauge(v.into_inner()),
            DebugValue::Histogram(samples) => {
                let mut samples: Vec<f64> = samples.into_iter().map(|s| s.into_inner()).collect();
                samples.sort_by(f64::total_cmp);
                Value::Samples(samples)
            }
        };
        // A counter or histogram not touched since the last snapshot is
        // still listed, empty: not something this step recorded. (A gauge
        // is listed at 0, as one set to 0 is.)
        if value != Value::Count(0) && value != Value::Samples(Vec::new()) {
            taken.insert(series, value);
        }
    }
    taken
}

/// `series` and their values, as [`take`] writes them.
fn expect<const N: usize>(series: [(&str, Value); N]) -> BTreeMap<String, Value> {
    series
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

fn seconds(samples: &[u64]) -> Value {
    Value::Samples(samples.iter().map(|&s| s as f64).collect())
}

/// One second between retries, no jitter: a phase's duration counts its
/// retries.
fn every_second(max_retries: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(max_retries)
        .with_initial_interval(SECOND)
        .with_multiplier(1.0)
        .with_jitter(0.0)
}

#[tokio::test(start_paused = true)]
async fn transactions_and_phases_are_counted_by_outcome_service_phase_and_result() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (flight, _) = healthy("flight");
    let (hotel, _) = healthy("hotel");
    let ids: Vec<TransactionId> = (0..3).map(|_| TransactionId::generate()).collect();

    // Confirmed.
    Orchestrator::new([flight.clone(), hotel])
        .orchestrate_as(ids[0])
        .await
        .unwrap();
    assert_eq!(
        take(&snapshotter, &ids),
        expect([
            (
                "tcc_phase_attempts_total{service=\"flight\",phase=\"confirm\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_attempts_total{service=\"flight\",phase=\"try\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_attempts_total{service=\"hotel\",phase=\"confirm\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_attempts_total{service=\"hotel\",phase=\"try\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_duration_seconds{service=\"flight\",phase=\"confirm\"}",
                seconds(&[0])
            ),
            (
                "tcc_phase_duration_seconds{service=\"flight\",phase=\"try\"}",
                seconds(&[0])
            ),
            (
                "tcc_phase_duration_seconds{service=\"hotel\",phase=\"confirm\"}",
                seconds(&[0])
            ),
            (
                "tcc_phase_duration_seconds{service=\"hotel\",phase=\"try\"}",
                seconds(&[0])
            ),
            (
                "tcc_transaction_duration_seconds{outcome=\"confirmed\"}",
                seconds(&[0])
            ),
            ("tcc_transactions_in_flight", Value::Gauge(0.0)),
            (
                "tcc_transactions_total{outcome=\"confirmed\"}",
                Value::Count(1)
            ),
        ])
    );

    // Cancelled: one Try outlives its second, one panics; every Cancel runs.
    let (slow, _) = scripted("hotel", Step::Sleep(10 * SECOND), Step::Ok, Step::Ok);
    let (car, _) = scripted("car", Step::Panic, Step::Ok, Step::Ok);
    let error = Orchestrator::new([flight.clone(), slow, car])
        .try_timeout(SECOND)
        .orchestrate_as(ids[1])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TryFailed);
    assert_eq!(
        take(&snapshotter, &ids),
        expect([
            (
                "tcc_phase_attempts_total{service=\"car\",phase=\"cancel\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_attempts_total{service=\"car\",phase=\"try\",result=\"panic\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_attempts_total{service=\"flight\",phase=\"cancel\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_attempts_total{service=\"flight\",phase=\"try\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_attempts_total{service=\"hotel\",phase=\"cancel\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_attempts_total{service=\"hotel\",phase=\"try\",result=\"timeout\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_duration_seconds{service=\"car\",phase=\"cancel\"}",
                seconds(&[0])
            ),
            (
                "tcc_phase_duration_seconds{service=\"car\",phase=\"try\"}",
                seconds(&[0])
            ),
            (
                "tcc_phase_duration_seconds{service=\"flight\",phase=\"cancel\"}",
                seconds(&[0])
            ),
            (
                "tcc_phase_duration_seconds{service=\"flight\",phase=\"try\"}",
                seconds(&[0])
            ),
            (
                "tcc_phase_duration_seconds{service=\"hotel\",phase=\"cancel\"}",
                seconds(&[0])
            ),
            // The time limit, from the start of the Try round.
            (
                "tcc_phase_duration_seconds{service=\"hotel\",phase=\"try\"}",
                seconds(&[1])
            ),
            (
                "tcc_transaction_duration_seconds{outcome=\"cancelled\"}",
                seconds(&[1])
            ),
            ("tcc_transactions_in_flight", Value::Gauge(0.0)),
            (
                "tcc_transactions_total{outcome=\"cancelled\"}",
                Value::Count(1)
            ),
        ])
    );

    // Needs repair: a Confirm fails three times, a second apart.
    let (bank, _) = scripted("bank", Step::Ok, Step::Fail, Step::Ok);
    let error = Orchestrator::new([flight.clone(), bank])
        .retry(every_second(2))
        .orchestrate_as(ids[2])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConfirmFailed);
    assert_eq!(
        take(&snapshotter, &ids),
        expect([
            (
                "tcc_phase_attempts_total{service=\"bank\",phase=\"confirm\",result=\"error\"}",
                Value::Count(3)
            ),
            (
                "tcc_phase_attempts_total{service=\"bank\",phase=\"try\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_attempts_total{service=\"flight\",phase=\"confirm\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_attempts_total{service=\"flight\",phase=\"try\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_duration_seconds{service=\"bank\",phase=\"confirm\"}",
                seconds(&[2])
            ),
            (
                "tcc_phase_duration_seconds{service=\"bank\",phase=\"try\"}",
                seconds(&[0])
            ),
            (
                "tcc_phase_duration_seconds{service=\"flight\",phase=\"confirm\"}",
                seconds(&[0])
            ),
            (
                "tcc_phase_duration_seconds{service=\"flight\",phase=\"try\"}",
                seconds(&[0])
            ),
            (
                "tcc_phase_retries_total{service=\"bank\",phase=\"confirm\"}",
                Value::Count(2)
            ),
            (
                "tcc_transaction_duration_seconds{outcome=\"needs_repair\"}",
                seconds(&[2])
            ),
            ("tcc_transactions_in_flight", Value::Gauge(0.0)),
            (
                "tcc_transactions_total{outcome=\"needs_repair\"}",
                Value::Count(1)
            ),
        ])
    );

    // Refused, by the engine (no services) and by the front end (two
    // services of one name): counted, not timed, no phase.
    let refused = Orchestrator::new([]).orchestrate().await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::NoServices);
    let twice = Orchestrator::new([flight.clone(), flight.clone()])
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(twice.kind(), ErrorKind::DuplicateService);
    assert_eq!(
        take(&snapshotter, &ids),
        expect([
            ("tcc_transactions_in_flight", Value::Gauge(0.0)),
            (
                "tcc_transactions_total{outcome=\"refused\"}",
                Value::Count(2)
            ),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_tcc_block_is_counted_as_an_orchestrator_is() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (flight, _) = healthy("flight");
    let id = TransactionId::generate();
    tcc::tcc! {
        id = id;
        flight,
    }
    .await
    .unwrap();
    assert_eq!(
        take(&snapshotter, &[id]),
        expect([
            (
                "tcc_phase_attempts_total{service=\"flight\",phase=\"confirm\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_attempts_total{service=\"flight\",phase=\"try\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_duration_seconds{service=\"flight\",phase=\"confirm\"}",
                seconds(&[0])
            ),
            (
                "tcc_phase_duration_seconds{service=\"flight\",phase=\"try\"}",
                seconds(&[0])
            ),
            (
                "tcc_transaction_duration_seconds{outcome=\"confirmed\"}",
                seconds(&[0])
            ),
            ("tcc_transactions_in_flight", Value::Gauge(0.0)),
            (
                "tcc_transactions_total{outcome=\"confirmed\"}",
                Value::Count(1)
            ),
        ])
    );
}

/// A ledger entry whose Confirm fails while the ledger is down (a resource).
#[derive(Recoverable)]
#[recoverable(kind = "entry")]
struct Entry {
    #[recoverable(resource)]
    down: Arc<AtomicBool>,
    name: String,
}

impl TccService for Entry {
    fn service_name(&self) -> &str {
        &self.name
    }

    async fn try_phase(&self) -> Result<(), BoxError> {
        Ok(())
    }

    async fn confirm(&self) -> Result<(), BoxError> {
        match self.down.load(Ordering::SeqCst) {
            true => Err("ledger down".into()),
            false => Ok(()),
        }
    }

    async fn cancel(&self) -> Result<(), BoxError> {
        Ok(())
    }
}

/// An unfinished transaction of one participant of `kind`, written
/// straight to `store` and decided `decision`, as a crashed process leaves
/// it.
async fn crashed(store: &MemoryLog, kind: &str, decision: Decision) -> TransactionId {
    let entry = Entry {
        down: Arc::default(),
        name: "ledger".to_owned(),
    };
    let intent = Intent {
        id: TransactionId::generate(),
        participants: vec![ParticipantEntry {
            name: "ledger".to_owned(),
            kind: kind.to_owned(),
            data: entry.save().unwrap(),
        }],
    };
    let lease = store.begin(&intent).await.unwrap();
    store.decide(&lease, decision).await.unwrap();
    store.release(&lease);
    intent.id
}

#[tokio::test(start_paused = true)]
async fn recoveries_are_counted_and_the_repair_gauge_follows_the_log() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let store = Arc::new(MemoryLog::new());
    let down = Arc::new(AtomicBool::new(false));
    let log = TransactionLog::from_store(store.clone());
    log.provide(down.clone())
        .unwrap()
        .register::<Entry>()
        .unwrap();
    log.retry(RetryPolicy::immediate(1));
    let mut ids = vec![
        crashed(&store, "entry", Decision::Confirm).await,
        crashed(&store, "entry", Decision::Cancel).await,
        crashed(&store, "unknown", Decision::Confirm).await,
    ];

    // At start: one confirmed, one cancelled, one left (its kind is not
    // registered); nothing needs repair.
    let summary = log.recover().await.unwrap();
    assert_eq!((summary.finished, summary.left.len()), (2, 1));
    assert_eq!(
        take(&snapshotter, &ids),
        expect([
            (
                "tcc_phase_attempts_total{service=\"ledger\",phase=\"cancel\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_attempts_total{service=\"ledger\",phase=\"confirm\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_duration_seconds{service=\"ledger\",phase=\"cancel\"}",
                seconds(&[0])
            ),
            (
                "tcc_phase_duration_seconds{service=\"ledger\",phase=\"confirm\"}",
                seconds(&[0])
            ),
            (
                "tcc_recoveries_total{result=\"cancelled\"}",
                Value::Count(1)
            ),
            (
                "tcc_recoveries_total{result=\"confirmed\"}",
                Value::Count(1)
            ),
            ("tcc_recoveries_total{result=\"left\"}", Value::Count(1)),
            ("tcc_transactions_in_flight", Value::Gauge(0.0)),
            ("tcc_transactions_needing_repair", Value::Gauge(0.0)),
        ])
    );

    // A durable transaction whose Confirm gives up: the gauge reads one.
    down.store(true, Ordering::SeqCst);
    let id = TransactionId::generate();
    ids.push(id);
    let entry = Entry {
        down: down.clone(),
        name: "ledger".to_owned(),
    };
    let error = Orchestrator::new([Service::recoverable(entry)])
        .retry(RetryPolicy::immediate(1))
        .log(&log)
        .orchestrate_as(id)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConfirmFailed);
    let taken = take(&snapshotter, &ids);
    assert_eq!(taken["tcc_transactions_needing_repair"], Value::Gauge(1.0));
    assert_eq!(
        taken["tcc_transactions_total{outcome=\"needs_repair\"}"],
        Value::Count(1)
    );
    assert_eq!(
        taken["tcc_phase_retries_total{service=\"ledger\",phase=\"confirm\"}"],
        Value::Count(1)
    );

    // Re-driven once the ledger is back: phases and the gauge count, the
    // transaction is not counted again.
    down.store(false, Ordering::SeqCst);
    log.redrive(id).await.unwrap();
    assert_eq!(
        take(&snapshotter, &ids),
        expect([
            (
                "tcc_phase_attempts_total{service=\"ledger\",phase=\"confirm\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_duration_seconds{service=\"ledger\",phase=\"confirm\"}",
                seconds(&[0])
            ),
            ("tcc_transactions_in_flight", Value::Gauge(0.0)),
            ("tcc_transactions_needing_repair", Value::Gauge(0.0)),
        ])
    );

    // A later pass meets the one left again.
    let again = log.recover().await.unwrap();
    assert_eq!(again.left.len(), 1);
    assert_eq!(
        take(&snapshotter, &ids),
        expect([
            ("tcc_recoveries_total{result=\"left\"}", Value::Count(1)),
            ("tcc_transactions_in_flight", Value::Gauge(0.0)),
            ("tcc_transactions_needing_repair", Value::Gauge(0.0)),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_transaction_whose_log_fails_after_its_tries_is_interrupted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let store = Arc::new(MemoryLog::new());
    // Writes: the intent, the Try's note, then the decision, which fails.
    let faulty = FaultyLog::new(store).with_fault(3, Fault::Fail);
    let log = TransactionLog::new(faulty);
    log.provide(Arc::new(AtomicBool::new(false)))
        .unwrap()
        .register::<Entry>()
        .unwrap();
    let entry = Entry {
        down: Arc::default(),
        name: "ledger".to_owned(),
    };
    let id = TransactionId::generate();
    let error = Orchestrator::new([Service::recoverable(entry)])
        .log(&log)
        .orchestrate_as(id)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::LogFailed);
    assert_eq!(
        take(&snapshotter, &[id]),
        expect([
            (
                "tcc_phase_attempts_total{service=\"ledger\",phase=\"try\",result=\"ok\"}",
                Value::Count(1)
            ),
            (
                "tcc_phase_duration_seconds{service=\"ledger\",phase=\"try\"}",
                seconds(&[0])
            ),
            (
                "tcc_transaction_duration_seconds{outcome=\"interrupted\"}",
                seconds(&[0])
            ),
            ("tcc_transactions_in_flight", Value::Gauge(0.0)),
            (
                "tcc_transactions_total{outcome=\"interrupted\"}",
                Value::Count(1)
            ),
        ])
    );
}

/// The embedded log's writer is a thread of its own, which sees only the
/// global recorder: installed here, for the whole binary (the other tests'
/// local recorders take precedence on their own threads).
#[tokio::test]
async fn the_embedded_log_records_each_commit_and_its_batch() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("only this test installs a global recorder");
    let dir = tempfile::tempdir().unwrap();
    let redb = Arc::new(RedbLog::create(dir.path().join("log.redb")).unwrap());
    let log = TransactionLog::from_store(redb.clone());
    log.provide(Arc::new(AtomicBool::new(false)))
        .unwrap()
        .register::<Entry>()
        .unwrap();
    for _ in 0..3 {
        let entry = Entry {
            down: Arc::default(),
            name: "ledger".to_owned(),
        };
        Orchestrator::new([Service::recoverable(entry)])
            .log(&log)
            .orchestrate()
            .await
            .unwrap();
    }
    // A read, applied after every write before it was committed.
    assert_eq!(log.unfinished_count().await.unwrap(), 0);
    let stats = redb.stats();
    let taken = take(&snapshotter, &[]);
    let samples = |series: &str| match &taken[series] {
        Value::Samples(samples) => samples.clone(),
        other => panic!("{series} is {other:?}"),
    };
    let spent = samples("tcc_log_commit_duration_seconds{log=\"redb\"}");
    let sizes = samples("tcc_log_batch_size{log=\"redb\"}");
    // One sample of each per commit: an intent and a decision each (synced)
    // at least, per transaction.
    assert_eq!(spent.len() as u64, stats.commits, "{stats:?}");
    assert_eq!(sizes.len() as u64, stats.commits, "{stats:?}");
    assert!(stats.commits >= 6, "{stats:?}");
    assert!(spent.iter().all(|s| *s > 0.0), "{spent:?}");
    // Each commit carried one call or more, and no call twice; only the
    // last read may have been applied in no commit.
    assert!(sizes.iter().all(|n| *n >= 1.0), "{sizes:?}");
    let carried: f64 = sizes.iter().sum();
    assert!(
        carried == stats.requests as f64 || carried == stats.requests as f64 - 1.0,
        "{carried} calls committed of {stats:?}"
    );
}
