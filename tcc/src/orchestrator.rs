//! Running a transaction: [`Orchestrator`].

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tracing::Instrument;

use crate::context::{Context, TransactionId};
use crate::error::{BoxError, Error, ErrorKind, Failure};
use crate::phase::Phase;
use crate::report::{PhaseRecord, Report, ServiceReport};
use crate::retry::RetryPolicy;
use crate::run::{self, Retries};
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
#[derive(Clone, Debug, Default)]
pub struct Orchestrator {
    services: Vec<Service>,
    settings: Settings,
    fail_fast: bool,
}

impl Orchestrator {
    /// An orchestrator over `services`, with default settings.
    pub fn new(services: impl IntoIterator<Item = Service>) -> Self {
        Orchestrator {
            services: services.into_iter().collect(),
            ..Orchestrator::default()
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
    /// Once this future has been polled, the transaction runs on its own
    /// tokio task: dropping the future (say, in a web handler whose client
    /// went away) does not stop it, so no reservation is left behind.
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
        match runtime.spawn(transaction.run().instrument(span)).await {
            Ok(result) => result,
            Err(join) => Err(Error::refused(
                ErrorKind::Interrupted,
                None,
                format!("transaction {id} was interrupted before it ended: {join}"),
            )),
        }
    }
}

/// One service of a running transaction, with its settings resolved.
struct Entry {
    service: Service,
    retries: Retries,
    try_timeout: Option<Duration>,
}

/// A transaction that holds its services (each claimed, so no other
/// orchestration can run them meanwhile) and records what happens to them.
///
/// Every state change goes through [`Transaction::record`]: the one place a
/// durable log will write to.
struct Transaction {
    id: TransactionId,
    entries: Vec<Entry>,
    fail_fast: bool,
    reports: Vec<ServiceReport>,
    failures: Vec<(usize, Failure)>,
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
        let mut names = HashSet::with_capacity(services.len());
        if let Some(twice) = services.iter().find(|s| !names.insert(s.name())) {
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
            .chain(services.iter().map(|s| &s.settings))
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
        let entries = services
            .iter()
            .map(|service| resolve(&orchestrator.settings, service))
            .collect();
        let transaction = Transaction {
            id: TransactionId::generate(),
            entries: Vec::with_capacity(services.len()),
            fail_fast: orchestrator.fail_fast,
            reports: Vec::new(),
            failures: Vec::new(),
        };
        transaction.claim(entries)
    }

    /// Claims every service, or none: on a conflict the services already
    /// claimed are given back as `transaction` drops.
    fn claim(mut self, entries: Vec<Entry>) -> Result<Self, Error> {
        for entry in entries {
            if !entry.service.acquire() {
                return Err(Error::refused(
                    ErrorKind::ServiceBusy,
                    Some(entry.service.shared.name.clone()),
                    format!(
                        "orchestration refused: service `{}` is already part of a running orchestration",
                        entry.service.name()
                    ),
                ));
            }
            self.entries.push(entry);
        }
        self.reports = self
            .entries
            .iter()
            .map(|e| ServiceReport::new(e.service.shared.name.clone()))
            .collect();
        Ok(self)
    }

    async fn run(mut self) -> Result<Report, Error> {
        let all_tried = self.try_round().await;
        if all_tried {
            tracing::debug!("every try succeeded; confirming");
            self.settle(Phase::Confirm).await;
        } else {
            tracing::debug!("a try failed; cancelling every started service");
            self.settle(Phase::Cancel).await;
        }
        self.finish()
    }

    /// Runs every Try at once. True when all succeeded.
    async fn try_round(&mut self) -> bool {
        let id = self.id;
        let mut round: FuturesUnordered<_> = self
            .entries
            .iter()
            .enumerate()
            .map(|(index, entry)| async move {
                entry.service.mark_started(Phase::Try);
                let context = Context::new(id, entry.service.shared.name.clone(), Phase::Try, 1);
                (
                    index,
                    run::attempt(&entry.service, context, entry.try_timeout).await,
                )
            })
            .collect();
        let mut all_succeeded = true;
        while let Some((index, result)) = round.next().await {
            all_succeeded &= result.is_ok();
            let failed = result.is_err();
            Self::record(
                &mut self.reports,
                &mut self.failures,
                &self.entries,
                index,
                Phase::Try,
                1,
                result,
            );
            if failed && self.fail_fast {
                break;
            }
        }
        drop(round);
        // With fail_fast, Tries still running were dropped above: they
        // started, so they are cancelled like the rest, and reported as
        // started but not succeeded.
        for (entry, report) in self.entries.iter().zip(&mut self.reports) {
            if entry.service.tried() && report.attempts(Phase::Try) == 0 {
                all_succeeded = false;
                *report.record_mut(Phase::Try) = PhaseRecord {
                    attempts: 1,
                    succeeded: false,
                };
            }
        }
        all_succeeded
    }

    /// Runs `phase` at once on every service it applies to (Confirm: all;
    /// Cancel: those whose Try started), each with its own retry loop.
    async fn settle(&mut self, phase: Phase) {
        let id = self.id;
        let mut round: FuturesUnordered<_> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| phase == Phase::Confirm || entry.service.tried())
            .map(|(index, entry)| async move {
                let (attempts, result) =
                    run::with_retries(&entry.service, id, phase, entry.retries).await;
                (index, attempts, result)
            })
            .collect();
        while let Some((index, attempts, result)) = round.next().await {
            Self::record(
                &mut self.reports,
                &mut self.failures,
                &self.entries,
                index,
                phase,
                attempts,
                result,
            );
        }
    }

    /// Records how `phase` of service `index` ended.
    fn record(
        reports: &mut [ServiceReport],
        failures: &mut Vec<(usize, Failure)>,
        entries: &[Entry],
        index: usize,
        phase: Phase,
        attempts: u32,
        result: Result<(), BoxError>,
    ) {
        let service = &entries[index].service;
        service.record(phase, result.is_ok());
        *reports[index].record_mut(phase) = PhaseRecord {
            attempts,
            succeeded: result.is_ok(),
        };
        if let Err(cause) = result {
            tracing::warn!(service = service.name(), %phase, attempts, error = %cause, "phase failed");
            failures.push((
                index,
                Failure::new(service.shared.name.clone(), phase, attempts, cause),
            ));
        }
    }

    fn finish(mut self) -> Result<Report, Error> {
        // Taken out so that `Drop` does not release them a second time, when
        // another orchestration may already have claimed them.
        for entry in std::mem::take(&mut self.entries) {
            entry.service.release();
        }
        let report = Report::new(self.id, std::mem::take(&mut self.reports));
        if self.failures.is_empty() {
            return Ok(report);
        }
        let mut failures = std::mem::take(&mut self.failures);
        failures.sort_by_key(|(index, failure)| (failure.phase().severity(), *index));
        let error = Error::failed(failures.into_iter().map(|(_, f)| f).collect(), report);
        if error.needs_repair() {
            tracing::error!(error = %error, "transaction needs manual repair");
        }
        Err(error)
    }
}

impl Drop for Transaction {
    /// Gives the services back if the transaction is dropped before its end
    /// (a refusal, or a runtime shutting down).
    fn drop(&mut self) {
        for entry in &self.entries {
            entry.service.release();
        }
    }
}

/// A service's effective settings: the orchestrator's where it sets them, the
/// service's own otherwise, then the defaults.
fn resolve(orchestrator: &Settings, service: &Service) -> Entry {
    let own = &service.settings;
    let policy = orchestrator.retry.or(own.retry).unwrap_or_default();
    let limit = orchestrator
        .max_retries
        .or(own.max_retries)
        .unwrap_or(policy.max_retries);
    Entry {
        service: service.clone(),
        retries: Retries { policy, limit },
        try_timeout: orchestrator.try_timeout.or(own.try_timeout),
    }
}
