//! Running a transaction: [`Orchestrator`].

use std::sync::Arc;
use std::time::Duration;

use crate::engine::{self, Member, Options};
use crate::error::Error;
use crate::id::TransactionId;
use crate::name::Name;
use crate::report::{Entries, Report};
use crate::retry::RetryPolicy;
use crate::service::{Service, ServiceAttempts};
use crate::transaction_log::TransactionLog;

/// Runs a TCC transaction over a set of services.
///
/// [`orchestrate`](Orchestrator::orchestrate) starts every Try at once. If
/// all succeed, every Confirm runs at once, each with its own retry loop; if
/// any fails, every service whose Try started is cancelled at once, each with
/// its own retry loop. Phases never wait on one another's locks or sleeps.
///
/// Settings given here win over the same setting given to a service; a
/// service's own setting applies where the orchestrator sets none.
///
/// Build it once and share it (in application state, say): any number of
/// transactions can run on one orchestrator and its services at once, each
/// with its own [`Report`].
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use tcc::{ErrorKind, Orchestrator, Phase, Service};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let rooms = Arc::new(AtomicU32::new(0)); // no room left
/// let ok = || async { Ok::<(), String>(()) };
/// let flight = Service::new("flight", ok, ok, ok);
/// let hotel = Service::new(
///     "hotel",
///     move || {
///         let rooms = rooms.clone();
///         async move {
///             rooms
///                 .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
///                 .map(drop)
///                 .map_err(|_| "no room".to_string())
///         }
///     },
///     ok,
///     ok,
/// );
///
/// let error = Orchestrator::new([flight.clone(), hotel.clone()])
///     .max_retries(3)
///     .orchestrate()
///     .await
///     .unwrap_err();
/// assert_eq!(error.kind(), ErrorKind::TryFailed);
/// assert_eq!((error.phase(), error.service_name()), (Phase::Try, "hotel"));
/// assert_eq!(
///     error.to_string(),
///     "try failed in `hotel`: no room; all 2 started services were cancelled"
/// );
/// assert!(flight.cancel_succeeded() && hotel.cancel_succeeded());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Orchestrator {
    /// Shared with each running transaction, so starting one copies nothing
    /// per service.
    services: Arc<[Service]>,
    /// The first name that an earlier service has too, found once in `new`.
    duplicate: Option<Name>,
    options: Options,
}

impl Orchestrator {
    /// An orchestrator over `services`, with default settings.
    pub fn new(services: impl IntoIterator<Item = Service>) -> Self {
        let services: Arc<[Service]> = services.into_iter().collect();
        let duplicate =
            engine::first_duplicate(services.iter().map(Service::name)).map(crate::name::name);
        Orchestrator {
            services,
            duplicate,
            options: Options::DEFAULT,
        }
    }

    /// The services, in the order given.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// At most `n` retries of each Confirm and Cancel (`n + 1` attempts);
    /// `0` means a single attempt. Wins over every service's own limit.
    #[must_use]
    pub fn max_retries(mut self, n: u32) -> Self {
        self.options.settings.max_retries = Some(n);
        self
    }

    /// The backoff policy of every Confirm and Cancel, its retry limit
    /// included. Wins over every service's own policy and limit; a later
    /// [`max_retries`](Orchestrator::max_retries) changes the limit alone.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.options.settings.set_retry(policy);
        self
    }

    /// How long each Try may run: one still running then is dropped and
    /// counts as failed. No limit by default.
    ///
    /// Time limits count from the end of an attempt's first poll, which
    /// runs at once: an attempt that ends on that poll never sets a timer.
    #[must_use]
    pub fn try_timeout(mut self, timeout: Duration) -> Self {
        self.options.settings.try_timeout = Some(timeout);
        self
    }

    /// How long each Confirm or Cancel attempt may run: one still running
    /// then is dropped, counts as failed and is retried under the retry
    /// policy. 30 seconds ([`DEFAULT_ATTEMPT_TIMEOUT`](crate::DEFAULT_ATTEMPT_TIMEOUT))
    /// unless set here or on the service; `None` sets no limit.
    ///
    /// Under tokio's paused clock (`start_paused` tests), a runtime that has
    /// nothing to do but wait on real I/O jumps to its next timer: a phase
    /// waiting on a real database then times out at once. Such tests run on
    /// the real clock, or set `attempt_timeout(None)`.
    #[must_use]
    pub fn attempt_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.options.settings.attempt_timeout = Some(timeout.into());
        self
    }

    /// Makes every transaction durable in `log`: its intent (each service
    /// and its data) is synced before the first Try, its decision before
    /// the first Confirm or Cancel, so that after a crash at any instant
    /// [`TransactionLog::recover`] finishes it. Every service must be built
    /// with [`Service::recoverable`] from a type whose kind is registered on
    /// `log` ([`TransactionLog::register`]); a transaction with one that is
    /// not is refused before any phase runs
    /// ([`ErrorKind::NotRecoverable`](crate::ErrorKind::NotRecoverable)).
    #[must_use]
    pub fn log(mut self, log: &TransactionLog) -> Self {
        self.options.log = Some(log.handle());
        self
    }

    /// With `true`, the first failed Try ends the Try phase at once: Tries
    /// still running are dropped (and, having started, cancelled), Tries not
    /// yet started never start. With `false`, the default, every Try settles
    /// before the decision, so each reports how it ended.
    #[must_use]
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.options.fail_fast = fail_fast;
        self
    }

    /// Runs a new transaction over the services to its end and reports it.
    ///
    /// The transaction runs inside this future while it is polled, with no
    /// task of its own. If the future is dropped before the end (say, in a
    /// web handler whose client went away), the transaction moves to a new
    /// tokio task and still runs to its end, so no reservation is left
    /// behind. The runtime must have its timer enabled (`#[tokio::main]` and
    /// `Builder::enable_all` do) for timeouts and retry delays.
    ///
    /// Refused before any phase runs, with an [`Error`] whose
    /// [`kind`](Error::kind) says why: no services, two services with the
    /// same name, an invalid retry policy, or no tokio runtime.
    pub async fn orchestrate(&self) -> Result<Report, Error> {
        self.orchestrate_as(TransactionId::generate()).await
    }

    /// Runs a transaction, as [`orchestrate`](Orchestrator::orchestrate)
    /// does, under an id the caller chose, so that it knows the id before
    /// the transaction ends (and, with a log, can look the transaction up
    /// by it after a crash). With a log, an id already used is refused
    /// ([`ErrorKind::DuplicateId`](crate::ErrorKind::DuplicateId)) before any
    /// phase runs.
    pub async fn orchestrate_as(&self, id: TransactionId) -> Result<Report, Error> {
        let runtime = engine::runtime()?;
        if let Some(twice) = &self.duplicate {
            return Err(engine::duplicate(twice));
        }
        let (services, options) = (self.services.clone(), self.options.clone());
        let transaction = async move {
            let mut members: Vec<_> = services
                .iter()
                .map(|service| Member::new(ServiceAttempts::new(service)))
                .collect();
            let entries = Entries::services(services.clone());
            engine::run(id, &options, entries, &mut members[..]).await
        };
        engine::drive(id, runtime, Box::pin(transaction)).await
    }
}
