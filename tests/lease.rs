//! The engine over a log whose leases expire ([`Log::lease_ttl`]): it calls
//! phases only while the lease is trusted (two thirds of its TTL after the
//! request that took or last extended it was sent), renews it meanwhile,
//! and stops a transaction whose lease is lost before its next phase call.
//!
//! The log is a [`MemoryLog`] whose renewals this test decides: they
//! succeed, hang, or are refused as another coordinator's claim would
//! refuse them. On tokio's paused clock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tcc::durable::{
    Decision, End, Filter, Intent, Lease, Log, LogError, LogErrorKind, LogFuture, LogSummary,
    MemoryLog, PhaseProgress, Resolution, TransactionRecord,
};
use tcc::{
    BoxError, ErrorKind, Phase, Recoverable, Resources, RetryPolicy, TransactionId, TransactionLog,
    tcc, tcc_service,
};
use tokio::time::Instant;

const TTL: Duration = Duration::from_millis(300);

/// What a renewal does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Renewal {
    Succeeds,
    /// Never answers: the database unreachable, a connection that hangs.
    Hangs,
    /// Refused: another coordinator claimed the transaction.
    Fenced,
}

/// A [`MemoryLog`] whose leases last [`TTL`], and whose renewals do what
/// the test says.
struct Expiring {
    inner: MemoryLog,
    renewal: Mutex<Renewal>,
    renewals: AtomicU32,
    /// The `limit` of each claim.
    claims: Mutex<Vec<usize>>,
}

impl Expiring {
    fn new(renewal: Renewal) -> Arc<Self> {
        Arc::new(Expiring {
            inner: MemoryLog::new(),
            renewal: Mutex::new(renewal),
            renewals: AtomicU32::new(0),
            claims: Mutex::default(),
        })
    }
}

impl Log for Expiring {
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
        self.claims.lock().unwrap().push(limit);
        self.inner.claim_unfinished(limit)
    }
    fn release(&self, lease: &Lease) {
        self.inner.release(lease)
    }
    fn renew(&self, lease: &Lease) -> LogFuture<'_, ()> {
        self.renewals.fetch_add(1, Ordering::SeqCst);
        let renewal = *self.renewal.lock().unwrap();
        let lease = lease.clone();
        Box::pin(async move {
            match renewal {
                Renewal::Succeeds => Ok(()),
                Renewal::Hangs => std::future::pending().await,
                Renewal::Fenced => Err(LogError::new(
                    LogErrorKind::Fenced,
                    format!(
                        "transaction {} was claimed by another coordinator",
                        lease.id
                    ),
                )),
            }
        })
    }
    fn lease_ttl(&self) -> Option<Duration> {
        Some(TTL)
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

/// When each Confirm attempt started.
#[derive(Default)]
struct Attempts(Mutex<Vec<Instant>>);

/// A service whose Confirm fails until told otherwise, retried every
/// 20 ms.
struct Stubborn {
    attempts: Arc<Attempts>,
}

#[tcc_service(name = "stubborn")]
impl Stubborn {
    #[try_phase]
    async fn hold(&self) -> Result<(), BoxError> {
        Ok(())
    }
    #[confirm]
    async fn take(&self) -> Result<(), BoxError> {
        self.attempts.0.lock().unwrap().push(Instant::now());
        Err("not yet".into())
    }
    #[cancel]
    async fn release(&self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl Recoverable for Stubborn {
    const KIND: &'static str = "stubborn";
    fn save(&self) -> Result<Vec<u8>, BoxError> {
        Ok(Vec::new())
    }
    fn rebuild(_: &[u8], resources: &Resources) -> Result<Self, BoxError> {
        Ok(Stubborn {
            attempts: resources.get::<Arc<Attempts>>()?.clone(),
        })
    }
}

/// Runs one transaction of [`Stubborn`], its Confirm retried `retries`
/// times, on a log whose renewals do as `renewal` says; returns the error,
/// when the decision was written, and when each Confirm attempt started.
async fn confirm_under(
    renewal: Renewal,
    retries: u32,
) -> (tcc::Error, Instant, Vec<Instant>, Arc<Expiring>) {
    let store = Expiring::new(renewal);
    let log = TransactionLog::from_store(store.clone());
    let attempts = Arc::new(Attempts::default());
    log.provide(attempts.clone())
        .and_then(|log| log.register::<Stubborn>())
        .expect("one resource and one kind");
    let policy = RetryPolicy::default()
        .with_initial_interval(Duration::from_millis(20))
        .with_multiplier(1.0)
        .with_jitter(0.0)
        .with_max_retries(retries);
    let started = Instant::now();
    let error = tcc! {
        log = &log;
        retry = policy;
        Stubborn { attempts: attempts.clone() },
    }
    .await
    .expect_err("the Confirm never succeeds");
    let attempts = attempts.0.lock().unwrap().clone();
    (error, started, attempts, store)
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_hangs_stops_the_calls_once_the_lease_is_not_trusted() {
    let (error, started, attempts, store) = confirm_under(Renewal::Hangs, 1000).await;
    assert_eq!(error.kind(), ErrorKind::LogFailed, "{error}");
    assert!(error.to_string().contains("lease"), "{error}");
    // Trusted for two thirds of the TTL from the decision (the paused
    // clock stands still in between): Confirms every 20 ms until then,
    // none after.
    let trusted_until = started + TTL * 2 / 3;
    assert!(attempts.len() >= 5, "{} attempts", attempts.len());
    let last = *attempts.last().unwrap();
    assert!(
        last < trusted_until,
        "an attempt started {:?} after the lease stopped being trusted",
        last - trusted_until
    );
    // It stopped once the lease had surely expired, not before, and
    // retried the renewal meanwhile.
    assert!(Instant::now() >= trusted_until + TTL);
    assert!(store.renewals.load(Ordering::SeqCst) >= 2);
    // The decision stands, for the coordinator that takes it over.
    let id = error.report().expect("a report").transaction_id();
    assert_eq!(
        store.inner.get(id).await.unwrap().unwrap().status,
        tcc::durable::Status::Decided(Decision::Confirm)
    );
}

#[tokio::test(start_paused = true)]
async fn a_renewal_refused_stops_the_transaction_before_its_next_call() {
    let (error, started, attempts, store) = confirm_under(Renewal::Fenced, 1000).await;
    assert_eq!(error.kind(), ErrorKind::LogFailed, "{error}");
    assert!(error.to_string().contains("claimed by another"), "{error}");
    // The first renewal, a third of the TTL in, is refused: no attempt
    // starts at or after it.
    let first_renewal = started + TTL / 3;
    assert!(attempts.iter().all(|&at| at < first_renewal));
    assert!(!attempts.is_empty());
    assert_eq!(store.renewals.load(Ordering::SeqCst), 1);
    assert_eq!(error.phase(), Phase::Confirm);
}

#[tokio::test(start_paused = true)]
async fn renewed_leases_keep_the_calls_going() {
    let (error, started, attempts, store) = confirm_under(Renewal::Succeeds, 100).await;
    // Every retry ran, for far longer than one lease, and then the
    // transaction needs repair as usual.
    assert!(error.needs_repair(), "{error}");
    assert_eq!(attempts.len(), 101);
    assert!(Instant::now() - started > TTL * 5);
    assert!(store.renewals.load(Ordering::SeqCst) > 5);
}

/// Recovery claims only what it can start at once from a store whose
/// leases expire: a lease claimed and left in its queue would age,
/// unrenewed, while the others run.
#[tokio::test(start_paused = true)]
async fn recovery_claims_only_what_it_starts_at_once() {
    let store = Expiring::new(Renewal::Succeeds);
    for _ in 0..600 {
        let intent = Intent {
            id: TransactionId::generate(),
            participants: vec![tcc::durable::ParticipantEntry {
                name: "stubborn".into(),
                kind: Stubborn::KIND.into(),
                data: Vec::new(),
            }],
        };
        // Begun by a coordinator that then died: its lease given back.
        let lease = store.inner.begin(&intent).await.unwrap();
        store.inner.release(&lease);
    }
    let log = TransactionLog::from_store(store.clone());
    log.provide(Arc::new(Attempts::default()))
        .and_then(|log| log.register::<Stubborn>())
        .expect("one resource and one kind");
    let summary = log.recover().await.unwrap();
    assert_eq!(summary.finished, 600);
    let claims = store.claims.lock().unwrap().clone();
    assert!(claims.iter().all(|&limit| limit <= 256), "{claims:?}");
    assert!(claims.len() >= 3, "{claims:?}");
}
