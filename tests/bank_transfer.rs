//! The bank transfer example under load: hundreds of concurrent transfers
//! among a handful of accounts in a real SQLite file, with failures injected
//! (insufficient funds, closed and missing accounts, a Confirm that fails
//! the first time, before or after its commit). Afterwards the file itself,
//! read through a connection of its own, must show that no money was made
//! or lost, nothing stays frozen, no balance is negative, and every
//! transfer's outcome, and nothing else, is in the balances and the log.

#[allow(dead_code)]
#[path = "../examples/bank_transfer.rs"]
mod bank_transfer;

use std::collections::{BTreeMap, BTreeSet};

use bank_transfer::{Bank, BankError, Fault, ScratchFile, Transfer};
use rusqlite::Connection;
use tcc::{ErrorKind, Phase};

const OPEN: [&str; 5] = ["ann", "ben", "cat", "dan", "eve"];
const CLOSED: &str = "fay";
const MISSING: &str = "gus";
const OPENING_BALANCE: i64 = 200;
const TRANSFERS: usize = 400;

/// A small deterministic generator, so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Mostly transfers among open accounts, some from or to the closed or the
/// missing account, some of more money than the bank holds, and every fifth
/// with a Confirm that fails the first time.
fn transfers() -> Vec<Transfer> {
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    let account = |random: &mut XorShift| match random.below(20) {
        0 => CLOSED,
        1 => MISSING,
        n => OPEN[n as usize % OPEN.len()],
    };
    (0..TRANSFERS)
        .map(|i| {
            let from = account(&mut random);
            let to = loop {
                let to = account(&mut random);
                if to != from {
                    break to;
                }
            };
            let amount = match random.below(20) {
                0 => 1_000_000,
                _ => 1 + random.below(120) as i64,
            };
            let transfer = Transfer::new(from, to, amount);
            match i % 10 {
                3 => transfer.with_fault(Fault::Unreachable),
                7 => transfer.with_fault(Fault::ReplyLost),
                _ => transfer,
            }
        })
        .collect()
}

/// What a failed Try of a side must have been, given its account; `None`
/// when the account was fine, so that only a lack of funds can explain it.
fn expected_failure(account: &str) -> Option<&'static str> {
    match account {
        CLOSED => Some("closed"),
        MISSING => Some("missing"),
        _ => None,
    }
}

fn kind_of(error: &BankError) -> &'static str {
    match error {
        BankError::AccountClosed(_) => "closed",
        BankError::NoSuchAccount(_) => "missing",
        BankError::InsufficientFunds { .. } => "funds",
        other => panic!("unexpected failure: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transfers_conserve_money() {
    let file = ScratchFile::new("tcc-bank-test");
    let bank = Bank::open(file.path()).unwrap();
    for name in OPEN.iter().chain([&CLOSED]) {
        bank.open_account(name, OPENING_BALANCE).await.unwrap();
    }
    bank.close_account(CLOSED).await.unwrap();
    let total = OPENING_BALANCE * (OPEN.len() as i64 + 1);

    let transfers = transfers();
    let tasks: Vec<_> = transfers
        .iter()
        .cloned()
        .map(|transfer| {
            let bank = bank.clone();
            tokio::spawn(async move { bank.transfer(&transfer).await })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.expect("no transfer panics"));
    }

    // Every outcome is explained by its transfer; the confirmed ones make
    // up the expected balances and the log expected of each transaction.
    let mut balances: BTreeMap<&str, i64> = OPEN
        .iter()
        .chain([&CLOSED])
        .map(|&name| (name, OPENING_BALANCE))
        .collect();
    let mut expected_log = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (transfer, outcome) in transfers.iter().zip(&outcomes) {
        match outcome {
            Ok(report) => {
                assert!(OPEN.contains(&transfer.from.as_str()), "{transfer:?}");
                assert!(OPEN.contains(&transfer.to.as_str()), "{transfer:?}");
                assert!(transfer.amount <= total, "{transfer:?}");
                let attempts = if transfer.fault.is_some() { 2 } else { 1 };
                for side in ["debit", "credit"] {
                    let side = report.service(side).unwrap();
                    assert_eq!(side.attempts(Phase::Confirm), attempts, "{transfer:?}");
                    assert_eq!(side.attempts(Phase::Cancel), 0, "{transfer:?}");
                }
                *balances.get_mut(transfer.from.as_str()).unwrap() -= transfer.amount;
                *balances.get_mut(transfer.to.as_str()).unwrap() += transfer.amount;
                let log = [
                    ("debit", "try"),
                    ("debit", "confirm"),
                    ("credit", "try"),
                    ("credit", "confirm"),
                ];
                expected_log.insert(report.transaction_id().to_string(), BTreeSet::from(log));
                seen.insert(match transfer.fault {
                    Some(Fault::Unreachable) => "confirmed after an unreachable confirm",
                    Some(Fault::ReplyLost) => "confirmed after a lost reply",
                    None => "confirmed",
                });
            }
            Err(error) => {
                assert_eq!(error.kind(), ErrorKind::TryFailed, "{transfer:?}: {error}");
                assert!(!error.needs_repair());
                let mut failed = BTreeMap::new();
                for failure in error.failures() {
                    assert_eq!(failure.phase(), Phase::Try, "{transfer:?}: {error}");
                    let cause = failure.cause().downcast_ref::<BankError>().unwrap();
                    failed.insert(failure.service_name(), kind_of(cause));
                }
                // The debit fails for its account, or else for lack of
                // funds; the credit fails for its account only.
                match expected_failure(&transfer.from) {
                    Some(kind) => assert_eq!(failed.get("debit"), Some(&kind)),
                    None if failed.contains_key("debit") => {
                        assert_eq!(failed["debit"], "funds", "{transfer:?}")
                    }
                    None => {}
                }
                assert_eq!(
                    failed.get("credit").copied(),
                    expected_failure(&transfer.to),
                    "{transfer:?}: {error}"
                );
                if transfer.amount > total && !failed.contains_key("debit") {
                    panic!("{transfer:?} failed without its debit failing: {error}");
                }
                // Both sides were cancelled; a side whose Try failed left
                // only its cancel row.
                let mut log = BTreeSet::new();
                for side in ["debit", "credit"] {
                    log.insert((side, "cancel"));
                    if !failed.contains_key(side) {
                        log.insert((side, "try"));
                    }
                }
                let id = error.report().unwrap().transaction_id();
                expected_log.insert(id.to_string(), log);
                seen.extend(failed.values().map(|kind| match *kind {
                    "closed" => "refused by a closed account",
                    "missing" => "refused by a missing account",
                    _ => "refused for lack of funds",
                }));
            }
        }
    }
    let expected_kinds = [
        "confirmed",
        "confirmed after an unreachable confirm",
        "confirmed after a lost reply",
        "refused by a closed account",
        "refused by a missing account",
        "refused for lack of funds",
    ];
    assert_eq!(seen, BTreeSet::from(expected_kinds), "every case occurred");

    // The file, read on a connection of its own.
    let connection = Connection::open(file.path()).unwrap();
    let mut statement = connection
        .prepare("SELECT name, balance, frozen FROM accounts")
        .unwrap();
    let accounts: BTreeMap<String, (i64, i64)> = statement
        .query_map([], |row| Ok((row.get(0)?, (row.get(1)?, row.get(2)?))))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let sum: i64 = accounts.values().map(|(balance, _)| balance).sum();
    assert_eq!(sum, total, "no money made or lost: {accounts:?}");
    for (name, (balance, frozen)) in &accounts {
        assert_eq!(*frozen, 0, "money left frozen in {name}");
        assert!(*balance >= 0, "{name} is overdrawn");
        assert_eq!(*balance, balances[name.as_str()], "{name}'s balance");
    }

    let mut statement = connection
        .prepare("SELECT tx_id, service, phase FROM tcc_log")
        .unwrap();
    let mut log: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    let rows = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap();
    for row in rows {
        let (id, service, phase): (String, String, String) = row.unwrap();
        log.entry(id).or_default().insert((service, phase));
    }
    let expected_log: BTreeMap<String, BTreeSet<(String, String)>> = expected_log
        .into_iter()
        .map(|(id, rows)| {
            let rows = rows.into_iter();
            (
                id,
                rows.map(|(s, p)| (s.to_owned(), p.to_owned())).collect(),
            )
        })
        .collect();
    assert_eq!(
        expected_log.len(),
        TRANSFERS,
        "one transaction per transfer"
    );
    assert_eq!(log, expected_log, "the log holds each phase that ran, once");
}
