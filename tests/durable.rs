//! Durable transactions: the log the engine writes, recovery from every
//! prefix of it, and the repair API.
//!
//! The crash tests run a transaction over a `FaultyLog` that fails or
//! "crashes" at its k-th write, for every k and every kind of fault, on both
//! front ends (`Orchestrator` and `tcc!`), then restart: a fresh
//! `TransactionLog` over what was durable, `recover()`, and the invariants:
//!
//! 1. a participant is confirmed or cancelled, never both, and every
//!    participant of a transaction ends the same way;
//! 2. an acknowledged commit (the caller got `Ok`) is never cancelled;
//! 3. nothing is confirmed without a durable decision to confirm;
//! 4. nothing stays reserved after recovery, and the log holds nothing
//!    unfinished.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tcc::durable::{
    Decision, End, Fault, FaultyLog, Filter, Intent, Lease, Log, LogFuture, LogSummary, MemoryLog,
    PhaseProgress, Resolution, Status, TransactionRecord,
};
use tcc::{
    BoxError, ErrorKind, Orchestrator, Phase, Recoverable, Resources, Service, TccService,
    TransactionId, TransactionLog, WiringError, tcc, tcc_service,
};

/// One branch of one transaction at one account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Branch {
    held: bool,
    confirmed: bool,
    cancelled: bool,
}

/// The participants' world: branches keyed by transaction and account,
/// made idempotent by that key, and the violations the phases saw.
struct Bank {
    branches: Mutex<HashMap<(TransactionId, String), Branch>>,
    /// Where decisions become durable: a Confirm checks one is there.
    durable: Arc<MemoryLog>,
    violations: Mutex<Vec<String>>,
    /// Confirm attempts that fail before one succeeds, per account.
    confirm_failures: Mutex<HashMap<String, u32>>,
}

impl Bank {
    fn new(durable: Arc<MemoryLog>) -> Arc<Self> {
        Arc::new(Bank {
            branches: Mutex::default(),
            durable,
            violations: Mutex::default(),
            confirm_failures: Mutex::default(),
        })
    }

    fn branch(&self, account: &str) -> (TransactionId, String) {
        let context = tcc::Context::current().expect("inside a phase");
        (context.transaction_id(), account.to_owned())
    }

    fn violation(&self, text: String) {
        self.violations.lock().unwrap().push(text);
    }

    fn of(&self, id: TransactionId) -> Vec<(String, Branch)> {
        let branches = self.branches.lock().unwrap();
        let mut of: Vec<_> = branches
            .iter()
            .filter(|((tx, _), _)| *tx == id)
            .map(|((_, account), branch)| (account.clone(), *branch))
            .collect();
        of.sort_by(|a, b| a.0.cmp(&b.0));
        of
    }
}

/// One account's side of a transaction: `account` and `fail_try` are its
/// data (saved in the log), `bank` a resource.
#[derive(Recoverable)]
#[recoverable(kind = "account")]
struct Account {
    #[recoverable(resource)]
    bank: Arc<Bank>,
    account: String,
    fail_try: bool,
}

impl TccService for Account {
    fn service_name(&self) -> &str {
        &self.account
    }

    async fn try_phase(&self) -> Result<(), BoxError> {
        if self.fail_try {
            return Err("insufficient funds".into());
        }
        let key = self.bank.branch(&self.account);
        let mut branches = self.bank.branches.lock().unwrap();
        let branch = branches.entry(key).or_default();
        if branch.cancelled {
            // A Try after its Cancel reserves nothing.
            return Err(tcc::Permanent::new("cancelled already").into());
        }
        branch.held = true;
        Ok(())
    }

    async fn confirm(&self) -> Result<(), BoxError> {
        let (id, account) = self.bank.branch(&self.account);
        let decision = self
            .bank
            .durable
            .get(id)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.status.decision());
        if decision != Some(Decision::Confirm) {
            self.bank.violation(format!(
                "inv 3: {account} confirmed in {id} with the log's decision {decision:?}"
            ));
        }
        {
            let mut failures = self.bank.confirm_failures.lock().unwrap();
            if let Some(left) = failures.get_mut(&account).filter(|left| **left > 0) {
                *left -= 1;
                return Err("ledger unavailable".into());
            }
        }
        let mut branches = self.bank.branches.lock().unwrap();
        let branch = branches.entry((id, account.clone())).or_default();
        if branch.cancelled {
            self.bank
                .violation(format!("inv 1: {account} confirmed after cancel in {id}"));
        }
        branch.held = false;
        branch.confirmed = true;
        Ok(())
    }

    async fn cancel(&self) -> Result<(), BoxError> {
        let (id, account) = self.bank.branch(&self.account);
        let mut branches = self.bank.branches.lock().unwrap();
        let branch = branches.entry((id, account.clone())).or_default();
        if branch.confirmed {
            self.bank
                .violation(format!("inv 1: {account} cancelled after confirm in {id}"));
        }
        branch.held = false;
        branch.cancelled = true;
        Ok(())
    }
}

/// The coordinator of a process: a transaction log over `store`, which can
/// rebuild accounts of `bank`.
fn coordinator(store: Arc<dyn Log>, bank: &Arc<Bank>) -> TransactionLog {
    let log = TransactionLog::from_store(store);
    log.provide(bank.clone())
        .and_then(|log| log.register::<Account>())
        .expect("one resource and one kind, each once");
    log.retry(tcc::RetryPolicy::immediate(2));
    log
}

#[derive(Clone, Copy, Debug)]
enum Front {
    Orchestrator,
    Macro,
}

/// One transaction of two accounts (the second's Try fails when
/// `fail_try`), on `front`, through `log`. Returns whether it confirmed.
async fn transfer(
    front: Front,
    log: &TransactionLog,
    bank: &Arc<Bank>,
    fail_try: bool,
) -> Result<TransactionId, (Option<TransactionId>, ErrorKind)> {
    let account = |name: &str, fail_try: bool| Account {
        bank: bank.clone(),
        account: name.to_owned(),
        fail_try,
    };
    let id = TransactionId::generate();
    let outcome = match front {
        Front::Orchestrator => {
            Orchestrator::new([
                Service::recoverable(account("payer", false)),
                Service::recoverable(account("payee", fail_try)),
            ])
            .retry(tcc::RetryPolicy::immediate(2))
            .log(log)
            .orchestrate_as(id)
            .await
        }
        Front::Macro => {
            tcc! {
                log = log;
                id = id;
                retry = tcc::RetryPolicy::immediate(2);
                account("payer", false),
                account("payee", fail_try),
            }
            .await
        }
    };
    match outcome {
        Ok(report) => {
            assert_eq!(report.transaction_id(), id);
            Ok(id)
        }
        Err(error) => Err((Some(id), error.kind())),
    }
}

/// Restarts over what `durable` kept, recovers, and checks the invariants
/// for transaction `id`, whose caller was told `acknowledged`.
async fn restart_and_check(
    durable: &Arc<MemoryLog>,
    bank: &Arc<Bank>,
    id: TransactionId,
    acknowledged: bool,
    what: &str,
) {
    check_participants(durable, bank, id, 2, acknowledged, what).await;
}

/// As [`restart_and_check`], for a transaction of `participants`.
async fn check_participants(
    durable: &Arc<MemoryLog>,
    bank: &Arc<Bank>,
    id: TransactionId,
    participants: usize,
    acknowledged: bool,
    what: &str,
) {
    let log = coordinator(durable.clone(), bank);
    let summary = log.recover().await.expect("the memory log does not fail");
    assert!(summary.left.is_empty(), "{what}: {summary:?}");
    assert_eq!(
        log.unfinished_count().await.unwrap(),
        0,
        "{what}: inv 4, the log"
    );
    let violations = bank.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{what}: {violations:?}");
    let branches = bank.of(id);
    for (account, branch) in &branches {
        assert!(
            !branch.held,
            "{what}: inv 4, {account} still held: {branches:?}"
        );
        assert!(!(branch.confirmed && branch.cancelled), "{what}: inv 1");
    }
    let confirmed = branches.iter().filter(|(_, b)| b.confirmed).count();
    assert!(
        confirmed == 0 || confirmed == participants,
        "{what}: inv 1, some confirmed and some not: {branches:?}"
    );
    if acknowledged {
        assert_eq!(
            confirmed, participants,
            "{what}: inv 2, an acknowledged commit: {branches:?}"
        );
    }
    // Every branch that held something was settled one way.
    if confirmed == 0 {
        for (account, branch) in &branches {
            assert!(
                branch.cancelled || !branch.held,
                "{what}: {account} neither confirmed nor cancelled"
            );
        }
    }
}

/// Whether `fault` is a crash: only a crash loses lazy writes (a process
/// that lives on makes them durable with its next durable write).
fn crashes(fault: Fault) -> bool {
    matches!(fault, Fault::Crash | Fault::CrashAfterWrite)
}

/// How many log writes a scenario makes when nothing fails.
async fn writes_of(front: Front, fail_try: bool) -> u64 {
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    let faulty = Arc::new(FaultyLog::new(durable.clone()));
    let log = coordinator(faulty.clone(), &bank);
    transfer(front, &log, &bank, fail_try).await.ok();
    faulty.writes()
}

#[tokio::test(start_paused = true)]
async fn every_crash_and_failure_at_every_write_is_recovered_on_both_paths() {
    let faults = [
        Fault::Fail,
        Fault::FailAfterWrite,
        Fault::Crash,
        Fault::CrashAfterWrite,
    ];
    let mut cases = 0;
    for front in [Front::Orchestrator, Front::Macro] {
        for fail_try in [false, true] {
            let writes = writes_of(front, fail_try).await;
            // begin, two Try notes, decide, two phase-2 notes, finish.
            assert_eq!(writes, 7, "{front:?} fail_try={fail_try}");
            for (k, fault, lose) in (1..=writes + 1)
                .flat_map(|k| faults.map(|fault| (k, fault)))
                .flat_map(|(k, fault)| [(k, fault, false), (k, fault, true)])
            {
                {
                    let what = format!(
                        "{front:?}, fail_try={fail_try}, {fault:?} at write {k}, lazy writes lost: {lose}"
                    );
                    let durable = Arc::new(MemoryLog::new());
                    let bank = Bank::new(durable.clone());
                    let mut faulty = FaultyLog::new(durable.clone()).with_fault(k, fault);
                    if lose && crashes(fault) {
                        // A crash loses the notes and ends no durable write
                        // carried yet, as a file store's does.
                        faulty = faulty.lose_lazy_writes();
                    }
                    let faulty = Arc::new(faulty);
                    let log = coordinator(faulty.clone(), &bank);
                    let outcome = transfer(front, &log, &bank, fail_try).await;
                    let (id, acknowledged) = match outcome {
                        Ok(id) => (id, true),
                        Err((id, _)) => (id.expect("the id was chosen"), false),
                    };
                    if fail_try {
                        assert!(!acknowledged, "{what}");
                    }
                    faulty.settle().await;
                    drop(log);
                    restart_and_check(&durable, &bank, id, acknowledged, &what).await;
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 2 * 2 * 8 * 4 * 2);
}

#[tokio::test(start_paused = true)]
async fn a_transaction_with_intent_and_no_decision_is_cancelled_everywhere() {
    // The process died between its Tries and its decision: write 4 (the
    // decision) never happens.
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    let faulty = Arc::new(FaultyLog::new(durable.clone()).with_fault(4, Fault::Crash));
    let log = coordinator(faulty, &bank);
    let (id, kind) = transfer(Front::Orchestrator, &log, &bank, false)
        .await
        .unwrap_err();
    assert_eq!(kind, ErrorKind::LogFailed);
    let id = id.unwrap();
    let record = durable.get(id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Undecided);
    assert!(bank.of(id).iter().all(|(_, b)| b.held), "both Tries held");

    let log = coordinator(durable.clone(), &bank);
    let summary = log.recover().await.unwrap();
    assert_eq!(summary.finished, 1);
    assert!(bank.of(id).iter().all(|(_, b)| b.cancelled && !b.held));
    assert_eq!(
        log.status(id).await.unwrap().unwrap().status,
        Status::Done(Decision::Cancel)
    );
}

#[tokio::test(start_paused = true)]
async fn presumed_abort_cancels_participants_whose_try_never_ran() {
    // The intent is written, then the process dies before any Try.
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    let id = TransactionId::generate();
    let intent = tcc::durable::Intent {
        id,
        participants: ["payer", "payee"]
            .map(|name| tcc::durable::ParticipantEntry {
                name: name.to_owned(),
                kind: "account".to_owned(),
                data: format!(r#"{{"account":"{name}","fail_try":false}}"#).into_bytes(),
            })
            .to_vec(),
    };
    let lease = durable.begin(&intent).await.unwrap();
    durable.release(&lease);
    let log = coordinator(durable.clone(), &bank);
    assert_eq!(log.recover().await.unwrap().finished, 1);
    let branches = bank.of(id);
    assert_eq!(branches.len(), 2, "both were cancelled: {branches:?}");
    assert!(branches.iter().all(|(_, b)| b.cancelled && !b.confirmed));
}

#[tokio::test(start_paused = true)]
async fn a_service_that_cannot_be_rebuilt_is_refused_before_any_phase() {
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    let log = coordinator(durable.clone(), &bank);
    let ran = Arc::new(Mutex::new(0));
    let counted = ran.clone();
    let closure = Service::new(
        "closure",
        move || {
            *counted.lock().unwrap() += 1;
            async { Ok::<(), String>(()) }
        },
        || async { Ok::<(), String>(()) },
        || async { Ok::<(), String>(()) },
    );
    let error = Orchestrator::new([
        Service::recoverable(Account {
            bank: bank.clone(),
            account: "payer".into(),
            fail_try: false,
        }),
        closure,
    ])
    .log(&log)
    .orchestrate()
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotRecoverable);
    assert_eq!(error.service_name(), "closure");
    assert!(
        error
            .to_string()
            .contains("cannot be rebuilt after a crash"),
        "{error}"
    );
    assert_eq!(*ran.lock().unwrap(), 0, "no phase ran");
    assert_eq!(
        log.unfinished_count().await.unwrap(),
        0,
        "nothing was written"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unregistered_kind_is_left_untouched_and_finished_once_registered() {
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    // Crash right after the decision to confirm.
    let faulty = Arc::new(FaultyLog::new(durable.clone()).with_fault(4, Fault::CrashAfterWrite));
    let log = coordinator(faulty, &bank);
    let (id, _) = transfer(Front::Macro, &log, &bank, false)
        .await
        .unwrap_err();
    let id = id.unwrap();

    // A process that does not know accounts: nothing happens, nothing panics.
    let unaware = TransactionLog::from_store(durable.clone());
    let summary = unaware.recover().await.unwrap();
    assert_eq!(summary.finished, 0);
    assert_eq!(summary.left.len(), 1);
    assert_eq!(summary.left[0].0, id);
    assert!(
        summary.left[0].1.contains("kind `account`"),
        "{:?}",
        summary.left
    );
    assert!(bank.of(id).iter().all(|(_, b)| b.held && !b.confirmed));
    assert_eq!(unaware.unfinished_count().await.unwrap(), 1);

    // Registered later: the next pass confirms it.
    unaware
        .provide(bank.clone())
        .unwrap()
        .register::<Account>()
        .unwrap();
    let summary = unaware.recover().await.unwrap();
    assert_eq!((summary.finished, summary.left.len()), (1, 0));
    assert!(bank.of(id).iter().all(|(_, b)| b.confirmed && !b.held));
}

/// A transfer whose payee's Confirm fails every time (until the test
/// says otherwise), run until its retries are spent: its bank, log, id and
/// error kind.
async fn payee_never_confirms() -> (Arc<Bank>, TransactionLog, TransactionId, ErrorKind) {
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    bank.confirm_failures
        .lock()
        .unwrap()
        .insert("payee".into(), 100);
    let log = coordinator(durable.clone(), &bank);
    let (id, kind) = transfer(Front::Orchestrator, &log, &bank, false)
        .await
        .unwrap_err();
    (bank, log, id.unwrap(), kind)
}

#[tokio::test(start_paused = true)]
async fn retries_resume_from_the_attempts_in_the_log_then_need_repair() {
    let (bank, log, id, kind) = payee_never_confirms().await;
    assert_eq!(kind, ErrorKind::ConfirmFailed);
    // Three attempts (a limit of 2 retries), then "needs repair", durable.
    let listed = log.needs_repair(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    let record = &listed[0];
    assert_eq!(record.intent.id, id);
    assert_eq!(record.status, Status::NeedsRepair(Decision::Confirm));
    let payee = record.phase_progress(1, Phase::Confirm).unwrap();
    assert_eq!(payee.attempts, 3);
    assert_eq!(payee.last_error.as_deref(), Some("ledger unavailable"));
    assert!(record.phase_progress(0, Phase::Confirm).unwrap().succeeded);
    // Recovery leaves it to the operator.
    assert_eq!(log.recover().await.unwrap().finished, 0);

    // Re-driven with the cause fixed: only the payee runs again.
    bank.confirm_failures
        .lock()
        .unwrap()
        .insert("payee".into(), 1);
    let report = log.redrive(id).await.expect("the second attempt confirms");
    let payee = report.service("payee").unwrap();
    assert_eq!(payee.attempts(Phase::Confirm), 2, "a fresh retry budget");
    assert!(report.service("payer").unwrap().succeeded(Phase::Confirm));
    assert!(bank.of(id).iter().all(|(_, b)| b.confirmed));
    assert!(log.needs_repair(10).await.unwrap().is_empty());
    assert_eq!(
        log.status(id).await.unwrap().unwrap().status,
        Status::Done(Decision::Confirm)
    );
}

/// An operator's tool requeues a transaction that needs repair, through a
/// log of its own on the same store that knows no kind of service: the
/// coordinator's running recovery task, which left it alone until then,
/// re-drives it with a fresh retry budget and finishes it.
#[tokio::test(start_paused = true)]
async fn a_requeued_transaction_is_finished_by_the_coordinators_next_recovery_pass() {
    let (bank, log, id, _) = payee_never_confirms().await;
    let recovery = log.spawn_recovery(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let record = log.status(id).await.unwrap().unwrap();
    assert_eq!(record.status, Status::NeedsRepair(Decision::Confirm));
    assert_eq!(
        record.phase_progress(1, Phase::Confirm).unwrap().attempts,
        3
    );

    // The cause is fixed, but the payee's Confirm still fails twice more:
    // only a fresh budget of three attempts gets it through.
    bank.confirm_failures
        .lock()
        .unwrap()
        .insert("payee".into(), 2);
    let tool = TransactionLog::from_store(log.store().clone());
    assert!(tool.requeue(id).await.unwrap());
    assert!(!tool.requeue(id).await.unwrap(), "only once");
    assert_eq!(
        tool.status(id).await.unwrap().unwrap().status,
        Status::Decided(Decision::Confirm)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        tool.status(id).await.unwrap().unwrap().status,
        Status::Done(Decision::Confirm)
    );
    assert!(bank.of(id).iter().all(|(_, b)| b.confirmed && !b.held));
    assert_eq!(log.unfinished_count().await.unwrap(), 0);
    recovery.abort();
}

#[tokio::test(start_paused = true)]
async fn a_transaction_resolved_by_hand_is_left_alone() {
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    bank.confirm_failures
        .lock()
        .unwrap()
        .insert("payer".into(), 100);
    let log = coordinator(durable.clone(), &bank);
    let (id, _) = transfer(Front::Macro, &log, &bank, false)
        .await
        .unwrap_err();
    let id = id.unwrap();
    let by_hand = Resolution::new("ada", "confirmed by hand");
    assert!(log.resolve(id, by_hand.clone()).await.unwrap());
    assert!(!log.resolve(id, by_hand).await.unwrap(), "only once");
    assert!(log.needs_repair(10).await.unwrap().is_empty());
    assert_eq!(log.unfinished_count().await.unwrap(), 0);
    let error = log.redrive(id).await.unwrap_err();
    assert!(
        error.to_string().contains("does not need repair"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_caller_learns_its_id_first_and_a_reused_id_is_refused() {
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    let log = coordinator(durable.clone(), &bank);
    let id = transfer(Front::Orchestrator, &log, &bank, false)
        .await
        .unwrap();
    assert_eq!(
        log.status(id).await.unwrap().unwrap().status,
        Status::Done(Decision::Confirm)
    );
    let again = Orchestrator::new([Service::recoverable(Account {
        bank: bank.clone(),
        account: "payer".into(),
        fail_try: false,
    })])
    .log(&log)
    .orchestrate_as(id)
    .await
    .unwrap_err();
    assert_eq!(again.kind(), ErrorKind::DuplicateId);
    assert!(again.to_string().contains(&id.to_string()), "{again}");
    assert!(
        log.status(TransactionId::generate())
            .await
            .unwrap()
            .is_none()
    );
}

/// Version 1 of a service's data saved `{account}`; version 2 adds a memo
/// with a default. A transaction saved by version 1 is finished by version 2.
#[tokio::test(start_paused = true)]
async fn data_saved_by_an_older_version_is_rebuilt_by_a_newer_one() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct V1 {
        account: String,
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    struct V2 {
        account: String,
        #[serde(default = "no_memo")]
        memo: String,
    }
    fn no_memo() -> String {
        "(none)".to_owned()
    }
    struct Memo {
        seen: Arc<Mutex<Vec<String>>>,
        data: V2,
    }
    impl TccService for Memo {
        fn service_name(&self) -> &str {
            &self.data.account
        }
        async fn try_phase(&self) -> Result<(), BoxError> {
            Ok(())
        }
        async fn confirm(&self) -> Result<(), BoxError> {
            let line = format!("{} {}", self.data.account, self.data.memo);
            self.seen.lock().unwrap().push(line);
            Ok(())
        }
        async fn cancel(&self) -> Result<(), BoxError> {
            Ok(())
        }
    }
    impl Recoverable for Memo {
        const KIND: &'static str = "memo";
        fn save(&self) -> Result<Vec<u8>, BoxError> {
            Ok(serde_json::to_vec(&self.data)?)
        }
        fn rebuild(data: &[u8], resources: &Resources) -> Result<Self, BoxError> {
            Ok(Memo {
                seen: resources.get::<Arc<Mutex<Vec<String>>>>()?.clone(),
                data: serde_json::from_slice(data)?,
            })
        }
    }
    let durable = Arc::new(MemoryLog::new());
    let id = TransactionId::generate();
    let old = serde_json::to_vec(&V1 {
        account: "alice".into(),
    })
    .unwrap();
    let intent = tcc::durable::Intent {
        id,
        participants: vec![tcc::durable::ParticipantEntry {
            name: "alice".into(),
            kind: "memo".into(),
            data: old,
        }],
    };
    let lease = durable.begin(&intent).await.unwrap();
    durable.decide(&lease, Decision::Confirm).await.unwrap();
    durable.release(&lease);

    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = TransactionLog::from_store(durable.clone());
    log.provide(seen.clone())
        .unwrap()
        .register::<Memo>()
        .unwrap();
    assert_eq!(log.recover().await.unwrap().finished, 1);
    assert_eq!(*seen.lock().unwrap(), ["alice (none)"]);
}

/// A crash just after the decision reached the log (write 4: the intent,
/// two Try notes, the decision), before any Confirm: only recovery can
/// confirm the transfer, and the periodic pass does.
#[tokio::test(start_paused = true)]
async fn periodic_recovery_finishes_what_a_crash_left() {
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    let faulty = Arc::new(FaultyLog::new(durable.clone()).with_fault(4, Fault::CrashAfterWrite));
    let log = coordinator(faulty, &bank);
    let (id, _) = transfer(Front::Orchestrator, &log, &bank, false)
        .await
        .unwrap_err();
    let id = id.unwrap();
    let record = durable
        .get(id)
        .await
        .unwrap()
        .expect("the transfer is logged");
    assert_eq!(record.status, Status::Decided(Decision::Confirm));
    assert!(
        bank.of(id).iter().all(|(_, b)| b.held && !b.confirmed),
        "no Confirm ran before the crash: {:?}",
        bank.of(id)
    );
    let log = coordinator(durable.clone(), &bank);
    let task = log.spawn_recovery(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(log.unfinished_count().await.unwrap(), 0);
    assert!(bank.of(id).iter().all(|(_, b)| b.confirmed && !b.held));
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_recovered_transaction_refused_by_an_invalid_policy_is_given_back() {
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    let faulty = Arc::new(FaultyLog::new(durable.clone()).with_fault(4, Fault::Crash));
    let log = coordinator(faulty, &bank);
    let (id, _) = transfer(Front::Orchestrator, &log, &bank, false)
        .await
        .unwrap_err();
    let id = id.unwrap();
    let broken = coordinator(durable.clone(), &bank);
    broken.retry(tcc::RetryPolicy::default().with_jitter(7.0));
    let summary = broken.recover().await.unwrap();
    assert_eq!(summary.finished, 0);
    // Given back, not stuck: a pass with a valid policy finishes it.
    let log = coordinator(durable.clone(), &bank);
    assert_eq!(log.recover().await.unwrap().finished, 1);
    assert!(bank.of(id).iter().all(|(_, b)| b.cancelled && !b.held));
}

/// One random case: `accounts` participants on `front` (the Orchestrator
/// takes any number; `tcc!` lists two), whose Tries fail where `fails`
/// says, whose Confirms fail a number of times first (beyond the retry
/// limit of 2: "needs repair"), fail-fast or not, and a fault at write `k`.
#[derive(Clone, Debug)]
struct Case {
    macro_path: bool,
    fails: Vec<bool>,
    confirm_failures: Vec<u32>,
    fail_fast: bool,
    k: u64,
    fault: Fault,
    /// Whether a crash loses the lazy writes no durable one carried.
    lose_lazy: bool,
}

fn case() -> impl proptest::strategy::Strategy<Value = Case> {
    use proptest::prelude::*;
    let fault = prop_oneof![
        Just(Fault::Fail),
        Just(Fault::FailAfterWrite),
        Just(Fault::Crash),
        Just(Fault::CrashAfterWrite),
    ];
    (any::<bool>(), 1..=4_usize)
        .prop_flat_map(move |(macro_path, n)| {
            let n = if macro_path { 2 } else { n };
            (
                Just(macro_path),
                proptest::collection::vec(proptest::bool::weighted(0.2), n),
                proptest::collection::vec(prop_oneof![4 => Just(0_u32), 1 => 1..=4_u32], n),
                any::<bool>(),
                1..=12_u64,
                fault.clone(),
                any::<bool>(),
            )
        })
        .prop_map(
            |(macro_path, fails, confirm_failures, fail_fast, k, fault, lose_lazy)| Case {
                macro_path,
                fails,
                confirm_failures,
                fail_fast,
                k,
                fault,
                lose_lazy,
            },
        )
}

/// Runs one case to its end, restarts, recovers (re-driving what needs
/// repair once its cause is gone) and checks the four invariants.
async fn run_case(case: &Case) {
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    let names: Vec<String> = (0..case.fails.len()).map(|i| format!("p{i}")).collect();
    for (name, failures) in names.iter().zip(&case.confirm_failures) {
        bank.confirm_failures
            .lock()
            .unwrap()
            .insert(name.clone(), *failures);
    }
    let mut faulty = FaultyLog::new(durable.clone()).with_fault(case.k, case.fault);
    if case.lose_lazy && crashes(case.fault) {
        faulty = faulty.lose_lazy_writes();
    }
    let faulty = Arc::new(faulty);
    let log = coordinator(faulty.clone(), &bank);
    let account = |i: usize| Account {
        bank: bank.clone(),
        account: names[i].clone(),
        fail_try: case.fails[i],
    };
    let id = TransactionId::generate();
    let outcome = if case.macro_path {
        tcc! {
            log = &log;
            id = id;
            retry = tcc::RetryPolicy::immediate(2);
            fail_fast = case.fail_fast;
            account(0),
            account(1),
        }
        .await
    } else {
        Orchestrator::new((0..names.len()).map(|i| Service::recoverable(account(i))))
            .retry(tcc::RetryPolicy::immediate(2))
            .fail_fast(case.fail_fast)
            .log(&log)
            .orchestrate_as(id)
            .await
    };
    let acknowledged = outcome.is_ok();
    if case.fails.iter().any(|&f| f) {
        assert!(!acknowledged, "a failed Try was acknowledged");
    }
    faulty.settle().await;
    drop(log);
    // Restart over what was durable; what needs repair is re-driven once
    // its cause is gone, as an operator would.
    let restarted = coordinator(durable.clone(), &bank);
    let summary = restarted.recover().await.unwrap();
    assert!(summary.left.is_empty(), "{summary:?}");
    bank.confirm_failures.lock().unwrap().clear();
    for record in restarted.needs_repair(100).await.unwrap() {
        restarted.redrive(record.intent.id).await.unwrap();
    }
    let what = format!("{case:?}");
    check_participants(&durable, &bank, id, names.len(), acknowledged, &what).await;
}

#[test]
fn random_transactions_with_a_fault_at_a_random_write_are_recovered() {
    use proptest::test_runner::{Config, TestRunner};
    let cases = std::env::var("TCC_DURABLE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&case(), |case| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(run_case(&case));
            Ok(())
        })
        .unwrap();
}

/// The issue's first report: a caller timed out, the runtime shut down in
/// the middle of a transaction, and a unit stayed held with no error and no
/// log line. Durable, the transaction is found and finished by recovery.
#[test]
fn a_runtime_shut_down_mid_transaction_leaves_it_to_recovery() {
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    let id = TransactionId::generate();
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let log = coordinator(durable.clone(), &bank);
        log.register::<Hang>().unwrap();
        let bank = bank.clone();
        runtime.block_on(async move {
            // The payer holds; the payee's Try never ends.
            let orchestrator = Orchestrator::new([
                Service::recoverable(Account {
                    bank: bank.clone(),
                    account: "payer".into(),
                    fail_try: false,
                }),
                Service::recoverable(Hang {
                    account: "payee".into(),
                }),
            ])
            .log(&log);
            let transfer = orchestrator.orchestrate_as(id);
            // The caller gives up after a second; the transaction moves to
            // a task of its own, which the runtime's shutdown then drops.
            let _ = tokio::time::timeout(Duration::from_secs(1), transfer).await;
        });
        // `runtime` drops here, and the transaction's task with it.
    }
    assert!(bank.of(id).iter().all(|(_, b)| b.held), "the payer held");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let log = coordinator(durable.clone(), &bank);
        log.register::<Hang>().unwrap();
        assert_eq!(log.recover().await.unwrap().finished, 1);
        assert!(bank.of(id).iter().all(|(_, b)| b.cancelled && !b.held));
    });
}

/// A participant whose Try never ends, and whose Cancel does nothing.
#[derive(Recoverable)]
struct Hang {
    account: String,
}

impl TccService for Hang {
    fn service_name(&self) -> &str {
        &self.account
    }
    async fn try_phase(&self) -> Result<(), BoxError> {
        std::future::pending().await
    }
    async fn confirm(&self) -> Result<(), BoxError> {
        Ok(())
    }
    async fn cancel(&self) -> Result<(), BoxError> {
        Ok(())
    }
}

/// A store whose claims can be made to wait, as a file store's wait for its
/// writer: once `stall_after` claims were made, a claim never returns (and
/// claims nothing).
struct StalledClaims {
    inner: Arc<MemoryLog>,
    claims: AtomicU32,
    stall_after: AtomicU32,
}

impl StalledClaims {
    fn new(inner: Arc<MemoryLog>, stall_after: u32) -> Arc<Self> {
        Arc::new(StalledClaims {
            inner,
            claims: AtomicU32::new(0),
            stall_after: AtomicU32::new(stall_after),
        })
    }

    /// Claims return again.
    fn unstall(&self) {
        self.stall_after.store(u32::MAX, Ordering::SeqCst);
    }
}

impl Log for StalledClaims {
    fn begin(&self, intent: &Intent) -> LogFuture<'_, Lease> {
        self.inner.begin(intent)
    }
    fn decide(&self, lease: &Lease, decision: Decision) -> LogFuture<'_, Decision> {
        self.inner.decide(lease, decision)
    }
    fn note(&self, lease: &Lease, participant: u32, phase: Phase, progress: PhaseProgress) {
        self.inner.note(lease, participant, phase, progress)
    }
    fn finish(&self, lease: &Lease, end: End) -> LogFuture<'_, ()> {
        self.inner.finish(lease, end)
    }
    fn claim_unfinished(&self, limit: usize) -> LogFuture<'_, Vec<(Lease, TransactionRecord)>> {
        let made = self.claims.fetch_add(1, Ordering::SeqCst);
        let stall = made >= self.stall_after.load(Ordering::SeqCst);
        Box::pin(async move {
            if stall {
                std::future::pending::<()>().await;
            }
            self.inner.claim_unfinished(limit).await
        })
    }
    fn release(&self, lease: &Lease) {
        self.inner.release(lease)
    }
    fn get(&self, id: TransactionId) -> LogFuture<'_, Option<TransactionRecord>> {
        self.inner.get(id)
    }
    fn needs_repair(&self, limit: usize) -> LogFuture<'_, Vec<TransactionRecord>> {
        self.inner.needs_repair(limit)
    }
    fn reopen(&self, id: TransactionId) -> LogFuture<'_, Option<(Lease, TransactionRecord)>> {
        self.inner.reopen(id)
    }
    fn requeue(&self, id: TransactionId) -> LogFuture<'_, bool> {
        self.inner.requeue(id)
    }
    fn resolve(&self, id: TransactionId, resolution: &Resolution) -> LogFuture<'_, bool> {
        self.inner.resolve(id, resolution)
    }
    fn unfinished_count(&self) -> LogFuture<'_, u64> {
        self.inner.unfinished_count()
    }
    fn list(&self, filter: &Filter) -> LogFuture<'_, Vec<TransactionRecord>> {
        self.inner.list(filter)
    }
    fn summary(&self) -> LogFuture<'_, LogSummary> {
        self.inner.summary()
    }
}

/// Leaves `count` undecided transactions in `durable`, as crashes between
/// the Tries and the decision do.
async fn undecided(durable: &Arc<MemoryLog>, bank: &Arc<Bank>, count: usize) -> Vec<TransactionId> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let faulty = Arc::new(FaultyLog::new(durable.clone()).with_fault(4, Fault::Crash));
        let log = coordinator(faulty, bank);
        let (id, _) = transfer(Front::Orchestrator, &log, bank, false)
            .await
            .unwrap_err();
        ids.push(id.unwrap());
    }
    ids
}

#[tokio::test(start_paused = true)]
async fn a_dropped_recovery_pass_gives_its_claims_back() {
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    let ids = undecided(&durable, &bank, 3).await;
    // The first claim takes all three; the pass then waits on the next
    // claim, and is dropped there, its three transactions not yet run.
    let store = StalledClaims::new(durable.clone(), 1);
    let log = coordinator(store.clone(), &bank);
    let dropped = tokio::time::timeout(Duration::from_secs(1), log.recover()).await;
    assert!(dropped.is_err(), "the pass waits on its second claim");
    assert_eq!(store.claims.load(Ordering::SeqCst), 2);
    // A later pass of the same process finishes them: the dropped pass
    // gave its claims back.
    store.unstall();
    let summary = log.recover().await.unwrap();
    assert_eq!(summary.finished, 3, "{summary:?}");
    assert_eq!(log.unfinished_count().await.unwrap(), 0);
    for id in ids {
        assert!(bank.of(id).iter().all(|(_, b)| b.cancelled && !b.held));
    }
}

#[tokio::test(start_paused = true)]
async fn an_aborted_spawn_recovery_gives_its_claims_back() {
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    let ids = undecided(&durable, &bank, 3).await;
    let store = StalledClaims::new(durable.clone(), 1);
    let log = coordinator(store.clone(), &bank);
    let task = log.spawn_recovery(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(store.claims.load(Ordering::SeqCst), 2, "the pass waits");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    store.unstall();
    assert_eq!(log.recover().await.unwrap().finished, 3);
    for id in ids {
        assert!(bank.of(id).iter().all(|(_, b)| b.cancelled && !b.held));
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_recovery_pass_gives_back_what_it_parked() {
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    let ids = undecided(&durable, &bank, 2).await;
    // A process that cannot rebuild accounts yet parks them.
    let store = StalledClaims::new(durable.clone(), 2);
    let log = TransactionLog::from_store(store.clone());
    log.retry(tcc::RetryPolicy::immediate(2));
    assert_eq!(log.recover().await.unwrap().left.len(), 2);
    // Once it can, a pass takes the parked ones up and is dropped before
    // it runs them.
    log.provide(bank.clone())
        .and_then(|log| log.register::<Account>())
        .unwrap();
    let dropped = tokio::time::timeout(Duration::from_secs(1), log.recover()).await;
    assert!(dropped.is_err());
    store.unstall();
    assert_eq!(log.recover().await.unwrap().finished, 2);
    for id in ids {
        assert!(bank.of(id).iter().all(|(_, b)| b.cancelled && !b.held));
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_decision_write_keeps_the_try_failures() {
    let durable = Arc::new(MemoryLog::new());
    let bank = Bank::new(durable.clone());
    // Write 4 is the decision (to cancel: the payee's Try fails).
    let faulty = Arc::new(FaultyLog::new(durable.clone()).with_fault(4, Fault::Fail));
    let log = coordinator(faulty, &bank);
    let id = TransactionId::generate();
    let error = Orchestrator::new([
        Service::recoverable(Account {
            bank: bank.clone(),
            account: "payer".into(),
            fail_try: false,
        }),
        Service::recoverable(Account {
            bank: bank.clone(),
            account: "payee".into(),
            fail_try: true,
        }),
    ])
    .log(&log)
    .orchestrate_as(id)
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::LogFailed);
    let failures = error.failures();
    assert_eq!(failures.len(), 1, "{error}");
    assert_eq!(failures[0].service_name(), "payee");
    assert_eq!(failures[0].phase(), Phase::Try);
    assert_eq!(failures[0].cause().to_string(), "insufficient funds");
    assert_eq!(error.service_name(), "payee");
    let report = error.report().expect("the Try round ran");
    assert_eq!(report.transaction_id(), id);
    assert!(report.service("payer").unwrap().succeeded(Phase::Try));
    assert!(!report.service("payee").unwrap().succeeded(Phase::Try));
    let text = error.to_string();
    assert!(text.contains("decision (Cancel)"), "{text}");
    assert!(text.contains("insufficient funds"), "{text}");
    assert!(!error.needs_repair());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_redrive_gives_its_claim_back() {
    let (bank, log, id, _) = payee_never_confirms().await;
    assert_eq!(log.needs_repair(10).await.unwrap().len(), 1);
    // Re-driven, the payee fails once more and waits a minute to retry:
    // the caller gives up before.
    bank.confirm_failures
        .lock()
        .unwrap()
        .insert("payee".into(), 1);
    let minute = Duration::from_secs(60);
    log.retry(
        tcc::RetryPolicy::immediate(2)
            .with_initial_interval(minute)
            .with_max_interval(minute),
    );
    let dropped = tokio::time::timeout(Duration::from_secs(1), log.redrive(id)).await;
    assert!(dropped.is_err(), "the redrive waits to retry");
    assert_eq!(
        log.status(id).await.unwrap().unwrap().status,
        Status::Decided(Decision::Confirm)
    );
    // Given back: recovery in the same process finishes it.
    assert_eq!(log.recover().await.unwrap().finished, 1);
    assert!(bank.of(id).iter().all(|(_, b)| b.confirmed && !b.held));
}

// Mistakes in wiring a log fail where they are made, at start, not in the
// recovery after the first crash.

/// A connection, as two services would each hold their own.
type Db = Arc<Mutex<Vec<String>>>;

/// Writes to the `inventory` database, never the wallet's.
#[derive(Recoverable)]
#[recoverable(kind = "stock")]
struct Stock {
    #[recoverable(resource = "inventory")]
    db: Db,
    item: String,
}

#[tcc_service(name = "stock")]
impl Stock {
    #[try_phase]
    async fn hold(&self) -> Result<(), BoxError> {
        Ok(())
    }
    #[confirm]
    async fn take(&self) -> Result<(), BoxError> {
        self.db.lock().unwrap().push(format!("took {}", self.item));
        Ok(())
    }
    #[cancel]
    async fn release(&self) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Writes to the `wallet` database: the same type as the inventory's.
#[derive(Recoverable)]
#[recoverable(kind = "wallet")]
struct Wallet {
    #[recoverable(resource = "wallet")]
    db: Db,
    amount: u32,
}

#[tcc_service(name = "wallet")]
impl Wallet {
    #[try_phase]
    async fn freeze(&self) -> Result<(), BoxError> {
        Ok(())
    }
    #[confirm]
    async fn pay(&self) -> Result<(), BoxError> {
        self.db
            .lock()
            .unwrap()
            .push(format!("paid {}", self.amount));
        Ok(())
    }
    #[cancel]
    async fn unfreeze(&self) -> Result<(), BoxError> {
        Ok(())
    }
}

#[test]
fn a_second_resource_of_one_type_is_refused_at_provide() {
    let log = TransactionLog::new(MemoryLog::new());
    let (inventory, wallet) = (Db::default(), Db::default());
    log.provide(inventory.clone()).unwrap();
    let error = log.provide(wallet).unwrap_err();
    assert_eq!(
        error,
        WiringError::DuplicateResource {
            type_name: std::any::type_name::<Db>(),
            name: None,
        }
    );
    let text = error.to_string();
    assert!(
        text.contains("Mutex<alloc::vec::Vec<alloc::string::String>>")
            && text.contains("provided twice")
            && text.contains("provide_named"),
        "{text}"
    );
    // Named, the same name twice is refused too.
    log.provide_named("inventory", Db::default()).unwrap();
    let error = log.provide_named("inventory", Db::default()).unwrap_err();
    assert!(error.to_string().contains("named `inventory`"), "{error}");
}

/// Two resources of one type, told apart by name: recovery rebuilds each
/// service with its own, not with whichever was provided last.
#[tokio::test(start_paused = true)]
async fn named_resources_rebuild_each_service_with_its_own() {
    let durable = Arc::new(MemoryLog::new());
    let (inventory, wallet) = (Db::default(), Db::default());
    let stock = Stock {
        db: inventory.clone(),
        item: "seat".into(),
    };
    let pay = Wallet {
        db: wallet.clone(),
        amount: 30,
    };
    // A crash right after the decision to confirm, before any Confirm.
    let id = TransactionId::generate();
    let participant = |name: &str, kind: &str, data: Vec<u8>| tcc::durable::ParticipantEntry {
        name: name.into(),
        kind: kind.into(),
        data,
    };
    let intent = tcc::durable::Intent {
        id,
        participants: vec![
            participant("stock", Stock::KIND, stock.save().unwrap()),
            participant("wallet", Wallet::KIND, pay.save().unwrap()),
        ],
    };
    let lease = durable.begin(&intent).await.unwrap();
    durable.decide(&lease, Decision::Confirm).await.unwrap();
    durable.release(&lease);

    let log = TransactionLog::from_store(durable.clone());
    log.provide_named("inventory", inventory.clone())
        .and_then(|log| log.provide_named("wallet", wallet.clone()))
        .and_then(|log| log.register::<Stock>())
        .and_then(|log| log.register::<Wallet>())
        .unwrap();
    let summary = log.recover().await.unwrap();
    assert_eq!(
        (summary.finished, summary.left.len()),
        (1, 0),
        "{summary:?}"
    );
    assert_eq!(*inventory.lock().unwrap(), ["took seat"]);
    assert_eq!(*wallet.lock().unwrap(), ["paid 30"]);

    // A named resource not provided is reported with its name.
    let mut resources = Resources::new();
    resources.insert(Db::default()).unwrap();
    let missing = match Stock::rebuild(&stock.save().unwrap(), &resources) {
        Ok(_) => panic!("rebuilt without the `inventory` resource"),
        Err(error) => error.to_string(),
    };
    assert!(
        missing.contains("named `inventory`") && missing.contains("provide_named"),
        "{missing}"
    );
}

mod ledger {
    use tcc::{BoxError, Recoverable, tcc_service};

    /// Of kind `Debit`, the type's name, as the derive makes it.
    #[derive(Recoverable)]
    pub struct Debit {
        pub amount: i64,
    }

    #[tcc_service(name = "ledger debit")]
    impl Debit {
        #[try_phase]
        async fn hold(&self) -> Result<(), BoxError> {
            Ok(())
        }
        #[confirm]
        async fn take(&self) -> Result<(), BoxError> {
            Ok(())
        }
        #[cancel]
        async fn release(&self) -> Result<(), BoxError> {
            Ok(())
        }
    }
}

mod card {
    use tcc::{BoxError, Recoverable, tcc_service};

    /// Of kind `Debit` too: another module's type of the same name.
    #[derive(Recoverable)]
    pub struct Debit {
        pub card: String,
    }

    #[tcc_service(name = "card debit")]
    impl Debit {
        #[try_phase]
        async fn hold(&self) -> Result<(), BoxError> {
            Ok(())
        }
        #[confirm]
        async fn take(&self) -> Result<(), BoxError> {
            Ok(())
        }
        #[cancel]
        async fn release(&self) -> Result<(), BoxError> {
            Ok(())
        }
    }
}

#[test]
fn two_types_under_one_kind_are_refused_at_register() {
    let log = TransactionLog::new(MemoryLog::new());
    log.register::<ledger::Debit>().unwrap();
    // The same type again changes nothing.
    log.register::<ledger::Debit>()
        .expect("registering a type twice is harmless");
    let error = log.register::<card::Debit>().unwrap_err();
    assert_eq!(
        error,
        WiringError::DuplicateKind {
            kind: "Debit".into(),
            first: std::any::type_name::<ledger::Debit>(),
            second: std::any::type_name::<card::Debit>(),
        }
    );
    let text = error.to_string();
    assert!(
        text.contains("kind `Debit`")
            && text.contains("ledger::Debit")
            && text.contains("card::Debit")
            && text.contains("#[recoverable(kind"),
        "{text}"
    );
}

/// A participant whose Tries are counted, for a log that does not know its
/// kind.
#[derive(Recoverable)]
#[recoverable(kind = "counted")]
struct Counted {
    #[recoverable(resource)]
    tries: Arc<std::sync::atomic::AtomicU32>,
}

impl TccService for Counted {
    fn service_name(&self) -> &str {
        "counted"
    }
    async fn try_phase(&self) -> Result<(), BoxError> {
        self.tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    async fn confirm(&self) -> Result<(), BoxError> {
        Ok(())
    }
    async fn cancel(&self) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn an_unregistered_kind_is_refused_at_begin_before_any_try() {
    for front in [Front::Orchestrator, Front::Macro] {
        let durable = Arc::new(MemoryLog::new());
        let bank = Bank::new(durable.clone());
        // Knows accounts, not `counted`.
        let log = coordinator(durable.clone(), &bank);
        let tries = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let payer = Account {
            bank: bank.clone(),
            account: "payer".into(),
            fail_try: false,
        };
        let counted = Counted {
            tries: tries.clone(),
        };
        let id = TransactionId::generate();
        let error = match front {
            Front::Orchestrator => {
                Orchestrator::new([Service::recoverable(payer), Service::recoverable(counted)])
                    .log(&log)
                    .orchestrate_as(id)
                    .await
            }
            Front::Macro => tcc! { log = &log; id = id; payer, counted }.await,
        }
        .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotRecoverable, "{front:?}");
        assert_eq!(error.service_name(), "counted");
        let text = error.to_string();
        assert!(
            text.contains("kind `counted`") && text.contains("log.register::<T>()"),
            "{front:?}: {text}"
        );
        assert_eq!(
            tries.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no Try ran"
        );
        assert!(bank.of(id).is_empty(), "{front:?}: the payer's Try ran");
        assert_eq!(
            log.unfinished_count().await.unwrap(),
            0,
            "no intent written"
        );
    }
}
