//! The one engine: the life of a transaction, whatever its front end.
//!
//! Both front ends, [`Orchestrator`](crate::Orchestrator) (type-erased
//! `Service` handles) and `tcc!` (typed services in slots pinned inside the
//! block's future), hand their services to [`run`] as a slice of
//! [`Member`]s, which the engine walks in order: an `Orchestrator`'s are
//! `Member<ServiceAttempts>`s, a `tcc!` block's an array of members of
//! `&mut dyn Attempts` on the block's own stack, each pointing at the typed
//! slot its service's futures run in. A member owns one service's
//! [`PhaseRun`]; where its attempts' futures live is up to its
//! [`Attempts`]. Everything else, the rounds, fail-fast, the decision,
//! validation, logging and the [`Ledger`], is written once, here.
//!
//! Every state change of a transaction goes through its [`Ledger`], which
//! writes the transaction log when there is one: the intent before the
//! first Try ([`Ledger::begin`]), the decision before the first Confirm or
//! Cancel ([`Ledger::decide`]), each phase's outcome ([`Ledger::record`])
//! and the end ([`Ledger::finish`]). Without a log nothing is awaited
//! between the rounds, so the Try round and the decision's round run in one
//! poll loop.

use std::future::poll_fn;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::task::Poll;

use futures_util::future::BoxFuture;
use tracing::Instrument;

use crate::attempt::{Attempts, PhaseEnd, PhaseRun, Round};
use crate::context::Context;
use crate::durable::{
    Decision, End, Intent, Lease, LeaseGuard, Log, LogError, LogErrorKind, MAX_INTENT_BYTES,
    ParticipantEntry, PhaseProgress, TransactionRecord,
};
use crate::error::{Chain, Error, ErrorKind, Failure, Panicked};
use crate::id::TransactionId;
use crate::metrics::{Ending, Origin, TransactionMetrics};
use crate::phase::Phase;
use crate::recoverable::LogEntry;
use crate::report::{Entries, PhaseRecord, Report};
use crate::retry::RetryPolicy;
use crate::settings::Settings;

/// What a transaction has done so far: each service's record, and every
/// failure; with a log, the lease it writes its record under.
///
/// Every state change of a transaction goes through the ledger: the one
/// place that writes the transaction log.
pub(crate) struct Ledger {
    id: TransactionId,
    /// The services' names, and their records, which only the ledger writes.
    entries: Entries,
    failures: Vec<(usize, Failure)>,
    /// With a log, the lease on the transaction's record; a ledger dropped
    /// before the record is finished (a runtime shutting down) gives it
    /// back, so recovery takes the transaction over.
    durable: Option<LeaseGuard>,
    /// Its metrics, when a recorder is in force: recorded as the ledger
    /// records, and how it ended when the ledger is dropped.
    metrics: TransactionMetrics,
}

impl Ledger {
    fn new(id: TransactionId, entries: Entries, metrics: TransactionMetrics) -> Self {
        Ledger {
            id,
            entries,
            failures: Vec::new(),
            durable: None,
            metrics,
        }
    }

    /// The transaction was refused before any phase ran.
    fn refused(&mut self) {
        self.metrics.end(Ending::Refused);
    }

    /// A round of phases begins.
    fn round_begun(&mut self) {
        self.metrics.round_begun();
    }

    /// Writes the transaction's intent, every participant with its data,
    /// before any Try runs. Refused, with nothing run, when a participant
    /// cannot be rebuilt after a crash (not recoverable, its data not
    /// saved, or its kind not registered on the log) or the log fails.
    ///
    /// Crash just before: nothing ran, nothing is written. Just after: an
    /// undecided intent, which recovery cancels everywhere (presumed abort),
    /// Tries that never ran included.
    /// (`members` is borrowed mutably only so that the future is `Send`
    /// without members being `Sync`.)
    async fn begin<A: Attempts + Send>(
        &mut self,
        log: &LogHandle,
        members: &mut [Member<A>],
    ) -> Result<(), Error> {
        let mut participants = Vec::with_capacity(members.len());
        for (name, member) in self.entries.names().zip(members.iter()) {
            let refusal = match member.log_entry() {
                // Checked here, not first by the recovery after a crash: a
                // transaction its log cannot rebuild would be left holding
                // whatever its Tries reserved.
                Some((kind, _)) if !log.kinds.is_registered(kind) => format!(
                    "orchestration refused: service `{name}` is of kind `{kind}`, which is not registered on the transaction log, so recovery could not finish the transaction after a crash; call `log.register::<T>()` at start for the type whose `Recoverable::KIND` is `{kind}`"
                ),
                Some((kind, Ok(data))) => {
                    participants.push(ParticipantEntry {
                        name: name.to_string(),
                        kind: kind.to_owned(),
                        data,
                    });
                    continue;
                }
                Some((kind, Err(cause))) => format!(
                    "orchestration refused: the data of service `{name}` (kind `{kind}`) could not be saved: {}",
                    Chain(&*cause)
                ),
                None => format!(
                    "orchestration refused: service `{name}` cannot be rebuilt after a crash, so it cannot join a durable transaction; build it with `Service::recoverable` from a type that implements `tcc::Recoverable`"
                ),
            };
            let kind = ErrorKind::NotRecoverable;
            return Err(Error::refused(kind, Some(name.clone()), refusal));
        }
        // Here, not in the store: a record the store cannot write would
        // fail its writer, or the first write after a crash.
        if let Some(refusal) = oversized(&participants, MAX_INTENT_BYTES) {
            return Err(refusal);
        }
        let intent = Intent {
            id: self.id,
            participants,
        };
        let sent = tokio::time::Instant::now();
        let lease = log.store.begin(&intent).await.map_err(|error| {
            if error.kind() == LogErrorKind::Duplicate {
                let detail = format!(
                    "orchestration refused: transaction id {} is already in the transaction log; every transaction needs an id of its own",
                    self.id
                );
                return Error::refused(ErrorKind::DuplicateId, None, detail);
            }
            let detail = format!(
                "orchestration refused: the transaction log could not write the intent of transaction {}: {error}",
                self.id
            );
            Error::refused(ErrorKind::LogFailed, None, detail)
        })?;
        self.durable = Some(LeaseGuard::new(log.store.clone(), lease, sent));
        Ok(())
    }

    /// Takes over a transaction the log holds unfinished: its lease, and
    /// the records of what was done before.
    fn resume(&mut self, lease: LeaseGuard, record: &TransactionRecord) {
        for (index, logged) in record.progress.iter().enumerate().take(self.entries.len()) {
            for (phase, progress) in Phase::ALL.into_iter().zip(logged) {
                self.set(index, phase, progress.attempts, progress.succeeded);
            }
        }
        self.durable = Some(lease);
    }

    /// Makes the decision durable before any Confirm or Cancel runs, and
    /// returns the decision in force: the log's compare-and-set keeps the
    /// first decision ever written, so one transaction never gets two.
    ///
    /// Crash just before: an undecided intent, cancelled by recovery. Just
    /// after: the decision, which recovery carries out on every participant
    /// not yet done.
    async fn decide(&mut self, decision: Decision) -> Result<Decision, Error> {
        let Some(durable) = &mut self.durable else {
            return Ok(decision);
        };
        let sent = tokio::time::Instant::now();
        match durable.log().decide(durable.lease(), decision).await {
            Ok(in_force) => {
                // A store whose leases expire extends the lease with the
                // decision (see `Log::decide`).
                durable.extended(sent);
                Ok(in_force)
            }
            Err(error) => {
                // Left to recovery: the lease goes back (on drop). The Try
                // round ran, so the error keeps its failures and report.
                let detail = format!(
                    "transaction {} was interrupted: its decision ({decision:?}) could not be written to the transaction log ({error}); recovery finishes it, cancelling it unless the decision reached the log",
                    self.id
                );
                Err(self.cut_short(Phase::Try, detail))
            }
        }
    }

    /// The error of a transaction the log stopped in or after its `phase`
    /// round: it keeps the failures so far and the report.
    fn cut_short(&mut self, phase: Phase, detail: String) -> Error {
        let report = Report::new(self.id, self.entries.clone());
        let failures = sorted(std::mem::take(&mut self.failures));
        Error::cut_short(ErrorKind::LogFailed, phase, detail, failures, report)
    }

    /// Records how `phase` of one service ended.
    fn record(&mut self, phase: Phase, outcome: PhaseEnd) {
        let PhaseEnd {
            index,
            attempts,
            result,
        } = outcome;
        self.set(index, phase, attempts, result.is_ok());
        if self.metrics.recording() {
            self.metrics.phase_ended(self.entries.text(index), phase);
        }
        if let Some(durable) = &self.durable {
            // Not synced on its own: a lost note only makes recovery call a
            // participant again, and phases are idempotent.
            let progress = PhaseProgress {
                attempts,
                succeeded: result.is_ok(),
                last_error: result.as_ref().err().map(|e| Chain(&**e).to_string()),
            };
            durable
                .log()
                .note(durable.lease(), index as u32, phase, progress);
        }
        if let Err(cause) = result {
            let name = self.entries.name(index).cloned().unwrap_or_default();
            tracing::warn!(service = %name, %phase, attempts, error = %Chain(&*cause), "phase failed");
            self.failures
                .push((index, Failure::new(name, phase, attempts, cause)));
        }
    }

    /// Records a Try that fail-fast dropped while it ran: it started, so it
    /// will be cancelled, and it did not succeed. No failure of its own.
    fn record_dropped_try(&mut self, index: usize) {
        self.set(index, Phase::Try, 1, false);
    }

    fn set(&mut self, index: usize, phase: Phase, attempts: u32, succeeded: bool) {
        let record = PhaseRecord {
            attempts,
            succeeded,
        };
        self.entries.records(index).set(phase, record);
    }

    /// The lease to renew while phases run, when the transaction has a log
    /// whose leases expire.
    fn expiring_lease(&self) -> Option<ExpiringLease> {
        let durable = self.durable.as_ref()?;
        Some(ExpiringLease {
            ttl: durable.log().lease_ttl()?,
            log: durable.log().clone(),
            lease: durable.lease().clone(),
            taken: durable.taken(),
        })
    }

    /// Ends the transaction in the log, when it has one; then
    /// [`conclude`](Ledger::conclude) reports it.
    ///
    /// Crash just before: the decision, carried out again by recovery
    /// (harmless: phases are idempotent). Just after: done, or a durable
    /// "needs repair" an operator lists and re-drives.
    async fn finish(&mut self) {
        if let Some(durable) = &mut self.durable {
            let repair = self
                .failures
                .iter()
                .any(|(_, failure)| failure.phase() != Phase::Try);
            let end = if repair { End::NeedsRepair } else { End::Done };
            match durable.log().finish(durable.lease(), end).await {
                Ok(()) if end == End::NeedsRepair && self.metrics.recording() => {
                    durable.ended();
                    crate::durable::publish_needing_repair(&**durable.log()).await;
                }
                Ok(()) => durable.ended(),
                // The lease goes back (on drop), so recovery ends it.
                Err(error) => tracing::warn!(
                    %error,
                    "the end of the transaction could not be written to the log; recovery will end it"
                ),
            }
        }
    }

    /// The transaction's report, or its error when a phase failed; its
    /// decision was `decision`.
    fn conclude(mut self, decision: Decision) -> Result<Report, Error> {
        let durable = self.durable.take();
        drop(durable);
        let ending = if self.failures.iter().any(|(_, f)| f.phase() != Phase::Try) {
            Ending::NeedsRepair
        } else if decision == Decision::Confirm {
            Ending::Confirmed
        } else {
            Ending::Cancelled
        };
        self.metrics.end(ending);
        let report = Report::new(self.id, self.entries);
        if self.failures.is_empty() {
            return Ok(report);
        }
        let error = Error::failed(sorted(self.failures), report);
        if error.needs_repair() {
            tracing::error!(error = %Chain(&error), "transaction needs manual repair");
        }
        Err(error)
    }
}

/// The refusal of an intent whose participants' names, kinds and data
/// together reach `limit` bytes, naming the participant that took it there.
fn oversized(participants: &[ParticipantEntry], limit: usize) -> Option<Error> {
    let mut total = 0usize;
    for participant in participants {
        let size = participant.name.len() + participant.kind.len() + participant.data.len();
        total = total.saturating_add(size);
        if total >= limit {
            let (name, kind) = (&participant.name, &participant.kind);
            let detail = format!(
                "orchestration refused: the saved data of service `{name}` (kind `{kind}`) is {} bytes, which takes the transaction's intent to {total} bytes; the transaction log holds less than {limit} bytes per transaction",
                participant.data.len()
            );
            let name = crate::name::name(name);
            return Some(Error::refused(
                ErrorKind::NotRecoverable,
                Some(name),
                detail,
            ));
        }
    }
    None
}

/// A ledger's failures in the order an [`Error`] keeps them: by phase, then
/// in the order the services were given.
fn sorted(mut failures: Vec<(usize, Failure)>) -> Vec<Failure> {
    failures.sort_by_key(|(index, failure)| (failure.phase().severity(), *index));
    failures.into_iter().map(|(_, f)| f).collect()
}

/// A transaction's lease on a log whose leases expire
/// ([`Log::lease_ttl`]), renewed while its phases run.
struct ExpiringLease {
    log: Arc<dyn Log>,
    lease: Lease,
    ttl: std::time::Duration,
    /// When the request that took or last extended it was sent.
    taken: tokio::time::Instant,
}

/// One service of a running transaction: its run of the current phase, and
/// what the engine knows of it.
pub struct Member<A: Attempts> {
    run: PhaseRun<A>,
    /// Whether the current phase still runs for this service.
    active: bool,
    /// Whether its Try started: Cancel runs only then.
    tried: bool,
}

/// What the engine does with each member, in the order of a transaction.
impl<A: Attempts> Member<A> {
    /// A member whose attempts are `attempts`.
    pub(crate) fn new(attempts: A) -> Self {
        Member {
            run: PhaseRun::new(attempts),
            active: false,
            tried: false,
        }
    }

    /// The kind and data of a recoverable service, for the log; `None` for
    /// one that cannot be rebuilt after a crash.
    fn log_entry(&self) -> Option<LogEntry> {
        self.run.service().log_entry()
    }

    /// The service's own retry policy, if it has one.
    fn retry_policy(&self) -> Option<RetryPolicy> {
        self.run.service().retry_policy()
    }

    /// Sets the member up to run `phase`: Try and Confirm always, Cancel
    /// only once its Try started; after a crash, only if the log (`logged`)
    /// does not say it succeeded, counting the attempts it logged.
    fn begin(&mut self, phase: Phase, logged: Option<&PhaseProgress>) {
        let done = logged.is_some_and(|progress| progress.succeeded);
        self.active = (phase != Phase::Cancel || self.tried) && !done;
        self.run
            .restart(logged.map_or(0, |progress| progress.attempts));
    }

    /// Takes its Try as started: a transaction resumed after a crash is
    /// cancelled everywhere, Tries that may never have run included.
    fn assume_tried(&mut self) {
        self.tried = true;
    }

    /// Polls its run of `round`, as service number `index`: ready with
    /// `None` when it has nothing (more) to run in this round.
    fn poll(
        &mut self,
        round: &Round<'_>,
        index: usize,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<PhaseEnd>> {
        if !self.active {
            return Poll::Ready(None);
        }
        // Polled in the Try round, its Try has started: Cancel runs for it.
        self.tried |= round.phase == Phase::Try;
        let outcome = std::task::ready!(self.run.poll_run(round, index, cx));
        self.active = false;
        Poll::Ready(Some(outcome))
    }

    /// After a Try round that fail-fast cut short: ends its Try if it is
    /// still running, telling whether it was.
    fn cut_short(&mut self) -> bool {
        let running = self.active && self.tried;
        if running {
            self.run.end_attempt();
            self.run.ended(Phase::Try, false);
        }
        self.active = false;
        running
    }
}

/// How a transaction runs, beyond its services' own settings.
#[derive(Clone)]
pub(crate) struct Options {
    pub(crate) settings: Settings,
    pub(crate) fail_fast: bool,
    /// Where the transaction is written, when it is durable.
    pub(crate) log: Option<LogHandle>,
}

/// A transaction log as the engine sees it: the store a durable
/// transaction is written to, and the kinds of service it can rebuild.
#[derive(Clone)]
pub(crate) struct LogHandle {
    pub(crate) store: Arc<dyn Log>,
    pub(crate) kinds: Arc<dyn Kinds>,
}

/// The kinds of service a transaction log can rebuild after a crash: a
/// durable transaction with a participant of any other kind is refused
/// before its first Try.
pub(crate) trait Kinds: Send + Sync {
    /// Whether `kind` is registered.
    fn is_registered(&self, kind: &str) -> bool;
}

impl Options {
    pub(crate) const DEFAULT: Options = Options {
        settings: Settings::DEFAULT,
        fail_fast: false,
        log: None,
    };
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("settings", &self.settings)
            .field("fail_fast", &self.fail_fast)
            .field("durable", &self.log.is_some())
            .finish()
    }
}

/// Runs transaction `id` over `members`, named `names` (already checked for
/// duplicates), to its end.
///
/// Every Try runs at once; then, if all succeeded, every Confirm, and
/// otherwise every Cancel of a service whose Try started. Each run is polled
/// as soon as its round begins, so a round that ends at once goes straight
/// on to the next, in the same poll. With fail-fast, the first failed Try
/// ends the Try round: runs still pending are dropped and runs not yet
/// polled never start. With a log, the intent is durable before the first
/// Try and the decision before the first Confirm or Cancel.
pub(crate) async fn run<A: Attempts + Send>(
    id: TransactionId,
    options: &Options,
    entries: Entries,
    members: &mut [Member<A>],
) -> Result<Report, Error> {
    let mut metrics = TransactionMetrics::start(Origin::Started);
    if let Err(refusal) = validate(options, &entries, members) {
        metrics.end(Ending::Refused);
        return Err(refusal);
    }
    let span = tracing::debug_span!("tcc_transaction", id = %id);
    let mut transaction = Transaction::new(id, options, entries, members, span, metrics);
    if let Some(log) = &options.log {
        // Boxed: the states of its awaits would make the future of every
        // transaction, durable or not, larger (an Orchestrator's: 1104
        // bytes instead of 400), and a durable one writes to its log anyway.
        return Box::pin(transaction.run_durable(log)).await;
    }
    // Nothing to write between the rounds: the decision's round begins in
    // the poll that ends the Try round.
    transaction.begin_round(Phase::Try, None);
    poll_fn(|cx| transaction.poll_rounds(cx, AtDecision::GoOn)).await;
    transaction.conclude()
}

/// Finishes a transaction the log holds unfinished, under `lease`: its
/// decision, or Cancel when it has none (presumed abort: every participant
/// is cancelled, those whose Try may never have run included), carried out
/// on every participant not yet done, each retry loop resumed from the
/// attempts the log counted. `origin` says what its end counts in.
pub(crate) async fn resume<A: Attempts + Send>(
    origin: Origin,
    options: &Options,
    lease: LeaseGuard,
    record: &TransactionRecord,
    members: &mut [Member<A>],
) -> Result<Report, Error> {
    let id = record.intent.id;
    let entries = Entries::listed(record.intent.participants.iter().map(|p| p.name.as_str()));
    let span = tracing::info_span!("tcc_recovery", id = %id);
    let metrics = TransactionMetrics::start(origin);
    let mut transaction = Transaction::new(id, options, entries.clone(), members, span, metrics);
    // The ledger holds the lease first, so that a refusal gives it back.
    transaction.ledger.resume(lease, record);
    if let Err(refusal) = validate(options, &entries, transaction.members) {
        transaction.ledger.refused();
        return Err(refusal);
    }
    for member in transaction.members.iter_mut() {
        member.assume_tried();
    }
    let decision = record.status.decision().unwrap_or(Decision::Cancel);
    transaction
        .span
        .in_scope(|| tracing::info!(?decision, "recovering the transaction"));
    transaction.carry_out(decision, Some(record)).await
}

/// The refusals a transaction can meet before any phase runs: no services,
/// or a retry policy out of range.
fn validate<A: Attempts + Send>(
    options: &Options,
    entries: &Entries,
    members: &[Member<A>],
) -> Result<(), Error> {
    if entries.is_empty() {
        let detail = "orchestration refused: it has no services";
        return Err(Error::refused(
            ErrorKind::NoServices,
            None,
            detail.to_owned(),
        ));
    }
    let policies =
        std::iter::once(options.settings.retry).chain(members.iter().map(Member::retry_policy));
    let invalid = policies
        .flatten()
        .find_map(|policy| policy.validate().err());
    match invalid {
        Some(invalid) => Err(Error::refused(
            ErrorKind::InvalidRetryPolicy,
            None,
            format!("orchestration refused: {invalid}"),
        )),
        None => Ok(()),
    }
}

/// A transaction while it runs.
struct Transaction<'a, A: Attempts> {
    id: TransactionId,
    options: &'a Options,
    /// Entered while the transaction is polled, so its phases can read it.
    context: Option<Context>,
    /// Entered while the transaction is polled, for its logs.
    span: tracing::Span,
    ledger: Ledger,
    members: &'a mut [Member<A>],
    /// The phase of the round running.
    phase: Phase,
    /// Whether every run of the round so far succeeded.
    all_succeeded: bool,
    /// The decision the Try round came to.
    decision: Decision,
}

impl<'a, A: Attempts + Send> Transaction<'a, A> {
    fn new(
        id: TransactionId,
        options: &'a Options,
        entries: Entries,
        members: &'a mut [Member<A>],
        span: tracing::Span,
        metrics: TransactionMetrics,
    ) -> Self {
        Transaction {
            id,
            options,
            context: Some(Context::new(id, entries.clone())),
            span,
            ledger: Ledger::new(id, entries, metrics),
            members,
            phase: Phase::Try,
            all_succeeded: true,
            decision: Decision::Cancel,
        }
    }

    /// Runs the transaction with its `log`: the intent written before the
    /// Try round, then [`carry_out`](Transaction::carry_out).
    async fn run_durable(mut self, log: &LogHandle) -> Result<Report, Error> {
        let span = self.span.clone();
        let begun = self.ledger.begin(log, self.members).instrument(span).await;
        if let Err(refusal) = begun {
            self.ledger.refused();
            return Err(refusal);
        }
        self.begin_round(Phase::Try, None);
        self.run_round().await?;
        let decision = self.decision;
        self.carry_out(decision, None).await
    }

    /// Makes `decision` durable (the log's, if it already holds one), runs
    /// its phase on every participant and ends the transaction: the steps
    /// that await the log.
    async fn carry_out(
        mut self,
        decision: Decision,
        resumed: Option<&TransactionRecord>,
    ) -> Result<Report, Error> {
        let span = self.span.clone();
        let decision = match resumed.and_then(|record| record.status.decision()) {
            // Already durable: nothing to write.
            Some(logged) => logged,
            None => {
                self.ledger
                    .decide(decision)
                    .instrument(span.clone())
                    .await?
            }
        };
        self.decision = decision;
        self.begin_round(decision.phase(), resumed);
        self.run_round().await?;
        self.ledger.finish().instrument(span).await;
        self.conclude()
    }

    /// Runs the round begun, renewing the lease meanwhile when the log's
    /// leases expire, and calling phases only while the lease is trusted:
    /// until two thirds of its TTL after the request that took or last
    /// renewed it was sent. (The lease runs a whole TTL from the store's
    /// clock at that request, which is later; the third left covers a slow
    /// answer and clocks that run at different rates.) Past that, the round
    /// waits, starting no call, until a renewal succeeds.
    ///
    /// A renewal the store refuses (another coordinator claimed the
    /// transaction: `Fenced`), or one that keeps failing until the lease
    /// has surely expired, stops the round: the calls running are dropped,
    /// none is made after, nothing more is written under the lease, and the
    /// transaction ends with [`ErrorKind::LogFailed`], left to the
    /// coordinator that holds it or to recovery once the lease expires.
    async fn run_round(&mut self) -> Result<(), Error> {
        let Some(ExpiringLease {
            log,
            lease,
            ttl,
            taken,
        }) = self.ledger.expiring_lease()
        else {
            poll_fn(|cx| self.poll_rounds(cx, AtDecision::Return)).await;
            return Ok(());
        };
        let trust = ttl * 2 / 3;
        // At least a millisecond apart, whatever the TTL.
        let every = (ttl / 3).max(std::time::Duration::from_millis(1));
        let trusted_until = std::sync::Mutex::new(taken + trust);
        let trusted = || *trusted_until.lock().unwrap_or_else(|e| e.into_inner());
        let renewals = async {
            let mut due = taken + every;
            loop {
                tokio::time::sleep_until(due).await;
                let sent = tokio::time::Instant::now();
                let failure = match tokio::time::timeout(ttl, log.renew(&lease)).await {
                    Ok(Ok(())) => {
                        *trusted_until.lock().unwrap_or_else(|e| e.into_inner()) = sent + trust;
                        due = sent + every;
                        continue;
                    }
                    Ok(Err(error))
                        if matches!(
                            error.kind(),
                            LogErrorKind::Fenced | LogErrorKind::NotFound
                        ) =>
                    {
                        return error;
                    }
                    Ok(Err(error)) => error,
                    Err(_) => LogError::new(
                        LogErrorKind::Io,
                        format!("a renewal of the lease took longer than the lease ({ttl:?})"),
                    ),
                };
                // The store unreachable for a while (a connection killed, a
                // restart): tried again until the lease has surely expired.
                if tokio::time::Instant::now() >= trusted() + ttl {
                    return failure;
                }
                tracing::debug!(error = %failure, "lease renewal failed; trying again");
                due = tokio::time::Instant::now() + every / 4;
            }
        };
        let rounds = poll_fn(|cx| {
            if tokio::time::Instant::now() >= trusted() {
                // Woken again by the renewal's end, which either trusts the
                // lease anew or stops the round.
                return Poll::Pending;
            }
            self.poll_rounds(cx, AtDecision::Return)
        });
        tokio::select! {
            // The renewal first: a lease found lost stops the round before
            // the same wake-up could start another call.
            biased;
            error = renewals => {
                let detail = format!(
                    "transaction {} was stopped before its next {} call: its lease on the transaction log could not be renewed ({error}); the coordinator that took it over, or recovery once the lease expires, finishes it",
                    self.id, self.phase
                );
                self.span.in_scope(|| tracing::warn!(%error, "lease lost; transaction stopped"));
                Err(self.ledger.cut_short(self.phase, detail))
            }
            () = rounds => Ok(()),
        }
    }

    /// The transaction's report, or its error.
    ///
    /// Inlined: called, it would take the whole transaction (160 bytes)
    /// copied into its frame, 31-45 instructions a run (BENCHMARKS.md,
    /// "The members, smaller").
    #[inline]
    fn conclude(self) -> Result<Report, Error> {
        let _entered = self.span.enter();
        self.ledger.conclude(self.decision)
    }

    /// Sets up the round of `phase` on every member it applies to (Try and
    /// Confirm: all; Cancel: those whose Try started; after a crash, those
    /// not yet done).
    fn begin_round(&mut self, phase: Phase, resumed: Option<&TransactionRecord>) {
        begin_members(self.members, phase, resumed);
        self.phase = phase;
        self.all_succeeded = true;
        self.ledger.round_begun();
    }

    /// Polls the round running, every run at once; when the Try round ends,
    /// comes to the decision and does what `at_decision` says. Ready when a
    /// round ends that it does not go on from.
    fn poll_rounds(
        &mut self,
        cx: &mut std::task::Context<'_>,
        at_decision: AtDecision,
    ) -> Poll<()> {
        let _entered = self.span.enter();
        Context::enter(&mut self.context, || {
            loop {
                let round = Round {
                    transaction_id: self.id,
                    phase: self.phase,
                    settings: Some(&self.options.settings),
                    recording: self.ledger.metrics.recording(),
                };
                let stop_on_failure = self.phase == Phase::Try && self.options.fail_fast;
                let mut pending = false;
                let mut stopped = false;
                for (index, member) in self.members.iter_mut().enumerate() {
                    let outcome = match member.poll(&round, index, cx) {
                        Poll::Pending => {
                            pending = true;
                            continue;
                        }
                        Poll::Ready(None) => continue,
                        Poll::Ready(Some(outcome)) => outcome,
                    };
                    let failed = outcome.result.is_err();
                    self.all_succeeded &= !failed;
                    self.ledger.record(self.phase, outcome);
                    if failed && stop_on_failure {
                        stopped = true;
                        break;
                    }
                }
                if pending && !stopped {
                    return Poll::Pending;
                }
                if self.phase != Phase::Try {
                    return Poll::Ready(());
                }
                if stopped {
                    // Tries that fail-fast cut short started, so they will
                    // be cancelled like the rest; they are reported as
                    // started but not succeeded.
                    for (index, member) in self.members.iter_mut().enumerate() {
                        if member.cut_short() {
                            self.ledger.record_dropped_try(index);
                        }
                    }
                }
                self.decision = if self.all_succeeded {
                    tracing::debug!("every try succeeded; confirming");
                    Decision::Confirm
                } else {
                    tracing::debug!("a try failed; cancelling every started service");
                    Decision::Cancel
                };
                if at_decision == AtDecision::Return {
                    return Poll::Ready(());
                }
                // As `begin_round`, on the fields the context leaves free.
                self.phase = self.decision.phase();
                self.all_succeeded = true;
                self.ledger.round_begun();
                begin_members(self.members, self.phase, None);
            }
        })
    }
}

/// Sets each member up to run `phase`; after a crash, from where the log
/// says it got to.
fn begin_members<A: Attempts + Send>(
    members: &mut [Member<A>],
    phase: Phase,
    resumed: Option<&TransactionRecord>,
) {
    for (index, member) in members.iter_mut().enumerate() {
        let logged = resumed.and_then(|record| record.phase_progress(index, phase));
        member.begin(phase, logged);
    }
}

/// The runtime an orchestration runs on, or the error that says there is
/// none (counted as a refused transaction).
pub(crate) fn runtime() -> Result<tokio::runtime::Handle, Error> {
    tokio::runtime::Handle::try_current().map_err(|_| {
        crate::metrics::refused();
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
    let mut running = RunToEnd {
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

/// What [`Transaction::poll_rounds`] does once the Try round has come to
/// its decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AtDecision {
    /// Returns: a durable transaction writes its decision before its next
    /// round.
    Return,
    /// Begins the decision's round at once: nothing to write in between.
    GoOn,
}

/// A running transaction that moves to a task of its own when the future
/// polling it is dropped before its end.
struct RunToEnd {
    future: Option<BoxFuture<'static, Result<Report, Error>>>,
    runtime: tokio::runtime::Handle,
}

impl Drop for RunToEnd {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            tracing::debug!("caller went away; the transaction goes on in its own task");
            drop(self.runtime.spawn(future));
        }
    }
}

/// The refusal of an orchestration in which two services are named `twice`
/// (counted as a refused transaction).
pub(crate) fn duplicate(twice: &str) -> Error {
    crate::metrics::refused();
    Error::refused(
        ErrorKind::DuplicateService,
        Some(crate::name::name(twice)),
        format!("orchestration refused: two services are named `{twice}`"),
    )
}

/// The first name that an earlier one equals: compared pairwise for a few
/// names (no allocation), through a hash set for more.
pub(crate) fn first_duplicate<'a>(
    mut names: impl ExactSizeIterator<Item = &'a str>,
) -> Option<&'a str> {
    const FEW: usize = 16;
    if names.len() <= FEW {
        let mut seen = [""; FEW];
        for (i, text) in names.enumerate() {
            if seen[..i].contains(&text) {
                return Some(text);
            }
            seen[i] = text;
        }
        return None;
    }
    // FxHash: names are short and not chosen by an attacker, so a fast
    // hash beats the default SipHash here.
    let mut seen =
        rustc_hash::FxHashSet::with_capacity_and_hasher(names.len(), rustc_hash::FxBuildHasher);
    names.find(|name| !seen.insert(*name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant(name: &str, data: usize) -> ParticipantEntry {
        ParticipantEntry {
            name: name.to_owned(),
            kind: "kind".to_owned(),
            data: vec![0; data],
        }
    }

    /// An `Orchestrator` keeps a member for each of its services while a
    /// transaction runs: at 100,000 services, each 8 bytes more is 0.8 MB
    /// more of peak memory (`cargo bench -p in-memory-benches --bench memory`).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_member_of_an_orchestrator_takes_48_bytes() {
        use crate::service::ServiceAttempts;
        assert_eq!(std::mem::size_of::<Member<ServiceAttempts<'_>>>(), 48);
    }

    /// The check at begin, against a small limit: the real one (2 GiB)
    /// cannot be reached without allocating it.
    #[test]
    fn a_payload_the_log_cannot_hold_is_refused_at_begin() {
        // Each participant counts its name and kind ("a"/"b" + "kind": 5).
        let fits = [participant("a", 45), participant("b", 44)];
        assert!(oversized(&fits, 100).is_none());
        let one_byte_more = [participant("a", 45), participant("b", 45)];
        let error = oversized(&one_byte_more, 100).expect("refused");
        assert_eq!(error.kind(), ErrorKind::NotRecoverable);
        assert_eq!(error.service_name(), "b");
        let text = error.to_string();
        assert!(
            text.contains("service `b` (kind `kind`) is 45 bytes"),
            "{text}"
        );
        assert!(text.contains("intent to 100 bytes"), "{text}");
        let alone = [participant("a", 1000), participant("b", 0)];
        assert_eq!(oversized(&alone, 100).unwrap().service_name(), "a");
    }
}
