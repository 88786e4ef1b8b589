//! The type-erased [`Service`] handle that an
//! [`Orchestrator`](crate::Orchestrator) runs.

use std::fmt;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures_util::TryFutureExt;
use futures_util::future::BoxFuture;

use crate::attempt::{Attempts, PhaseRun, Round};
use crate::context::Context;
use crate::error::{BoxError, Failure};
use crate::id::TransactionId;
use crate::name::Name;
use crate::phase::Phase;
use crate::recoverable::{LogEntry, Recoverable};
use crate::report::Entries;
use crate::retry::RetryPolicy;
use crate::settings::Settings;
use crate::tcc_service::TccService;

/// The three phases behind one `dyn`: the only place a service's futures are
/// boxed. The future may borrow the phases, which the running orchestration
/// keeps alive through its clone of the [`Service`].
pub(crate) trait Phases: Send + Sync + 'static {
    fn run(&self, phase: Phase) -> BoxFuture<'_, Result<(), BoxError>>;

    /// The kind and data of a [`Recoverable`] service, for the log; `None`
    /// for a service that cannot be rebuilt after a crash.
    fn log_entry(&self) -> Option<LogEntry> {
        None
    }
}

struct FnPhases<T, C, X> {
    try_fn: T,
    confirm_fn: C,
    cancel_fn: X,
}

impl<T, C, X, TF, CF, XF, TE, CE, XE> Phases for FnPhases<T, C, X>
where
    T: Fn() -> TF + Send + Sync + 'static,
    C: Fn() -> CF + Send + Sync + 'static,
    X: Fn() -> XF + Send + Sync + 'static,
    TF: Future<Output = Result<(), TE>> + Send + 'static,
    CF: Future<Output = Result<(), CE>> + Send + 'static,
    XF: Future<Output = Result<(), XE>> + Send + 'static,
    TE: Into<BoxError> + 'static,
    CE: Into<BoxError> + 'static,
    XE: Into<BoxError> + 'static,
{
    fn run(&self, phase: Phase) -> BoxFuture<'_, Result<(), BoxError>> {
        match phase {
            Phase::Try => Box::pin(with_boxed_error((self.try_fn)())),
            Phase::Confirm => Box::pin(with_boxed_error((self.confirm_fn)())),
            Phase::Cancel => Box::pin(with_boxed_error((self.cancel_fn)())),
        }
    }
}

struct TypedPhases<S>(S);

impl<S: TccService> Phases for TypedPhases<S> {
    fn run(&self, phase: Phase) -> BoxFuture<'_, Result<(), BoxError>> {
        match phase {
            Phase::Try => Box::pin(self.0.try_phase()),
            Phase::Confirm => Box::pin(self.0.confirm()),
            Phase::Cancel => Box::pin(self.0.cancel()),
        }
    }
}

/// A [`Recoverable`] service's phases: its [`TypedPhases`], and its
/// data for the log.
struct RecoverablePhases<S>(TypedPhases<S>);

impl<S: Recoverable> Phases for RecoverablePhases<S> {
    fn run(&self, phase: Phase) -> BoxFuture<'_, Result<(), BoxError>> {
        self.0.run(phase)
    }

    fn log_entry(&self) -> Option<LogEntry> {
        Some((S::KIND, self.0.0.save()))
    }
}

/// Converts a phase's own error type into [`BoxError`], only on failure: a
/// plain combinator, lighter to build and poll than an `async` wrapper.
pub(crate) fn with_boxed_error<F, E>(future: F) -> impl Future<Output = Result<(), BoxError>>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    TryFutureExt::map_err(future, Into::into)
}

// Bits of `Shared::status`. Each getter reads its own bit.
const TRIED: u8 = 1 << 0;
const TRY_SUCCEEDED: u8 = 1 << 1;
const CONFIRMED: u8 = 1 << 2;
const CONFIRM_SUCCEEDED: u8 = 1 << 3;
const CANCELED: u8 = 1 << 4;
const CANCEL_SUCCEEDED: u8 = 1 << 5;

pub(crate) struct Shared<P: ?Sized> {
    pub(crate) name: Name,
    /// The status of the phases of the most recent transaction that ended
    /// one of them: always one transaction's whole status, stored at once.
    status: AtomicU8,
    pub(crate) phases: P,
}

/// A participant of a TCC transaction: a name, three phases and the status of
/// the latest orchestration it took part in.
///
/// `Service` is a cheap handle: clones share the phases and the status flags,
/// so keep a clone to read the flags after an orchestration. A service (and
/// an [`Orchestrator`](crate::Orchestrator) holding it) can take part in any
/// number of transactions at once.
///
/// The six status getters ([`tried`](Service::tried),
/// [`confirm_succeeded`](Service::confirm_succeeded) ...) read the status of
/// the most recent transaction that ended one of this service's phases,
/// updated as each phase ends. Each update stores that transaction's whole
/// status for this service at once, so the flags never mix two
/// transactions. With concurrent transactions they are a convenience: the
/// [`Report`](crate::Report) (or the [`Error`](crate::Error)'s report) of a
/// transaction is the truth about it. Settings set with
/// the builder methods ([`max_retries`](Service::max_retries),
/// [`retry`](Service::retry), [`try_timeout`](Service::try_timeout)) belong
/// to the handle they were set on.
///
/// Build one from three closures with [`Service::new`], or from any
/// [`TccService`] (such as a [`#[tcc_service]`](crate::tcc_service) type)
/// with `Service::from`.
///
/// ```
/// use tcc::{Orchestrator, Service};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let flight = Service::new(
///     "flight",
///     || async { Ok::<(), std::io::Error>(()) },
///     || async { Ok::<(), std::io::Error>(()) },
///     || async { Ok::<(), std::io::Error>(()) },
/// );
/// Orchestrator::new([flight.clone()]).orchestrate().await.unwrap();
/// assert!(flight.try_succeeded() && flight.confirm_succeeded());
/// assert!(!flight.canceled());
/// # }
/// ```
#[derive(Clone)]
pub struct Service {
    pub(crate) shared: Arc<Shared<dyn Phases>>,
    /// Boxed, and absent when all are defaults, to keep the handle small.
    settings: Option<Box<Settings>>,
}

impl Service {
    /// Builds a service from its name (a `&str`, `String`, `Arc<str>` ...) and
    /// its Try, Confirm and Cancel functions. Each function is called once per attempt and returns a
    /// future yielding `Result<(), E>`, where `E` is any error type that
    /// converts into [`BoxError`] (every `std::error::Error + Send + Sync`,
    /// `String`, `&str`, [`Permanent`](crate::Permanent) ...).
    ///
    /// The futures must be `'static`, as with `tokio::spawn`: move an owned
    /// handle (an `Arc`, a connection pool) into each closure and clone it
    /// into the future.
    pub fn new<T, C, X, TF, CF, XF, TE, CE, XE>(
        name: impl AsRef<str>,
        try_fn: T,
        confirm_fn: C,
        cancel_fn: X,
    ) -> Self
    where
        T: Fn() -> TF + Send + Sync + 'static,
        C: Fn() -> CF + Send + Sync + 'static,
        X: Fn() -> XF + Send + Sync + 'static,
        TF: Future<Output = Result<(), TE>> + Send + 'static,
        CF: Future<Output = Result<(), CE>> + Send + 'static,
        XF: Future<Output = Result<(), XE>> + Send + 'static,
        TE: Into<BoxError> + 'static,
        CE: Into<BoxError> + 'static,
        XE: Into<BoxError> + 'static,
    {
        let phases = FnPhases {
            try_fn,
            confirm_fn,
            cancel_fn,
        };
        Self::from_phases(crate::name::name(name.as_ref()), phases, Settings::DEFAULT)
    }

    /// A service that can join a durable transaction: its data is saved in
    /// the transaction log before its Try runs, so that after a crash it is
    /// rebuilt (from the kind registered with
    /// [`TransactionLog::register`](crate::TransactionLog::register)) and
    /// its transaction finished. `Service::from` makes a service that
    /// cannot be rebuilt, and is refused by a durable transaction.
    pub fn recoverable<S: Recoverable>(service: S) -> Self {
        let name = crate::name::name(service.service_name());
        let settings = Settings {
            max_retries: service.max_retries(),
            ..Settings::DEFAULT
        };
        Service::from_phases(name, RecoverablePhases(TypedPhases(service)), settings)
    }

    /// The kind and data of a recoverable service, for the log.
    pub(crate) fn log_entry(&self) -> Option<LogEntry> {
        self.shared.phases.log_entry()
    }

    pub(crate) fn from_phases(name: Name, phases: impl Phases, settings: Settings) -> Self {
        Service {
            shared: Arc::new(Shared {
                name,
                status: AtomicU8::new(0),
                phases,
            }),
            settings: (settings != Settings::DEFAULT).then(|| Box::new(settings)),
        }
    }

    /// The settings given to this handle.
    pub(crate) fn settings(&self) -> &Settings {
        self.settings.as_deref().unwrap_or(&Settings::DEFAULT)
    }

    fn settings_mut(&mut self) -> &mut Settings {
        self.settings
            .get_or_insert_with(|| Box::new(Settings::DEFAULT))
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Sets this service's retry limit for Confirm and Cancel: at most `n + 1`
    /// attempts. The orchestrator's own limit, when set, wins.
    #[must_use]
    pub fn max_retries(mut self, n: u32) -> Self {
        self.settings_mut().max_retries = Some(n);
        self
    }

    /// Sets this service's backoff policy, including its retry limit. The
    /// orchestrator's own policy, when set, wins.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.settings_mut().set_retry(policy);
        self
    }

    /// Sets how long this service's Try may run before it counts as failed.
    /// The orchestrator's own timeout, when set, wins.
    #[must_use]
    pub fn try_timeout(mut self, timeout: Duration) -> Self {
        self.settings_mut().try_timeout = Some(timeout);
        self
    }

    /// Sets how long each of this service's Confirm and Cancel attempts may
    /// run before it is dropped, counted as failed and retried; 30 seconds
    /// ([`DEFAULT_ATTEMPT_TIMEOUT`](crate::DEFAULT_ATTEMPT_TIMEOUT)) unless
    /// set; `None` sets no limit. The orchestrator's own limit, when set,
    /// wins.
    #[must_use]
    pub fn attempt_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.settings_mut().attempt_timeout = Some(timeout.into());
        self
    }

    /// Whether Try was started in the latest orchestration.
    pub fn tried(&self) -> bool {
        self.flag(TRIED)
    }
    /// Whether Try succeeded in the latest orchestration.
    pub fn try_succeeded(&self) -> bool {
        self.flag(TRY_SUCCEEDED)
    }
    /// Whether Confirm was attempted in the latest orchestration.
    pub fn confirmed(&self) -> bool {
        self.flag(CONFIRMED)
    }
    /// Whether Confirm succeeded (possibly after retries) in the latest
    /// orchestration.
    pub fn confirm_succeeded(&self) -> bool {
        self.flag(CONFIRM_SUCCEEDED)
    }
    /// Whether Cancel was attempted in the latest orchestration.
    pub fn canceled(&self) -> bool {
        self.flag(CANCELED)
    }
    /// Whether Cancel succeeded (possibly after retries) in the latest
    /// orchestration.
    pub fn cancel_succeeded(&self) -> bool {
        self.flag(CANCEL_SUCCEEDED)
    }

    /// Runs Try once, outside any orchestration, with a fresh transaction id
    /// in its [`Context`](crate::Context). A panic is caught and returned as
    /// the failure's cause. Like a transaction of its own, it sets the
    /// status flags to its own: [`tried`](Service::tried) and
    /// [`try_succeeded`](Service::try_succeeded).
    pub async fn try_phase(&self) -> Result<(), Failure> {
        self.run_directly(Phase::Try).await
    }
    /// Runs Confirm once, without retries, as [`try_phase`](Service::try_phase) does.
    pub async fn confirm(&self) -> Result<(), Failure> {
        self.run_directly(Phase::Confirm).await
    }
    /// Runs Cancel once, without retries, as [`try_phase`](Service::try_phase) does.
    pub async fn cancel(&self) -> Result<(), Failure> {
        self.run_directly(Phase::Cancel).await
    }

    async fn run_directly(&self, phase: Phase) -> Result<(), Failure> {
        let id = TransactionId::generate();
        let mut context = Some(Context::new(id, Entries::listed([self.name()])));
        let mut run = PhaseRun::new(ServiceAttempts::new(self));
        let round = Round {
            transaction_id: id,
            phase,
            settings: None,
            recording: false,
        };
        let outcome =
            poll_fn(|cx| Context::enter(&mut context, || run.poll_run(&round, 0, cx))).await;
        outcome
            .result
            .map_err(|cause| Failure::new(self.shared.name.clone(), phase, 1, cause))
    }

    fn flag(&self, bit: u8) -> bool {
        self.shared.status.load(Ordering::Acquire) & bit != 0
    }

    /// Notes in `status`, one transaction's status for this service, how an
    /// attempt at `phase` ended, and publishes it.
    pub(crate) fn publish(&self, status: &mut u8, phase: Phase, succeeded: bool) {
        let (started, success) = match phase {
            Phase::Try => (TRIED, TRY_SUCCEEDED),
            Phase::Confirm => (CONFIRMED, CONFIRM_SUCCEEDED),
            Phase::Cancel => (CANCELED, CANCEL_SUCCEEDED),
        };
        *status = (*status & !success) | started | if succeeded { success } else { 0 };
        // One store of this transaction's whole status: whatever other
        // transactions do meanwhile, the flags read one transaction's truth.
        self.shared.status.store(*status, Ordering::Release);
    }
}

/// The attempts of a [`Service`] in one transaction: each one's future boxed
/// by the service. The run that makes them keeps the service's status in
/// this transaction, which [`Attempts::ended`] publishes whole as each
/// attempt ends.
pub struct ServiceAttempts<'a> {
    service: &'a Service,
    future: Option<BoxFuture<'a, Result<(), BoxError>>>,
}

impl<'a> ServiceAttempts<'a> {
    pub(crate) fn new(service: &'a Service) -> Self {
        ServiceAttempts {
            service,
            future: None,
        }
    }
}

impl Attempts for ServiceAttempts<'_> {
    fn name(&self) -> &str {
        self.service.name()
    }

    fn settings(&self) -> Settings {
        *self.service.settings()
    }

    fn retry_policy(&self) -> Option<RetryPolicy> {
        self.service.settings().retry
    }

    fn log_entry(&self) -> Option<LogEntry> {
        self.service.log_entry()
    }

    fn poll_attempt(
        &mut self,
        phase: Phase,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<(), BoxError>> {
        let service = self.service;
        self.future
            .get_or_insert_with(|| service.shared.phases.run(phase))
            .as_mut()
            .poll(cx)
    }

    fn end_attempt(&mut self) {
        self.future = None;
    }

    fn ended(&self, status: &mut u8, phase: Phase, succeeded: bool) {
        self.service.publish(status, phase, succeeded);
    }
}

impl<S: TccService> From<S> for Service {
    fn from(service: S) -> Self {
        let name = crate::name::name(service.service_name());
        let settings = Settings {
            max_retries: service.max_retries(),
            ..Settings::DEFAULT
        };
        Service::from_phases(name, TypedPhases(service), settings)
    }
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name())
            .field("tried", &self.tried())
            .field("try_succeeded", &self.try_succeeded())
            .field("confirmed", &self.confirmed())
            .field("confirm_succeeded", &self.confirm_succeeded())
            .field("canceled", &self.canceled())
            .field("cancel_succeeded", &self.cancel_succeeded())
            .field("max_retries", &self.settings().max_retries)
            .field("try_timeout", &self.settings().try_timeout)
            .field("attempt_timeout", &self.settings().attempt_timeout)
            .finish()
    }
}
