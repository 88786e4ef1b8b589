//! Durable transactions: [`TransactionLog`], the log a transaction is written
//! to, the kinds of service it can rebuild, recovery and repair.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::durable::{Lease, Log, LogError, TransactionRecord};
use crate::engine::{self, Member, Options};
use crate::error::{BoxError, Error, ErrorKind};
use crate::id::TransactionId;
use crate::recoverable::{Recoverable, Resources};
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
/// # async fn main() {
/// let bank = Bank::default();
/// // At start: the log (a file with `TransactionLog::open`), the kinds it
/// // can rebuild and their resources, then whatever a crash left.
/// let log = TransactionLog::new(MemoryLog::new());
/// log.provide(bank.clone()).register::<Debit>();
/// log.recover().await.unwrap();
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
/// # }
/// ```
#[derive(Clone)]
pub struct TransactionLog {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Log>,
    kinds: RwLock<HashMap<String, Rebuild>>,
    resources: RwLock<Resources>,
    /// How recovered transactions run their phases.
    options: Mutex<Options>,
    /// Transactions recovery claimed but could not rebuild (a kind not
    /// registered, a resource missing): held, untouched, until a later pass
    /// can.
    parked: Mutex<HashMap<TransactionId, Parked>>,
}

struct Parked {
    lease: Lease,
    record: TransactionRecord,
}

/// Rebuilds one participant from its data.
type Rebuild = fn(&[u8], &Resources) -> Result<Service, BoxError>;

fn rebuild<T: Recoverable>(data: &[u8], resources: &Resources) -> Result<Service, BoxError> {
    T::rebuild(data, resources).map(Service::recoverable)
}

/// What one recovery pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
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
                kinds: RwLock::default(),
                resources: RwLock::default(),
                options: Mutex::new(Options::DEFAULT),
                parked: Mutex::default(),
            }),
        }
    }

    /// The embedded log in the file at `path` (created if missing): see
    /// [`RedbLog`](crate::durable::RedbLog). A second process opening the
    /// same file gets an error, never a shared file.
    #[cfg(feature = "redb")]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, LogError> {
        crate::durable::RedbLog::open(path).map(TransactionLog::new)
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
    /// A transaction recovery meets with an unregistered kind is left
    /// untouched and reported, and finished by a later pass once the kind
    /// is registered.
    pub fn register<T: Recoverable>(&self) -> &Self {
        let mut kinds = self.inner.kinds.write().unwrap_or_else(|e| e.into_inner());
        kinds.insert(T::KIND.to_owned(), rebuild::<T>);
        self
    }

    /// Provides a resource (a connection pool, a client) that recoverable
    /// services are rebuilt with; one value per type.
    pub fn provide<T: Send + Sync + 'static>(&self, resource: T) -> &Self {
        let mut resources = self
            .inner
            .resources
            .write()
            .unwrap_or_else(|e| e.into_inner());
        resources.insert(resource);
        self
    }

    /// Finishes every transaction the log holds unfinished that this process
    /// is not running, and returns what it did. Call it at start, before
    /// serving requests, and then periodically
    /// ([`spawn_recovery`](TransactionLog::spawn_recovery)).
    ///
    /// Errors only when the log itself fails; a transaction that cannot be
    /// rebuilt is reported in the summary, not an error.
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
            let claimed = self.inner.store.claim_unfinished(CLAIM_BATCH).await?;
            if claimed.is_empty() {
                break;
            }
            for (lease, record) in claimed {
                if seen.contains(&record.intent.id) {
                    // Given back during this pass (its end could not be
                    // written): the next pass tries again.
                    self.inner.store.release(&lease);
                    continue;
                }
                queue.push(Parked { lease, record });
            }
            if queue.is_empty() {
                break;
            }
        }
        while let Some(outcome) = running.next().await {
            tally(&mut summary, outcome);
        }
        if summary != RecoverySummary::default() {
            tracing::info!(
                finished = summary.finished,
                needs_repair = summary.needs_repair,
                left = summary.left.len(),
                "recovery pass"
            );
        }
        Ok(summary)
    }

    /// Runs [`recover`](TransactionLog::recover) now and then every `every`,
    /// on a task of its own, until the task is aborted. A pass that fails
    /// is logged and retried at the next tick.
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
    pub async fn status(&self, id: TransactionId) -> Result<Option<TransactionRecord>, LogError> {
        self.inner.store.get(id).await
    }

    /// Transactions whose phase 2 gave up after its retries, oldest first,
    /// up to `limit`, each with its participants' failures
    /// ([`PhaseProgress::last_error`](crate::durable::PhaseProgress)).
    pub async fn needs_repair(&self, limit: usize) -> Result<Vec<TransactionRecord>, LogError> {
        self.inner.store.needs_repair(limit).await
    }

    /// Runs phase 2 of a transaction in "needs repair" again (once its cause
    /// is fixed), with a fresh retry budget, and reports it as
    /// `orchestrate` does; it goes back to "needs repair" if it fails again.
    pub async fn redrive(&self, id: TransactionId) -> Result<Report, Error> {
        let log_failed = |error: LogError| {
            let detail = format!("transaction {id} could not be re-driven: {error}");
            Error::refused(ErrorKind::LogFailed, None, detail)
        };
        let Some((lease, mut record)) = self.inner.store.reopen(id).await.map_err(log_failed)?
        else {
            let detail = format!("transaction {id} does not need repair");
            return Err(Error::refused(ErrorKind::NotInRepair, None, detail));
        };
        let services = match self.rebuild_all(&record) {
            Ok(services) => services,
            Err(why) => {
                self.inner.store.release(&lease);
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
        self.run(lease, &record, &services).await
    }

    /// Marks a transaction in "needs repair" as resolved by hand: it is
    /// finished, and recovery leaves it alone. False when it was not in
    /// "needs repair".
    pub async fn resolve(&self, id: TransactionId) -> Result<bool, LogError> {
        self.inner.store.resolve(id).await
    }

    /// How many transactions are unfinished (needing repair included).
    pub async fn unfinished_count(&self) -> Result<u64, LogError> {
        self.inner.store.unfinished_count().await
    }

    /// Every participant of `record`, rebuilt; or why one cannot be.
    fn rebuild_all(&self, record: &TransactionRecord) -> Result<Vec<Service>, String> {
        let kinds = self.inner.kinds.read().unwrap_or_else(|e| e.into_inner());
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
                let Some(rebuild) = kinds.get(&participant.kind) else {
                    return Err(format!(
                        "service kind `{}` (of `{}`) is not registered",
                        participant.kind, participant.name
                    ));
                };
                rebuild(&participant.data, &resources).map_err(|error| {
                    format!(
                        "service `{}` (kind `{}`) could not be rebuilt: {error}",
                        participant.name, participant.kind
                    )
                })
            })
            .collect()
    }

    async fn finish_one(
        &self,
        lease: Lease,
        record: TransactionRecord,
        services: Vec<Service>,
    ) -> Result<Report, Error> {
        self.run(lease, &record, &services).await
    }

    async fn run(
        &self,
        lease: Lease,
        record: &TransactionRecord,
        services: &[Service],
    ) -> Result<Report, Error> {
        let mut members: Vec<_> = services
            .iter()
            .map(|service| Member::new(ServiceAttempts::new(service)))
            .collect();
        let options = self.options().clone();
        engine::resume(&options, &self.inner.store, lease, record, &mut members[..]).await
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
        let kinds = self.inner.kinds.read().map(|k| k.len()).unwrap_or(0);
        f.debug_struct("TransactionLog")
            .field("kinds", &kinds)
            .finish_non_exhaustive()
    }
}
