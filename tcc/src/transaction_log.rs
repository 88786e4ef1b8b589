//! Durable transactions: [`TransactionLog`], the log a transaction is written
//! to, the kinds of service it can rebuild, recovery and repair.

use std::any::{TypeId, type_name};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::durable::{
    Filter, LeaseGuard, Log, LogError, LogSummary, Resolution, Status, TransactionRecord,
};
use crate::engine::{self, Kinds, LogHandle, Member, Options};
use crate::error::{BoxError, Chain, Error, ErrorKind};
use crate::id::TransactionId;
use crate::metrics::Origin;
use crate::recoverable::{Recoverable, Resources, WiringError};
use crate::report::Report;
use crate::retry::RetryPolicy;
use crate::service::{Service, ServiceAttempts};

/// How many transactions one recovery pass claims at a time.
const CLAIM_BATCH: usize = 1024;
/// How many recovered transactions run at once: enough to share the log's
/// fsyncs widely, few enough to keep memory small.
const IN_FLIGHT: usize = 256;

/// The durable log of a coordinator: where its transactions are written,
/// the kinds of service it can rebuild after a crash, and the application
/// resources they are rebuilt with.
///
/// Give it to an [`Orchestrator`](crate::Orchestrator) (`.log(&log)`) or a
/// `tcc!` block (`log = &log;`) and their transactions become durable: the
/// intent (every participant and its data) is synced before the first Try,
/// the decision before the first Confirm or Cancel. If the process dies at
/// any instant, [`recover`](TransactionLog::recover) in the next one
/// finishes every transaction it left: one with no decision is cancelled
/// everywhere (presumed abort), one with a decision has it carried out on
/// every participant not yet done. Participants must make their phases
/// idempotent (see `tcc::barrier`), since a phase may run again.
///
/// It is a cheap handle: clones share the log.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicI64, Ordering};
/// use tcc::durable::MemoryLog;
/// use tcc::{BoxError, Recoverable, Resources, TransactionLog, tcc, tcc_service};
///
/// /// The application's resource: here, one balance.
/// #[derive(Clone, Default)]
/// struct Bank(Arc<AtomicI64>);
///
/// /// One debit of one transaction: `amount` is its data, `bank` a resource.
/// struct Debit {
///     bank: Bank,
///     amount: i64,
/// }
///
/// #[tcc_service(name = "debit")]
/// impl Debit {
///     #[try_phase]
///     async fn hold(&self) -> Result<(), BoxError> { Ok(()) }
///     #[confirm]
///     async fn take(&self) -> Result<(), BoxError> {
///         self.bank.0.fetch_sub(self.amount, Ordering::SeqCst);
///         Ok(())
///     }
///     #[cancel]
///     async fn release(&self) -> Result<(), BoxError> { Ok(()) }
/// }
///
/// impl Recoverable for Debit {
///     const KIND: &'static str = "debit";
///     fn save(&self) -> Result<Vec<u8>, BoxError> {
///         Ok(self.amount.to_le_bytes().to_vec())
///     }
///     fn rebuild(data: &[u8], resources: &Resources) -> Result<Self, BoxError> {
///         let amount = i64::from_le_bytes(data.try_into()?);
///         Ok(Debit { bank: resources.get::<Bank>()?.clone(), amount })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bank = Bank::default();
/// // At start: the log (a file: `TransactionLog::create` once, `open` ever
/// // after), the kinds it can rebuild and their resources, then whatever a
/// // crash left. A mistake in the wiring is an error here, not after a
/// // crash.
/// let log = TransactionLog::new(MemoryLog::new());
/// log.provide(bank.clone())?.register::<Debit>()?;
/// let summary = log.recover().await?;
/// // Transactions recovery could not rebuild, or whose record it could not
/// // read, stay in the log, holding what their Tries reserved: say so, or
/// // refuse to serve.
/// for (id, why) in summary.left.iter().chain(&summary.unreadable) {
///     eprintln!("transaction {id} left unfinished: {why}");
/// }
/// assert!(summary.left.is_empty() && summary.unreadable.is_empty());
///
/// let report = tcc! {
///     log = &log;
///     Debit { bank: bank.clone(), amount: 30 },
/// }
/// .await
/// .unwrap();
/// assert_eq!(bank.0.load(Ordering::SeqCst), -30);
/// let state = log.status(report.transaction_id()).await.unwrap().unwrap();
/// assert_eq!(state.status, tcc::durable::Status::Done(tcc::durable::Decision::Confirm));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TransactionLog {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Log>,
    kinds: Arc<Registry>,
    resources: RwLock<Resources>,
    /// How recovered transactions run their phases.
    options: Mutex<Options>,
    /// Transactions recovery claimed but could not rebuild (a kind not
    /// registered, a resource missing): held, untouched, until a later pass
    /// can.
    parked: Mutex<HashMap<TransactionId, Parked>>,
}

/// A claimed transaction waiting to run: parked (it cannot be rebuilt yet)
/// or queued in a recovery pass. Its lease goes back to the log if it is
/// dropped: a recovery pass dropped half-way strands nothing.
struct Parked {
    lease: LeaseGuard,
    record: TransactionRecord,
}

/// Rebuilds one participant from its data.
type Rebuild = fn(&[u8], &Resources) -> Result<Service, BoxError>;

/// The kinds a log can rebuild, each with the type registered under it.
/// Shared with the engine, which refuses a durable transaction of a kind
/// not in it.
#[derive(Default)]
struct Registry(RwLock<HashMap<String, Kind>>);

struct Kind {
    type_id: TypeId,
    type_name: &'static str,
    rebuild: Rebuild,
}

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Kind>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl Kinds for Registry {
    fn is_registered(&self, kind: &str) -> bool {
        self.read().contains_key(kind)
    }
}

fn rebuild<T: Recoverable>(data: &[u8], resources: &Resources) -> Result<Service, BoxError> {
    T::rebuild(data, resources).map(Service::recoverable)
}

/// What one recovery pass did.
///
/// Look at [`left`](RecoverySummary::left) and
/// [`unreadable`](RecoverySummary::unreadable): a transaction in either is
/// still unfinished, holding what its Tries reserved, until a pass can
/// rebuild it or an operator sees to it. Log them, or refuse to start when
/// either is not empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
#[must_use = "transactions in `left` and `unreadable` stay unfinished, holding their reservations: log them or fail"]
pub struct RecoverySummary {
    /// Transactions finished: confirmed or cancelled everywhere.
    pub finished: usize,
    /// Transactions whose phase 2 failed again after its retries: now in
    /// "needs repair" (see [`TransactionLog::needs_repair`]).
    pub needs_repair: usize,
    /// Transactions left untouched because a participant could not be
    /// rebuilt (its kind is not registered, or its resource is missing),
    /// with the reason. Finished by a later pass once it can.
    pub left: Vec<(TransactionId, String)>,
    /// Transactions whose record the log could not read (its checksum
    /// failed, or it was cut short), with the reason: never driven, since
    /// not even their decision can be trusted, and set aside for an
    /// operator, listed by [`TransactionLog::needs_repair`] as
    /// [`Status::Unreadable`]. Reported by the pass that found them; the
    /// others were finished all the same.
    pub unreadable: Vec<(TransactionId, String)>,
}

impl TransactionLog {
    /// A transaction log over `store`.
    pub fn new(store: impl Log) -> Self {
        TransactionLog::from_store(Arc::new(store))
    }

    /// A transaction log over a shared store.
    pub fn from_store(store: Arc<dyn Log>) -> Self {
        TransactionLog {
            inner: Arc::new(Inner {
                store,
                kinds: Arc::default(),
                resources: RwLock::default(),
                options: Mutex::new(Options::DEFAULT),
                parked: Mutex::default(),
            }),
        }
    }

    /// The embedded log in the existing file at `path`: see
    /// [`RedbLog::open`](crate::durable::RedbLog::open). A missing or empty
    /// file is refused ([`Missing`](crate::durable::LogErrorKind::Missing)),
    /// never replaced by a new log; a second process opening the same file
    /// gets an error, never a shared file.
    #[cfg(feature = "redb")]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, LogError> {
        crate::durable::RedbLog::open(path).map(TransactionLog::new)
    }

    /// A new embedded log in the file at `path`, made once when an
    /// application is first set up: see
    /// [`RedbLog::create`](crate::durable::RedbLog::create). Refused
    /// ([`Exists`](crate::durable::LogErrorKind::Exists)) if a log is there.
    #[cfg(feature = "redb")]
    pub fn create(path: impl AsRef<std::path::Path>) -> Result<Self, LogError> {
        crate::durable::RedbLog::create(path).map(TransactionLog::new)
    }

    /// The log in PostgreSQL tables on `pool`, shared with the other
    /// coordinators of the same database: see
    /// [`PostgresLog`](crate::durable::PostgresLog). Its tables must exist
    /// (run [`PostgresLog::migrate`](crate::durable::PostgresLog::migrate)
    /// first; the error says so otherwise). Cargo feature `postgres-log`.
    #[cfg(feature = "postgres-log")]
    pub async fn postgres(pool: deadpool_postgres::Pool) -> Result<Self, LogError> {
        crate::durable::PostgresLog::open(pool)
            .await
            .map(TransactionLog::new)
    }

    /// The log in PostgreSQL tables of the database at `url`
    /// (`postgres://user:password@host/db`), on a pool of its own: see
    /// [`PostgresOptions::connect`](crate::durable::PostgresOptions::connect),
    /// which also takes options (a lease length, running the migration).
    /// Cargo feature `postgres-log`.
    #[cfg(feature = "postgres-log")]
    pub async fn postgres_url(url: &str) -> Result<Self, LogError> {
        crate::durable::PostgresLog::connect(url)
            .await
            .map(TransactionLog::new)
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Log> {
        &self.inner.store
    }

    /// The retry policy of the phases recovery runs (the default policy
    /// otherwise).
    pub fn retry(&self, policy: RetryPolicy) -> &Self {
        self.options().settings.set_retry(policy);
        self
    }

    /// The time limit of each Confirm or Cancel attempt recovery runs.
    pub fn attempt_timeout(&self, timeout: impl Into<Option<Duration>>) -> &Self {
        self.options().settings.attempt_timeout = Some(timeout.into());
        self
    }

    fn options(&self) -> std::sync::MutexGuard<'_, Options> {
        self.inner.options.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers how services of kind `T::KIND` are rebuilt after a crash.
    /// Register every kind a durable transaction of this log uses, at start:
    /// a transaction with a participant of a kind not registered is refused
    /// before its first Try ([`ErrorKind::NotRecoverable`]).
    ///
    /// Registering `T` again is harmless (nothing changes); a second,
    /// different type under the same kind is a [`WiringError`] and leaves
    /// the first registered (`Arc<T>` is such a type: register `T` or
    /// `Arc<T>`, not both). Returns `self` for chaining:
    /// `log.register::<Debit>()?.register::<Credit>()?`.
    ///
    /// A transaction that recovery meets with a kind not registered (logged
    /// by another version of the program) is left untouched and reported in
    /// [`RecoverySummary::left`], and finished by a later pass once the kind
    /// is registered.
    pub fn register<T: Recoverable>(&self) -> Result<&Self, WiringError> {
        let mut kinds = self
            .inner
            .kinds
            .0
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match kinds.entry(T::KIND.to_owned()) {
            Entry::Occupied(registered) if registered.get().type_id == TypeId::of::<T>() => {}
            Entry::Occupied(registered) => {
                return Err(WiringError::DuplicateKind {
                    kind: T::KIND.to_owned(),
                    first: registered.get().type_name,
                    second: type_name::<T>(),
                });
            }
            Entry::Vacant(slot) => {
                slot.insert(Kind {
                    type_id: TypeId::of::<T>(),
                    type_name: type_name::<T>(),
                    rebuild: rebuild::<T>,
                });
            }
        }
        Ok(self)
    }

    /// Provides a resource (a connection pool, a client) that recoverable
    /// services are rebuilt with: the one of its type, which
    /// [`Resources::get`] and `#[recoverable(resource)]` fetch. A second
    /// resource of the same type is a [`WiringError`] (the first stays):
    /// give each its name with [`provide_named`](TransactionLog::provide_named).
    /// Returns `self` for chaining: `log.provide(pool)?.register::<Debit>()?`.
    pub fn provide<T: Send + Sync + 'static>(&self, resource: T) -> Result<&Self, WiringError> {
        self.resources().insert(resource)?;
        Ok(self)
    }

    /// Provides a resource under `name`, for when two resources share a
    /// type (two databases behind `Arc<Mutex<Connection>>`): a field marked
    /// `#[recoverable(resource = "name")]` is rebuilt with it
    /// ([`Resources::get_named`]). A second resource of the same type and
    /// name is a [`WiringError`].
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tcc::{BoxError, Recoverable, TransactionLog, tcc_service};
    /// use tcc::durable::MemoryLog;
    ///
    /// type Db = Arc<Mutex<u32>>; // a connection, for the example
    ///
    /// #[derive(Recoverable)]
    /// struct Reserve {
    ///     #[recoverable(resource = "inventory")]
    ///     db: Db,
    ///     units: u32,
    /// }
    ///
    /// #[tcc_service(name = "reserve")]
    /// impl Reserve {
    ///     #[try_phase]
    ///     async fn hold(&self) -> Result<(), BoxError> { Ok(()) }
    ///     #[confirm]
    ///     async fn take(&self) -> Result<(), BoxError> {
    ///         *self.db.lock().unwrap() += self.units;
    ///         Ok(())
    ///     }
    ///     #[cancel]
    ///     async fn release(&self) -> Result<(), BoxError> { Ok(()) }
    /// }
    ///
    /// # fn main() -> Result<(), tcc::WiringError> {
    /// let (inventory, wallet) = (Db::default(), Db::default());
    /// let log = TransactionLog::new(MemoryLog::new());
    /// log.provide_named("inventory", inventory)?
    ///     .provide_named("wallet", wallet)?
    ///     .register::<Reserve>()?;
    /// // Without names the second would be refused, not a replacement.
    /// assert!(log.provide(Db::default())?.provide(Db::default()).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn provide_named<T: Send + Sync + 'static>(
        &self,
        name: &str,
        resource: T,
    ) -> Result<&Self, WiringError> {
        self.resources().insert_named(name, resource)?;
        Ok(self)
    }

    fn resources(&self) -> std::sync::RwLockWriteGuard<'_, Resources> {
        self.inner
            .resources
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The log as the engine writes it: its store and its kinds.
    pub(crate) fn handle(&self) -> LogHandle {
        LogHandle {
            store: self.inner.store.clone(),
            kinds: self.inner.kinds.clone(),
        }
    }

    /// Finishes every transaction the log holds unfinished that this process
    /// is not running, and returns what it did. Call it at start, before
    /// serving requests, and then periodically
    /// ([`spawn_recovery`](TransactionLog::spawn_recovery)).
    ///
    /// Errors only when the log itself fails; a transaction that cannot be
    /// rebuilt is reported in the summary's
    /// [`left`](RecoverySummary::left), not an error: at start, log it or
    /// fail when it is not empty (`recover().await?` alone drops it).
    ///
    /// Each transaction a pass meets counts in `tcc_recoveries_total`, and
    /// the pass ends by setting `tcc_transactions_needing_repair` from the
    /// log (see [`tcc::metrics`](crate::metrics)).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future half-way (a `select!`, a timeout, an aborted
    /// task) gives back every transaction the pass claimed and had not
    /// finished: the phases it was running are dropped where they stood
    /// (each may run again, as after a crash), and the next pass in this
    /// process claims and finishes them. Transactions parked because they
    /// could not be rebuilt are given back too, and parked again by the
    /// next pass if they still cannot be.
    pub async fn recover(&self) -> Result<RecoverySummary, LogError> {
        let mut summary = RecoverySummary::default();
        let mut running = FuturesUnordered::new();
        let mut seen = HashSet::new();
        let parked: Vec<Parked> = {
            let mut parked = self.inner.parked.lock().unwrap_or_else(|e| e.into_inner());
            parked.drain().map(|(_, p)| p).collect()
        };
        let mut queue: Vec<Parked> = parked;
        loop {
            while let Some(Parked { lease, record }) = queue.pop() {
                seen.insert(record.intent.id);
                match self.rebuild_all(&record) {
                    Ok(services) => running.push(self.finish_one(lease, record, services)),
                    Err(why) => {
                        tracing::warn!(id = %record.intent.id, %why, "transaction left untouched");
                        crate::metrics::recovered("left");
                        summary.left.push((record.intent.id, why));
                        let mut parked =
                            self.inner.parked.lock().unwrap_or_else(|e| e.into_inner());
                        parked.insert(record.intent.id, Parked { lease, record });
                    }
                }
                while running.len() >= IN_FLIGHT {
                    if let Some(outcome) = running.next().await {
                        tally(&mut summary, outcome);
                    }
                }
            }
            // A store whose leases expire: claim only what starts at once,
            // so that no claimed lease ages in the queue, unrenewed, while
            // the others run; and wait for half the slots to be free, so
            // that claims stay batches.
            let limit = match self.inner.store.lease_ttl() {
                Some(_) => {
                    while running.len() > IN_FLIGHT / 2 {
                        if let Some(outcome) = running.next().await {
                            tally(&mut summary, outcome);
                        }
                    }
                    IN_FLIGHT - running.len()
                }
                None => CLAIM_BATCH,
            };
            let claimed_at = tokio::time::Instant::now();
            let claimed = self.inner.store.claim_unfinished(limit).await?;
            if claimed.is_empty() {
                break;
            }
            let mut set_aside = false;
            for (lease, record) in claimed {
                if record.status == Status::Unreadable {
                    // The store moved it to "needs repair" and holds no
                    // lease on it: nothing to give back.
                    let id = record.intent.id;
                    if seen.insert(id) {
                        let reason = record.damage.unwrap_or_default();
                        tracing::error!(%id, %reason, "unreadable record set aside");
                        crate::metrics::recovered("unreadable");
                        summary.unreadable.push((id, reason));
                        set_aside = true;
                    }
                    continue;
                }
                // Guarded at once: from here on, dropping this pass gives
                // every claim it holds back to the log.
                let parked = Parked {
                    lease: LeaseGuard::new(self.inner.store.clone(), lease, claimed_at),
                    record,
                };
                if seen.contains(&parked.record.intent.id) {
                    // Given back during this pass (its end could not be
                    // written): the next pass tries again. Dropping the
                    // guard releases it.
                    continue;
                }
                queue.push(parked);
            }
            // A batch of only unreadable records: the next one may hold
            // good ones.
            if queue.is_empty() && !set_aside {
                break;
            }
        }
        while let Some(outcome) = running.next().await {
            tally(&mut summary, outcome);
        }
        if crate::metrics::recording() {
            crate::durable::publish_needing_repair(&*self.inner.store).await;
        }
        if summary != RecoverySummary::default() {
            tracing::info!(
                finished = summary.finished,
                needs_repair = summary.needs_repair,
                left = summary.left.len(),
                unreadable = summary.unreadable.len(),
                "recovery pass"
            );
        }
        Ok(summary)
    }

    /// Runs [`recover`](TransactionLog::recover) now and then every `every`,
    /// on a task of its own, until the task is aborted. A pass that fails
    /// is logged and retried at the next tick.
    ///
    /// Aborting the task drops the pass running, if any, which gives back
    /// the transactions it claimed (see the cancel safety of
    /// [`recover`](TransactionLog::recover)).
    pub fn spawn_recovery(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(error) = log.recover().await {
                    tracing::error!(%error, "recovery pass failed");
                }
            }
        })
    }

    /// What the log knows of transaction `id`: its record while unfinished
    /// or needing repair, its decision for a while after it finished,
    /// `None` if it is unknown (never begun, or finished long ago).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a read, which changes nothing.
    pub async fn status(&self, id: TransactionId) -> Result<Option<TransactionRecord>, LogError> {
        self.inner.store.get(id).await
    }

    /// Transactions whose phase 2 gave up after its retries, oldest first,
    /// up to `limit`, each with its participants' failures
    /// ([`PhaseProgress::last_error`](crate::durable::PhaseProgress)); first
    /// among them, records the log could not read
    /// ([`Status::Unreadable`], the reason in
    /// [`damage`](TransactionRecord::damage)), which
    /// [`resolve`](TransactionLog::resolve) removes once seen to.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a read, which changes nothing.
    pub async fn needs_repair(&self, limit: usize) -> Result<Vec<TransactionRecord>, LogError> {
        self.inner.store.needs_repair(limit).await
    }

    /// Runs phase 2 of a transaction in "needs repair" again (once its cause
    /// is fixed), with a fresh retry budget, and reports it as
    /// `orchestrate` does; it goes back to "needs repair" if it fails again.
    ///
    /// Its phases count in the metrics, the transaction itself in neither
    /// `tcc_transactions_total` nor `tcc_recoveries_total`; then
    /// `tcc_transactions_needing_repair` is set from the log (see
    /// [`tcc::metrics`](crate::metrics)).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future gives the transaction back and drops its phases
    /// where they stood. If the log had taken it back from "needs repair"
    /// (durably: it is decided again), which it may have done even if it had
    /// not answered yet, the next [`recover`](TransactionLog::recover) pass
    /// finishes it (or returns it to "needs repair"); otherwise nothing
    /// changed. [`status`](TransactionLog::status) tells which.
    pub async fn redrive(&self, id: TransactionId) -> Result<Report, Error> {
        let log_failed = |error: LogError| {
            let detail = format!("transaction {id} could not be re-driven: {error}");
            Error::refused(ErrorKind::LogFailed, None, detail)
        };
        let reopened_at = tokio::time::Instant::now();
        let Some((lease, mut record)) = self.inner.store.reopen(id).await.map_err(log_failed)?
        else {
            let detail = format!("transaction {id} does not need repair");
            return Err(Error::refused(ErrorKind::NotInRepair, None, detail));
        };
        // Given back if this call ends, or is dropped, before the
        // transaction does: it is decided again, so recovery finishes it.
        let lease = LeaseGuard::new(self.inner.store.clone(), lease, reopened_at);
        let services = match self.rebuild_all(&record) {
            Ok(services) => services,
            Err(why) => {
                drop(lease);
                let detail = format!("transaction {id} could not be re-driven: {why}");
                return Err(Error::refused(ErrorKind::NotRecoverable, None, detail));
            }
        };
        // A fresh retry budget: the attempts counted so far stay in the
        // record for the operator, not in the new loop.
        for progress in &mut record.progress {
            for phase in progress.iter_mut().skip(1) {
                phase.attempts = 0;
            }
        }
        let result = self.run(Origin::Redriven, lease, &record, &services).await;
        if crate::metrics::recording() {
            crate::durable::publish_needing_repair(&*self.inner.store).await;
        }
        result
    }

    /// Marks a transaction in "needs repair" for the next recovery pass,
    /// once its cause is fixed: it is decided again, held by no one, with a
    /// fresh retry budget, and the next [`recover`](TransactionLog::recover)
    /// pass of any coordinator of the log (this one's
    /// [`spawn_recovery`](TransactionLog::spawn_recovery), another's, or the
    /// next process's at its start) runs its phase 2 with the services
    /// registered there; it goes back to "needs repair" if that fails again.
    /// False when it was not in "needs repair" (or its record cannot be
    /// read: see [`resolve`](TransactionLog::resolve)).
    ///
    /// For an operator's tool, which runs no participant's code: to run
    /// phase 2 now, in this process, call
    /// [`redrive`](TransactionLog::redrive).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may or may not leave the transaction requeued
    /// (the request may have reached the log already); nothing is left
    /// half-done. [`status`](TransactionLog::status) tells which.
    pub async fn requeue(&self, id: TransactionId) -> Result<bool, LogError> {
        self.inner.store.requeue(id).await
    }

    /// Marks a transaction in "needs repair" as resolved by hand: it is
    /// finished, recovery leaves it alone, and its outcome keeps
    /// `resolution` (who saw to it, and how) for as long as the log keeps
    /// outcomes. False when it was not in "needs repair". A record the log
    /// could not read ([`Status::Unreadable`]) is removed, keeping nothing.
    ///
    /// Once it is resolved, `tcc_transactions_needing_repair` is set from
    /// the log (see [`tcc::metrics`](crate::metrics)).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may or may not leave the transaction resolved
    /// (the request may have reached the log already); nothing is left
    /// half-done. [`status`](TransactionLog::status) tells which.
    pub async fn resolve(
        &self,
        id: TransactionId,
        resolution: Resolution,
    ) -> Result<bool, LogError> {
        let resolved = self.inner.store.resolve(id, &resolution).await?;
        if resolved && crate::metrics::recording() {
            crate::durable::publish_needing_repair(&*self.inner.store).await;
        }
        Ok(resolved)
    }

    /// The transactions `filter` asks for: those needing repair first, then
    /// the unfinished, each the oldest first, then the finished, the most
    /// recently finished first (see [`Log::list`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a read, which changes nothing.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<TransactionRecord>, LogError> {
        self.inner.store.list(filter).await
    }

    /// What the log holds, counted by status, with its oldest unfinished
    /// transactions and its size (see [`Log::summary`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a read, which changes nothing.
    pub async fn summary(&self) -> Result<LogSummary, LogError> {
        self.inner.store.summary().await
    }

    /// How many transactions are unfinished (needing repair included).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a read, which changes nothing.
    pub async fn unfinished_count(&self) -> Result<u64, LogError> {
        self.inner.store.unfinished_count().await
    }

    /// Every participant of `record`, rebuilt; or why one cannot be.
    fn rebuild_all(&self, record: &TransactionRecord) -> Result<Vec<Service>, String> {
        let kinds = self.inner.kinds.read();
        let resources = self
            .inner
            .resources
            .read()
            .unwrap_or_else(|e| e.into_inner());
        record
            .intent
            .participants
            .iter()
            .map(|participant| {
                let Some(Kind { rebuild, .. }) = kinds.get(&participant.kind) else {
                    return Err(format!(
                        "service kind `{}` (of `{}`) is not registered",
                        participant.kind, participant.name
                    ));
                };
                rebuild(&participant.data, &resources).map_err(|error| {
                    format!(
                        "service `{}` (kind `{}`) could not be rebuilt: {}",
                        participant.name,
                        participant.kind,
                        Chain(&*error)
                    )
                })
            })
            .collect()
    }

    async fn finish_one(
        &self,
        lease: LeaseGuard,
        record: TransactionRecord,
        services: Vec<Service>,
    ) -> Result<Report, Error> {
        self.run(Origin::Recovered, lease, &record, &services).await
    }

    async fn run(
        &self,
        origin: Origin,
        lease: LeaseGuard,
        record: &TransactionRecord,
        services: &[Service],
    ) -> Result<Report, Error> {
        let mut members: Vec<_> = services
            .iter()
            .map(|service| Member::new(ServiceAttempts::new(service)))
            .collect();
        let options = self.options().clone();
        engine::resume(origin, &options, lease, record, &mut members[..]).await
    }
}

fn tally(summary: &mut RecoverySummary, outcome: Result<Report, Error>) {
    match outcome {
        Ok(_) => summary.finished += 1,
        Err(error) if error.needs_repair() => summary.needs_repair += 1,
        // Its end could not be written: the lease went back, and a later
        // pass finishes it.
        Err(error) => tracing::warn!(%error, "a recovered transaction was interrupted"),
    }
}

impl fmt::Debug for TransactionLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds = self.inner.kinds.read().len();
        f.debug_struct("TransactionLog")
            .field("kinds", &kinds)
            .finish_non_exhaustive()
    }
}
