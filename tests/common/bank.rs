//! The bank example's harness, shared by `tests/bank_crash.rs` (one `run`
//! at a time, on the embedded log) and `tests/bank_postgres.rs` (several, on
//! a PostgreSQL log): the example's commands run as child processes on a
//! data directory, their output read line by line, and the invariants every
//! test checks on the bank's file.

#![allow(dead_code)]

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

pub const OPENING_BALANCE: i64 = 1000;
/// How long a child may take to reach a point the test waits for: generous,
/// for a debug build on a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The example's binary: `target/<profile>/examples/bank_transfer`, next to
/// `target/<profile>/deps/` where this test runs from.
pub fn example() -> PathBuf {
    example_named("bank_transfer")
}

/// The binary of the example `name`, built by `cargo test`; a clear panic
/// when it is missing or older than its source.
pub fn example_named(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test's own path");
    let profile = test
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let binary = profile
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.rs"));
    let modified = |path: &Path| path.metadata().and_then(|m| m.modified()).ok();
    match (modified(&binary), modified(&source)) {
        (None, _) => panic!(
            "the example's binary is not at {}: run the tests with `cargo test` (which builds \
             examples), or `cargo build --example {name}` first",
            binary.display()
        ),
        (Some(built), Some(edited)) if built < edited => panic!(
            "the example's binary {} is older than its source: `cargo build --example \
             {name}` (plain `cargo test` builds it)",
            binary.display()
        ),
        _ => binary,
    }
}

/// A small generator for kill times and seeds; its seed is printed, so a
/// failing test says which seeds it gave the example.
pub struct Random(u64);

impl Random {
    pub fn new() -> Self {
        let seed = std::collections::hash_map::RandomState::new().hash_one(SystemTime::now());
        println!("test seed {seed}");
        Random(seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A data directory, and the example's commands on it.
pub struct Bank {
    /// The children's stderr files.
    pub dir: tempfile::TempDir,
    /// The example's data directory.
    pub data: PathBuf,
    pub binary: PathBuf,
    /// Numbers the children's stderr files.
    pub started: usize,
    /// With a PostgreSQL log: its URL and the lease, in seconds.
    pub log: Option<(String, String)>,
}

impl Bank {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        Bank::on(dir, data)
    }

    /// A bank whose data directory is `data`.
    pub fn on(dir: tempfile::TempDir, data: PathBuf) -> Self {
        Bank {
            dir,
            data,
            binary: example(),
            started: 0,
            log: None,
        }
    }

    /// The same, with its transaction log in PostgreSQL at `url`, leases
    /// `lease` seconds long.
    pub fn with_log(mut self, url: &str, lease: &str) -> Self {
        self.log = Some((url.to_owned(), lease.to_owned()));
        self
    }

    /// `--log URL` (and the lease, except to `audit`), if the log is in
    /// PostgreSQL.
    fn log_args(&self, what: &str) -> Vec<String> {
        match &self.log {
            Some((url, _)) if what == "audit" => vec!["--log".into(), url.clone()],
            Some((url, lease)) => {
                vec!["--log".into(), url.clone(), "--lease".into(), lease.clone()]
            }
            None => Vec::new(),
        }
    }

    pub fn data(&self) -> PathBuf {
        self.data.clone()
    }

    /// `bank_transfer <what> --data DIR <args>`, its stderr to a file of
    /// its own (shown when something fails).
    pub fn command(&mut self, what: &str, args: &[&str]) -> (Command, PathBuf) {
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
            .args(self.log_args(what))
            .stdin(Stdio::null())
            .stderr(File::create(&stderr).expect("a file for stderr"));
        (command, stderr)
    }

    /// Starts `what` with `env` set, its stdout read line by line.
    pub fn start(&mut self, what: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
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
    pub fn complete(&mut self, what: &str) -> (ExitStatus, String, String) {
        let mut running = self.start(what, &[], &[]);
        let status = running.wait(PATIENCE);
        let lines = running.collect();
        let stderr = std::fs::read_to_string(&running.stderr).unwrap_or_default();
        (status, lines.join("\n"), stderr)
    }

    /// A complete `recover`, which must succeed.
    pub fn recover(&mut self) {
        let (status, _, stderr) = self.complete("recover");
        assert!(status.success(), "recover failed ({status}): {stderr}");
    }

    /// `audit`'s JSON line.
    pub fn audit(&mut self) -> serde_json::Value {
        let (status, stdout, stderr) = self.complete("audit");
        assert!(status.success(), "audit failed ({status}): {stderr}");
        assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }

    pub fn database(&self) -> Connection {
        Connection::open(self.data().join("bank.sqlite")).expect("bank.sqlite opens")
    }
}

/// A child process of the example.
pub struct Running {
    pub what: String,
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    /// Lines read so far.
    pub seen: Vec<String>,
    pub reader: Option<JoinHandle<()>>,
    pub stderr: PathBuf,
}

impl Running {
    /// Reads lines until one starts with `prefix`, and returns it; panics
    /// if the child ends or takes too long first.
    pub fn wait_for(&mut self, prefix: &str) -> String {
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
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            return Some(status);
        }
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
        None
    }

    /// Waits for the child to end by itself.
    pub fn wait(&mut self, patience: Duration) -> ExitStatus {
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
    pub fn collect(&mut self) -> Vec<String> {
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the reader does not panic");
        }
        self.seen.extend(self.lines.try_iter());
        std::mem::take(&mut self.seen)
    }

    pub fn stderr_text(&self) -> String {
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
pub fn confirmed(lines: &[String]) -> impl Iterator<Item = String> + '_ {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix("confirmed "))
        .map(str::to_owned)
}

/// What the bank's file holds.
pub struct Snapshot {
    /// name -> (balance, frozen)
    pub accounts: BTreeMap<String, (i64, i64)>,
    /// tx -> account -> amount
    pub journal: BTreeMap<String, BTreeMap<String, i64>>,
    /// (tx, service) -> state
    pub barrier: BTreeMap<(String, String), String>,
}

impl Snapshot {
    pub fn read(bank: &Bank) -> Self {
        let mut connection = bank.database();
        // One read transaction: one snapshot for the three tables, even
        // while other processes write (several coordinators on one bank).
        let db = connection.transaction().expect("a read transaction");
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
    pub fn check_any_instant(&self, acknowledged: &BTreeSet<String>) {
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
    pub fn check_finished(&self, acknowledged: &BTreeSet<String>) {
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
    pub fn tried(&self) -> usize {
        self.barrier
            .values()
            .filter(|state| *state == "tried")
            .count()
    }

    /// The barrier's state of each side of `tx`.
    pub fn branches(&self, tx: &str) -> BTreeMap<&str, &str> {
        self.barrier
            .iter()
            .filter(|((id, _), _)| id == tx)
            .map(|((_, service), state)| (service.as_str(), state.as_str()))
            .collect()
    }
}

/// The last `recover`, then every invariant, on the file and in `audit`.
/// The last `recover`, then every invariant, on the file and in `audit`.
pub fn recover_and_check(bank: &mut Bank, acknowledged: &BTreeSet<String>) -> Snapshot {
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
