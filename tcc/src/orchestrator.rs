//! Running a transaction: [`Orchestrator`].

use std::collections::HashSet;
use std::future::{Future, poll_fn};
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tracing::Instrument;

use crate::context::{Context, TransactionId};
use crate::error::{Error, ErrorKind, Failure, Panicked};
use crate::phase::Phase;
use crate::report::{PhaseRecord, Report, ServiceReport};
use crate::retry::{FNV_OFFSET, RetryPolicy, fnv1a};
use crate::run::{Logged, Outcome, PhaseRun, Retries};
use crate::service::{Service, Settings};

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
    /// The first service whose name an earlier one has, found once in `new`.
    duplicate: Option<usize>,
    settings: Settings,
    fail_fast: bool,
}

impl Orchestrator {
    /// An orchestrator over `services`, with default settings.
    pub fn new(services: impl IntoIterator<Item = Service>) -> Self {
        let services: Arc<[Service]> = services.into_iter().collect();
        let duplicate = first_duplicate(&services);
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
        self.settings.max_retries = Some(policy.max_retries);
        self.settings.retry = Some(policy);
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
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            let detail = "orchestration refused: `orchestrate` must run inside a tokio runtime";
            Error::refused(ErrorKind::NoRuntime, None, detail.to_owned())
        })?;
        let transaction = Transaction::prepare(self)?;
        let id = transaction.id;
        let span = tracing::debug_span!("tcc_transaction", id = %id);
        let mut running = Detached {
            future: Some(Box::pin(transaction.run().instrument(span))),
            runtime,
        };
        poll_fn(|cx| {
            let Some(future) = running.future.as_mut() else {
                return Poll::Ready(Err(interrupted(id, "polled after its end")));
            };
            // Phases' panics are caught where they run; this guards against
            // the runtime's own (a timer used on a runtime without one).
            let polled = catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)));
            let result = match polled {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(result)) => result,
                Err(payload) => Err(interrupted(id, Panicked::from_payload(&*payload).message())),
            };
            running.future = None;
            Poll::Ready(result)
        })
        .await
    }
}

fn interrupted(id: TransactionId, why: &str) -> Error {
    Error::refused(
        ErrorKind::Interrupted,
        None,
        format!("transaction {id} was interrupted before it ended: {why}"),
    )
}

/// A running transaction that moves to a task of its own when the future
/// polling it is dropped before its end.
struct Detached {
    future: Option<BoxFuture<'static, Result<Report, Error>>>,
    runtime: tokio::runtime::Handle,
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            tracing::debug!("caller went away; the transaction goes on in its own task");
            drop(self.runtime.spawn(future));
        }
    }
}

/// A transaction that holds its services (each claimed, so no other
/// orchestration can run them meanwhile) and records what happens to them.
///
/// Every state change goes through [`Transaction::record`]: the one place a
/// durable log will write to.
struct Transaction {
    id: TransactionId,
    services: Arc<[Service]>,
    /// How many of `services`, from the first, this transaction claimed.
    claimed: usize,
    settings: Settings,
    fail_fast: bool,
    reports: Vec<ServiceReport>,
    failures: Vec<(usize, Failure)>,
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
        if let Some(twice) = orchestrator.duplicate.map(|index| &services[index]) {
            return Err(Error::refused(
                ErrorKind::DuplicateService,
                Some(twice.shared.name.clone()),
                format!(
                    "orchestration refused: two services are named `{}`",
                    twice.name()
                ),
            ));
        }
        let policies = std::iter::once(&orchestrator.settings)
            .chain(services.iter().map(Service::settings))
            .filter_map(|settings| settings.retry.as_ref());
        for policy in policies {
            if let Err(invalid) = policy.validate() {
                return Err(Error::refused(
                    ErrorKind::InvalidRetryPolicy,
                    None,
                    format!("orchestration refused: {invalid}"),
                ));
            }
        }
        let id = TransactionId::generate();
        let mut transaction = Transaction {
            id,
            context: Some(Context::new(id, services.clone())),
            services: services.clone(),
            claimed: 0,
            settings: orchestrator.settings,
            fail_fast: orchestrator.fail_fast,
            reports: Vec::new(),
            failures: Vec::new(),
        };
        // Claims every service, or none: on a conflict, the services already
        // claimed are given back as `transaction` drops.
        for service in services.iter() {
            if !service.acquire() {
                return Err(Error::refused(
                    ErrorKind::ServiceBusy,
                    Some(service.shared.name.clone()),
                    format!(
                        "orchestration refused: service `{}` is already part of a running orchestration",
                        service.name()
                    ),
                ));
            }
            transaction.claimed += 1;
        }
        transaction.reports = services
            .iter()
            .map(|s| ServiceReport::new(s.shared.name.clone()))
            .collect();
        Ok(transaction)
    }

    async fn run(mut self) -> Result<Report, Error> {
        if self.round(Phase::Try).await {
            tracing::debug!("every try succeeded; confirming");
            self.round(Phase::Confirm).await;
        } else {
            tracing::debug!("a try failed; cancelling every started service");
            self.round(Phase::Cancel).await;
        }
        self.finish()
    }

    /// Runs `phase` at once on every service it applies to (Try and Confirm:
    /// all; Cancel: those whose Try started). True when all succeeded.
    ///
    /// Each run is polled as soon as it is created: one that completes at
    /// once is recorded there and then, and only one still pending joins the
    /// pending set. With fail-fast, the first failed Try ends the round: runs
    /// still pending are dropped and runs not created never start.
    async fn round(&mut self, phase: Phase) -> bool {
        let Transaction {
            id,
            services,
            settings,
            fail_fast,
            reports,
            failures,
            context,
            ..
        } = self;
        let stop_on_failure = phase == Phase::Try && *fail_fast;
        let mut starting = services
            .iter()
            .enumerate()
            .filter(|(_, service)| phase != Phase::Cancel || service.tried())
            .map(|(index, service)| {
                let (retries, timeout) = resolve(settings, service, phase);
                PhaseRun::new(index, service, *id, phase, retries, timeout)
            });
        // Created on the first run that does not finish at once.
        let mut pending: Option<FuturesUnordered<PhaseRun<'_>>> = None;
        let mut all_succeeded = true;
        let mut record = |outcome: Outcome| {
            all_succeeded &= outcome.result.is_ok();
            let stop = stop_on_failure && outcome.result.is_err();
            Self::record(services, reports, failures, phase, outcome);
            stop
        };
        poll_fn(|cx| {
            Context::enter(context, || {
                for mut run in starting.by_ref() {
                    match Pin::new(&mut run).poll(cx) {
                        Poll::Ready(outcome) => {
                            if record(outcome) {
                                return Poll::Ready(());
                            }
                        }
                        Poll::Pending => {
                            pending.get_or_insert_with(FuturesUnordered::new).push(run)
                        }
                    }
                }
                let Some(pending) = pending.as_mut() else {
                    return Poll::Ready(());
                };
                while let Some(outcome) = ready!(pending.poll_next_unpin(cx)) {
                    if record(outcome) {
                        return Poll::Ready(());
                    }
                }
                Poll::Ready(())
            })
        })
        .await;
        drop(pending);
        if phase == Phase::Try {
            // With fail-fast, Tries still running were dropped above: they
            // started, so they will be cancelled like the rest, and are
            // reported as started but not succeeded.
            for (service, report) in services.iter().zip(reports.iter_mut()) {
                if service.tried() && report.attempts(Phase::Try) == 0 {
                    all_succeeded = false;
                    *report.record_mut(Phase::Try) = PhaseRecord {
                        attempts: 1,
                        succeeded: false,
                    };
                }
            }
        }
        all_succeeded
    }

    /// Records how a phase of one service ended.
    fn record(
        services: &[Service],
        reports: &mut [ServiceReport],
        failures: &mut Vec<(usize, Failure)>,
        phase: Phase,
        outcome: Outcome,
    ) {
        let Outcome {
            index,
            attempts,
            result,
        } = outcome;
        *reports[index].record_mut(phase) = PhaseRecord {
            attempts,
            succeeded: result.is_ok(),
        };
        if let Err(cause) = result {
            let service = &services[index];
            tracing::warn!(service = service.name(), %phase, attempts, error = %Logged(&*cause), "phase failed");
            failures.push((
                index,
                Failure::new(service.shared.name.clone(), phase, attempts, cause),
            ));
        }
    }

    fn finish(mut self) -> Result<Report, Error> {
        self.release();
        let report = Report::new(self.id, std::mem::take(&mut self.reports));
        if self.failures.is_empty() {
            return Ok(report);
        }
        let mut failures = std::mem::take(&mut self.failures);
        failures.sort_by_key(|(index, failure)| (failure.phase().severity(), *index));
        let error = Error::failed(failures.into_iter().map(|(_, f)| f).collect(), report);
        if error.needs_repair() {
            tracing::error!(error = %Logged(&error), "transaction needs manual repair");
        }
        Err(error)
    }

    /// Gives back the services this transaction claimed, once.
    fn release(&mut self) {
        for service in &self.services[..self.claimed] {
            service.release();
        }
        // Another orchestration may claim them from now on: never again.
        self.claimed = 0;
    }
}

impl Drop for Transaction {
    /// Gives the services back if the transaction is dropped before its end
    /// (a refusal, or a runtime shutting down).
    fn drop(&mut self) {
        self.release();
    }
}

/// The index of the first service whose name an earlier service has.
fn first_duplicate(services: &[Service]) -> Option<usize> {
    // A handful of names are compared pairwise: no allocation, no hashing.
    if services.len() <= 16 {
        return (1..services.len())
            .find(|&i| services[..i].iter().any(|s| s.name() == services[i].name()));
    }
    let mut names =
        HashSet::with_capacity_and_hasher(services.len(), BuildHasherDefault::<Fnv>::default());
    services.iter().position(|s| !names.insert(s.name()))
}

/// FNV-1a: names are short and not chosen by an attacker, so a fast hash
/// beats the default SipHash here.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(FNV_OFFSET)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a(self.0, bytes);
    }
}

/// How a service runs `phase`: the orchestrator's settings where it sets
/// them, the service's own otherwise, then the defaults.
fn resolve(
    orchestrator: &Settings,
    service: &Service,
    phase: Phase,
) -> (Retries, Option<Duration>) {
    let own = service.settings();
    if phase == Phase::Try {
        return (Retries::NONE, orchestrator.try_timeout.or(own.try_timeout));
    }
    let policy = orchestrator.retry.or(own.retry).unwrap_or_default();
    let limit = orchestrator
        .max_retries
        .or(own.max_retries)
        .unwrap_or(policy.max_retries);
    (Retries { policy, limit }, None)
}
