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
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;

#[path = "common/power.rs"]
mod power;

const OPENING_BALANCE: i64 = 1000;
/// How long a child may take to reach a point the test waits for: generous,
/// for a debug build on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(120);

/// How many random kills (and, a fifth of that, rounds of each named point).
fn rounds() -> usize {
    std::env::var("TCC_CRASH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5)
}

/// The example's binary: `target/<profile>/examples/bank_transfer`, next to
/// `target/<profile>/deps/` where this test runs from.
fn example() -> PathBuf {
    let test = std::env::current_exe().expect("the test's own path");
    let profile = test
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let binary = profile
        .join("examples")
        .join(format!("bank_transfer{}", std::env::consts::EXE_SUFFIX));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bank_transfer.rs");
    let modified = |path: &Path| path.metadata().and_then(|m| m.modified()).ok();
    match (modified(&binary), modified(&source)) {
        (None, _) => panic!(
            "the example's binary is not at {}: run the tests with `cargo test` (which builds \
             examples), or `cargo build --example bank_transfer` first",
            binary.display()
        ),
        (Some(built), Some(edited)) if built < edited => panic!(
            "the example's binary {} is older than its source: `cargo build --example \
             bank_transfer` (plain `cargo test` builds it)",
            binary.display()
        ),
        _ => binary,
    }
}

/// A small generator for kill times and seeds; its seed is printed, so a
/// failing test says which seeds it gave the example.
struct Random(u64);

impl Random {
    fn new() -> Self {
        let seed = std::collections::hash_map::RandomState::new().hash_one(SystemTime::now());
        println!("test seed {seed}");
        Random(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A data directory, and the example's commands on it.
struct Bank {
    /// The children's stderr files.
    dir: tempfile::TempDir,
    /// The example's data directory.
    data: PathBuf,
    binary: PathBuf,
    /// Numbers the children's stderr files.
    started: usize,
}

impl Bank {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        Bank::on(dir, data)
    }

    /// A bank whose data directory is `data`.
    fn on(dir: tempfile::TempDir, data: PathBuf) -> Self {
        Bank {
            dir,
            data,
            binary: example(),
            started: 0,
        }
    }

    fn data(&self) -> PathBuf {
        self.data.clone()
    }

    /// `bank_transfer <what> --data DIR <args>`, its stderr to a file of
    /// its own (shown when something fails).
    fn command(&mut self, what: &str, args: &[&str]) -> (Command, PathBuf) {
        self.started += 1;
        let stderr = self
            .dir
            .path()
            .join(format!("{}-{what}.stderr", self.started));
        let mut command = Command::new(&self.binary);
        command
            .arg(what)
            .arg("--data")
            .arg(self.data())
            .args(args)
            .stdin(Stdio::null())
            .stderr(File::create(&stderr).expect("a file for stderr"));
        (command, stderr)
    }

    /// Starts `what` with `env` set, its stdout read line by line.
    fn start(&mut self, what: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
        let (mut command, stderr) = self.command(what, args);
        command.stdout(Stdio::piped()).envs(env.iter().copied());
        let mut child = command.spawn().expect("the example starts");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let (lines, receiver) = mpsc::channel();
        let reader = thread::spawn(move || {
            let mut stdout = stdout;
            loop {
                let mut line = String::new();
                match stdout.read_line(&mut line) {
                    // A line cut short by the kill was never printed whole.
                    Ok(0) | Err(_) => return,
                    Ok(_) if !line.ends_with('\n') => return,
                    Ok(_) => {
                        line.pop();
                        if lines.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Running {
            what: what.to_owned(),
            child,
            lines: receiver,
            seen: Vec::new(),
            reader: Some(reader),
            stderr,
        }
    }

    /// Runs `what` to its end; its status and stdout.
    fn complete(&mut self, what: &str) -> (ExitStatus, String, String) {
        let mut running = self.start(what, &[], &[]);
        let status = running.wait(PATIENCE);
        let lines = running.collect();
        let stderr = std::fs::read_to_string(&running.stderr).unwrap_or_default();
        (status, lines.join("\n"), stderr)
    }

    /// A complete `recover`, which must succeed.
    fn recover(&mut self) {
        let (status, _, stderr) = self.complete("recover");
        assert!(status.success(), "recover failed ({status}): {stderr}");
    }

    /// `audit`'s JSON line.
    fn audit(&mut self) -> serde_json::Value {
        let (status, stdout, stderr) = self.complete("audit");
        assert!(status.success(), "audit failed ({status}): {stderr}");
        assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }

    fn database(&self) -> Connection {
        Connection::open(self.data().join("bank.sqlite")).expect("bank.sqlite opens")
    }
}

/// A child process of the example.
struct Running {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Lines read so far.
    seen: Vec<String>,
    reader: Option<JoinHandle<()>>,
    stderr: PathBuf,
}

impl Running {
    /// Reads lines until one starts with `prefix`, and returns it; panics
    /// if the child ends or takes too long first.
    fn wait_for(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let status = self.child.wait();
                    panic!(
                        "`{}` printed no `{prefix}` line in {PATIENCE:?} ({status:?}); stderr: {}",
                        self.what,
                        self.stderr_text()
                    );
                }
            }
        }
    }

    /// Kills the child with SIGKILL unless it ended on its own, and returns
    /// how it ended: `None` if killed.
    fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            return Some(status);
        }
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
        None
    }

    /// Waits for the child to end by itself.
    fn wait(&mut self, patience: Duration) -> ExitStatus {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "`{}` did not end in {patience:?}: {}",
                    self.what,
                    self.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every complete line the child printed; call once it has ended.
    fn collect(&mut self) -> Vec<String> {
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the reader does not panic");
        }
        self.seen.extend(self.lines.try_iter());
        std::mem::take(&mut self.seen)
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failing test leaves no child behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ids of the `confirmed <id>` lines among `lines`.
fn confirmed(lines: &[String]) -> impl Iterator<Item = String> + '_ {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix("confirmed "))
        .map(str::to_owned)
}

/// What the bank's file holds.
struct Snapshot {
    /// name -> (balance, frozen)
    accounts: BTreeMap<String, (i64, i64)>,
    /// tx -> account -> amount
    journal: BTreeMap<String, BTreeMap<String, i64>>,
    /// (tx, service) -> state
    barrier: BTreeMap<(String, String), String>,
}

impl Snapshot {
    fn read(bank: &Bank) -> Self {
        let db = bank.database();
        let mut accounts = BTreeMap::new();
        let mut statement = db
            .prepare("SELECT name, balance, frozen FROM accounts")
            .unwrap();
        let mut rows = statement.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let (name, balance, frozen) = (
                row.get(0).unwrap(),
                row.get(1).unwrap(),
                row.get(2).unwrap(),
            );
            accounts.insert(name, (balance, frozen));
        }
        let mut journal: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        let mut statement = db
            .prepare("SELECT tx, account, amount FROM journal")
            .unwrap();
        let mut rows = statement.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let tx: String = row.get(0).unwrap();
            journal
                .entry(tx)
                .or_default()
                .insert(row.get(1).unwrap(), row.get(2).unwrap());
        }
        let mut barrier = BTreeMap::new();
        let mut statement = db
            .prepare("SELECT transaction_id, service, state FROM tcc_barrier")
            .unwrap();
        let mut rows = statement.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let key = (row.get(0).unwrap(), row.get(1).unwrap());
            barrier.insert(key, row.get(2).unwrap());
        }
        Snapshot {
            accounts,
            journal,
            barrier,
        }
    }

    /// What holds at any instant, a crash just now included.
    fn check_any_instant(&self, acknowledged: &BTreeSet<String>) {
        assert!(!self.accounts.is_empty(), "the bank has accounts");
        let mut moved: BTreeMap<&str, i64> = BTreeMap::new();
        for rows in self.journal.values() {
            for (account, amount) in rows {
                *moved.entry(account).or_default() += amount;
            }
        }
        for (name, &(balance, frozen)) in &self.accounts {
            let expected = OPENING_BALANCE + moved.get(name.as_str()).copied().unwrap_or(0);
            assert_eq!(
                balance, expected,
                "inv 1: {name}'s balance is 1000 plus its journal"
            );
            assert!(
                frozen >= 0 && frozen <= balance,
                "{name} froze {frozen} of {balance}"
            );
        }
        for (account, _) in moved {
            assert!(
                self.accounts.contains_key(account),
                "journal of unknown {account}"
            );
        }
        for id in acknowledged {
            let rows = self.journal.get(id).map_or(0, BTreeMap::len);
            assert_eq!(
                rows, 2,
                "inv 4: confirmed {id} printed, {rows} journal rows"
            );
        }
    }

    /// What holds once every transaction is finished.
    fn check_finished(&self, acknowledged: &BTreeSet<String>) {
        self.check_any_instant(acknowledged);
        for (name, &(balance, frozen)) in &self.accounts {
            assert_eq!(frozen, 0, "inv 2: {name} still has {frozen} frozen");
            assert!(balance >= 0, "inv 1: {name} is overdrawn");
        }
        let mut journaled = BTreeSet::new();
        for (tx, rows) in &self.journal {
            let amounts: Vec<i64> = rows.values().copied().collect();
            assert_eq!(amounts.len(), 2, "inv 3: {tx} has rows {rows:?}");
            assert_eq!(amounts.iter().sum::<i64>(), 0, "inv 3: {tx} sums to zero");
            assert!(amounts.iter().all(|&a| a != 0), "inv 3: {tx} moves money");
            for amount in amounts {
                let service = if amount < 0 { "debit" } else { "credit" };
                journaled.insert((tx.clone(), service.to_owned()));
            }
        }
        let mut confirmed_branches = BTreeSet::new();
        for ((tx, service), state) in &self.barrier {
            assert!(
                !matches!(state.as_str(), "tried" | "started"),
                "inv 5: {service} of {tx} left {state}"
            );
            if state == "confirmed" {
                confirmed_branches.insert((tx.clone(), service.clone()));
            }
        }
        assert_eq!(
            confirmed_branches, journaled,
            "inv 5: one journal row per confirmed branch"
        );
    }

    /// How many branches wait for their Confirm or Cancel.
    fn tried(&self) -> usize {
        self.barrier
            .values()
            .filter(|state| *state == "tried")
            .count()
    }

    /// The barrier's state of each side of `tx`.
    fn branches(&self, tx: &str) -> BTreeMap<&str, &str> {
        self.barrier
            .iter()
            .filter(|((id, _), _)| id == tx)
            .map(|((_, service), state)| (service.as_str(), state.as_str()))
            .collect()
    }
}

/// The last `recover`, then every invariant, on the file and in `audit`.
fn recover_and_check(bank: &mut Bank, acknowledged: &BTreeSet<String>) -> Snapshot {
    bank.recover();
    let snapshot = Snapshot::read(bank);
    snapshot.check_finished(acknowledged);
    let audit = bank.audit();
    let accounts = snapshot.accounts.len() as i64;
    assert_eq!(audit["accounts"], accounts, "{audit}");
    assert_eq!(audit["total"], accounts * OPENING_BALANCE, "{audit}");
    assert_eq!(audit["frozen"], 0, "{audit}");
    assert_eq!(audit["unfinished"], 0, "inv 6: {audit}");
    assert_eq!(audit["balances_off"], 0, "{audit}");
    assert_eq!(audit["journal_unbalanced"], 0, "{audit}");
    assert_eq!(
        audit["journal_transactions"],
        snapshot.journal.len(),
        "{audit}"
    );
    snapshot
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
