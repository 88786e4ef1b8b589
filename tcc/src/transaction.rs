//! What every orchestration shares, whatever its services: the [`Ledger`]
//! that records how each phase ended, running to the end when the caller
//! goes away ([`drive`]), and how settings resolve.

use std::future::poll_fn;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::task::Poll;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rustc_hash::{FxBuildHasher, FxHashSet};

use crate::context::TransactionId;
use crate::error::{Error, ErrorKind, Failure, Panicked};
use crate::phase::Phase;
use crate::report::{Entries, PhaseRecord, Report};
use crate::retry::InvalidRetryPolicy;
use crate::run::{Logged, Outcome, Retries};
use crate::service::{Service, Settings};

/// What a transaction has done so far: each service's record, and every
/// failure.
///
/// Every state change of a transaction goes through [`Ledger::record`]: the
/// one place a durable log will write to.
pub(crate) struct Ledger {
    id: TransactionId,
    /// Shared with the transaction's context, and then its report.
    entries: Entries,
    failures: Vec<(usize, Failure)>,
}

impl Ledger {
    /// A ledger for the services whose (empty) records are `entries`.
    pub(crate) fn new(id: TransactionId, entries: Entries) -> Self {
        Ledger {
            id,
            entries,
            failures: Vec::new(),
        }
    }

    pub(crate) fn id(&self) -> TransactionId {
        self.id
    }

    /// The services' names and records, as the transaction's context
    /// shares them.
    pub(crate) fn entries(&self) -> &Entries {
        &self.entries
    }

    /// Records how `phase` of one service ended.
    pub(crate) fn record(&mut self, phase: Phase, outcome: Outcome) {
        let Outcome {
            index,
            attempts,
            result,
        } = outcome;
        let record = PhaseRecord {
            attempts,
            succeeded: result.is_ok(),
        };
        self.entries.records(index).set(phase, record);
        if let Err(cause) = result {
            let name = self.entries.shared_name(index);
            tracing::warn!(service = %name, %phase, attempts, error = %Logged(&*cause), "phase failed");
            let failure = Failure::new(name, phase, attempts, cause);
            self.failures.push((index, failure));
        }
    }

    /// Records a Try that fail-fast dropped while it ran: it started, so it
    /// will be cancelled, and it did not succeed. No failure of its own.
    pub(crate) fn record_dropped_try(&mut self, index: usize) {
        let records = self.entries.records(index);
        if records.get(Phase::Try).attempts == 0 {
            let started = PhaseRecord {
                attempts: 1,
                succeeded: false,
            };
            records.set(Phase::Try, started);
        }
    }

    /// The transaction's report, or its error when a phase failed.
    pub(crate) fn finish(self) -> Result<Report, Error> {
        let report = Report::new(self.id, self.entries);
        let mut failures = self.failures;
        if failures.is_empty() {
            return Ok(report);
        }
        failures.sort_by_key(|(index, failure)| (failure.phase().severity(), *index));
        let error = Error::failed(failures.into_iter().map(|(_, f)| f).collect(), report);
        if error.needs_repair() {
            tracing::error!(error = %Logged(&error), "transaction needs manual repair");
        }
        Err(error)
    }
}

/// The refusal of an orchestration with a retry policy out of range.
pub(crate) fn invalid_policy(invalid: InvalidRetryPolicy) -> Error {
    Error::refused(
        ErrorKind::InvalidRetryPolicy,
        None,
        format!("orchestration refused: {invalid}"),
    )
}

/// Services claimed by one transaction, so that no other orchestration runs
/// them meanwhile; given back when dropped.
pub(crate) struct Claims<S: AsRef<[Service]>> {
    services: S,
    /// How many of `services`, from the first, are claimed.
    claimed: usize,
}

impl<S: AsRef<[Service]>> Claims<S> {
    /// Claims every service, or none: on a conflict, the services already
    /// claimed are given back and the orchestration is refused.
    pub(crate) fn claim(services: S) -> Result<Self, Error> {
        let mut claims = Claims {
            services,
            claimed: 0,
        };
        for service in claims.services.as_ref() {
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
            claims.claimed += 1;
        }
        Ok(claims)
    }
}

impl<S: AsRef<[Service]>> Drop for Claims<S> {
    /// Gives the services back: at the end of the transaction, or when it is
    /// dropped before (a refusal, or a runtime shutting down).
    fn drop(&mut self) {
        for service in &self.services.as_ref()[..self.claimed] {
            service.release();
        }
    }
}

/// The runtime an orchestration runs on, or the error that says there is none.
pub(crate) fn runtime() -> Result<tokio::runtime::Handle, Error> {
    tokio::runtime::Handle::try_current().map_err(|_| {
        let detail = "orchestration refused: `orchestrate` must run inside a tokio runtime";
        Error::refused(ErrorKind::NoRuntime, None, detail.to_owned())
    })
}

/// Runs a transaction inside the caller's future, with no task of its own;
/// if the caller drops it before its end, the transaction moves to a new
/// task on `runtime` and still runs to its end.
pub(crate) async fn drive(
    id: TransactionId,
    runtime: tokio::runtime::Handle,
    future: BoxFuture<'static, Result<Report, Error>>,
) -> Result<Report, Error> {
    let mut running = Detached {
        future: Some(future),
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

/// How a service runs `phase`: the orchestration's settings where it sets
/// them, the service's own otherwise, then the defaults.
pub(crate) fn resolve(
    orchestration: &Settings,
    own: &Settings,
    phase: Phase,
) -> (Retries, Option<Duration>) {
    if phase == Phase::Try {
        return (Retries::NONE, orchestration.try_timeout.or(own.try_timeout));
    }
    let policy = orchestration.retry.or(own.retry).unwrap_or_default();
    let limit = orchestration
        .max_retries
        .or(own.max_retries)
        .unwrap_or(policy.max_retries);
    (Retries { policy, limit }, None)
}

/// The refusal of an orchestration in which two services are named `twice`.
pub(crate) fn duplicate(twice: &str) -> Error {
    Error::refused(
        ErrorKind::DuplicateService,
        Some(crate::service::name(twice)),
        format!("orchestration refused: two services are named `{twice}`"),
    )
}

/// The first name that an earlier one equals.
pub(crate) fn first_duplicate<'a>(
    mut names: impl ExactSizeIterator<Item = &'a str>,
) -> Option<&'a str> {
    const FEW: usize = 16;
    if names.len() <= FEW {
        // A handful of names are compared pairwise, with no allocation and
        // no hashing: a cheap fingerprint first, so that names that differ
        // are rarely compared byte by byte.
        let mut seen = [(0_u64, ""); FEW];
        for (i, text) in names.enumerate() {
            let print = fingerprint(text);
            if seen[..i]
                .iter()
                .any(|&(p, earlier)| p == print && earlier == text)
            {
                return Some(text);
            }
            seen[i] = (print, text);
        }
        return None;
    }
    // FxHash: names are short and not chosen by an attacker, so a fast
    // hash beats the default SipHash here.
    let mut seen = FxHashSet::with_capacity_and_hasher(names.len(), FxBuildHasher);
    names.find(|name| !seen.insert(*name))
}

/// The length and the last four bytes: names such as `service-17` and
/// `service-18` differ there.
fn fingerprint(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let tail = bytes[bytes.len().saturating_sub(4)..]
        .iter()
        .fold(0_u64, |print, &byte| (print << 8) | u64::from(byte));
    ((text.len() as u64) << 32) | tail
}
