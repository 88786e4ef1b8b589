//! A crash-safe bank: transfers between accounts in a real SQLite file, as
//! durable TCC transactions that a `kill -9` at any instant cannot break.
//!
//! ```sh
//! cargo run --release --example bank_transfer -- run --data DIR [--accounts N] [--workers W] [--transfers T] [--seed S]
//! cargo run --release --example bank_transfer -- recover --data DIR
//! cargo run --release --example bank_transfer -- audit --data DIR
//! cargo run --example bank_transfer    # a demo: run, kill -9, recover, audit
//! ```
//!
//! Each command also takes `--log postgres://...`: the transaction log is
//! then in PostgreSQL tables ([`tcc::durable::PostgresLog`]) instead of
//! `DIR/transactions.redb`, and several `run` processes may share it and
//! `DIR/bank.sqlite` (on one machine: SQLite's locks are local). Each
//! holds a lease on the transfers it runs, `--lease SECONDS` long (default
//! 10); when one dies, another's recovery finishes its transfers once their
//! leases expire. `recover` then waits for the leases of the dead to expire.
//!
//! - `run` creates `DIR/bank.sqlite` (N accounts, default 20, of 1000 each)
//!   and the transaction log `DIR/transactions.redb` for a new `DIR` (where
//!   the bank exists, a missing or emptied log is refused, never made anew),
//!   finishes what the log left unfinished, then runs random transfers of 1 to 200
//!   with W at a time (default 16) until T are done (default: until killed).
//!   For each transfer that succeeded it prints `confirmed <id>` on stdout
//!   at once. With `--log postgres://...`, the log's tables are made (or
//!   upgraded) for a new `DIR` only, as the file is; and what the log left
//!   unfinished is finished by whichever `run` claims it first.
//! - `recover` finishes every unfinished transaction (with a PostgreSQL
//!   log, run it once every `run` has stopped).
//! - `audit` prints one JSON line: `accounts`, `total`, `frozen`,
//!   `unfinished` (transactions the log holds unfinished) and checks.
//!
//! `bank.sqlite` is meant to be read by anyone with the `sqlite3` tool:
//!
//! ```sql
//! accounts(name TEXT PRIMARY KEY, balance INTEGER NOT NULL, frozen INTEGER NOT NULL)
//! journal(tx TEXT NOT NULL, account TEXT NOT NULL, amount INTEGER NOT NULL, PRIMARY KEY (tx, account))
//! tcc_barrier(...)  -- the participant barrier's rows, see tcc::barrier
//! ```
//!
//! `journal` has one row per confirmed side of a transfer, written by that
//! side's Confirm in the SQL transaction of its balance change; `tx` is the
//! transaction id as it prints (`confirmed <id>`). So, once nothing is
//! unfinished, every balance is 1000 plus its journal rows, nothing is
//! frozen, and each transaction's two rows sum to zero.
//!
//! # How a transfer works
//!
//! A transfer is two `#[tcc_service]` types, one per account:
//!
//! - [`Debit`], the payer: Try freezes the amount (and fails if less than
//!   that is available), Confirm takes it out of the balance and writes the
//!   journal row `-amount`, Cancel unfreezes it;
//! - [`Credit`], the payee: Try checks the account exists, Confirm adds the
//!   amount and writes the journal row `+amount`, Cancel has nothing to undo.
//!
//! # What makes it crash-safe
//!
//! Two things, both from the library:
//!
//! - **The transaction log** ([`TransactionLog`]): before the first Try, the
//!   transaction's intent (both services with their data: account and
//!   amount) is on disk; before the first Confirm or Cancel, the decision.
//!   After a crash, [`TransactionLog::recover`] finishes every transaction
//!   the log holds: one with no decision is cancelled on both sides, one
//!   with a decision has it carried out where it is not done yet. To do
//!   that it rebuilds the services from their saved data
//!   (`#[derive(Recoverable)]`) and the bank, a resource the program
//!   provides at start.
//! - **The participant barrier** ([`tcc::barrier`]): recovery calls Confirm
//!   or Cancel again without knowing whether they ran before the crash, and
//!   it cancels a side whose Try may never have run. Each phase therefore
//!   runs in one SQL transaction with the barrier's row for its branch, in
//!   the same file as the accounts: a phase that committed is skipped when
//!   delivered again, a Cancel with no Try before it does nothing, and a
//!   Confirm's journal row commits with its balance change or not at all.
//!
//! SQLite calls block, so the bank runs its connection on a thread of its
//! own. The barrier reads each phase's [`Branch`] from `tcc::Context`, which
//! is only set while the phase is polled: each phase captures it before
//! sending its work to that thread.
//!
//! `tests/bank_crash.rs` kills `run` and `recover` with SIGKILL, at random
//! instants and at named points (`TCC_BANK_PAUSE_AT`, see [`pause_at`]),
//! then checks every promise above with its own SQL.

use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use tcc::barrier::{BarrierError, BarrierErrorKind, Branch, Outcome, sqlite as barrier};
use tcc::durable::{LogErrorKind, PostgresLog};
use tcc::{BoxError, ErrorKind, RetryPolicy, TransactionId, TransactionLog};
use tcc::{tcc, tcc_service};
use tokio::sync::oneshot;

/// Every account's opening balance.
const OPENING_BALANCE: i64 = 1000;
/// The bank's database, in the data directory.
const BANK_FILE: &str = "bank.sqlite";
/// The transaction log, in the data directory.
const LOG_FILE: &str = "transactions.redb";
/// How long a `run` holds the transfers it runs, with a PostgreSQL log,
/// unless `--lease` says otherwise.
const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// The business tables. The barrier's table is created next to them
/// ([`barrier::migrate`]), in the same file: its rows commit with the
/// balances they guard.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS accounts (
        name    TEXT PRIMARY KEY,
        balance INTEGER NOT NULL,
        frozen  INTEGER NOT NULL
    );
    -- One row per confirmed side of a transfer, written by its Confirm.
    CREATE TABLE IF NOT EXISTS journal (
        tx      TEXT NOT NULL,
        account TEXT NOT NULL,
        amount  INTEGER NOT NULL,
        PRIMARY KEY (tx, account)
    );
";

/// Why a phase failed.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error("account `{0}` does not exist")]
    NoSuchAccount(String),
    #[error("insufficient funds in `{account}`: {available} available, {needed} needed")]
    InsufficientFunds {
        account: String,
        available: i64,
        needed: i64,
    },
    #[error("the database thread is gone")]
    DatabaseGone,
    #[error(transparent)]
    Barrier(#[from] BarrierError),
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

// ---------------------------------------------------------------------------
// The bank: one SQLite connection on a thread of its own.

/// Work for the database thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The bank: one SQLite connection owned by a thread of its own, which runs
/// the jobs sent to it one after another (as `tokio-rusqlite` does), so
/// blocking SQLite calls never run on the async workers.
pub struct Bank {
    jobs: mpsc::Sender<Job>,
}

impl Bank {
    /// Opens the bank at `path`. With `create`, a missing file is created
    /// with that many accounts; without, it must exist.
    pub fn open(path: &Path, create: Option<usize>) -> Result<Arc<Bank>, BankError> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create.is_some() {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let mut connection = Connection::open_with_flags(path, flags)?;
        // WAL lets the auditor's `sqlite3` read while the bank writes. FULL
        // syncs every commit, as the log syncs its intents and decisions: a
        // phase that committed survives a power cut too, not only a killed
        // process, so recovery never finds a decision whose Tries were lost.
        connection.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        // Long: with a PostgreSQL log, several `run`s write this file at
        // once, and on a loaded machine one may wait its turn for seconds.
        connection.busy_timeout(Duration::from_secs(30))?;
        // The tables and the accounts in one SQL transaction: a bank killed
        // while it is created has all of them or nothing.
        let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        barrier::migrate(&tx)?;
        let existing: i64 = tx.query_row("SELECT count(*) FROM accounts", [], |row| row.get(0))?;
        if existing == 0 {
            let accounts = create.unwrap_or(0);
            for name in account_names(accounts) {
                tx.execute(
                    "INSERT INTO accounts (name, balance, frozen) VALUES (?1, ?2, 0)",
                    params![name, OPENING_BALANCE],
                )?;
            }
        }
        tx.commit()?;

        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("bank-db".into())
            .spawn(move || {
                // Ends when the last handle to the bank is dropped.
                for job in queue {
                    job(&mut connection);
                }
            })
            .expect("spawn the database thread");
        Ok(Arc::new(Bank { jobs }))
    }

    /// Runs `work` on the database thread.
    async fn call<T, F>(&self, work: F) -> Result<T, BankError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, BankError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            // The phase may have been dropped meanwhile (a Try past its
            // timeout): the work is done all the same, and its barrier row
            // says so to the phases that come after.
            let _ = reply.send(work(connection));
        });
        self.jobs.send(job).map_err(|_| BankError::DatabaseGone)?;
        answer.await.map_err(|_| BankError::DatabaseGone)?
    }

    /// Runs the phase running now through the barrier: one SQL transaction
    /// with its branch's barrier row and whatever `body` does (given the
    /// transaction id as the journal spells it), committed together.
    /// `body` runs only the first time the phase reaches the database.
    async fn phase<T, F>(&self, body: F) -> Result<Outcome<T>, BankError>
    where
        T: Send + 'static,
        F: FnMut(&Transaction<'_>, &str) -> Result<T, BankError> + Send + 'static,
    {
        self.phase_pausing(None, body).await
    }

    /// [`phase`](Bank::phase), pausing on the database thread at named
    /// point `pause` first ([`pause_in_bank`]).
    async fn phase_pausing<T, F>(
        &self,
        pause: Option<&'static str>,
        mut body: F,
    ) -> Result<Outcome<T>, BankError>
    where
        T: Send + 'static,
        F: FnMut(&Transaction<'_>, &str) -> Result<T, BankError> + Send + 'static,
    {
        // Read here: the database thread runs no phase, so has no context.
        let branch = Branch::current()?;
        let id = branch.transaction_id().to_string();
        self.call(move |connection| {
            if let Some(point) = pause {
                pause_in_bank(point, &id);
            }
            let outcome = barrier::run_branch(connection, &branch, |tx| body(tx, &id));
            // Said here, where the barrier answered, even if the phase was
            // dropped meanwhile: a Try that arrived after its transaction
            // was cancelled (this process paused past its lease, and
            // another cancelled the transfer) reserved nothing.
            if let Err(BankError::Barrier(refused)) = &outcome
                && refused.kind() == BarrierErrorKind::TryAfterCancel
            {
                eprintln!("late try refused by the barrier: {id}");
            }
            outcome
        })
        .await
    }

    /// The names of every account.
    async fn account_names(&self) -> Result<Vec<String>, BankError> {
        self.call(|connection| {
            let mut statement = connection.prepare("SELECT name FROM accounts ORDER BY name")?;
            let names = statement.query_map([], |row| row.get(0))?;
            Ok(names.collect::<Result<_, _>>()?)
        })
        .await
    }
}

/// `acct-00`, `acct-01`, ...: as many digits as the largest needs, so the
/// names sort in order.
fn account_names(count: usize) -> impl Iterator<Item = String> {
    let width = count.saturating_sub(1).to_string().len().max(2);
    (0..count).map(move |i| format!("acct-{i:0width$}"))
}

/// The balance and frozen amount of `account`.
fn account_row(tx: &Transaction<'_>, account: &str) -> Result<(i64, i64), BankError> {
    tx.query_row(
        "SELECT balance, frozen FROM accounts WHERE name = ?1",
        [account],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()?
    .ok_or_else(|| BankError::NoSuchAccount(account.to_owned()))
}

// ---------------------------------------------------------------------------
// The two sides of a transfer.

/// The payer's side of a transfer. `account` and `amount` are saved in the
/// transaction log before its Try runs; `bank` is provided again by the
/// process that recovers it.
#[derive(tcc::Recoverable)]
#[recoverable(kind = "debit")]
pub struct Debit {
    #[recoverable(resource)]
    bank: Arc<Bank>,
    account: String,
    amount: i64,
}

#[tcc_service(name = "debit")]
impl Debit {
    /// Freezes the amount, if that much is available.
    #[try_phase]
    async fn freeze(&self) -> Result<(), BankError> {
        pause_here(BEFORE_TRY).await;
        let (account, amount) = (self.account.clone(), self.amount);
        let outcome = self
            .bank
            .phase_pausing(Some(TRY_IN_BANK), move |tx, _| {
                let (balance, frozen) = account_row(tx, &account)?;
                if balance - frozen < amount {
                    return Err(BankError::InsufficientFunds {
                        account: account.clone(),
                        available: balance - frozen,
                        needed: amount,
                    });
                }
                tx.execute(
                    "UPDATE accounts SET frozen = frozen + ?2 WHERE name = ?1",
                    params![account, amount],
                )?;
                Ok(())
            })
            .await?;
        pause_after(AFTER_TRY, &outcome).await;
        Ok(())
    }

    /// Takes the frozen money out of the balance, and journals it.
    #[confirm]
    async fn take(&self) -> Result<(), BankError> {
        pause_here(BEFORE_FIRST_CONFIRM).await;
        let (account, amount) = (self.account.clone(), self.amount);
        let outcome = self
            .bank
            .phase(move |tx, id| {
                tx.execute(
                    "UPDATE accounts SET balance = balance - ?2, frozen = frozen - ?2
                     WHERE name = ?1",
                    params![account, amount],
                )?;
                tx.execute(
                    "INSERT INTO journal (tx, account, amount) VALUES (?1, ?2, ?3)",
                    params![id, account, -amount],
                )?;
                Ok(())
            })
            .await?;
        pause_after(AFTER_FIRST_CONFIRM, &outcome).await;
        Ok(())
    }

    /// Unfreezes the money. The barrier runs this only if the Try froze
    /// some: a Cancel after a failed Try, or none, is an empty cancel.
    #[cancel]
    async fn unfreeze(&self) -> Result<(), BankError> {
        let (account, amount) = (self.account.clone(), self.amount);
        let outcome = self
            .bank
            .phase(move |tx, _| {
                tx.execute(
                    "UPDATE accounts SET frozen = frozen - ?2 WHERE name = ?1",
                    params![account, amount],
                )?;
                Ok(())
            })
            .await?;
        pause_after(AFTER_FIRST_CANCEL, &outcome).await;
        Ok(())
    }
}

/// The payee's side of a transfer.
#[derive(tcc::Recoverable)]
#[recoverable(kind = "credit")]
pub struct Credit {
    #[recoverable(resource)]
    bank: Arc<Bank>,
    account: String,
    amount: i64,
}

#[tcc_service(name = "credit")]
impl Credit {
    /// Checks that the account exists. Its barrier row is what lets the
    /// Confirm through later.
    #[try_phase]
    async fn check(&self) -> Result<(), BankError> {
        let account = self.account.clone();
        self.bank
            .phase(move |tx, _| account_row(tx, &account).map(drop))
            .await?;
        Ok(())
    }

    /// Adds the money to the balance, and journals it.
    #[confirm]
    async fn add(&self) -> Result<(), BankError> {
        pause_here(BEFORE_FIRST_CONFIRM).await;
        let (account, amount) = (self.account.clone(), self.amount);
        let outcome = self
            .bank
            .phase(move |tx, id| {
                tx.execute(
                    "UPDATE accounts SET balance = balance + ?2 WHERE name = ?1",
                    params![account, amount],
                )?;
                tx.execute(
                    "INSERT INTO journal (tx, account, amount) VALUES (?1, ?2, ?3)",
                    params![id, account, amount],
                )?;
                Ok(())
            })
            .await?;
        pause_after(AFTER_FIRST_CONFIRM, &outcome).await;
        Ok(())
    }

    /// Nothing was reserved on the payee's side: the barrier's row is all.
    #[cancel]
    async fn release(&self) -> Result<(), BankError> {
        let outcome = self.bank.phase(|_, _| Ok(())).await?;
        pause_after(AFTER_FIRST_CANCEL, &outcome).await;
        Ok(())
    }
}

/// How Confirm and Cancel are retried, by transfers and by recovery.
fn retry_policy() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(5)
        .with_initial_interval(Duration::from_millis(10))
}

/// One durable transfer: written to `log` before its first Try.
async fn transfer(
    log: &TransactionLog,
    bank: &Arc<Bank>,
    from: &str,
    to: &str,
    amount: i64,
) -> Result<tcc::Report, tcc::Error> {
    tcc! {
        log = log;
        retry = retry_policy();
        Debit { bank: bank.clone(), account: from.to_owned(), amount },
        Credit { bank: bank.clone(), account: to.to_owned(), amount },
    }
    .await
}

// ---------------------------------------------------------------------------
// Named crash points, for tests/bank_crash.rs.

/// In the payer's Try, before it reaches the database: the intent is
/// written, the payer's Try never runs.
const BEFORE_TRY: &str = "before-try";
/// In the payer's Try, on the database thread before the barrier: the Try
/// was handed to the bank, as a request is sent to a remote participant.
const TRY_IN_BANK: &str = "try-in-bank";
/// In the payer's Try, just after it froze the money.
const AFTER_TRY: &str = "after-try";
/// In a Confirm, before it reaches the database: the decision is written,
/// this side is not confirmed (the other side may be).
const BEFORE_FIRST_CONFIRM: &str = "before-first-confirm";
/// In a Confirm, just after its commit (the other side may not be done).
const AFTER_FIRST_CONFIRM: &str = "after-first-confirm";
/// In a Cancel, just after its commit (the other side may not be done).
const AFTER_FIRST_CANCEL: &str = "after-first-cancel";
/// After a transfer succeeded, before `confirmed <id>` is printed.
const BEFORE_ACK: &str = "before-ack";

/// With `TCC_BANK_PAUSE_AT=<point>` in the environment, the first transfer
/// to reach `point` prints `paused at <point> <id>` and stalls there for
/// good, so that a test kills the process exactly there; with
/// `TCC_BANK_PAUSE_FOR=<ms>` too, for that long only (a test stops the
/// process meanwhile, and lets it go on later). Does nothing otherwise.
async fn pause_at(point: &str, id: TransactionId) {
    match pausing(point, &id) {
        None => {}
        Some(Some(pause)) => tokio::time::sleep(pause).await,
        Some(None) => std::future::pending::<()>().await,
    }
}

/// [`pause_at`] on the database thread, which it blocks.
fn pause_in_bank(point: &str, id: &str) {
    match pausing(point, &id) {
        None => {}
        Some(Some(pause)) => std::thread::sleep(pause),
        Some(None) => loop {
            std::thread::park();
        },
    }
}

/// Whether the transfer `id` at `point` is the one to pause (printing so),
/// and for how long: `Some(None)` for good.
fn pausing(point: &str, id: &dyn std::fmt::Display) -> Option<Option<Duration>> {
    static PAUSE_AT: OnceLock<Option<String>> = OnceLock::new();
    static PAUSED: AtomicBool = AtomicBool::new(false);
    let wanted = PAUSE_AT.get_or_init(|| std::env::var("TCC_BANK_PAUSE_AT").ok());
    if wanted.as_deref() != Some(point) || PAUSED.swap(true, Ordering::SeqCst) {
        return None;
    }
    say(&format!("paused at {point} {id}"));
    let pause = std::env::var("TCC_BANK_PAUSE_FOR").ok();
    Some(
        pause
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis),
    )
}

/// [`pause_at`] inside a phase, for the transaction it runs in.
async fn pause_here(point: &str) {
    if let Some(context) = tcc::Context::current() {
        pause_at(point, context.transaction_id()).await;
    }
}

/// [`pause_here`], unless the phase was a duplicate delivery that changed
/// nothing.
async fn pause_after<T>(point: &str, outcome: &Outcome<T>) {
    if !matches!(outcome, Outcome::Duplicate) {
        pause_here(point).await;
    }
}

/// Prints `line` on stdout and flushes it at once: a reader that kills this
/// process has every line printed before the kill.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

// ---------------------------------------------------------------------------
// The commands.

/// Where the transaction log is.
#[derive(Clone)]
enum LogAt {
    /// `DIR/transactions.redb`, held by one process at a time.
    File,
    /// PostgreSQL tables, shared by every `run`: the URL, and the lease.
    Postgres { url: String, lease: Duration },
}

/// Opens the log and the bank of `data`, in that order: the log's file lock
/// keeps a second process out before it touches the bank (a PostgreSQL log
/// lets several in).
async fn open(
    data: &Path,
    create: Option<usize>,
    at: &LogAt,
) -> Result<(TransactionLog, Arc<Bank>), BoxError> {
    let log_path = data.join(LOG_FILE);
    let bank_path = data.join(BANK_FILE);
    if create.is_none() && !bank_path.exists() {
        return Err(format!(
            "no bank in {}: `run --data {}` creates one",
            data.display(),
            data.display()
        )
        .into());
    }
    std::fs::create_dir_all(data)?;
    // The log is created only with a new bank. Where the bank exists, a
    // missing or emptied log is refused: a new one would hold none of the
    // transfers whose money is still frozen, and nothing would release it.
    let new = create.is_some() && !bank_path.exists();
    let log = match at {
        LogAt::File if new => match TransactionLog::create(&log_path) {
            // A first `run` killed after it made the log, before the bank.
            Err(error) if error.kind() == LogErrorKind::Exists => TransactionLog::open(&log_path),
            made => made,
        },
        LogAt::File => TransactionLog::open(&log_path),
        // Several `run`s of a new bank may all migrate: it is idempotent.
        LogAt::Postgres { url, lease } => PostgresLog::options()
            .lease_ttl(*lease)
            .migrate(new)
            .connect(url)
            .await
            .map(TransactionLog::new),
    };
    let log = log.map_err(|error| match error.kind() {
        LogErrorKind::AlreadyOpen => format!(
            "{error}\n(is a `run` or `recover` of {} still running?)",
            data.display()
        ),
        LogErrorKind::Missing | LogErrorKind::Schema if !new => format!(
            "{error}\n(the bank {} exists: its log must be restored, not made anew)",
            bank_path.display()
        ),
        _ => format!("cannot open the transaction log: {error}"),
    })?;
    let bank = Bank::open(&bank_path, create)
        .map_err(|error| format!("cannot open the bank {}: {error}", bank_path.display()))?;
    // What recovery rebuilds the two sides with: their kinds, and the bank.
    log.provide(bank.clone())?
        .register::<Debit>()?
        .register::<Credit>()?
        .retry(retry_policy());
    Ok((log, bank))
}

/// Finishes every transaction the log holds unfinished: those a crash left
/// (cancelled if undecided, carried out if decided), and those whose phase
/// 2 gave up after its retries ("needs repair"), driven again. In this bank
/// a phase 2 only gives up for a passing cause (the database was busy for
/// long); an application whose participants can fail for good would list
/// those for an operator instead (`needs_repair`, `resolve`).
/// Returns how many are left: needing repair still, or (with a PostgreSQL
/// log) held by a lease.
async fn finish_unfinished(log: &TransactionLog) -> Result<u64, BoxError> {
    let summary = log.recover().await?;
    let mut redriven = 0;
    for record in log.needs_repair(usize::MAX).await? {
        let id = record.intent.id;
        match log.redrive(id).await {
            Ok(_) => redriven += 1,
            Err(error) => eprintln!("transaction {id} still needs repair: {error}"),
        }
    }
    if summary.finished + summary.needs_repair + redriven > 0 {
        eprintln!(
            "recovery: {} transactions finished, {redriven} re-driven",
            summary.finished
        );
    }
    for (id, why) in summary.left.iter().chain(&summary.unreadable) {
        eprintln!("transaction {id} left unfinished: {why}");
    }
    Ok(log.unfinished_count().await?)
}

/// [`finish_unfinished`] until nothing is unfinished. With a PostgreSQL
/// log, the transfers of a `run` that died are held by its leases until
/// they expire: this waits for them, up to twice the lease.
async fn finish_all(log: &TransactionLog, at: &LogAt) -> Result<(), BoxError> {
    let patience = match at {
        LogAt::File => Duration::ZERO,
        LogAt::Postgres { lease, .. } => *lease * 2 + Duration::from_secs(5),
    };
    let deadline = tokio::time::Instant::now() + patience;
    let mut waiting = false;
    loop {
        let left = finish_unfinished(log).await?;
        if left == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{left} transactions are still unfinished").into());
        }
        if !waiting {
            eprintln!("waiting for the leases of {left} transactions to expire");
            waiting = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `run`: finishes what the log left, then transfers until `transfers` are
/// done, or forever.
async fn run(options: RunOptions) -> Result<(), BoxError> {
    let (log, bank) = open(&options.data, Some(options.accounts), &options.log).await?;
    let left = finish_unfinished(&log).await?;
    // From now on, a transfer this process could not finish (its log write
    // failed) is finished by a recovery pass every few seconds; with a
    // PostgreSQL log, so are those of other `run`s that died, once their
    // leases expire.
    let every = match &options.log {
        LogAt::File if left > 0 => {
            return Err(format!("{left} transactions are still unfinished").into());
        }
        LogAt::File => Duration::from_secs(5),
        // Others' transfers in flight, or held by a lease not expired yet.
        LogAt::Postgres { lease, .. } => (*lease / 2).min(Duration::from_secs(5)),
    };
    let recovery = log.spawn_recovery(every);
    let names = Arc::new(bank.account_names().await?);
    if names.len() < 2 {
        return Err("a transfer needs two accounts: --accounts must be 2 or more".into());
    }
    eprintln!(
        "{} accounts, {} workers, seed {}",
        names.len(),
        options.workers,
        options.seed
    );

    let tickets = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..options.workers {
        let (log, bank, names, tickets) =
            (log.clone(), bank.clone(), names.clone(), tickets.clone());
        let mut random = SplitMix(options.seed ^ (worker as u64).wrapping_mul(0x9e37_79b9));
        let limit = options.transfers;
        workers.spawn(async move {
            let (mut confirmed, mut refused) = (0u64, 0u64);
            while limit.is_none_or(|limit| tickets.fetch_add(1, Ordering::Relaxed) < limit) {
                let (from, to, amount) = random.transfer(names.len());
                match transfer(&log, &bank, &names[from], &names[to], amount).await {
                    Ok(report) => {
                        let id = report.transaction_id();
                        pause_at(BEFORE_ACK, id).await;
                        say(&format!("confirmed {id}"));
                        confirmed += 1;
                    }
                    Err(error) if error.kind() == ErrorKind::TryFailed => refused += 1,
                    // Left to recovery, which the next `run` or `recover` does.
                    Err(error) => eprintln!("transfer not finished: {error}"),
                }
            }
            (confirmed, refused)
        });
    }
    let (mut confirmed, mut refused) = (0, 0);
    while let Some(counts) = workers.join_next().await {
        let (c, r) = counts?;
        confirmed += c;
        refused += r;
    }
    recovery.abort();
    eprintln!("{confirmed} transfers confirmed, {refused} refused by their Try and cancelled");
    Ok(())
}

/// `recover`: finishes every unfinished transaction.
async fn recover(data: &Path, at: &LogAt) -> Result<(), BoxError> {
    let (log, _bank) = open(data, None, at).await?;
    finish_all(&log, at).await
}

/// `audit`: one JSON line saying what the bank and the log hold, with the
/// checks an auditor would make.
async fn audit(data: &Path, at: &LogAt) -> Result<(), BoxError> {
    let bank_path = data.join(BANK_FILE);
    let db = Connection::open_with_flags(&bank_path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|error| format!("cannot open the bank {}: {error}", bank_path.display()))?;
    let number = |sql: &str| db.query_row(sql, [], |row| row.get::<_, i64>(0));
    let accounts = number("SELECT count(*) FROM accounts")?;
    let total = number("SELECT coalesce(sum(balance), 0) FROM accounts")?;
    let frozen = number("SELECT coalesce(sum(frozen), 0) FROM accounts")?;
    let journal_transactions = number("SELECT count(DISTINCT tx) FROM journal")?;
    // Accounts whose balance is not the opening balance plus their journal.
    let balances_off: i64 = db.query_row(
        "SELECT count(*) FROM accounts a
         WHERE a.balance <> ?1 + (SELECT coalesce(sum(amount), 0) FROM journal j
                                  WHERE j.account = a.name)",
        [OPENING_BALANCE],
        |row| row.get(0),
    )?;
    // Transactions of the journal without exactly two rows summing to zero.
    let journal_unbalanced = number(
        "SELECT count(*) FROM (SELECT tx FROM journal GROUP BY tx
                               HAVING count(*) <> 2 OR sum(amount) <> 0)",
    )?;
    let log_path = data.join(LOG_FILE);
    let unfinished = match at {
        LogAt::File if log_path.exists() => {
            TransactionLog::open(&log_path)?.unfinished_count().await?
        }
        LogAt::File => 0,
        LogAt::Postgres { url, .. } => {
            TransactionLog::postgres_url(url)
                .await?
                .unfinished_count()
                .await?
        }
    };
    let report = serde_json::json!({
        "accounts": accounts,
        "total": total,
        "expected_total": accounts * OPENING_BALANCE,
        "frozen": frozen,
        "unfinished": unfinished,
        "journal_transactions": journal_transactions,
        "balances_off": balances_off,
        "journal_unbalanced": journal_unbalanced,
    });
    say(&report.to_string());
    Ok(())
}

/// With no arguments: the crash test in miniature. Runs `run` in a child
/// process for a second, kills it with SIGKILL in the middle of its
/// transfers, audits, recovers, audits again.
fn demo() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let data = dir.path();
    let me = std::env::current_exe()?;
    let command = |what: &str| {
        let mut command = std::process::Command::new(&me);
        command.arg(what).arg("--data").arg(data);
        command
    };
    let audit = || -> Result<serde_json::Value, BoxError> {
        let output = command("audit").output()?;
        Ok(serde_json::from_slice(&output.stdout)?)
    };

    println!("A bank of 20 accounts of 1000 each, in {}", data.display());
    let mut run = command("run").stdout(Stdio::piped()).spawn()?;
    let stdout = BufReader::new(run.stdout.take().expect("piped"));
    let (acknowledge, acknowledged) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line.starts_with("confirmed ") {
                let _ = acknowledge.send(());
            }
        }
    });
    // A second after the first transfer is confirmed: in full swing.
    acknowledged.recv_timeout(Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(1));
    run.kill()?;
    run.wait()?;
    // The reader ends with the child's stdout, and with it the channel.
    let confirmed = 1 + acknowledged.iter().count();
    println!("`run` printed `confirmed <id>` {confirmed} times, then got a SIGKILL mid-transfer.");
    println!(
        "\nAudit right after the kill (money frozen, transactions unfinished):\n  {}",
        audit()?
    );
    let recovered = command("recover").status()?;
    println!("\n`recover` exited with {recovered}.");
    let after = audit()?;
    println!("\nAudit after recovery:\n  {after}");
    let adds_up = after["frozen"] == 0
        && after["unfinished"] == 0
        && after["total"] == after["expected_total"]
        && after["balances_off"] == 0
        && after["journal_unbalanced"] == 0
        && after["journal_transactions"].as_u64() >= Some(confirmed as u64);
    if !recovered.success() || !adds_up {
        return Err("the bank does not add up after recovery: that is a bug".into());
    }
    println!(
        "\nEvery transfer caught by the kill was finished on both sides: confirmed if the log \
         held its decision to confirm, cancelled otherwise. Nothing is frozen, the money adds up, \
         and the journal holds the {confirmed} acknowledged transfers and those finished after."
    );
    println!(
        "\nTry it yourself:\n  cargo run --release --example bank_transfer -- run --data DIR\n  \
         (kill it any way you like)\n  cargo run --release --example bank_transfer -- recover --data DIR\n  \
         sqlite3 DIR/bank.sqlite 'SELECT * FROM accounts'"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The command line.

/// `run`'s options.
struct RunOptions {
    data: PathBuf,
    log: LogAt,
    accounts: usize,
    workers: usize,
    transfers: Option<u64>,
    seed: u64,
}

enum Command {
    Demo,
    Run(RunOptions),
    Recover(PathBuf, LogAt),
    Audit(PathBuf, LogAt),
}

const USAGE: &str = "usage:
  bank_transfer run --data DIR [--log URL] [--lease SECONDS] [--accounts N] [--workers W] [--transfers T] [--seed S]
  bank_transfer recover --data DIR [--log URL] [--lease SECONDS]
  bank_transfer audit --data DIR [--log URL]
  bank_transfer            (a demo in a temporary directory)
--log postgres://...: the transaction log in PostgreSQL, shared by several `run`s";

fn parse(args: &[String]) -> Result<Command, String> {
    let Some((command, flags)) = args.split_first() else {
        return Ok(Command::Demo);
    };
    if !["run", "recover", "audit"].contains(&command.as_str()) {
        return Err(format!("unknown command `{command}`"));
    }
    let (mut data, mut url, mut lease) = (None, None, None);
    let mut run = RunOptions {
        data: PathBuf::new(),
        log: LogAt::File,
        accounts: 20,
        workers: 16,
        transfers: None,
        seed: std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
            % 1_000_000,
    };
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        let value = flags
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag} takes a number, not `{value}`"))
        };
        match (command.as_str(), flag.as_str()) {
            (_, "--data") => data = Some(PathBuf::from(value)),
            (_, "--log")
                if value.starts_with("postgres://") || value.starts_with("postgresql://") =>
            {
                url = Some(value.clone());
            }
            (_, "--log") => {
                return Err(format!(
                    "--log takes a `postgres://` URL (without it, the log is DIR/{LOG_FILE})"
                ));
            }
            ("run" | "recover", "--lease") => {
                let seconds = value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
                    .ok_or_else(|| {
                        format!("--lease takes a number of seconds above 0, not `{value}`")
                    })?;
                lease = Some(Duration::from_secs_f64(seconds));
            }
            ("run", "--accounts") if number()? < 2 => {
                return Err("a transfer needs two accounts: --accounts must be 2 or more".into());
            }
            ("run", "--accounts") => run.accounts = number()? as usize,
            ("run", "--workers") => run.workers = (number()? as usize).max(1),
            ("run", "--transfers") => run.transfers = Some(number()?),
            ("run", "--seed") => run.seed = number()?,
            _ => return Err(format!("`{command}` takes no {flag}")),
        }
    }
    let data = data.ok_or_else(|| format!("`{command}` needs --data DIR"))?;
    let log = match (url, lease) {
        (Some(url), lease) => LogAt::Postgres {
            url,
            lease: lease.unwrap_or(DEFAULT_LEASE),
        },
        (None, Some(_)) => return Err("--lease is for a PostgreSQL log: give --log too".into()),
        (None, None) => LogAt::File,
    };
    match command.as_str() {
        "run" => Ok(Command::Run(RunOptions { data, log, ..run })),
        "recover" => Ok(Command::Recover(data, log)),
        _ => Ok(Command::Audit(data, log)),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("bank_transfer: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = || tokio::runtime::Runtime::new().expect("a tokio runtime");
    let outcome = match command {
        Command::Demo => demo(),
        Command::Run(options) => runtime().block_on(run(options)),
        Command::Recover(data, log) => runtime().block_on(recover(&data, &log)),
        Command::Audit(data, log) => runtime().block_on(audit(&data, &log)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bank_transfer: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A small seeded generator (SplitMix64), so a run's transfers can be
/// replayed with `--seed`.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }

    /// The next transfer among `accounts`: (payer, payee, amount), amounts
    /// from 1 to 200. A quarter of them are paid by the first account,
    /// which is paid far less often, so it soon runs dry: from then on many
    /// of its transfers find less than their amount, and their Try fails.
    fn transfer(&mut self, accounts: usize) -> (usize, usize, i64) {
        let from = if self.below(4) == 0 {
            0
        } else {
            self.below(accounts)
        };
        let to = (from + 1 + self.below(accounts - 1)) % accounts;
        let amount = 1 + self.below(200) as i64;
        (from, to, amount)
    }
}
