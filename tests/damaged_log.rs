//! A damaged log is refused, never trusted or silently replaced: each way a
//! log file was found damaged, as a named case.
//!
//! - missing or emptied: `open` refuses it, saying to call `create`; only
//!   `create` makes a new log, and never over an existing one;
//! - random bytes written over a cleanly closed file: opening, reading and
//!   claiming it never panic, and each either answers what was written or
//!   fails with `Corrupt`, `Io` or `Closed` (never a wrong status);
//! - one byte of a record changed (a `Decided(Cancel)` made `Confirm`):
//!   refused, never confirmed;
//! - one unreadable record among good ones: recovery finishes the good ones
//!   and sets the bad one aside, listed with its reason;
//! - a damaged progress row (a lazy note): lost, as a crash may lose it; its
//!   transaction is still driven to its decision;
//! - a log of file format 1 (the previous release): refused, saying how to
//!   finish it;
//! - a log of file format 2: upgraded to 3 when opened, its values read as
//!   they are;
//! - a redb file with no tables (a `create` cut short): `open` says so, and
//!   `create` takes it; one with tables of anyone's is never taken.
//!
//! The damaged values are written with redb itself, below the log, so that
//! they reach the record's checksum rather than redb's own page checks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{ReadableDatabase, ReadableTable};

use tcc::durable::{
    Decision, End, Intent, Log, LogErrorKind, ParticipantEntry, PhaseProgress, RedbLog, Status,
    TransactionRecord,
};
use tcc::{BoxError, Phase, Recoverable, Resources, TccService, TransactionId, TransactionLog};

/// The log's table of unfinished records, as redb sees it.
const UNFINISHED: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new("unfinished");
/// The log's table of progress rows, by (transaction, participant, phase).
const PROGRESS: redb::TableDefinition<(u128, u32, u8), &[u8]> =
    redb::TableDefinition::new("progress");
/// The log's table of its file format and counters.
const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");

/// The phases recovery ran, per transaction.
#[derive(Default)]
struct Ledger(Mutex<Vec<(TransactionId, Phase)>>);

impl Ledger {
    fn ran(&self, id: TransactionId) -> Vec<Phase> {
        let calls = self.0.lock().unwrap();
        calls
            .iter()
            .filter(|(tx, _)| *tx == id)
            .map(|(_, phase)| *phase)
            .collect()
    }
}

/// A participant whose phases only note that they ran.
struct Entry {
    ledger: Arc<Ledger>,
}

impl Entry {
    fn note(&self, phase: Phase) {
        let context = tcc::Context::current().expect("inside a phase");
        let id = context.transaction_id();
        self.ledger.0.lock().unwrap().push((id, phase));
    }
}

impl TccService for Entry {
    fn service_name(&self) -> &str {
        "entry"
    }
    async fn try_phase(&self) -> Result<(), BoxError> {
        self.note(Phase::Try);
        Ok(())
    }
    async fn confirm(&self) -> Result<(), BoxError> {
        self.note(Phase::Confirm);
        Ok(())
    }
    async fn cancel(&self) -> Result<(), BoxError> {
        self.note(Phase::Cancel);
        Ok(())
    }
}

impl Recoverable for Entry {
    const KIND: &'static str = "entry";
    fn save(&self) -> Result<Vec<u8>, BoxError> {
        Ok(Vec::new())
    }
    fn rebuild(_: &[u8], resources: &Resources) -> Result<Self, BoxError> {
        Ok(Entry {
            ledger: resources.get::<Arc<Ledger>>()?.clone(),
        })
    }
}

/// An intent of `n` participants of kind `entry`, named so that their bytes
/// can be found in the file.
fn intent(n: usize, name: &str) -> Intent {
    Intent {
        id: TransactionId::generate(),
        participants: (0..n)
            .map(|i| ParticipantEntry {
                name: format!("{name}-{i}"),
                kind: Entry::KIND.into(),
                data: Vec::new(),
            })
            .collect(),
    }
}

fn coordinator(path: &Path, ledger: &Arc<Ledger>) -> TransactionLog {
    let log = TransactionLog::open(path).unwrap();
    log.provide(ledger.clone())
        .and_then(|log| log.register::<Entry>())
        .expect("one resource and one kind");
    log
}

/// Rewrites the value of `id` in the unfinished table through redb, as a
/// damaged disk or a stray writer would: redb's own checks see a valid file.
fn overwrite_record(path: &Path, id: TransactionId, change: impl FnOnce(&mut Vec<u8>)) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(UNFINISHED).unwrap();
        let mut bytes = table.get(id.as_u128()).unwrap().unwrap().value().to_vec();
        change(&mut bytes);
        table.insert(id.as_u128(), bytes.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn open_of_a_missing_file_is_refused_saying_to_create() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let error = RedbLog::open(&path).unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Missing, "{error}");
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("create"), "{text}");
    let error = TransactionLog::open(&path).unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Missing, "{error}");
    // Nothing was made in its place.
    assert!(!path.exists());
}

#[test]
fn open_of_an_empty_file_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    std::fs::write(&path, b"").unwrap();
    let error = RedbLog::open(&path).unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Missing, "{error}");
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("empty"), "{text}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
}

#[tokio::test]
async fn create_over_an_existing_log_is_refused_and_leaves_it_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let written = intent(1, "kept");
    {
        let log = RedbLog::create(&path).unwrap();
        let lease = log.begin(&written).await.unwrap();
        log.decide(&lease, Decision::Confirm).await.unwrap();
    }
    let error = RedbLog::create(&path).unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Exists, "{error}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    assert_eq!(
        TransactionLog::create(&path).unwrap_err().kind(),
        LogErrorKind::Exists
    );
    let log = RedbLog::open(&path).unwrap();
    let record = log.get(written.id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Decided(Decision::Confirm));
}

#[tokio::test]
async fn create_takes_an_empty_file_a_cut_short_create_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    std::fs::write(&path, b"").unwrap();
    let log = RedbLog::create(&path).unwrap();
    assert_eq!(log.unfinished_count().await.unwrap(), 0);
    drop(log);
    RedbLog::open(&path).unwrap();
}

/// What was written to the log before it was damaged: each id's status.
async fn write_statuses(path: &Path) -> HashMap<TransactionId, Status> {
    let log = RedbLog::create(path).unwrap();
    let mut written = HashMap::new();
    for round in 0..24 {
        let intent = intent(1 + round % 3, "random");
        let lease = log.begin(&intent).await.unwrap();
        let status = match round % 5 {
            0 => Status::Undecided,
            1 => {
                log.decide(&lease, Decision::Confirm).await.unwrap();
                Status::Decided(Decision::Confirm)
            }
            2 => {
                log.decide(&lease, Decision::Cancel).await.unwrap();
                Status::Decided(Decision::Cancel)
            }
            3 => {
                log.decide(&lease, Decision::Cancel).await.unwrap();
                log.finish(&lease, End::NeedsRepair).await.unwrap();
                Status::NeedsRepair(Decision::Cancel)
            }
            _ => {
                log.decide(&lease, Decision::Confirm).await.unwrap();
                log.finish(&lease, End::Done).await.unwrap();
                Status::Done(Decision::Confirm)
            }
        };
        written.insert(intent.id, status);
    }
    written
}

/// A deterministic stream of pseudo-random numbers (splitmix64).
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// An answer of the damaged log: right, or a refusal of a kind that says
/// the log cannot be trusted.
fn check_answer(
    seed: u64,
    id: TransactionId,
    expected: Status,
    answer: Result<Option<TransactionRecord>, tcc::durable::LogError>,
) {
    match answer {
        Ok(Some(record)) => {
            assert_eq!(record.status, expected, "seed {seed}: {id}");
            assert_eq!(record.intent.id, id, "seed {seed}");
        }
        Ok(None) => panic!("seed {seed}: {id} ({expected:?}) is missing, not refused"),
        Err(error) => assert!(
            matches!(
                error.kind(),
                LogErrorKind::Corrupt | LogErrorKind::Io | LogErrorKind::Closed
            ),
            "seed {seed}: {error:?}"
        ),
    }
}

/// Random bytes over a cleanly closed log, 40 seeds: the file opens and
/// answers what was written, or refuses; it never panics and never answers
/// a wrong status. `TCC_DAMAGE_SEEDS` runs more.
#[tokio::test]
async fn random_bytes_over_a_closed_log_never_give_a_wrong_status() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine.redb");
    let written = write_statuses(&pristine).await;
    let bytes = std::fs::read(&pristine).unwrap();
    let seeds: u64 = std::env::var("TCC_DAMAGE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let (mut opened, mut refused) = (0, 0);
    for seed in 0..seeds {
        let mut random = Random(seed);
        let mut damaged = bytes.clone();
        // A few runs of random bytes, each at a random place.
        for _ in 0..1 + random.below(4) {
            let len = 1 + random.below(64);
            let at = random.below(damaged.len() - len);
            for byte in &mut damaged[at..at + len] {
                *byte = random.next() as u8;
            }
        }
        let path = dir.path().join(format!("damaged-{seed}.redb"));
        std::fs::write(&path, &damaged).unwrap();
        let log = match RedbLog::open(&path) {
            Ok(log) => log,
            Err(error) => {
                assert!(
                    matches!(error.kind(), LogErrorKind::Corrupt | LogErrorKind::Io),
                    "seed {seed}: {error:?}"
                );
                assert!(
                    error.to_string().contains(&path.display().to_string()),
                    "seed {seed}: {error}"
                );
                refused += 1;
                continue;
            }
        };
        opened += 1;
        for (&id, &expected) in &written {
            check_answer(seed, id, expected, log.get(id).await);
        }
        match log.claim_unfinished(usize::MAX).await {
            Ok(claimed) => {
                for (_, record) in claimed {
                    let id = record.intent.id;
                    if record.status == Status::Unreadable {
                        continue;
                    }
                    assert_eq!(Some(&record.status), written.get(&id), "seed {seed}");
                }
            }
            Err(error) => assert!(
                matches!(
                    error.kind(),
                    LogErrorKind::Corrupt | LogErrorKind::Io | LogErrorKind::Closed
                ),
                "seed {seed}: {error:?}"
            ),
        }
        drop(log);
        std::fs::remove_file(&path).unwrap();
    }
    // Both ends are exercised: damage the checks refuse, and damage in
    // bytes no one reads (free pages), under which the log still answers.
    println!("{opened} opened, {refused} refused");
    assert!(
        opened > 0 && refused > 0,
        "{opened} opened, {refused} refused: the seeds no longer reach both"
    );
}

#[tokio::test]
async fn a_flipped_byte_of_a_cancel_decision_is_refused_never_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let written = intent(2, "flip");
    {
        let log = RedbLog::create(&path).unwrap();
        let lease = log.begin(&written).await.unwrap();
        log.decide(&lease, Decision::Cancel).await.unwrap();
    }
    // The record's decision byte, Cancel (1) made Confirm (0): the byte
    // after the status (1, decided), which follows the format, the checksum
    // and the epoch.
    overwrite_record(&path, written.id, |bytes| {
        assert_eq!((bytes[13], bytes[14]), (1, 1), "decided, cancel");
        bytes[14] = 0;
    });
    let ledger = Arc::new(Ledger::default());
    let log = coordinator(&path, &ledger);
    let error = log.status(written.id).await.unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Corrupt, "{error}");
    let text = error.to_string();
    assert!(text.contains(&written.id.to_string()), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("checksum"), "{text}");
    let summary = log.recover().await.unwrap();
    assert_eq!(summary.finished, 0);
    assert_eq!(summary.unreadable.len(), 1, "{summary:?}");
    assert!(
        ledger.ran(written.id).is_empty(),
        "nothing ran, nothing confirmed"
    );
    // Set aside for an operator, not dropped.
    let repair = log.needs_repair(10).await.unwrap();
    assert_eq!(repair.len(), 1);
    assert_eq!(repair[0].status, Status::Unreadable);
}

#[tokio::test]
async fn one_unreadable_record_among_13_good_ones_does_not_stop_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let mut good = Vec::new();
    let bad = intent(1, "bad");
    {
        let log = RedbLog::create(&path).unwrap();
        for n in 0..13 {
            let intent = intent(2, "good");
            let lease = log.begin(&intent).await.unwrap();
            let decision = if n % 2 == 0 {
                log.decide(&lease, Decision::Confirm).await.unwrap();
                Phase::Confirm
            } else {
                Phase::Cancel
            };
            good.push((intent.id, decision));
        }
        let lease = log.begin(&bad).await.unwrap();
        log.decide(&lease, Decision::Confirm).await.unwrap();
    }
    overwrite_record(&path, bad.id, |bytes| {
        bytes.truncate(bytes.len() / 2);
    });
    let ledger = Arc::new(Ledger::default());
    let log = coordinator(&path, &ledger);
    let summary = log.recover().await.unwrap();
    assert_eq!(summary.finished, 13, "{summary:?}");
    assert_eq!(summary.unreadable.len(), 1, "{summary:?}");
    let (id, reason) = &summary.unreadable[0];
    assert_eq!(*id, bad.id);
    assert!(reason.contains(&bad.id.to_string()), "{reason}");
    for (id, phase) in &good {
        assert_eq!(ledger.ran(*id), [*phase, *phase], "{id}");
    }
    assert!(ledger.ran(bad.id).is_empty());
    // Kept for an operator, with the reason.
    let repair = log.needs_repair(10).await.unwrap();
    assert_eq!(repair.len(), 1);
    assert_eq!(repair[0].intent.id, bad.id);
    assert_eq!(repair[0].status, Status::Unreadable);
    assert_eq!(repair[0].damage.as_deref(), Some(reason.as_str()));
    assert_eq!(log.unfinished_count().await.unwrap(), 1);
    assert_eq!(log.store().needs_repair_count().await.unwrap(), 1);
    // A later pass does not report it again as newly found, nor touch it.
    let again = log.recover().await.unwrap();
    assert_eq!(again.finished, 0);
    assert!(again.unreadable.is_empty(), "{again:?}");
    // Once the operator has seen to it by hand, it is gone.
    let by_hand = tcc::durable::Resolution::new("ada", "removed the damaged record");
    assert!(log.resolve(bad.id, by_hand).await.unwrap());
    assert!(log.needs_repair(10).await.unwrap().is_empty());
    assert_eq!(log.unfinished_count().await.unwrap(), 0);
}

/// Writes `note` for participant 0 of a transaction of two, decided
/// `decision`, then damages that progress row's bytes and adds a row for a
/// participant the record does not have.
async fn decided_with_a_damaged_note(path: &Path, decision: Option<Decision>) -> Intent {
    let written = intent(2, "noted");
    {
        let log = RedbLog::create(path).unwrap();
        let lease = log.begin(&written).await.unwrap();
        let progress = PhaseProgress {
            attempts: 1,
            succeeded: true,
            last_error: None,
        };
        log.note(&lease, 0, Phase::Try, progress);
        if let Some(decision) = decision {
            log.decide(&lease, decision).await.unwrap();
        }
    }
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(PROGRESS).unwrap();
        let key = (written.id.as_u128(), 0, Phase::Try as u8);
        let mut bytes = table.get(key).unwrap().expect("noted").value().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        table.insert(key, bytes.as_slice()).unwrap();
        table
            .insert((written.id.as_u128(), 7, 0), bytes.as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
    written
}

#[tokio::test]
async fn a_damaged_progress_row_is_a_lost_note_and_recovery_drives_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let written = decided_with_a_damaged_note(&path, Some(Decision::Confirm)).await;
    let ledger = Arc::new(Ledger::default());
    let log = coordinator(&path, &ledger);
    // Read as a lost note leaves it: decided, no attempt noted.
    let record = log.status(written.id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Decided(Decision::Confirm));
    assert_eq!(
        record.phase_progress(0, Phase::Try),
        Some(&PhaseProgress::default())
    );
    let summary = log.recover().await.unwrap();
    assert_eq!(summary.finished, 1, "{summary:?}");
    assert!(summary.unreadable.is_empty(), "{summary:?}");
    assert_eq!(ledger.ran(written.id), [Phase::Confirm, Phase::Confirm]);
    assert_eq!(log.unfinished_count().await.unwrap(), 0);
}

#[tokio::test]
async fn a_damaged_progress_row_fails_no_decide_or_finish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let written = decided_with_a_damaged_note(&path, None).await;
    let log = RedbLog::open(&path).unwrap();
    let (lease, record) = log.claim_unfinished(10).await.unwrap().pop().unwrap();
    assert_eq!(record.intent.id, written.id);
    assert_eq!(record.status, Status::Undecided);
    assert_eq!(
        log.decide(&lease, Decision::Cancel).await.unwrap(),
        Decision::Cancel
    );
    log.finish(&lease, End::Done).await.unwrap();
    let record = log.get(written.id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Done(Decision::Cancel));
    assert!(log.needs_repair(10).await.unwrap().is_empty());
}

#[test]
fn a_log_of_file_format_1_is_refused_saying_how_to_finish_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format", 1).unwrap();
        txn.commit().unwrap();
    }
    let error = RedbLog::open(&path).unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Corrupt, "{error}");
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("format 1"), "{text}");
    assert!(text.contains("previous version"), "{text}");
    assert!(text.contains("recover"), "{text}");
    assert!(text.contains("unfinished_count()"), "{text}");
    assert!(text.contains("`create`"), "{text}");
    // Left as it was, for that version to finish.
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    assert_eq!(
        txn.open_table(META)
            .unwrap()
            .get("format")
            .unwrap()
            .unwrap()
            .value(),
        1
    );
}

/// CRC-32 (IEEE), as the log's checksums are: to write a value of format
/// 2 as the release before wrote it.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for byte in parts.iter().flat_map(|part| part.iter()) {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test]
async fn a_log_of_file_format_2_is_upgraded_when_opened_its_records_read_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    drop(RedbLog::create(&path).unwrap());
    // A decided transaction as format 2 wrote it (no decision time), in a
    // file of format 2.
    let id = TransactionId::generate();
    let mut body = Vec::new();
    body.extend_from_slice(&7u64.to_le_bytes()); // epoch
    body.extend_from_slice(&[1, 0]); // decided, confirm
    body.extend_from_slice(&1_000_000_000u64.to_le_bytes()); // started_at
    body.extend_from_slice(&1u32.to_le_bytes());
    for field in [&b"payer"[..], b"entry", b"{}"] {
        body.extend_from_slice(&(field.len() as u32).to_le_bytes());
        body.extend_from_slice(field);
    }
    let mut value = vec![2];
    value.extend_from_slice(&crc32(&[&id.as_u128().to_le_bytes(), &body]).to_le_bytes());
    value.extend_from_slice(&body);
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format", 2).unwrap();
        txn.open_table(UNFINISHED)
            .unwrap()
            .insert(id.as_u128(), value.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }

    let log = TransactionLog::open(&path).unwrap();
    let record = log.status(id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Decided(Decision::Confirm));
    assert_eq!(record.intent.participants[0].name, "payer");
    assert_eq!(record.decided_at, None);
    // Recovered as any other: confirmed, and its outcome kept.
    let ledger = Arc::new(Ledger::default());
    log.provide(ledger.clone())
        .unwrap()
        .register::<Entry>()
        .unwrap();
    let summary = log.recover().await.unwrap();
    assert_eq!(summary.finished, 1, "{summary:?}");
    assert_eq!(ledger.ran(id), [Phase::Confirm]);
    drop(log);

    // The file says format 3 now: a version reading format 2 only refuses
    // it rather than take the values written since for damage.
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let format = txn.open_table(META).unwrap().get("format").unwrap();
    assert_eq!(format.unwrap().value(), 3);
}

#[tokio::test]
async fn a_redb_file_with_no_tables_is_a_create_cut_short_which_create_takes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    // What a `create` stopped after redb wrote its header leaves.
    drop(redb::Database::create(&path).unwrap());
    let error = RedbLog::open(&path).unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Missing, "{error}");
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("cut short"), "{text}");
    assert!(text.contains("`create`"), "{text}");
    let log = RedbLog::create(&path).unwrap();
    assert_eq!(log.unfinished_count().await.unwrap(), 0);
    drop(log);
    RedbLog::open(&path).unwrap();
}

#[test]
fn create_refuses_a_redb_file_with_tables_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.redb");
    const OTHER: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("other");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(OTHER).unwrap().insert("kept", 7).unwrap();
        txn.commit().unwrap();
    }
    let error = RedbLog::create(&path).unwrap_err();
    assert_eq!(error.kind(), LogErrorKind::Exists, "{error}");
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(OTHER).unwrap();
    assert_eq!(table.get("kept").unwrap().unwrap().value(), 7);
}
