//! [`RedbLog`]: the embedded log, one redb file, with group commit.
//!
//! One writer thread owns the database. Every call is a request on a channel;
//! the writer takes every request queued, applies them in order in one write
//! transaction, commits it (durably if any request needs it), and only then
//! replies to each (but to a lazy `finish(Done)`, answered once applied).
//! Concurrent transactions therefore share one fsync.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition,
};
use tokio::sync::{oneshot, watch};

use super::codec;
use super::rules::{
    Counted, Finished, Found, FoundOutcome, Place, Rules, Stored, Tables, Unreadable,
};
use super::{
    Decision, End, Filter, Intent, Lease, Leases, Log, LogError, LogErrorKind, LogFuture,
    LogSummary, PhaseProgress, Resolution, TransactionRecord, Unread,
};
use crate::{Phase, TransactionId};

/// Undecided and decided records, by transaction id.
const UNFINISHED: TableDefinition<u128, &[u8]> = TableDefinition::new("unfinished");
/// Records needing repair, by transaction id.
const REPAIR: TableDefinition<u128, &[u8]> = TableDefinition::new("needs_repair");
/// The progress of each participant of an unfinished record in each phase,
/// by (transaction id, participant, phase): a note writes one of these,
/// never the record.
const PROGRESS: TableDefinition<(u128, u32, u8), &[u8]> = TableDefinition::new("progress");
/// Outcomes of finished transactions, by transaction id.
const OUTCOMES: TableDefinition<u128, &[u8]> = TableDefinition::new("outcomes");
/// Finished transactions in the order they finished, to prune the oldest.
const FINISHED_ORDER: TableDefinition<u64, u128> = TableDefinition::new("finished_order");
/// `format`: the file's layout version; `next_finished`: the next key of
/// `finished_order`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The file layout this version writes and reads. 2: every record and
/// outcome carries a checksum (see `codec`), and the progress of each
/// participant is kept apart from its record, in `progress`. 3: values may
/// be of the codec's format 3 (the times a record was decided and ended; an
/// outcome's resolution by an operator), which a version that reads format
/// 2 only would take for damage. A file of format 2 is upgraded when it is
/// opened (its values stay as they are: format 3 reads them); one of format
/// 1 is refused with what to do: finish it with the previous release, then
/// create a new log.
const FILE_FORMAT: u64 = 3;

/// The longest value redb stores (its `MAX_VALUE_LENGTH`, 3 GiB): a longer
/// record or progress row is refused as [`TooLarge`](LogErrorKind::TooLarge)
/// before it is written, failing only its own call, where redb's refusal
/// would come as a failed write.
const MAX_VALUE_BYTES: usize = 3 << 30;

/// How many requests one write transaction takes at most, so that one commit
/// never keeps its callers waiting on a huge batch.
const MAX_BATCH: usize = 4096;

/// The longest a batch waits, by default, for the callers the previous
/// commit answered (a quarter of that commit's time, at most this): far less
/// than an fsync of a loaded disk, and paid only while answered callers are
/// still coming back.
const MAX_GATHER: Duration = Duration::from_millis(1);

/// How many lazy commits may follow one another before one is made durable
/// anyway: redb cannot reuse the pages a lazy commit freed until a durable
/// commit, so a long run of lazy ones (recovery finishing transactions,
/// notes only) would grow the file.
const MAX_LAZY_COMMITS: u32 = 1024;

/// How many finished transactions a [`RedbLog`] keeps for lookups unless
/// told otherwise.
const DEFAULT_RETENTION: u64 = 100_000;

/// How to open or create a [`RedbLog`]:
/// `RedbLog::options().retention(1000).open(path)`.
#[derive(Clone, Debug)]
pub struct RedbOptions {
    retention: u64,
    max_gather: Duration,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            retention: DEFAULT_RETENTION,
            max_gather: MAX_GATHER,
        }
    }
}

impl RedbOptions {
    /// How many finished transactions keep their outcome for
    /// [`Log::get`] (default 100,000). Beyond it the oldest are removed, a few
    /// at each later finish, so the file's size stays bounded under steady
    /// load.
    pub fn retention(mut self, finished: u64) -> Self {
        self.retention = finished;
        self
    }

    /// The longest a batch of requests waits for the callers that the
    /// previous commit answered, so that concurrent transactions keep sharing
    /// commits rather than alternate between two (default 1 ms; the wait is
    /// also at most a quarter of the previous commit's time, and ends as soon
    /// as they are back). Zero commits whatever is queued at once.
    pub fn max_gather(mut self, wait: Duration) -> Self {
        self.max_gather = wait;
        self
    }

    /// Opens the existing log at `path`. See [`RedbLog::open`].
    pub fn open(self, path: impl AsRef<Path>) -> Result<RedbLog, LogError> {
        RedbLog::start(path.as_ref(), self, Start::Open)
    }

    /// Creates a new, empty log at `path`. See [`RedbLog::create`].
    pub fn create(self, path: impl AsRef<Path>) -> Result<RedbLog, LogError> {
        RedbLog::start(path.as_ref(), self, Start::Create)
    }
}

/// Whether [`RedbLog::start`] opens an existing file or makes a new one.
#[derive(Clone, Copy)]
enum Start {
    Open,
    Create,
}

/// The embedded [`Log`]: one [redb](https://docs.rs/redb) file, crash-safe,
/// locked against a second opener, with group commit. Cargo feature `redb`
/// (on by default).
///
/// What is durable when, and what a crash leaves, is in the
/// [module docs](super). Durable calls ([`begin`](Log::begin),
/// [`decide`](Log::decide), `finish(NeedsRepair)`, [`reopen`](Log::reopen),
/// [`resolve`](Log::resolve)) resolve once their write transaction is
/// committed and fsync'd; concurrent calls share that commit. The others are
/// committed without fsync and reach the disk with the next durable commit, or
/// when the log is dropped: dropping it is a clean shutdown that waits for the
/// writer thread to finish what was sent.
///
/// A log is made once, with [`create`](RedbLog::create), and opened with
/// [`open`](RedbLog::open) ever after: `open` never makes a new, empty log
/// in place of one that was deleted or emptied, which would leave every
/// transaction it held unfinished with no record that anyone must finish it.
///
/// Damage is refused, never trusted: the file's pages are checked when it is
/// opened, and each record carries a checksum checked on every read. A
/// damaged file fails to open with [`Corrupt`](LogErrorKind::Corrupt); one
/// damaged record fails the calls that read it, and recovery sets it aside
/// as [`Unreadable`](super::Status::Unreadable) for an operator and goes on with
/// the others. A damaged progress row, a lazy [`note`](Log::note), is taken
/// as lost (with a warning), as a crash may lose it. After a failure to write the file (or a panic inside the
/// store, which becomes a `Corrupt` error naming the file), the log stops:
/// every later call fails with [`Closed`](LogErrorKind::Closed), saying
/// what stopped it, until the log is dropped and opened again.
///
/// `finish(Done)` resolves as soon as the writer applied it, before its batch
/// is committed: a transaction's last write costs its caller no fsync.
///
/// Reads ([`get`](Log::get), [`claim_unfinished`](Log::claim_unfinished) ...)
/// go through the writer too, so that a read sees every write sent before it,
/// including [`note`](Log::note)s that were not awaited; a read-only batch is
/// not committed. [`needs_repair`](Log::needs_repair) reads every record
/// needing repair to sort them: meant for the handful an operator sees to.
///
/// ```
/// use tcc::durable::{Decision, End, Intent, Log, RedbLog, Status};
/// use tcc::TransactionId;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let dir = std::env::temp_dir().join(format!("tcc-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("transactions.redb");
/// let id = TransactionId::generate();
/// {
///     let log = RedbLog::create(&path).unwrap();
///     let lease = log.begin(&Intent { id, participants: vec![] }).await.unwrap();
///     log.decide(&lease, Decision::Confirm).await.unwrap();
///     // The process stops here, the transaction unfinished...
/// }
/// // ... and the next one finds it decided, and finishes it.
/// let log = RedbLog::open(&path).unwrap();
/// let mut claimed = log.claim_unfinished(10).await.unwrap();
/// let (lease, record) = claimed.pop().unwrap();
/// assert_eq!(record.status, Status::Decided(Decision::Confirm));
/// log.finish(&lease, End::Done).await.unwrap();
/// # drop(log);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # }
/// ```
pub struct RedbLog {
    requests: Option<mpsc::Sender<Request>>,
    counters: Arc<Counters>,
    writer: Option<JoinHandle<()>>,
    path: PathBuf,
    /// Why the writer stopped, once it has: for a call whose request it
    /// never answered (it panicked while applying it). Closed when the
    /// writer thread ends.
    stopped: watch::Receiver<Option<String>>,
}

impl RedbLog {
    /// Opens the existing log at `path`, keeping the outcomes of the last
    /// 100,000 finished transactions (see [`RedbLog::options`]). Every page
    /// of the file is checked first, so it reads the whole file: 27 to 55 ms
    /// were measured for a file of 100,000 unfinished transactions.
    ///
    /// Fails with [`LogErrorKind::Missing`] if there is no file at `path`, an
    /// empty one, or a redb file with no tables (a `create` cut short): a new
    /// log is made only by [`create`](RedbLog::create), never in place of
    /// one that was lost. With
    /// [`AlreadyOpen`](LogErrorKind::AlreadyOpen) if another process, or
    /// another `RedbLog` of this process, has the file open: one file has one
    /// writer. With [`Corrupt`](LogErrorKind::Corrupt) if the file is damaged
    /// or is not a log this version can read, and [`Io`](LogErrorKind::Io)
    /// if it cannot be read.
    ///
    /// A file of the previous format this version reads (2) is upgraded as
    /// it is opened: its values stay as they are, its format becomes 3, and
    /// a version of tcc that reads format 2 only refuses it from then on.
    /// Open a file with tools of your application's version.
    pub fn open(path: impl AsRef<Path>) -> Result<RedbLog, LogError> {
        RedbLog::start(path.as_ref(), RedbOptions::default(), Start::Open)
    }

    /// Creates a new, empty log at `path`: once, when an application is
    /// first set up; [`open`](RedbLog::open) it ever after.
    ///
    /// Fails with [`LogErrorKind::Exists`] if a file at `path` has anything in
    /// it (an empty file, or a redb file with no tables at all, which is what
    /// a `create` cut short leaves, is taken), and with
    /// [`Io`](LogErrorKind::Io) if it cannot be created (its directory must
    /// exist). Once it returns, the file and its directory entry are on disk.
    pub fn create(path: impl AsRef<Path>) -> Result<RedbLog, LogError> {
        RedbLog::start(path.as_ref(), RedbOptions::default(), Start::Create)
    }

    /// Options for [`RedbOptions::open`].
    pub fn options() -> RedbOptions {
        RedbOptions::default()
    }

    /// The file this log writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the writer did so far: how well concurrent calls share commits.
    pub fn stats(&self) -> CommitStats {
        CommitStats {
            requests: self.counters.requests.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
            durable_commits: self.counters.durable_commits.load(Ordering::Relaxed),
            busy: Duration::from_nanos(self.counters.busy_nanos.load(Ordering::Relaxed)),
        }
    }

    fn start(path: &Path, options: RedbOptions, how: Start) -> Result<RedbLog, LogError> {
        // redb reports a damaged file as an error once its pages are
        // checked; should it panic all the same, the caller gets an error.
        let db = catch_unwind(|| {
            let db = match how {
                Start::Open => open_database(path)?,
                Start::Create => create_database(path)?,
            };
            prepare(&db, path, how)?;
            Ok(db)
        })
        .unwrap_or_else(|panic| Err(panicked(path, panic.as_ref())))?;
        let (requests, inbox) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = watch::channel(None);
        let writer = Writer {
            counters: counters.clone(),
            db,
            path: path.to_owned(),
            rules: Rules::new(options.retention),
            lazy_commits: 0,
            max_gather: options.max_gather,
            stopped: stop,
        };
        let writer = std::thread::Builder::new()
            .name("tcc-log-writer".into())
            .spawn(move || writer.run(&inbox))
            .map_err(|e| {
                LogError::new(LogErrorKind::Io, "cannot start the log's writer thread")
                    .with_source(e)
            })?;
        Ok(RedbLog {
            requests: Some(requests),
            counters,
            writer: Some(writer),
            path: path.to_owned(),
            stopped,
        })
    }

    /// Sends a request and awaits its reply.
    fn call<T: Leases + Send + 'static>(
        &self,
        request: impl FnOnce(Reply<T>) -> Request,
    ) -> LogFuture<'_, T> {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(request(reply));
        // Outside the async block, so that it guards the reply even if the
        // block is dropped before it is first polled.
        let answer = Unread::new(self, answer);
        Box::pin(async move {
            sent?;
            match answer.await {
                Ok(result) => result,
                // The writer dropped the reply unanswered: it panicked while
                // applying this request. It says why as soon as it has
                // caught the panic, or ends.
                Err(_) => {
                    let mut stopped = self.stopped.clone();
                    let cause = match stopped.wait_for(Option::is_some).await {
                        Ok(cause) => cause.clone(),
                        Err(_) => None,
                    };
                    Err(match cause {
                        Some(panic) => LogError::new(LogErrorKind::Corrupt, panic),
                        None => self.closed(),
                    })
                }
            }
        })
    }

    fn send(&self, request: Request) -> Result<(), LogError> {
        let requests = self.requests.as_ref().expect("set until drop");
        requests.send(request).map_err(|_| self.closed())
    }

    fn closed(&self) -> LogError {
        match &*self.stopped.borrow() {
            Some(cause) => stopped(&self.path, cause),
            None => LogError::new(
                LogErrorKind::Closed,
                format!("the writer of the log {} has stopped", self.path.display()),
            ),
        }
    }
}

/// The error of every call after the writer stopped for `cause`.
fn stopped(path: &Path, cause: &str) -> LogError {
    LogError::new(
        LogErrorKind::Closed,
        format!(
            "the log {} stopped after an earlier failure ({cause}): open it again",
            path.display()
        ),
    )
}

/// A panic inside the store (redb or the codec), as the error it becomes.
fn panicked(path: &Path, panic: &(dyn Any + Send)) -> LogError {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message");
    LogError::new(
        LogErrorKind::Corrupt,
        format!(
            "the log {} may be damaged: its store panicked ({what})",
            path.display()
        ),
    )
}

/// Opens the file of an existing log, refusing a missing or empty one.
fn open_database(path: &Path) -> Result<Database, LogError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LogError::new(
                LogErrorKind::Missing,
                format!(
                    "there is no log at {}: for a new application, `create` makes one (RedbLog::create, TransactionLog::create); if a log was there, restore it from a backup, since the transactions it held are otherwise never finished",
                    path.display()
                ),
            ));
        }
        Err(e) => return Err(from_redb(path, "cannot open the log", e)),
        Ok(metadata) if metadata.len() == 0 => {
            return Err(LogError::new(
                LogErrorKind::Missing,
                format!(
                    "the log {} is empty (0 bytes): it was truncated, or its `create` was cut short; if it never held a transaction, remove it and `create` it again, otherwise restore it from a backup",
                    path.display()
                ),
            ));
        }
        Ok(_) => {}
    }
    // Every page is checked against its checksum: a file changed outside
    // redb is refused as Corrupted, where a plain open trusts a cleanly
    // closed file and may panic on it, or read a wrong value.
    Database::builder()
        .set_check_integrity_on_open(true)
        .open(path)
        .map_err(|e| open_error(path, e))
}

/// Makes the file of a new log, refusing to replace one with anything in it.
fn create_database(path: &Path) -> Result<Database, LogError> {
    let options = || {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true);
        options
    };
    // The length of a file found at `path`: 0, or a redb file, are taken
    // if nothing was written in them.
    let (file, found) = match options().create_new(true).open(path) {
        Ok(file) => (file, None),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let file = options()
                .open(path)
                .map_err(|e| from_redb(path, "cannot open the log", e))?;
            let len = file
                .metadata()
                .map_err(|e| from_redb(path, "cannot open the log", e))?
                .len();
            (file, Some(len))
        }
        Err(e) => return Err(from_redb(path, "cannot create the log", e)),
    };
    let exists = |len: u64| {
        LogError::new(
            LogErrorKind::Exists,
            format!(
                "a log already exists at {} ({len} bytes): open it (RedbLog::open, TransactionLog::open) rather than create a new one over it",
                path.display()
            ),
        )
    };
    let backend = redb::backends::FileBackend::new(file).map_err(|e| open_error(path, e))?;
    // A file with something in it is opened only if it is a redb file (redb
    // checks its magic number before writing anything), and taken only if
    // it has no tables at all.
    let db = match Database::builder()
        .set_check_integrity_on_open(true)
        .create_with_backend(backend)
    {
        Ok(db) => db,
        Err(e @ redb::DatabaseError::DatabaseAlreadyOpen) => return Err(open_error(path, e)),
        Err(e) => {
            return Err(match found {
                Some(len) if len > 0 => exists(len),
                _ => open_error(path, e),
            });
        }
    };
    // What a `create` cut short leaves: an empty file (before redb wrote
    // anything), or a redb file with no tables (before our first commit).
    // Nothing of anyone's is in either.
    if let Some(len) = found
        && len > 0
        && has_tables(&db, path)?
    {
        return Err(exists(len));
    }
    // The new file's name, durable: without it a crash could leave no file
    // at all after the first transactions were told they were durable, and
    // `open` would then refuse the log as missing.
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(|e| from_redb(path, "cannot sync the directory of the log", e))?;
    Ok(db)
}

/// Whether a redb file has any table, ours or anyone's.
fn has_tables(db: &Database, path: &Path) -> Result<bool, LogError> {
    let txn = db.begin_read().map_err(|e| read_error(path, e))?;
    let tables = txn.list_tables().map_err(|e| read_error(path, e))?.next();
    let multimaps = txn
        .list_multimap_tables()
        .map_err(|e| read_error(path, e))?
        .next();
    Ok(tables.is_some() || multimaps.is_some())
}

fn open_error(path: &Path, error: redb::DatabaseError) -> LogError {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen => LogError::new(
            LogErrorKind::AlreadyOpen,
            format!(
                "the log {} is already open, by another process or elsewhere in this one; one log file has one writer",
                path.display()
            ),
        ),
        other => from_redb(path, "cannot open the log", other),
    }
}

impl Drop for RedbLog {
    fn drop(&mut self) {
        // Closing the channel stops the writer once it has applied every
        // request sent; waiting for it releases the file for the next opener.
        drop(self.requests.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl std::fmt::Debug for RedbLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbLog").field("path", &self.path).finish()
    }
}

impl Log for RedbLog {
    fn begin(&self, intent: &Intent) -> LogFuture<'_, Lease> {
        let intent = intent.clone();
        self.call(|reply| Request::Begin(intent, reply))
    }

    fn decide(&self, lease: &Lease, decision: Decision) -> LogFuture<'_, Decision> {
        let lease = lease.clone();
        self.call(|reply| Request::Decide(lease, decision, reply))
    }

    fn note(&self, lease: &Lease, participant: u32, phase: Phase, progress: PhaseProgress) {
        // A stopped writer fails every later awaited call, which says so.
        let _ = self.send(Request::Note(lease.clone(), participant, phase, progress));
    }

    fn finish(&self, lease: &Lease, end: End) -> LogFuture<'_, ()> {
        let lease = lease.clone();
        self.call(|reply| Request::Finish(lease, end, reply))
    }

    fn claim_unfinished(&self, limit: usize) -> LogFuture<'_, Vec<(Lease, TransactionRecord)>> {
        self.call(|reply| Request::Claim(limit, reply))
    }

    fn release(&self, lease: &Lease) {
        let _ = self.send(Request::Release(lease.clone()));
    }

    fn get(&self, id: TransactionId) -> LogFuture<'_, Option<TransactionRecord>> {
        self.call(|reply| Request::Get(id, reply))
    }

    fn needs_repair(&self, limit: usize) -> LogFuture<'_, Vec<TransactionRecord>> {
        self.call(|reply| Request::NeedsRepair(limit, reply))
    }

    fn reopen(&self, id: TransactionId) -> LogFuture<'_, Option<(Lease, TransactionRecord)>> {
        self.call(|reply| Request::Reopen(id, reply))
    }

    fn requeue(&self, id: TransactionId) -> LogFuture<'_, bool> {
        self.call(|reply| Request::Requeue(id, reply))
    }

    fn resolve(&self, id: TransactionId, resolution: &Resolution) -> LogFuture<'_, bool> {
        let resolution = resolution.clone();
        self.call(|reply| Request::Resolve(id, resolution, reply))
    }

    fn unfinished_count(&self) -> LogFuture<'_, u64> {
        self.call(|reply| Request::Count(Counted::Unfinished, reply))
    }

    fn needs_repair_count(&self) -> LogFuture<'_, u64> {
        self.call(|reply| Request::Count(Counted::NeedsRepair, reply))
    }

    fn list(&self, filter: &Filter) -> LogFuture<'_, Vec<TransactionRecord>> {
        let filter = filter.clone();
        self.call(|reply| Request::List(filter, reply))
    }

    fn summary(&self) -> LogFuture<'_, LogSummary> {
        self.call(Request::Summary)
    }
}

type Reply<T> = oneshot::Sender<Result<T, LogError>>;

/// One call of [`Log`], as the writer receives it.
enum Request {
    Begin(Intent, Reply<Lease>),
    Decide(Lease, Decision, Reply<Decision>),
    Note(Lease, u32, Phase, PhaseProgress),
    Finish(Lease, End, Reply<()>),
    Claim(usize, Reply<Vec<(Lease, TransactionRecord)>>),
    Release(Lease),
    Get(TransactionId, Reply<Option<TransactionRecord>>),
    NeedsRepair(usize, Reply<Vec<TransactionRecord>>),
    Reopen(TransactionId, Reply<Option<(Lease, TransactionRecord)>>),
    Requeue(TransactionId, Reply<bool>),
    Resolve(TransactionId, Resolution, Reply<bool>),
    Count(Counted, Reply<u64>),
    List(Filter, Reply<Vec<TransactionRecord>>),
    Summary(Reply<LogSummary>),
    /// Panics in the writer, as a bug of redb's or ours would.
    #[cfg(test)]
    Panic(Reply<()>),
}

impl Request {
    /// Whether its caller waits for the batch's commit (notes and releases
    /// are not awaited; `finish(Done)` is answered before the commit).
    fn awaits_commit(&self) -> bool {
        !matches!(
            self,
            Request::Note(..) | Request::Release(_) | Request::Finish(_, End::Done, _)
        )
    }

    /// Whether its caller may only hear back once the batch is on disk.
    fn durable(&self) -> bool {
        matches!(
            self,
            Request::Begin(..)
                | Request::Decide(..)
                | Request::Finish(_, End::NeedsRepair, _)
                | Request::Reopen(..)
                | Request::Requeue(..)
                | Request::Resolve(..)
        )
    }
}

impl Request {
    /// Holds the reply of a request the writer did not apply: it gets the
    /// batch's failure.
    fn abandon(self, pending: &mut Vec<Pending>) {
        fn fail<T: Send + 'static>(pending: &mut Vec<Pending>, reply: Reply<T>) {
            pending.push(Box::new(move |failed: Option<&LogError>| {
                let error = failed.map_or_else(
                    || LogError::new(LogErrorKind::Closed, "the log's writer gave up"),
                    LogError::copy_for_caller,
                );
                let _ = reply.send(Err(error));
                Vec::new()
            }));
        }
        match self {
            Request::Begin(_, reply) => fail(pending, reply),
            Request::Decide(_, _, reply) => fail(pending, reply),
            Request::Finish(_, _, reply) => fail(pending, reply),
            Request::Claim(_, reply) => fail(pending, reply),
            Request::Get(_, reply) => fail(pending, reply),
            Request::NeedsRepair(_, reply) => fail(pending, reply),
            Request::Reopen(_, reply) => fail(pending, reply),
            Request::Requeue(_, reply) => fail(pending, reply),
            Request::Resolve(_, _, reply) => fail(pending, reply),
            Request::Count(_, reply) => fail(pending, reply),
            Request::List(_, reply) => fail(pending, reply),
            Request::Summary(reply) => fail(pending, reply),
            #[cfg(test)]
            Request::Panic(reply) => fail(pending, reply),
            Request::Note(..) | Request::Release(_) => {}
        }
    }
}

/// Takes every request already queued, up to [`MAX_BATCH`].
fn take_queued(inbox: &mpsc::Receiver<Request>, batch: &mut Vec<Request>) {
    while batch.len() < MAX_BATCH {
        match inbox.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
}

/// How many requests of `batch` have a caller waiting for its commit.
fn awaited(batch: &[Request]) -> usize {
    batch.iter().filter(|r| r.awaits_commit()).count()
}

/// How many requests of `batch` have a caller waiting for an answer.
fn answering(batch: &[Request]) -> usize {
    batch
        .iter()
        .filter(|r| !matches!(r, Request::Note(..) | Request::Release(_)))
        .count()
}

/// A reply held until its batch is committed: it then sends its result, or
/// the commit's failure, and returns the leases of a result its caller was
/// no longer there to receive, for the writer to give back.
type Pending = Box<dyn FnOnce(Option<&LogError>) -> Vec<Lease> + Send>;

fn hold<T: Leases + Send + 'static>(
    pending: &mut Vec<Pending>,
    reply: Reply<T>,
    result: Result<T, LogError>,
) {
    pending.push(Box::new(move |failed: Option<&LogError>| {
        let sent = reply.send(match failed {
            Some(error) => Err(error.copy_for_caller()),
            None => result,
        });
        match sent {
            Err(Ok(undelivered)) => undelivered.leases().into_iter().cloned().collect(),
            _ => Vec::new(),
        }
    }));
}

/// Whether an error means the write transaction can no longer be trusted
/// (the store failed), rather than a refusal by the rules.
///
/// One record that cannot be read is not: it was only read, and the others
/// are sound.
fn is_store_failure(error: &LogError) -> bool {
    matches!(error.kind(), LogErrorKind::Io | LogErrorKind::Corrupt)
        && error.unreadable_record().is_none()
}

/// Counts of what the writer did, read by [`RedbLog::stats`].
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    commits: AtomicU64,
    durable_commits: AtomicU64,
    busy_nanos: AtomicU64,
}

/// What a [`RedbLog`]'s writer did since the log was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Calls received, reads and notes included.
    pub requests: u64,
    /// Write transactions committed.
    pub commits: u64,
    /// Of which durable (fsync'd).
    pub durable_commits: u64,
    /// Time the writer spent applying batches and committing them (not
    /// waiting for requests): `busy / commits` is the mean commit's cost.
    pub busy: Duration,
}

struct Writer {
    counters: Arc<Counters>,
    db: Database,
    path: PathBuf,
    rules: Rules,
    lazy_commits: u32,
    max_gather: Duration,
    /// Why the writer stopped, once it has: after a failed commit, what this
    /// process believes (its live leases) may no longer match the file, so
    /// every later call fails, saying so, until the log is opened again.
    /// Shared with [`RedbLog`], for the calls the writer never answered.
    stopped: watch::Sender<Option<String>>,
}

impl Writer {
    fn run(mut self, inbox: &mpsc::Receiver<Request>) {
        let mut batch = Vec::new();
        // Group commit: after a commit, the callers it answered send their
        // next request within microseconds, while the requests that came
        // during the commit are already queued. Taking only the queued ones
        // would split the callers into two cohorts that alternate, each
        // commit carrying half of them; so the next batch waits, briefly,
        // for the answered callers too. `expected`: how many awaited requests
        // the next batch waits for; `gather`: for how long at most.
        let mut expected = 0;
        let mut gather = Duration::ZERO;
        loop {
            if batch.is_empty() {
                match inbox.recv() {
                    Ok(first) => batch.push(first),
                    Err(_) => break,
                }
            }
            take_queued(inbox, &mut batch);
            let deadline = Instant::now() + gather;
            let mut back = answering(&batch);
            while back < expected && batch.len() < MAX_BATCH {
                let left = deadline.saturating_duration_since(Instant::now());
                match inbox.recv_timeout(left) {
                    Ok(request) => {
                        back += answering(std::slice::from_ref(&request));
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            let durable = batch.iter().any(Request::durable);
            self.counters
                .requests
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let answered = awaited(&batch);
            let mut pending = Vec::with_capacity(batch.len());
            let started = Instant::now();
            let cause = self.stopped.borrow().clone();
            let failed = match cause {
                Some(cause) => Some(stopped(&self.path, &cause)),
                None => {
                    // A panic inside redb or the codec stops the log as a
                    // failed commit does: the write transaction is dropped
                    // unfinished, so the file keeps its last commit.
                    let applied = catch_unwind(AssertUnwindSafe(|| {
                        self.apply(&mut batch, durable, &mut pending)
                    }));
                    match applied {
                        Ok(applied) => applied.err(),
                        Err(panic) => Some(panicked(&self.path, panic.as_ref())),
                    }
                }
            };
            // What the writer did not apply hears of the failure too.
            batch.drain(..).for_each(|r| r.abandon(&mut pending));
            let spent = started.elapsed();
            self.counters.busy_nanos.fetch_add(
                u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            gather = (spent / 4).min(self.max_gather);
            if let Some(error) = &failed
                && self.stopped.borrow().is_none()
            {
                tracing::error!(path = %self.path.display(), %error, "the log stopped");
                self.stopped.send_replace(Some(error.to_string()));
            }
            // What came during the commit, before anyone is answered.
            take_queued(inbox, &mut batch);
            // The callers answered early (`finish(Done)`) are not waited for:
            // they may be back already, among the queued.
            expected = (answering(&batch) + answered).min(MAX_BATCH);
            for reply in pending {
                for lease in reply(failed.as_ref()) {
                    self.rules.release(&lease);
                }
            }
        }
        // A clean shutdown: what was committed lazily reaches the disk now.
        if self.stopped.borrow().is_none() && self.lazy_commits > 0 {
            let path = self.path.clone();
            let committed = catch_unwind(AssertUnwindSafe(|| self.commit_empty()))
                .unwrap_or_else(|panic| Err(panicked(&path, panic.as_ref())));
            if let Err(error) = committed {
                tracing::error!(path = %path.display(), %error, "the log's last commit failed");
            }
        }
    }

    /// Applies a batch in one write transaction and commits it, taking the
    /// requests out of `batch` as it goes: those left in it on an error (or
    /// a panic) were not applied.
    fn apply(
        &mut self,
        batch: &mut Vec<Request>,
        durable: bool,
        pending: &mut Vec<Pending>,
    ) -> Result<(), LogError> {
        let path = self.path.clone();
        let redb_error = |what: &str, e: redb::Error| from_redb(&path, what, e);
        let (started, requests) = (Instant::now(), batch.len());
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| redb_error("cannot write the log", e.into()))?;
        let durable = durable || self.lazy_commits + 1 >= MAX_LAZY_COMMITS;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability)
            .map_err(|e| redb_error("cannot write the log", e.into()))?;
        let changed = {
            let mut tables = RedbTables::open(&txn, &path)?;
            let rules = &mut self.rules;
            // In order, from the first: reversed, so each is popped off the end.
            batch.reverse();
            while let Some(request) = batch.pop() {
                apply_one(rules, &mut tables, request, pending)?;
            }
            tables.finish()?
        };
        if !changed {
            // Nothing to commit: reads, releases and refused writes only.
            txn.abort()
                .map_err(|e| redb_error("cannot write the log", e.into()))?;
            return Ok(());
        }
        // The commit, durable if any request of the batch needs it: every
        // intent, decision and repair state of the batch is then on disk once
        // it returns, and only then does any caller hear back. A crash before
        // it leaves the file as the last durable commit left it: no caller
        // was told of a durable write of this batch, so none ran a Try or a
        // phase 2 because of it; the lazy writes lost are repeated by
        // recovery (see the module docs).
        txn.commit()
            .map_err(|e| redb_error("cannot commit to the log", e.into()))?;
        crate::metrics::log_committed("redb", started.elapsed(), requests);
        self.lazy_commits = if durable { 0 } else { self.lazy_commits + 1 };
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        if durable {
            self.counters
                .durable_commits
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn commit_empty(&mut self) -> Result<(), LogError> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| from_redb(&self.path, "cannot write the log", e))?;
        txn.commit()
            .map_err(|e| from_redb(&self.path, "cannot commit to the log", e))?;
        self.lazy_commits = 0;
        Ok(())
    }
}

/// Runs one request; its reply waits in `pending`. Errors only if the store
/// failed, which fails the whole batch.
fn apply_one(
    rules: &mut Rules,
    tables: &mut RedbTables<'_>,
    request: Request,
    pending: &mut Vec<Pending>,
) -> Result<(), LogError> {
    fn keep<T: Leases + Send + 'static>(
        pending: &mut Vec<Pending>,
        reply: Reply<T>,
        result: Result<T, LogError>,
    ) -> Result<(), LogError> {
        let failure = match &result {
            Err(error) if is_store_failure(error) => Some(error.copy_for_caller()),
            _ => None,
        };
        hold(pending, reply, result);
        failure.map_or(Ok(()), Err)
    }
    match request {
        Request::Begin(intent, reply) => {
            let result = rules.begin(tables, &intent);
            give_back_if_gone(rules, &reply, &result);
            keep(pending, reply, result)
        }
        Request::Decide(lease, decision, reply) => {
            keep(pending, reply, rules.decide(tables, &lease, decision))
        }
        Request::Note(lease, participant, phase, progress) => {
            match rules.note(tables, &lease, participant, phase, progress) {
                Err(error) if is_store_failure(&error) => Err(error),
                Err(error) => {
                    tracing::debug!(%error, "note dropped");
                    Ok(())
                }
                Ok(()) => Ok(()),
            }
        }
        Request::Finish(lease, End::Done, reply) => {
            let result = rules.finish(tables, &lease, End::Done);
            if let Err(error) = &result
                && is_store_failure(error)
            {
                return keep(pending, reply, result);
            }
            // Lazy, so its caller need not wait for the commit: it hears back
            // as soon as the end is applied, before the batch's fsync. Had
            // the commit failed, the end would be lost as in a crash, and
            // recovery would finish the transaction again.
            let _ = reply.send(result);
            Ok(())
        }
        Request::Finish(lease, end, reply) => {
            keep(pending, reply, rules.finish(tables, &lease, end))
        }
        Request::Claim(limit, reply) => {
            let result = rules.claim_unfinished(tables, limit);
            give_back_if_gone(rules, &reply, &result);
            keep(pending, reply, result)
        }
        Request::Release(lease) => {
            rules.release(&lease);
            Ok(())
        }
        Request::Get(id, reply) => keep(pending, reply, rules.get(tables, id)),
        Request::NeedsRepair(limit, reply) => {
            keep(pending, reply, rules.needs_repair(tables, limit))
        }
        Request::Reopen(id, reply) => {
            let result = rules.reopen(tables, id);
            give_back_if_gone(rules, &reply, &result);
            keep(pending, reply, result)
        }
        Request::Requeue(id, reply) => keep(pending, reply, rules.requeue(tables, id)),
        Request::Resolve(id, resolution, reply) => {
            keep(pending, reply, rules.resolve(tables, id, &resolution))
        }
        Request::Count(counted, reply) => keep(pending, reply, rules.count(tables, counted)),
        Request::List(filter, reply) => keep(pending, reply, rules.list(tables, &filter)),
        Request::Summary(reply) => keep(pending, reply, rules.summary(tables)),
        #[cfg(test)]
        Request::Panic(_) => panic!("a panic injected by a test"),
    }
}

/// Gives back at once the leases of a call whose caller is gone already (its
/// future dropped), so that a claim later in the same batch takes them; a
/// caller gone during the commit gets its leases given back after it.
fn give_back_if_gone<T: Leases>(rules: &mut Rules, reply: &Reply<T>, result: &Result<T, LogError>) {
    if reply.is_closed()
        && let Ok(answer) = result
    {
        for lease in answer.leases() {
            rules.release(lease);
        }
    }
}

/// Creates the tables of a new file, or checks those of an existing one.
fn prepare(db: &Database, path: &Path, how: Start) -> Result<(), LogError> {
    if let Start::Open = how
        && !has_tables(db, path)?
    {
        return Err(LogError::new(
            LogErrorKind::Missing,
            format!(
                "the log {} has no tables: it looks like a `create` cut short before it finished; `create` will take this file (nothing was written in it), or restore the log from a backup if one was there",
                path.display()
            ),
        ));
    }
    let txn = db
        .begin_write()
        .map_err(|e| from_redb(path, "cannot write the log", e))?;
    {
        let tables = RedbTables::open(&txn, path)?;
        let mut meta = tables.meta;
        let format = meta
            .get("format")
            .map_err(|e| from_redb(path, "cannot read the log", e))?
            .map(|v| v.value());
        match (format, how) {
            (None, Start::Create) => {
                meta.insert("format", FILE_FORMAT)
                    .map_err(|e| from_redb(path, "cannot write the log", e))?;
            }
            // A redb file that is not a log (or whose tables were lost):
            // never made into an empty log in place.
            (None, Start::Open) => {
                return Err(LogError::new(
                    LogErrorKind::Corrupt,
                    format!(
                        "{} is not a transaction log (it has no format): open only what `create` made",
                        path.display()
                    ),
                ));
            }
            (Some(FILE_FORMAT), _) => {}
            // Every value of format 2 reads as it is: only the file's format
            // moves, in this write transaction, so that a version that reads
            // format 2 only refuses the file, rather than take the format 3
            // values written from now on for damage.
            (Some(2), _) => {
                tracing::info!(path = %path.display(), "log upgraded from file format 2 to {FILE_FORMAT}");
                meta.insert("format", FILE_FORMAT)
                    .map_err(|e| from_redb(path, "cannot write the log", e))?;
            }
            // Not converted in place: format 1 has no checksums, so a
            // conversion would seal whatever bytes it finds, damaged or not,
            // under checksums that then vouch for them. The release that
            // wrote it reads it as it was meant to be read.
            (Some(1), _) => {
                return Err(LogError::new(
                    LogErrorKind::Corrupt,
                    format!(
                        "the log {} is in file format 1, written by the previous version of tcc; this version reads format {FILE_FORMAT} only. Finish its transactions with the previous version (call `recover` until `unfinished_count()` is 0), then move the file aside and `create` a new log with this version",
                        path.display()
                    ),
                ));
            }
            (Some(other), _) => {
                return Err(LogError::new(
                    LogErrorKind::Corrupt,
                    format!(
                        "the log {} is in file format {other}, which this version of tcc cannot read (it reads format {FILE_FORMAT}): open it with the version that wrote it",
                        path.display()
                    ),
                ));
            }
        }
    }
    // Durable, so that the tables exist before any transaction is begun.
    txn.commit()
        .map_err(|e| from_redb(path, "cannot commit to the log", e))
}

fn read_error(path: &Path, e: impl Into<redb::Error>) -> LogError {
    from_redb(path, "cannot read the log", e)
}

fn write_error(path: &Path, e: impl Into<redb::Error>) -> LogError {
    from_redb(path, "cannot write the log", e)
}

fn from_redb(path: &Path, what: &str, error: impl Into<redb::Error>) -> LogError {
    let error = error.into();
    let kind = match &error {
        redb::Error::DatabaseAlreadyOpen => LogErrorKind::AlreadyOpen,
        // Checked before each write (`fits`); should redb still refuse one,
        // only that request fails: nothing was written.
        redb::Error::ValueTooLarge(_) => LogErrorKind::TooLarge,
        redb::Error::Corrupted(_)
        | redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. } => LogErrorKind::Corrupt,
        // What redb says of a file that is not a redb database.
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            LogErrorKind::Corrupt
        }
        _ => LogErrorKind::Io,
    };
    LogError::new(kind, format!("{what} {}", path.display())).with_source(error)
}

/// Whether a value of `len` bytes, the `what` of transaction `id`, is at
/// most `limit` bytes (the store's is [`MAX_VALUE_BYTES`]), or why it cannot
/// be written: [`TooLarge`](LogErrorKind::TooLarge), a refusal of that one
/// request which leaves the log running.
fn fits(id: TransactionId, what: &str, len: usize, limit: usize) -> Result<(), LogError> {
    if len <= limit {
        return Ok(());
    }
    Err(LogError::new(
        LogErrorKind::TooLarge,
        format!(
            "transaction {id}: its {what} is {len} bytes; the log keeps values of at most {limit} bytes"
        ),
    ))
}

/// The tables of one write transaction.
struct RedbTables<'t> {
    path: &'t Path,
    unfinished: Table<'t, u128, &'static [u8]>,
    repair: Table<'t, u128, &'static [u8]>,
    progress: Table<'t, (u128, u32, u8), &'static [u8]>,
    outcomes: Table<'t, u128, &'static [u8]>,
    order: Table<'t, u64, u128>,
    meta: Table<'t, &'static str, u64>,
    next_finished: Option<u64>,
    changed: bool,
}

impl<'t> RedbTables<'t> {
    fn open(txn: &'t redb::WriteTransaction, path: &'t Path) -> Result<Self, LogError> {
        let open = |e: redb::TableError| from_redb(path, "cannot open the tables of the log", e);
        Ok(RedbTables {
            path,
            unfinished: txn.open_table(UNFINISHED).map_err(open)?,
            repair: txn.open_table(REPAIR).map_err(open)?,
            progress: txn.open_table(PROGRESS).map_err(open)?,
            outcomes: txn.open_table(OUTCOMES).map_err(open)?,
            order: txn.open_table(FINISHED_ORDER).map_err(open)?,
            meta: txn.open_table(META).map_err(open)?,
            next_finished: None,
            changed: false,
        })
    }

    /// Writes what is kept in memory during the batch; whether anything
    /// changed.
    fn finish(mut self) -> Result<bool, LogError> {
        if let Some(next) = self.next_finished {
            self.meta
                .insert("next_finished", next)
                .map_err(|e| from_redb(self.path, "cannot write the log", e))?;
        }
        Ok(self.changed)
    }

    /// The error of a record of `id` that cannot be read, and why.
    fn unreadable(&self, id: TransactionId, what: &str, why: &str) -> LogError {
        LogError::unreadable(
            id,
            format!(
                "the {what} of transaction {id} in the log {} is unreadable: {why}",
                self.path.display()
            ),
        )
    }

    /// A record as read from a table, with its progress: decoded, or
    /// unreadable. Errors only if the store failed.
    ///
    /// Only the record's own bytes make it unreadable. A progress row is a
    /// lazy note, which a crash may lose (see the module docs): one that
    /// cannot be read, or names a participant or phase the record has not,
    /// is taken as lost, and leaves the default progress a lost note leaves.
    fn found(&self, key: u128, bytes: &[u8]) -> Result<Found, LogError> {
        let id = TransactionId::from_u128(key);
        let mut stored = match codec::decode(id, bytes) {
            Ok(stored) => stored,
            Err(why) => {
                return Ok(Err(Unreadable {
                    id,
                    reason: self.unreadable(id, "record", &why).to_string(),
                }));
            }
        };
        let rows = self
            .progress
            .range((key, 0, 0)..=(key, u32::MAX, u8::MAX))
            .map_err(|e| read_error(self.path, e))?;
        for row in rows {
            let (row_key, bytes) = row.map_err(|e| read_error(self.path, e))?;
            let (_, participant, phase) = row_key.value();
            let slot = codec::phase(phase).and_then(|phase| {
                let slot = stored.record.progress.get_mut(participant as usize)?;
                Some((phase, slot))
            });
            let Some((phase, slot)) = slot else {
                tracing::warn!(path = %self.path.display(), %id, participant, phase,
                    "a progress row names a participant or phase the record has not: taken as a lost note");
                continue;
            };
            match codec::decode_progress(id, participant, phase, bytes.value()) {
                Ok(progress) => slot[phase as usize] = progress,
                Err(why) => {
                    tracing::warn!(path = %self.path.display(), %id, participant, ?phase, %why,
                        "a progress row is unreadable: taken as a lost note");
                }
            }
        }
        Ok(Ok(stored))
    }

    /// Removes the progress of `id`: its record is gone.
    fn remove_progress(&mut self, id: TransactionId) -> Result<(), LogError> {
        let key = id.as_u128();
        self.progress
            .retain_in((key, 0, 0)..=(key, u32::MAX, u8::MAX), |_, _| false)
            .map_err(|e| write_error(self.path, e))
    }

    fn table(&mut self, place: Place) -> &mut Table<'t, u128, &'static [u8]> {
        match place {
            Place::Unfinished => &mut self.unfinished,
            Place::NeedsRepair => &mut self.repair,
        }
    }
}

impl Tables for RedbTables<'_> {
    fn record(&mut self, id: TransactionId) -> Result<Option<Stored>, LogError> {
        let key = id.as_u128();
        for table in [&self.unfinished, &self.repair] {
            if let Some(bytes) = table.get(key).map_err(|e| read_error(self.path, e))? {
                return match self.found(key, bytes.value())? {
                    Ok(stored) => Ok(Some(stored)),
                    Err(unreadable) => Err(LogError::unreadable(id, unreadable.reason)),
                };
            }
        }
        Ok(None)
    }

    fn record_without_progress(&mut self, id: TransactionId) -> Result<Option<Stored>, LogError> {
        let key = id.as_u128();
        for table in [&self.unfinished, &self.repair] {
            if let Some(bytes) = table.get(key).map_err(|e| read_error(self.path, e))? {
                // Its progress rows are not read: `put_record` leaves them be.
                return codec::decode(id, bytes.value())
                    .map(Some)
                    .map_err(|why| self.unreadable(id, "record", &why));
            }
        }
        Ok(None)
    }

    fn put_record(&mut self, stored: &Stored) -> Result<(), LogError> {
        let key = stored.id().as_u128();
        let bytes = codec::encode(stored)?;
        fits(stored.id(), "record", bytes.len(), MAX_VALUE_BYTES)?;
        self.changed = true;
        let result = self
            .table(Place::of(stored.record.status))
            .insert(key, bytes.as_slice())
            .map(drop);
        result.map_err(|e| write_error(self.path, e))
    }

    fn move_record(&mut self, stored: &Stored) -> Result<(), LogError> {
        let other = Place::before_moving(stored.record.status);
        self.changed = true;
        let result = self.table(other).remove(stored.id().as_u128()).map(drop);
        result.map_err(|e| write_error(self.path, e))?;
        self.put_record(stored)
    }

    fn put_progress(
        &mut self,
        id: TransactionId,
        participant: u32,
        phase: Phase,
        progress: &PhaseProgress,
    ) -> Result<(), LogError> {
        let bytes = codec::encode_progress(id, participant, phase, progress)?;
        fits(id, "progress", bytes.len(), MAX_VALUE_BYTES)?;
        self.changed = true;
        let key = (id.as_u128(), participant, phase as u8);
        let result = self.progress.insert(key, bytes.as_slice()).map(drop);
        result.map_err(|e| write_error(self.path, e))
    }

    fn remove_record(&mut self, id: TransactionId, place: Place) -> Result<(), LogError> {
        self.changed = true;
        let result = self.table(place).remove(id.as_u128()).map(drop);
        result.map_err(|e| write_error(self.path, e))?;
        self.remove_progress(id)
    }

    fn outcome(&mut self, id: TransactionId) -> Result<Option<Finished>, LogError> {
        match self
            .outcomes
            .get(id.as_u128())
            .map_err(|e| read_error(self.path, e))?
        {
            Some(bytes) => codec::decode_outcome(id, bytes.value())
                .map(Some)
                .map_err(|why| self.unreadable(id, "outcome", &why)),
            None => Ok(None),
        }
    }

    fn add_outcome(
        &mut self,
        id: TransactionId,
        outcome: Finished,
        retention: u64,
        max_pruned: usize,
    ) -> Result<(), LogError> {
        self.changed = true;
        let next = match self.next_finished {
            Some(next) => next,
            None => self
                .meta
                .get("next_finished")
                .map_err(|e| read_error(self.path, e))?
                .map_or(0, |v| v.value()),
        };
        let bytes = codec::encode_outcome(id, &outcome)?;
        fits(id, "outcome", bytes.len(), MAX_VALUE_BYTES)?;
        self.next_finished = Some(next + 1);
        let result = self
            .outcomes
            .insert(id.as_u128(), bytes.as_slice())
            .map(drop);
        result.map_err(|e| write_error(self.path, e))?;
        let result = self.order.insert(next, id.as_u128()).map(drop);
        result.map_err(|e| write_error(self.path, e))?;
        // Prune the oldest, a few at a time. The order table's length is kept
        // by redb in its header: reading it costs nothing.
        for _ in 0..max_pruned {
            let kept = self.order.len().map_err(|e| read_error(self.path, e))?;
            if kept <= retention {
                break;
            }
            let oldest = self
                .order
                .pop_first()
                .map_err(|e| write_error(self.path, e))?;
            if let Some((_, oldest)) = oldest {
                let oldest = oldest.value();
                let result = self.outcomes.remove(oldest).map(drop);
                result.map_err(|e| write_error(self.path, e))?;
            }
        }
        Ok(())
    }

    fn unfinished(
        &mut self,
        limit: usize,
        skip: &dyn Fn(TransactionId) -> bool,
    ) -> Result<Vec<Found>, LogError> {
        let mut found = Vec::new();
        let iter = self
            .unfinished
            .iter()
            .map_err(|e| read_error(self.path, e))?;
        for entry in iter {
            if found.len() >= limit {
                break;
            }
            let (key, bytes) = entry.map_err(|e| read_error(self.path, e))?;
            if !skip(TransactionId::from_u128(key.value())) {
                found.push(self.found(key.value(), bytes.value())?);
            }
        }
        Ok(found)
    }

    fn repair_records(&mut self) -> Result<Vec<Found>, LogError> {
        let mut found = Vec::new();
        for entry in self.repair.iter().map_err(|e| read_error(self.path, e))? {
            let (key, bytes) = entry.map_err(|e| read_error(self.path, e))?;
            found.push(self.found(key.value(), bytes.value())?);
        }
        Ok(found)
    }

    fn set_aside(&mut self, id: TransactionId) -> Result<(), LogError> {
        let key = id.as_u128();
        let removed = self
            .unfinished
            .remove(key)
            .map_err(|e| write_error(self.path, e))?
            .map(|bytes| bytes.value().to_vec());
        if let Some(bytes) = removed {
            self.changed = true;
            // As it was found: the bytes are what an operator may still
            // read by hand.
            let result = self.repair.insert(key, bytes.as_slice()).map(drop);
            result.map_err(|e| write_error(self.path, e))?;
        }
        Ok(())
    }

    fn discard_unreadable(&mut self, id: TransactionId) -> Result<bool, LogError> {
        let removed = self
            .repair
            .remove(id.as_u128())
            .map_err(|e| write_error(self.path, e))?
            .is_some();
        if removed {
            self.changed = true;
            self.remove_progress(id)?;
        }
        Ok(removed)
    }

    fn count(&mut self) -> Result<u64, LogError> {
        let unfinished = self
            .unfinished
            .len()
            .map_err(|e| read_error(self.path, e))?;
        Ok(unfinished + self.repair_count()?)
    }

    fn repair_count(&mut self) -> Result<u64, LogError> {
        self.repair.len().map_err(|e| read_error(self.path, e))
    }

    fn outcomes_newest_first(
        &mut self,
        limit: usize,
        keep: &dyn Fn(&Finished) -> bool,
    ) -> Result<Vec<FoundOutcome>, LogError> {
        let mut found = Vec::new();
        let order = self.order.iter().map_err(|e| read_error(self.path, e))?;
        for entry in order.rev() {
            if found.len() >= limit {
                break;
            }
            let (_, key) = entry.map_err(|e| read_error(self.path, e))?;
            let id = TransactionId::from_u128(key.value());
            // Pruned with its place in the order, bar a crash between the
            // two (one write transaction: never).
            let Some(bytes) = self
                .outcomes
                .get(key.value())
                .map_err(|e| read_error(self.path, e))?
            else {
                continue;
            };
            match codec::decode_outcome(id, bytes.value()) {
                Ok(outcome) if keep(&outcome) => found.push(Ok((id, outcome))),
                Ok(_) => {}
                Err(why) => found.push(Err(Unreadable {
                    id,
                    reason: self.unreadable(id, "outcome", &why).to_string(),
                })),
            }
        }
        Ok(found)
    }

    fn outcome_count(&mut self) -> Result<u64, LogError> {
        self.outcomes.len().map_err(|e| read_error(self.path, e))
    }

    fn bytes(&mut self) -> Result<Option<u64>, LogError> {
        let metadata = std::fs::metadata(self.path).map_err(|e| read_error(self.path, e))?;
        Ok(Some(metadata.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::Status;

    /// A directory of this test's own, removed at the end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("tcc-redb-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The size check, against a small limit: the real one (3 GiB) would
    /// need a record of that size in memory.
    #[test]
    fn a_value_over_the_limit_is_too_large_and_stops_nothing() {
        let id = TransactionId::generate();
        fits(id, "record", 10, 10).unwrap();
        let error = fits(id, "record", 11, 10).unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::TooLarge, "{error}");
        let text = error.to_string();
        assert!(text.contains(&id.to_string()), "{text}");
        assert!(text.contains("11 bytes"), "{text}");
        assert!(!is_store_failure(&error));
        // redb's own refusal, should it come: the same kind, not Io.
        let path = Path::new("log.redb");
        let error = from_redb(path, "cannot write the log", redb::Error::ValueTooLarge(11));
        assert_eq!(error.kind(), LogErrorKind::TooLarge, "{error}");
        assert!(!is_store_failure(&error));
        // What the engine lets through at begin fits, with room for the
        // record's own fields.
        const { assert!(super::super::MAX_INTENT_BYTES < MAX_VALUE_BYTES) };
    }

    #[tokio::test]
    async fn a_panic_in_the_writer_stops_the_log_until_it_is_opened_again() {
        let scratch = Scratch::new("panic");
        let path = scratch.0.join("log.redb");
        let log = RedbLog::create(&path).unwrap();
        let id = TransactionId::generate();
        let lease = log
            .begin(&Intent {
                id,
                participants: vec![],
            })
            .await
            .unwrap();
        log.decide(&lease, Decision::Cancel).await.unwrap();

        // The caller of the batch that panicked: a Corrupt error naming the
        // file, not a panic of its own.
        let error = log.call(Request::Panic).await.unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::Corrupt, "{error}");
        let cause = error.to_string();
        assert!(cause.contains(&path.display().to_string()), "{cause}");
        assert!(cause.contains("a panic injected by a test"), "{cause}");

        // Every later call: stopped, with the first cause and what to do.
        for error in [
            log.get(id).await.unwrap_err(),
            log.unfinished_count().await.unwrap_err(),
        ] {
            assert_eq!(error.kind(), LogErrorKind::Closed, "{error}");
            assert_eq!(
                error.to_string(),
                format!(
                    "the log {} stopped after an earlier failure ({cause}): open it again",
                    path.display()
                )
            );
        }

        // Held while the broken handle lives; a new open works once it is
        // dropped, and finds what was committed before the failure.
        assert_eq!(
            RedbLog::open(&path).unwrap_err().kind(),
            LogErrorKind::AlreadyOpen
        );
        drop(log);
        let log = RedbLog::open(&path).unwrap();
        let record = log.get(id).await.unwrap().unwrap();
        assert_eq!(record.status, Status::Decided(Decision::Cancel));
        assert_eq!(log.unfinished_count().await.unwrap(), 1);
    }
}
