//! The bank example (`examples/bank_transfer.rs`) killed with SIGKILL: at
//! random instants, and at named points of one transfer. Each test runs the
//! example's binary as a child process on a data directory of its own,
//! kills it (and sometimes the `recover` after it), then runs one complete
//! `recover` and checks the file with SQL of its own and the `audit`
//! command's JSON.
//!
//! What must hold after the last `recover`, whatever was killed when:
//!
//! 1. every balance is 1000 plus the account's journal rows, and none is
//!    negative;
//! 2. nothing is frozen;
//! 3. every transaction of the journal has two rows, a debit and a credit,
//!    summing to zero;
//! 4. every `confirmed <id>` the example ever printed has its two rows;
//! 5. the barrier agrees: a journal row for each confirmed branch and none
//!    other, and no branch left tried and never finished;
//! 6. the log holds nothing unfinished (`audit`'s `unfinished`).
//!
//! A Confirm that fails for longer than its retries leaves its transaction
//! in "needs repair", durably: `recover` says so and fails, and drives it
//! again once the cause is gone.
//!
//! And at any instant, before recovery too: 1 (each Confirm's journal row
//! commits with its balance change), no account pays more than it has, and
//! 4 (a transfer is acknowledged only once both sides are confirmed).
//!
//! Rounds: 5 random kills by default, each named point once; set
//! `TCC_CRASH_ROUNDS=N` for N random kills and N/5 of each named point.
//!
//! The example's binary is built by `cargo test` (which builds examples
//! before running tests) next to this test's binary; `cargo test --test
//! bank_crash` alone does not build it, so run `cargo build --example
//! bank_transfer` first then.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

#[path = "common/bank.rs"]
mod bank;
#[path = "common/power.rs"]
mod power;

use bank::{Bank, PATIENCE, Random, Snapshot, confirmed, example, recover_and_check};

/// How many random kills (and, a fifth of that, rounds of each named point).
fn rounds() -> usize {
    std::env::var("TCC_CRASH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5)
}

#[test]
fn random_kills_lose_nothing() {
    let mut bank = Bank::new();
    let mut random = Random::new();
    let mut acknowledged = BTreeSet::new();
    // Transactions the kills left unfinished, as `audit` counted them: the
    // kills must have landed mid-transfer for the test to mean anything.
    let mut interrupted = 0;
    let mut recovers_killed = 0;
    // Killed after finishing some branches and before the others.
    let mut recovers_killed_midway = 0;
    for round in 0..rounds() {
        let seed = random.below(1_000_000).to_string();
        let args = ["--accounts", "6", "--seed", &seed];
        let mut run = bank.start("run", &args, &[]);
        // Half the rounds kill while transfers run, half at any instant,
        // recovery at start included.
        if round % 2 == 0 {
            run.wait_for("confirmed ");
            thread::sleep(Duration::from_millis(random.below(200)));
        } else {
            thread::sleep(Duration::from_millis(20 + random.below(400)));
        }
        if let Some(status) = run.kill() {
            panic!(
                "round {round}: run ended by itself ({status}): {}",
                run.stderr_text()
            );
        }
        acknowledged.extend(confirmed(&run.collect()));
        Snapshot::read(&bank).check_any_instant(&acknowledged);
        interrupted += bank.audit()["unfinished"].as_u64().unwrap();

        if round % 3 == 1 {
            let tried = Snapshot::read(&bank).tried();
            let mut recover = bank.start("recover", &[], &[]);
            thread::sleep(Duration::from_millis(random.below(150)));
            match recover.kill() {
                None => {
                    recovers_killed += 1;
                    let left = Snapshot::read(&bank).tried();
                    if left > 0 && left < tried {
                        recovers_killed_midway += 1;
                    }
                }
                Some(status) => assert!(
                    status.success(),
                    "recover failed: {}",
                    recover.stderr_text()
                ),
            }
            Snapshot::read(&bank).check_any_instant(&acknowledged);
        }
    }
    recover_and_check(&mut bank, &acknowledged);
    println!(
        "{} confirmed, {interrupted} left unfinished by the kills, {recovers_killed} recovers \
         killed, {recovers_killed_midway} of them midway",
        acknowledged.len()
    );
    assert!(!acknowledged.is_empty(), "some transfer was confirmed");
    assert!(interrupted > 0, "some kill left transfers unfinished");
}

/// Power cuts (see tests/common/power.rs) under `run`, each at a random
/// instant up to a second after its first confirmed transfer, on one data
/// directory: what holds at any instant holds after each (a transfer
/// acknowledged has its journal rows, SQLite committing with
/// `synchronous = FULL`), and everything once recovered. 20 cuts, or
/// `TCC_POWER_CUTS`; root and a loop device needed (else one line, and a
/// pass unless `TCC_REQUIRE_POWER_CUT` is set).
#[test]
fn power_cuts_lose_no_acknowledged_transfer() {
    let Some(mut disk) = power::Disk::new() else {
        return;
    };
    let mut bank = Bank::on(
        tempfile::tempdir().expect("a temporary directory"),
        disk.path().join("data"),
    );
    let mut random = Random::new();
    let mut acknowledged = BTreeSet::new();
    let cuts = power::cuts(20);
    for cut in 0..cuts {
        let seed = random.below(1_000_000).to_string();
        let mut run = bank.start("run", &["--accounts", "6", "--seed", &seed], &[]);
        run.wait_for("confirmed ");
        thread::sleep(Duration::from_millis(random.below(1000)));
        disk.cut(run.child.id());
        if let Some(status) = run.kill() {
            panic!(
                "cut {cut}: run ended by itself ({status}): {}",
                run.stderr_text()
            );
        }
        acknowledged.extend(confirmed(&run.collect()));
        disk.remount();
        Snapshot::read(&bank).check_any_instant(&acknowledged);
    }
    recover_and_check(&mut bank, &acknowledged);
    println!(
        "{cuts} power cuts, {} transfers confirmed",
        acknowledged.len()
    );
    assert!(!acknowledged.is_empty(), "some transfer was confirmed");
}

/// How a transfer killed at a named point must end after recovery.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    Confirmed,
    Cancelled,
}

/// Kills `run` where one transfer reached `point`, then recovers and
/// checks, `rounds() / 5` times on one directory. `before` checks the
/// paused transfer before recovery.
fn kill_at(point: &str, fate: Fate, before: impl Fn(&Snapshot, &str)) {
    let mut bank = Bank::new();
    let mut acknowledged = BTreeSet::new();
    for _ in 0..(rounds() / 5).max(1) {
        // Two accounts: the first soon runs dry, so Tries fail early.
        let args = ["--accounts", "2", "--seed", "11"];
        let mut run = bank.start("run", &args, &[("TCC_BANK_PAUSE_AT", point)]);
        let marker = run.wait_for("paused at ");
        let tx = marker
            .strip_prefix(&format!("paused at {point} "))
            .unwrap_or_else(|| panic!("paused elsewhere: {marker}"))
            .to_owned();
        assert!(run.kill().is_none(), "run ended by itself");
        let printed: BTreeSet<String> = confirmed(&run.collect()).collect();
        assert!(
            !printed.contains(&tx),
            "{tx} was acknowledged before its pause"
        );
        acknowledged.extend(printed);

        let snapshot = Snapshot::read(&bank);
        snapshot.check_any_instant(&acknowledged);
        before(&snapshot, &tx);

        let snapshot = recover_and_check(&mut bank, &acknowledged);
        let rows = snapshot.journal.get(&tx).map_or(0, BTreeMap::len);
        let sides = snapshot.branches(&tx);
        match fate {
            Fate::Confirmed => {
                assert_eq!(rows, 2, "{point}: {tx} confirmed on both sides");
                assert_eq!(sides.values().collect::<Vec<_>>(), [&"confirmed"; 2]);
            }
            Fate::Cancelled => {
                assert_eq!(rows, 0, "{point}: {tx} cancelled on both sides");
                assert_eq!(sides.len(), 2, "{point}: both sides of {tx} have a row");
                for state in sides.values() {
                    assert!(state.starts_with("cancelled"), "{point}: {tx}: {sides:?}");
                }
            }
        }
    }
}

#[test]
fn kill_before_try_cancels_the_transfer() {
    // The intent is written, the payer's Try never ran: presumed abort, and
    // the payer's Cancel finds nothing to undo.
    kill_at("before-try", Fate::Cancelled, |snapshot, tx| {
        assert_eq!(snapshot.branches(tx).get("debit"), None);
    });
}

#[test]
fn kill_after_try_cancels_the_transfer() {
    // The payer's money is frozen, no decision is written: presumed abort.
    kill_at("after-try", Fate::Cancelled, |snapshot, tx| {
        assert_eq!(snapshot.branches(tx).get("debit"), Some(&"tried"));
        assert!(snapshot.accounts.values().any(|&(_, frozen)| frozen > 0));
    });
}

#[test]
fn kill_before_the_first_confirm_confirms_both_sides() {
    // The decision is written, this side's Confirm never ran.
    kill_at("before-first-confirm", Fate::Confirmed, |snapshot, tx| {
        let sides = snapshot.branches(tx);
        assert!(sides.values().any(|s| *s == "tried"), "{sides:?}");
    });
}

#[test]
fn kill_after_the_first_confirm_confirms_the_other_side() {
    kill_at("after-first-confirm", Fate::Confirmed, |snapshot, tx| {
        let sides = snapshot.branches(tx);
        assert!(sides.values().any(|s| *s == "confirmed"), "{sides:?}");
        assert!(snapshot.journal.contains_key(tx));
    });
}

#[test]
fn kill_after_the_first_cancel_cancels_the_other_side() {
    kill_at("after-first-cancel", Fate::Cancelled, |snapshot, tx| {
        let sides = snapshot.branches(tx);
        assert!(
            sides.values().any(|s| s.starts_with("cancelled")),
            "{sides:?}"
        );
    });
}

#[test]
fn kill_before_the_acknowledgement_keeps_the_transfer() {
    // Done on both sides, never printed: confirmed all the same.
    kill_at("before-ack", Fate::Confirmed, |snapshot, tx| {
        assert_eq!(snapshot.journal.get(tx).map(BTreeMap::len), Some(2));
    });
}

#[test]
fn a_second_process_on_the_same_data_is_refused() {
    let mut bank = Bank::new();
    let mut first = bank.start("run", &["--accounts", "4"], &[]);
    first.wait_for("confirmed ");
    for what in ["run", "recover", "audit"] {
        let (status, _, stderr) = {
            let (mut command, stderr) = bank.command(what, &[]);
            let output = command.output().expect("the example runs");
            (
                output.status,
                output.stdout,
                std::fs::read_to_string(stderr).unwrap(),
            )
        };
        assert!(!status.success(), "a second {what} ran beside the first");
        let log = bank.data().join("transactions.redb");
        assert!(
            stderr.contains(&log.display().to_string()) && stderr.contains("already open"),
            "{what}'s message names the log: {stderr}"
        );
    }
    assert!(first.kill().is_none(), "the first run went on");
    let acknowledged = confirmed(&first.collect()).collect();
    recover_and_check(&mut bank, &acknowledged);
}

#[test]
fn a_run_of_t_transfers_ends_and_adds_up() {
    let mut bank = Bank::new();
    let args = [
        "--accounts",
        "4",
        "--workers",
        "8",
        "--transfers",
        "150",
        "--seed",
        "7",
    ];
    let mut run = bank.start("run", &args, &[]);
    let status = run.wait(PATIENCE);
    assert!(
        status.success(),
        "run failed ({status}): {}",
        run.stderr_text()
    );
    let acknowledged: BTreeSet<String> = confirmed(&run.collect()).collect();

    // Nothing to recover: every transfer ended, and each confirmed one was
    // acknowledged.
    assert_eq!(bank.audit()["unfinished"], 0);
    let snapshot = recover_and_check(&mut bank, &acknowledged);
    let journaled: BTreeSet<String> = snapshot.journal.keys().cloned().collect();
    assert_eq!(
        journaled, acknowledged,
        "the journal holds the confirmed transfers"
    );
    let transactions: BTreeSet<&str> = snapshot.barrier.keys().map(|(tx, _)| tx.as_str()).collect();
    assert_eq!(transactions.len(), 150, "one transaction per transfer");
    // Some payers had less than the amount: their Try failed, both sides
    // were cancelled.
    let refused = snapshot
        .barrier
        .iter()
        .filter(|((_, service), state)| service == "debit" && *state == "cancelled_before_try")
        .count();
    assert!(refused > 0, "some Try failed for lack of funds");
    assert_eq!(acknowledged.len() + refused, 150);
}

#[test]
fn recover_and_audit_need_a_bank() {
    let mut bank = Bank::new();
    for what in ["recover", "audit"] {
        let (mut command, stderr) = bank.command(what, &[]);
        let status = command.status().expect("the example runs");
        let stderr = std::fs::read_to_string(stderr).unwrap();
        assert!(!status.success(), "{what} without a bank");
        assert!(stderr.contains("bank"), "{what}: {stderr}");
    }
}

/// A log deleted or emptied beside a bank that exists: `run` and `recover`
/// refuse it, saying to restore it, and make no new one in its place (which
/// would leave the money of every unfinished transfer frozen for good).
#[test]
fn a_lost_log_beside_an_existing_bank_is_refused_not_made_anew() {
    let mut bank = Bank::new();
    let args = ["--accounts", "2", "--transfers", "3", "--seed", "3"];
    let (mut command, stderr) = bank.command("run", &args);
    let status = command.status().expect("the example runs");
    let stderr = std::fs::read_to_string(stderr).unwrap();
    assert!(status.success(), "the first run: {stderr}");
    let log = bank.data().join("transactions.redb");
    for lost in ["deleted", "emptied"] {
        match lost {
            "deleted" => std::fs::remove_file(&log).unwrap(),
            _ => std::fs::write(&log, b"").unwrap(),
        }
        for what in ["run", "recover"] {
            let args: &[&str] = if what == "run" { &args } else { &[] };
            let (mut command, stderr) = bank.command(what, args);
            let status = command.status().expect("the example runs");
            let stderr = std::fs::read_to_string(stderr).unwrap();
            assert!(!status.success(), "{what} over a {lost} log");
            assert!(
                stderr.contains(&log.display().to_string()) && stderr.contains("restore"),
                "{what} over a {lost} log: {stderr}"
            );
            match lost {
                "deleted" => assert!(!log.exists(), "{what} made a new log"),
                _ => assert_eq!(std::fs::metadata(&log).unwrap().len(), 0),
            }
        }
    }
}

#[test]
fn the_demo_without_arguments_kills_recovers_and_adds_up() {
    let output = Command::new(example())
        .stdin(Stdio::null())
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the demo failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Audit after recovery"), "{stdout}");
}

#[test]
fn a_confirm_that_keeps_failing_needs_repair_until_recover_redrives_it() {
    let mut bank = Bank::new();
    let args = ["--accounts", "2", "--seed", "5"];
    let point = [("TCC_BANK_PAUSE_AT", "before-first-confirm")];
    let mut run = bank.start("run", &args, &point);
    let marker = run.wait_for("paused at ");
    let tx = marker.rsplit(' ').next().unwrap().to_owned();
    assert!(run.kill().is_none(), "run ended by itself");
    let acknowledged: BTreeSet<String> = confirmed(&run.collect()).collect();

    // While the bank refuses every journal row, recovery cannot confirm:
    // the transfer goes to "needs repair", and `recover` says so and fails.
    let refuse = "CREATE TRIGGER refuse BEFORE INSERT ON journal
                  BEGIN SELECT RAISE(ABORT, 'journal closed for the audit'); END";
    bank.database().execute_batch(refuse).unwrap();
    let (status, _, stderr) = bank.complete("recover");
    assert!(
        !status.success(),
        "recover succeeded with its Confirm refused"
    );
    assert!(
        stderr.contains(&tx) && stderr.contains("journal closed for the audit"),
        "the message names the transaction and its failure: {stderr}"
    );
    assert!(bank.audit()["unfinished"].as_u64().unwrap() >= 1);
    Snapshot::read(&bank).check_any_instant(&acknowledged);

    // Once the cause is gone, `recover` drives it again, to its end.
    bank.database()
        .execute_batch("DROP TRIGGER refuse")
        .unwrap();
    let snapshot = recover_and_check(&mut bank, &acknowledged);
    assert_eq!(snapshot.journal.get(&tx).map(BTreeMap::len), Some(2));
}
