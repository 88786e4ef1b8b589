//! Running a transaction: [`Orchestrator`].

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tracing::Instrument;

use crate::context::{Context, TransactionId};
use crate::error::{Error, ErrorKind};
use crate::phase::Phase;
use crate::report::{Entries, Report};
use crate::retry::RetryPolicy;
use crate::run::{Outcome, PhaseRun, ServiceAttempts};
use crate::service::{Name, Service, Settings};
use crate::transaction::{self, Claims, Ledger, first_duplicate, resolve};

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
    settings: Settings,
    fail_fast: bool,
}

impl Orchestrator {
    /// An orchestrator over `services`, with default settings.
    pub fn new(services: impl IntoIterator<Item = Service>) -> Self {
        let services: Arc<[Service]> = services.into_iter().collect();
        let duplicate =
            first_duplicate(services.iter().map(Service::name)).map(crate::service::name);
        Orchestrator {
            services,
            duplicate,
            settings: Settings::DEFAULT,
            fail_fast: false,
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
        self.settings.max_retries = Some(n);
        self
    }

    /// The backoff policy of every Confirm and Cancel, its retry limit
    /// included. Wins over every service's own policy and limit; a later
    /// [`max_retries`](Orchestrator::max_retries) changes the limit alone.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.settings.set_retry(policy);
        self
    }

    /// How long each Try may run: one still running then is dropped and
    /// counts as failed. No limit by default.
    #[must_use]
    pub fn try_timeout(mut self, timeout: Duration) -> Self {
        self.settings.try_timeout = Some(timeout);
        self
    }

    /// With `true`, the first failed Try ends the Try phase at once: Tries
    /// still running are dropped (and, having started, cancelled), Tries not
    /// yet started never start. With `false`, the default, every Try settles
    /// before the decision, so each reports how it ended.
    #[must_use]
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.fail_fast = fail_fast;
        self
    }

    /// Runs the transaction to its end and reports it.
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
    /// same name, a service already in a running orchestration, an invalid
    /// retry policy, or no tokio runtime.
    pub async fn orchestrate(&self) -> Result<Report, Error> {
        let runtime = transaction::runtime()?;
        let transaction = Transaction::prepare(self)?;
        let id = transaction.ledger.id();
        let span = tracing::debug_span!("tcc_transaction", id = %id);
        transaction::drive(id, runtime, Box::pin(transaction.run().instrument(span))).await
    }
}

/// A transaction that holds its services (each claimed, so no other
/// orchestration can run them meanwhile) and records in its [`Ledger`] what
/// happens to them.
struct Transaction {
    services: Arc<[Service]>,
    /// The services, claimed until the transaction ends or is dropped.
    claims: Claims<Arc<[Service]>>,
    settings: Settings,
    fail_fast: bool,
    ledger: Ledger,
    /// Entered while the transaction is polled, so its phases can read it.
    context: Option<Context>,
}

impl Transaction {
    /// Checks the orchestrator's settings and claims its services.
    fn prepare(orchestrator: &Orchestrator) -> Result<Self, Error> {
        let services = &orchestrator.services;
        if services.is_empty() {
            let detail = "orchestration refused: it has no services";
            return Err(Error::refused(
                ErrorKind::NoServices,
                None,
                detail.to_owned(),
            ));
        }
        if let Some(twice) = &orchestrator.duplicate {
            return Err(transaction::duplicate(twice));
        }
        let policies = std::iter::once(&orchestrator.settings)
            .chain(services.iter().map(Service::settings))
            .filter_map(|settings| settings.retry.as_ref());
        for policy in policies {
            if let Err(invalid) = policy.validate() {
                return Err(transaction::invalid_policy(invalid));
            }
        }
        let claims = Claims::claim(services.clone())?;
        let id = TransactionId::generate();
        let ledger = Ledger::new(id, Entries::services(services.clone()));
        Ok(Transaction {
            context: Some(Context::new(id, ledger.entries().names())),
            services: services.clone(),
            claims,
            settings: orchestrator.settings,
            fail_fast: orchestrator.fail_fast,
            ledger,
        })
    }

    /// Runs every Try at once; then, if all succeeded, every Confirm, and
    /// otherwise every Cancel of a service whose Try started.
    ///
    /// Each run is polled as soon as it is created: one that completes at
    /// once is recorded there and then, and only one still pending joins the
    /// pending set. With fail-fast, the first failed Try ends the Try round:
    /// runs still pending are dropped and runs not created never start. The
    /// rounds run in one loop, so a round that ends at once goes straight on
    /// to the next, in the same poll and the same context.
    async fn run(mut self) -> Result<Report, Error> {
        let Transaction {
            services,
            settings,
            fail_fast,
            ledger,
            context,
            ..
        } = &mut self;
        let id = ledger.id();
        let mut phase = Phase::Try;
        let mut starting = runs(services, settings, id, phase);
        // Created on the first run that does not finish at once.
        let mut pending: Option<FuturesUnordered<PhaseRun<ServiceAttempts<'_>>>> = None;
        let mut all_succeeded = true;
        poll_fn(|cx| {
            Context::enter(context, || {
                loop {
                    let stop_on_failure = phase == Phase::Try && *fail_fast;
                    let mut record = |outcome: Outcome| {
                        all_succeeded &= outcome.result.is_ok();
                        let stop = stop_on_failure && outcome.result.is_err();
                        ledger.record(phase, outcome);
                        stop
                    };
                    'round: {
                        for mut run in starting.by_ref() {
                            match Pin::new(&mut run).poll(cx) {
                                Poll::Ready(outcome) => {
                                    if record(outcome) {
                                        break 'round;
                                    }
                                }
                                Poll::Pending => {
                                    pending.get_or_insert_with(FuturesUnordered::new).push(run)
                                }
                            }
                        }
                        if let Some(pending) = pending.as_mut() {
                            while let Some(outcome) = ready!(pending.poll_next_unpin(cx)) {
                                if record(outcome) {
                                    break 'round;
                                }
                            }
                        }
                    }
                    // Runs still pending (Tries that fail-fast gave up on)
                    // are dropped.
                    pending = None;
                    if phase != Phase::Try {
                        return Poll::Ready(());
                    }
                    if !all_succeeded {
                        // Tries dropped by fail-fast started, so they will be
                        // cancelled like the rest, and are reported as
                        // started but not succeeded.
                        for (index, service) in services.iter().enumerate() {
                            if service.tried() {
                                ledger.record_dropped_try(index);
                            }
                        }
                    }
                    phase = if all_succeeded {
                        tracing::debug!("every try succeeded; confirming");
                        Phase::Confirm
                    } else {
                        tracing::debug!("a try failed; cancelling every started service");
                        Phase::Cancel
                    };
                    starting = runs(services, settings, id, phase);
                }
            })
        })
        .await;
        drop((starting, pending));
        self.finish()
    }

    fn finish(self) -> Result<Report, Error> {
        drop(self.claims);
        self.ledger.finish()
    }
}

/// The runs of `phase`, in service order, for the services it applies to
/// (Try and Confirm: all; Cancel: those whose Try started).
fn runs<'a>(
    services: &'a [Service],
    settings: &'a Settings,
    id: TransactionId,
    phase: Phase,
) -> impl Iterator<Item = PhaseRun<ServiceAttempts<'a>>> + 'a {
    services
        .iter()
        .enumerate()
        .filter(move |(_, service)| phase != Phase::Cancel || service.tried())
        .map(move |(index, service)| {
            let (retries, timeout) = resolve(settings, service.settings(), phase);
            PhaseRun::new(
                index,
                ServiceAttempts::new(service),
                id,
                phase,
                retries,
                timeout,
            )
        })
}
