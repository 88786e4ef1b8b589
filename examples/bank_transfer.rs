//! A bank transfer as a TCC transaction over a real SQLite database.
//!
//! Accounts live in a SQLite file with a `balance` and a `frozen` amount
//! (the part of the balance reserved by running transfers). A transfer runs
//! two `#[tcc_service]` types, one per account:
//!
//! - [`Debit`], the payer: Try freezes the amount (and fails on
//!   insufficient funds or a closed account), Confirm takes the frozen money
//!   out of the balance, Cancel unfreezes it;
//! - [`Credit`], the payee: Try checks that the account exists and is open,
//!   Confirm adds the money, Cancel has nothing to give back.
//!
//! Each phase is one SQL transaction that also writes a row of `tcc_log`,
//! keyed by the transaction id, the service and the phase. That row makes
//! the phases safe to repeat: a retried Confirm or Cancel whose first attempt
//! committed finds its row and does nothing, a Cancel after a Try that
//! reserved nothing releases nothing, and a Try that arrives after its Cancel
//! (a Try so slow that its transaction gave up on it) reserves nothing.
//!
//! Run it with `cargo run --example bank_transfer`; the integration test
//! `tests/bank_transfer.rs` runs hundreds of concurrent transfers through it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tcc::{Context, Phase, Report, RetryPolicy, tcc, tcc_service};
use tokio::sync::oneshot;

/// Why a phase failed.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error("account `{0}` does not exist")]
    NoSuchAccount(String),
    #[error("account `{0}` is closed")]
    AccountClosed(String),
    #[error("insufficient funds in `{account}`: {available} available, {needed} needed")]
    InsufficientFunds {
        account: String,
        available: i64,
        needed: i64,
    },
    #[error("confirm of `{0}` found no reservation")]
    NothingReserved(String),
    #[error("transaction already cancelled: a late Try reserves nothing")]
    AlreadyCancelled,
    #[error("injected fault: {0}")]
    Injected(&'static str),
    #[error("the database thread is gone")]
    DatabaseGone,
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// A fault injected into the first Confirm attempt of both sides of a
/// transfer, to show that a retried Confirm is harmless.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The first attempt fails before it reaches the database.
    Unreachable,
    /// The first attempt commits, but its reply is lost: the retry must not
    /// move the money a second time.
    ReplyLost,
}

/// One row of `accounts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub balance: i64,
    pub frozen: i64,
    pub open: bool,
}

/// A request to move `amount` from one account to another.
#[derive(Clone, Debug)]
pub struct Transfer {
    pub from: String,
    pub to: String,
    pub amount: i64,
    pub fault: Option<Fault>,
}

impl Transfer {
    pub fn new(from: &str, to: &str, amount: i64) -> Self {
        Transfer {
            from: from.to_owned(),
            to: to.to_owned(),
            amount,
            fault: None,
        }
    }

    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS accounts (
        name    TEXT PRIMARY KEY,
        balance INTEGER NOT NULL CHECK (balance >= 0),
        frozen  INTEGER NOT NULL DEFAULT 0 CHECK (frozen >= 0 AND frozen <= balance),
        open    INTEGER NOT NULL DEFAULT 1
    );
    -- One row per phase that ran on one side of a transaction.
    CREATE TABLE IF NOT EXISTS tcc_log (
        tx_id   TEXT NOT NULL,
        service TEXT NOT NULL,
        phase   TEXT NOT NULL,
        account TEXT NOT NULL,
        amount  INTEGER NOT NULL,
        PRIMARY KEY (tx_id, service, phase)
    ) WITHOUT ROWID;
";

/// Work for the database thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The bank: one SQLite connection owned by a thread of its own, which runs
/// the jobs sent to it one after another (as `tokio-rusqlite` does), so
/// blocking SQLite calls never run on the async workers.
pub struct Bank {
    jobs: mpsc::Sender<Job>,
}

impl Bank {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Arc<Bank>, BankError> {
        let connection = Connection::open(path)?;
        // WAL and a busy timeout let other connections (another process, the
        // test's checks) read and write the file while the bank runs.
        connection.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.execute_batch(SCHEMA)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("bank-db".into())
            .spawn(move || {
                let mut connection = connection;
                // Ends when the last handle to the bank is dropped.
                for job in queue {
                    job(&mut connection);
                }
            })
            .expect("spawn the database thread");
        Ok(Arc::new(Bank { jobs }))
    }

    /// Runs `work` in one SQL transaction on the database thread: committed
    /// if it returns `Ok`, rolled back otherwise.
    async fn run<T, F>(&self, work: F) -> Result<T, BankError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, BankError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let result = (|| {
                let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let value = work(&tx)?;
                tx.commit()?;
                Ok(value)
            })();
            // The phase may have been dropped (a Try past its timeout): the
            // transaction is done all the same, and its log row says so.
            let _ = reply.send(result);
        });
        self.jobs.send(job).map_err(|_| BankError::DatabaseGone)?;
        answer.await.map_err(|_| BankError::DatabaseGone)?
    }

    pub async fn open_account(&self, name: &str, balance: i64) -> Result<(), BankError> {
        let name = name.to_owned();
        self.run(move |tx| {
            tx.execute(
                "INSERT INTO accounts (name, balance) VALUES (?1, ?2)",
                params![name, balance],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn close_account(&self, name: &str) -> Result<(), BankError> {
        let name = name.to_owned();
        self.run(move |tx| {
            tx.execute("UPDATE accounts SET open = 0 WHERE name = ?1", [name])?;
            Ok(())
        })
        .await
    }

    /// Every account, by name.
    pub async fn accounts(&self) -> Result<Vec<Account>, BankError> {
        self.run(|tx| read_accounts(tx)).await
    }

    /// Moves `transfer.amount` from `transfer.from` to `transfer.to`, or
    /// nothing at all.
    pub async fn transfer(self: &Arc<Self>, transfer: &Transfer) -> Result<Report, tcc::Error> {
        // Fresh service values per transfer: a service value takes part in
        // one running orchestration at a time.
        let debit = Debit {
            bank: self.clone(),
            account: transfer.from.clone(),
            amount: transfer.amount,
            fault: transfer.fault,
        };
        let credit = Credit {
            bank: self.clone(),
            account: transfer.to.clone(),
            amount: transfer.amount,
            fault: transfer.fault,
        };
        tcc! {
            retry = RetryPolicy::default()
                .with_max_retries(3)
                .with_initial_interval(Duration::from_millis(10));
            debit,
            credit,
        }
        .await
    }

    /// Runs one phase of one side of a transfer as one SQL transaction, with
    /// its row in `tcc_log`. `work` gets whether this side's Try reserved
    /// anything, and runs only the first time the phase reaches the database.
    async fn phase<F>(&self, account: &str, amount: i64, work: F) -> Result<(), BankError>
    where
        F: FnOnce(&rusqlite::Transaction<'_>, bool) -> Result<(), BankError> + Send + 'static,
    {
        // Read here: work sent to another thread does not inherit the context.
        let context = Context::current().expect("runs inside a phase");
        let tx_id = context.transaction_id().to_string();
        let service = context.service_name().to_owned();
        let phase = context.phase();
        let account = account.to_owned();
        self.run(move |tx| {
            let recorded = tx.execute(
                "INSERT OR IGNORE INTO tcc_log (tx_id, service, phase, account, amount)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![tx_id, service, phase_name(phase), account, amount],
            )?;
            if recorded == 0 {
                return Ok(()); // done by an earlier attempt
            }
            let logged = |phase: Phase| -> rusqlite::Result<bool> {
                tx.query_row(
                    "SELECT 1 FROM tcc_log WHERE tx_id = ?1 AND service = ?2 AND phase = ?3",
                    params![tx_id, service, phase_name(phase)],
                    |_| Ok(()),
                )
                .optional()
                .map(|row| row.is_some())
            };
            match phase {
                Phase::Try if logged(Phase::Cancel)? => Err(BankError::AlreadyCancelled),
                Phase::Try => work(tx, true),
                Phase::Confirm | Phase::Cancel => work(tx, logged(Phase::Try)?),
            }
        })
        .await
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Try => "try",
        Phase::Confirm => "confirm",
        Phase::Cancel => "cancel",
    }
}

fn read_accounts(connection: &Connection) -> Result<Vec<Account>, BankError> {
    let mut statement =
        connection.prepare("SELECT name, balance, frozen, open FROM accounts ORDER BY name")?;
    let rows = statement.query_map([], |row| {
        Ok(Account {
            name: row.get(0)?,
            balance: row.get(1)?,
            frozen: row.get(2)?,
            open: row.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The balance, frozen amount and open flag of `account`, which must exist.
fn account_row(tx: &rusqlite::Transaction<'_>, account: &str) -> Result<(i64, i64), BankError> {
    let row = tx
        .query_row(
            "SELECT balance, frozen, open FROM accounts WHERE name = ?1",
            [account],
            |row| Ok((row.get(0)?, row.get(1)?, row.get::<_, bool>(2)?)),
        )
        .optional()?;
    match row {
        None => Err(BankError::NoSuchAccount(account.to_owned())),
        Some((_, _, false)) => Err(BankError::AccountClosed(account.to_owned())),
        Some((balance, frozen, true)) => Ok((balance, frozen)),
    }
}

/// Fails if `fault` is `at` and this is the phase's first attempt.
fn inject(fault: Option<Fault>, at: Fault) -> Result<(), BankError> {
    let first = Context::current().is_some_and(|context| context.attempt() == 1);
    if fault != Some(at) || !first {
        return Ok(());
    }
    Err(BankError::Injected(match at {
        Fault::Unreachable => "database unreachable",
        Fault::ReplyLost => "reply lost after commit",
    }))
}

/// The payer's side of a transfer.
pub struct Debit {
    bank: Arc<Bank>,
    account: String,
    amount: i64,
    fault: Option<Fault>,
}

#[tcc_service(name = "debit")]
impl Debit {
    /// Freezes the amount, if that much is available.
    #[try_phase]
    async fn freeze(&self) -> Result<(), BankError> {
        let (account, amount) = (self.account.clone(), self.amount);
        self.bank
            .phase(&self.account, amount, move |tx, _| {
                let (balance, frozen) = account_row(tx, &account)?;
                if balance - frozen < amount {
                    return Err(BankError::InsufficientFunds {
                        account,
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
            .await
    }

    /// Takes the frozen money out of the balance.
    #[confirm]
    async fn debit(&self) -> Result<(), BankError> {
        inject(self.fault, Fault::Unreachable)?;
        let (account, amount) = (self.account.clone(), self.amount);
        self.bank
            .phase(&self.account, amount, move |tx, reserved| {
                if !reserved {
                    return Err(BankError::NothingReserved(account));
                }
                tx.execute(
                    "UPDATE accounts SET balance = balance - ?2, frozen = frozen - ?2
                     WHERE name = ?1",
                    params![account, amount],
                )?;
                Ok(())
            })
            .await?;
        inject(self.fault, Fault::ReplyLost)
    }

    /// Unfreezes the money, if the Try froze any.
    #[cancel]
    async fn unfreeze(&self) -> Result<(), BankError> {
        let (account, amount) = (self.account.clone(), self.amount);
        self.bank
            .phase(&self.account, amount, move |tx, reserved| {
                if reserved {
                    tx.execute(
                        "UPDATE accounts SET frozen = frozen - ?2 WHERE name = ?1",
                        params![account, amount],
                    )?;
                }
                Ok(())
            })
            .await
    }
}

/// The payee's side of a transfer.
pub struct Credit {
    bank: Arc<Bank>,
    account: String,
    amount: i64,
    fault: Option<Fault>,
}

#[tcc_service(name = "credit")]
impl Credit {
    /// Checks that the account exists and is open.
    #[try_phase]
    async fn check(&self) -> Result<(), BankError> {
        let account = self.account.clone();
        self.bank
            .phase(&self.account, self.amount, move |tx, _| {
                account_row(tx, &account).map(drop)
            })
            .await
    }

    /// Adds the money to the balance.
    #[confirm]
    async fn credit(&self) -> Result<(), BankError> {
        inject(self.fault, Fault::Unreachable)?;
        let (account, amount) = (self.account.clone(), self.amount);
        self.bank
            .phase(&self.account, amount, move |tx, reserved| {
                if !reserved {
                    return Err(BankError::NothingReserved(account));
                }
                tx.execute(
                    "UPDATE accounts SET balance = balance + ?2 WHERE name = ?1",
                    params![account, amount],
                )?;
                Ok(())
            })
            .await?;
        inject(self.fault, Fault::ReplyLost)
    }

    /// Nothing was reserved on the payee's side; the log row is all.
    #[cancel]
    async fn release(&self) -> Result<(), BankError> {
        self.bank
            .phase(&self.account, self.amount, |_, _| Ok(()))
            .await
    }
}

/// A database file in the temporary directory, deleted (with its WAL files)
/// on drop.
pub struct ScratchFile(PathBuf);

impl ScratchFile {
    pub fn new(prefix: &str) -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}.sqlite",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        ScratchFile(std::env::temp_dir().join(name))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn print_accounts(bank: &Bank) -> Result<(), BankError> {
    let accounts = bank.accounts().await?;
    for a in &accounts {
        let state = if a.open { "open" } else { "closed" };
        println!(
            "  {:<6} balance {:>4}  frozen {:>2}  {state}",
            a.name, a.balance, a.frozen
        );
    }
    let total: i64 = accounts.iter().map(|a| a.balance).sum();
    println!("  total  {total:>12}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BankError> {
    let file = ScratchFile::new("tcc-bank-example");
    let bank = Bank::open(file.path())?;
    println!("database: {}", file.path().display());
    bank.open_account("alice", 100).await?;
    bank.open_account("bob", 50).await?;
    bank.open_account("carol", 0).await?;
    bank.open_account("dave", 20).await?;
    bank.close_account("dave").await?;
    print_accounts(&bank).await?;

    let transfers = [
        Transfer::new("alice", "bob", 30),
        Transfer::new("bob", "carol", 500),
        Transfer::new("alice", "dave", 10),
        Transfer::new("alice", "erin", 5),
        Transfer::new("bob", "carol", 20).with_fault(Fault::Unreachable),
        Transfer::new("alice", "carol", 25).with_fault(Fault::ReplyLost),
    ];
    for transfer in &transfers {
        let fault = transfer.fault.map(|f| format!(" ({f:?} on first confirm)"));
        println!(
            "\n{} -> {}: {}{}",
            transfer.from,
            transfer.to,
            transfer.amount,
            fault.unwrap_or_default()
        );
        match bank.transfer(transfer).await {
            Ok(report) => {
                let attempts = |service| report.service(service).unwrap().attempts(Phase::Confirm);
                println!(
                    "  confirmed in transaction {} (confirm attempts: debit {}, credit {})",
                    report.transaction_id(),
                    attempts("debit"),
                    attempts("credit"),
                );
            }
            Err(error) => println!("  not done: {error}"),
        }
    }

    println!("\nafter the transfers:");
    print_accounts(&bank).await?;
    let accounts = bank.accounts().await?;
    assert_eq!(accounts.iter().map(|a| a.balance).sum::<i64>(), 170);
    assert!(accounts.iter().all(|a| a.frozen == 0));
    Ok(())
}
