//! What went wrong: [`Error`] for a whole orchestration, [`Failure`] for one
//! phase of one service, and the causes the runtime itself produces.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use crate::name::Name;
use crate::phase::Phase;
use crate::report::Report;

/// The error type phases return once it leaves their own code: any
/// `std::error::Error + Send + Sync`, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Marks a Confirm or Cancel error as permanent: retrying cannot help, so the
/// retries of that service stop at once.
///
/// Return it directly (`Err(Permanent::new(e))`), or put it in the source
/// chain of your own error type (a `#[source]` field): the runtime looks for
/// it along the whole chain.
///
/// ```
/// use tcc::{BoxError, Orchestrator, Permanent, Service};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ok = || async { Ok::<(), BoxError>(()) };
/// let ledger = Service::new("ledger", ok, || async {
///     Err::<(), _>(Permanent::new("account closed"))
/// }, ok);
/// let error = Orchestrator::new([ledger]).max_retries(10).orchestrate().await.unwrap_err();
/// assert_eq!(error.failures()[0].attempts(), 1);
/// assert!(error.failures()[0].is_permanent());
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Permanent(pub BoxError);

impl Permanent {
    /// Wraps an error as permanent.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Permanent(error.into())
    }

    /// Whether `error`, or an error in its source chain, is [`Permanent`].
    /// Looks at the first 64 links only, so a chain that loops back on
    /// itself cannot hang the caller.
    pub fn is_in(error: &(dyn std::error::Error + 'static)) -> bool {
        links(error).any(|e| e.is::<Permanent>())
    }
}

/// `error` and its sources, the first 64 links only: every walk of a source
/// chain goes through here, so a chain that loops back on itself cannot
/// hang the caller, and a `source()` that panics ends the chain there.
pub(crate) fn links<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    const LINKS: usize = 64;
    std::iter::successors(Some(error), |e| {
        catch_unwind(AssertUnwindSafe(|| e.source())).unwrap_or(None)
    })
    .take(LINKS)
}

/// An error and the text of its sources, as one line: each source after a
/// colon, unless the link before already shows its text (as an error that
/// writes `"..: {source}"` does). A `Display` that panics shows as a note
/// instead, so that describing a user's odd error never takes the caller
/// down.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = |e: &dyn std::error::Error| {
            catch_unwind(AssertUnwindSafe(|| e.to_string()))
                .unwrap_or_else(|_| "<the error's Display panicked>".to_owned())
        };
        let mut before = String::new();
        for (index, link) in links(self.0).enumerate() {
            let shown = text(link);
            if index == 0 {
                f.write_str(&shown)?;
            } else if !shown.is_empty() && !before.contains(&shown) {
                write!(f, ": {shown}")?;
            }
            before = shown;
        }
        Ok(())
    }
}

/// The cause of an attempt that outlived its time limit: a Try past its
/// `try_timeout`, a Confirm or Cancel attempt past its `attempt_timeout`.
/// The attempt was dropped; a Confirm or Cancel is then retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{phase} timed out after {limit:?}")]
pub struct TimedOut {
    /// The phase of the attempt.
    pub phase: Phase,
    /// The limit it outlived.
    pub limit: Duration,
}

/// The cause of a phase that panicked. The panic was caught: it never reaches
/// the caller of `orchestrate`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("phase panicked: {message}")]
pub struct Panicked {
    message: String,
}

impl Panicked {
    pub(crate) fn from_payload(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = if let Some(text) = payload.downcast_ref::<&str>() {
            (*text).to_owned()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "non-string panic payload".to_owned()
        };
        Panicked { message }
    }

    /// The panic's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// One phase of one service that did not succeed: its final attempt failed.
/// The cause is [`std::error::Error::source`]; downcast it to reach your own
/// error type. `Display` shows the cause's text (and its sources') too.
#[derive(Debug, thiserror::Error)]
#[error(
    "{phase} of `{service}` failed after {attempts} {}: {}",
    plural(*.attempts, "attempt"),
    Chain(&**.cause)
)]
pub struct Failure {
    service: Name,
    phase: Phase,
    attempts: u32,
    #[source]
    cause: BoxError,
}

impl Failure {
    pub(crate) fn new(service: Name, phase: Phase, attempts: u32, cause: BoxError) -> Self {
        Failure {
            service,
            phase,
            attempts,
            cause,
        }
    }

    /// The service that failed.
    pub fn service_name(&self) -> &str {
        &self.service
    }

    /// The phase that failed.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// How many attempts were made; 1 for Try.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The error of the final attempt.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.cause
    }

    /// Whether the cause was marked [`Permanent`], which ended the retries.
    pub fn is_permanent(&self) -> bool {
        Permanent::is_in(&*self.cause)
    }
}

/// What kind of [`Error`] an orchestration ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A Try failed, and every started service was cancelled: nothing is left
    /// reserved. The caller may retry the whole transaction.
    TryFailed,
    /// Every Try succeeded but a Confirm failed after all its retries: the
    /// transaction is partly applied and needs repair.
    ConfirmFailed,
    /// A Try failed and a Cancel then failed after all its retries: some
    /// reservations could not be released and need repair.
    CancelFailed,
    /// The orchestrator was given no services. Nothing ran.
    NoServices,
    /// Two services share a name. Nothing ran.
    DuplicateService,
    /// A retry policy has an invalid value. Nothing ran.
    InvalidRetryPolicy,
    /// `orchestrate` was called outside a tokio runtime. Nothing ran.
    NoRuntime,
    /// The runtime shut down before the transaction ended; its state is
    /// unknown.
    Interrupted,
    /// A durable transaction was given a service that cannot be rebuilt
    /// after a crash: not recoverable, its data could not be saved or is
    /// more than the log holds (2 GiB per transaction), or its kind is not
    /// registered on the log (`TransactionLog::register`). Nothing ran.
    NotRecoverable,
    /// The transaction log failed. Before the first Try (the intent could
    /// not be written), nothing ran; after it (the decision could not be
    /// written), the transaction is left to recovery, which cancels it
    /// unless the decision reached the log: look it up by id. In that case
    /// the error still has the Try round's [`failures`](Error::failures)
    /// and [`report`](Error::report). Also when a log whose leases expire
    /// could not renew the transaction's lease while a phase ran: the
    /// transaction stopped before its next phase call, left to the
    /// coordinator that took it over.
    LogFailed,
    /// A durable transaction was given an id the transaction log already
    /// holds (running, finished, or needing repair). Nothing ran.
    DuplicateId,
    /// `TransactionLog::redrive` was asked for a transaction that does not
    /// need repair (finished, running, or unknown). Nothing ran.
    NotInRepair,
}

impl ErrorKind {
    /// Whether the transaction left state that needs manual repair.
    pub fn needs_repair(self) -> bool {
        matches!(
            self,
            ErrorKind::ConfirmFailed | ErrorKind::CancelFailed | ErrorKind::Interrupted
        )
    }
}

/// Why an orchestration did not confirm: every failure it met, which phase
/// was the worst, and what state is left.
///
/// A failed Cancel does not hide the failed Try that caused it: both are in
/// [`failures`](Error::failures). [`phase`](Error::phase) is the worst phase
/// that failed (Cancel, then Confirm, then Try) and
/// [`service_name`](Error::service_name) the first service, in the order the
/// services were given, that failed in it.
#[derive(Debug, thiserror::Error)]
#[error("{inner}")]
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Debug)]
struct Inner {
    kind: ErrorKind,
    phase: Phase,
    service: Option<Name>,
    failures: Vec<Failure>,
    report: Option<Report>,
    detail: Option<String>,
}

impl Error {
    /// The error of a transaction that ran: `failures` is not empty and is
    /// ordered by phase (Try, Confirm, Cancel), then by service order.
    pub(crate) fn failed(failures: Vec<Failure>, report: Report) -> Self {
        debug_assert!(!failures.is_empty());
        let worst = failures
            .iter()
            .max_by_key(|f| f.phase.severity())
            .map_or(Phase::Try, |f| f.phase);
        let service = failures
            .iter()
            .find(|f| f.phase == worst)
            .map(|f| f.service.clone());
        let kind = match worst {
            Phase::Try => ErrorKind::TryFailed,
            Phase::Confirm => ErrorKind::ConfirmFailed,
            Phase::Cancel => ErrorKind::CancelFailed,
        };
        Error {
            inner: Box::new(Inner {
                kind,
                phase: worst,
                service,
                failures,
                report: Some(report),
                detail: None,
            }),
        }
    }

    /// A transaction cut short in or after its `phase` round (`kind` says
    /// why, in `detail`): it keeps the failures so far, ordered as in
    /// [`failed`](Error::failed), and its report.
    pub(crate) fn cut_short(
        kind: ErrorKind,
        phase: Phase,
        detail: String,
        failures: Vec<Failure>,
        report: Report,
    ) -> Self {
        let service = failures.first().map(|f| f.service.clone());
        Error {
            inner: Box::new(Inner {
                kind,
                phase,
                service,
                failures,
                report: Some(report),
                detail: Some(detail),
            }),
        }
    }

    /// An orchestration refused before any phase ran.
    pub(crate) fn refused(kind: ErrorKind, service: Option<Name>, detail: String) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                phase: Phase::Try,
                service,
                failures: Vec::new(),
                report: None,
                detail: Some(detail),
            }),
        }
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The worst phase that failed. An orchestration refused before it ran
    /// reports [`Phase::Try`].
    pub fn phase(&self) -> Phase {
        self.inner.phase
    }

    /// The first service, in the order given, that failed in
    /// [`phase`](Error::phase); for a refusal, the service at fault, or `""`
    /// when none is.
    pub fn service_name(&self) -> &str {
        self.inner.service.as_deref().unwrap_or("")
    }

    /// Every failure, ordered by phase (Try, Confirm, Cancel), then in the
    /// order the services were given. Empty for a refusal.
    pub fn failures(&self) -> &[Failure] {
        &self.inner.failures
    }

    /// What happened to each service, when the transaction ran.
    pub fn report(&self) -> Option<&Report> {
        self.inner.report.as_ref()
    }

    /// Whether the transaction left state that needs manual repair.
    pub fn needs_repair(&self) -> bool {
        self.inner.kind.needs_repair()
    }
}

impl Inner {
    /// The transaction's id, as a message shows it.
    fn transaction(&self) -> String {
        self.report
            .as_ref()
            .map_or_else(String::new, |r| r.transaction_id().to_string())
    }
}

impl fmt::Display for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |phase: Phase| self.failures.iter().filter(|f| f.phase == phase).count();
        let first = |phase: Phase| self.failures.iter().find(|f| f.phase == phase);
        let describe = |f: &mut fmt::Formatter<'_>, failure: &Failure| {
            let others = count(failure.phase) - 1;
            write!(f, "{} failed in `{}`", failure.phase, failure.service)?;
            if failure.phase != Phase::Try {
                write!(
                    f,
                    " after {} {}",
                    failure.attempts,
                    plural(failure.attempts, "attempt")
                )?;
            }
            if others > 0 {
                write!(
                    f,
                    " (and {others} other {})",
                    plural(others as u32, "service")
                )?;
            }
            write!(f, ": {}", Chain(&*failure.cause))
        };
        if let Some(detail) = &self.detail {
            f.write_str(detail)?;
            // Cut short after its Try round: what made the decision.
            if let Some(cause) = first(Phase::Try) {
                f.write_str("; it was to be cancelled because ")?;
                describe(f, cause)?;
            }
            return Ok(());
        }
        let Some(primary) = first(self.phase) else {
            return f.write_str("transaction failed");
        };
        describe(f, primary)?;
        let services = self.report.as_ref().map_or(0, |r| r.services().len());
        match self.phase {
            Phase::Try => {
                let started = self.report.as_ref().map_or(0, |r| {
                    r.services()
                        .filter(|s| s.attempts(Phase::Cancel) > 0)
                        .count()
                });
                let word = if started == services && started > 1 {
                    "all "
                } else {
                    ""
                };
                write!(
                    f,
                    "; {word}{started} started {} cancelled",
                    plural_verb(started as u32, "service was", "services were")
                )
            }
            Phase::Confirm if count(Phase::Confirm) == services => write!(
                f,
                "; none of the {services} services confirmed: transaction {} still holds every reservation and needs manual repair",
                self.transaction(),
            ),
            Phase::Confirm => write!(
                f,
                "; {} of {services} services not confirmed: transaction {} is partly applied and needs manual repair",
                count(Phase::Confirm),
                self.transaction(),
            ),
            Phase::Cancel => {
                write!(
                    f,
                    "; {} {} of transaction {} could not be released and {} manual repair",
                    count(Phase::Cancel),
                    plural(count(Phase::Cancel) as u32, "service"),
                    self.transaction(),
                    plural_verb(count(Phase::Cancel) as u32, "needs", "need"),
                )?;
                if let Some(cause) = first(Phase::Try) {
                    f.write_str(" (cancelled because ")?;
                    describe(f, cause)?;
                    f.write_str(")")?;
                }
                Ok(())
            }
        }
    }
}

fn plural(n: u32, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

fn plural_verb<'a>(n: u32, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}
