//! Orchestrations whose services' types are known at compile time: what
//! `tcc!` expands to.
//!
//! An [`Orchestrator`](crate::Orchestrator) runs type-erased [`Service`]s,
//! so each phase of each service is a boxed future. A `tcc!` block knows its
//! services' types, so it keeps each service's phase future in a slot of its
//! own future (pinned there by the expansion) and polls the slots in turn: no
//! handle to build, no allocation per service. The services are a list of
//! [`Member`]s nested as `(first, (second, (..., ())))`, and [`Members`]
//! walks it.
//!
//! Behaviour is the `Orchestrator`'s in every respect: concurrent Tries,
//! retried Confirms and Cancels, fail-fast, timeouts, panics caught, the
//! context, the report and the error. It shares its [`PhaseRun`] and
//! [`Ledger`] with it.

use std::future::{Future, poll_fn};
use std::ops::ControlFlow;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::Either;

use crate::context::{Context, TransactionId};
use crate::error::{BoxError, Error};
use crate::phase::Phase;
use crate::report::{Entries, Report};
use crate::retry::RetryPolicy;
use crate::run::{Attempts, Outcome, PhaseRun, Retries};
use crate::service::{Service, Settings, TccService};
use crate::transaction::{self, Claims, Ledger, first_duplicate, resolve};

/// What `tcc!` accepts as a listed service: a [`TccService`] (or an `Arc` of
/// one), a [`Service`] built by hand, or an inline service.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a TCC service",
    label = "not a TCC service",
    note = "annotate its impl block with #[tcc_service] and mark one method each with #[try_phase], #[confirm] and #[cancel]"
)]
pub trait Participant: Send + Sync + 'static {
    /// The name in reports, errors and logs.
    fn name(&self) -> &str;

    /// The service's own retry limit, used when the block sets none.
    fn max_retries(&self) -> Option<u32>;

    /// The future of one attempt at `phase`.
    fn phase(&self, phase: Phase) -> impl Future<Output = Result<(), BoxError>> + Send + '_;

    /// The handle, when the participant is a [`Service`]: its settings, flags
    /// and claim then apply as in an `Orchestrator`.
    fn as_service(&self) -> Option<&Service> {
        None
    }
}

impl<S: TccService> Participant for S {
    fn name(&self) -> &str {
        self.service_name()
    }

    fn max_retries(&self) -> Option<u32> {
        TccService::max_retries(self)
    }

    fn phase(&self, phase: Phase) -> impl Future<Output = Result<(), BoxError>> + Send + '_ {
        match phase {
            Phase::Try => Either::Left(self.try_phase()),
            Phase::Confirm => Either::Right(Either::Left(self.confirm())),
            Phase::Cancel => Either::Right(Either::Right(self.cancel())),
        }
    }
}

impl Participant for Service {
    fn name(&self) -> &str {
        Service::name(self)
    }

    fn max_retries(&self) -> Option<u32> {
        self.settings().max_retries
    }

    fn phase(&self, phase: Phase) -> impl Future<Output = Result<(), BoxError>> + Send + '_ {
        self.shared.phases.run(phase)
    }

    fn as_service(&self) -> Option<&Service> {
        Some(self)
    }
}

/// An inline service of `tcc!`: its name, and one function that builds the
/// future of a phase, so that the block's environment is captured once.
pub struct Inline<F> {
    name: &'static str,
    phases: F,
}

impl<F> Inline<F> {
    /// An inline service named `name`.
    pub fn new(name: &'static str, phases: F) -> Self {
        Inline { name, phases }
    }
}

impl<F, Fut> Participant for Inline<F>
where
    F: Fn(Phase) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    fn name(&self) -> &str {
        self.name
    }

    fn max_retries(&self) -> Option<u32> {
        None
    }

    fn phase(&self, phase: Phase) -> impl Future<Output = Result<(), BoxError>> + Send + '_ {
        (self.phases)(phase)
    }
}

/// Checks a listed service of `tcc!`: the bound carries the "not a TCC
/// service" message to the value.
pub fn check<P: Participant>(_: &P) {}

/// A listed service of `tcc!`, on its way to becoming a participant:
/// `Listed(value).participant()` is the value itself when it is one, and
/// [`NotAService`] when it is not, so that the rest of the block still
/// type-checks and [`check`] gives the one error.
pub struct Listed<T>(pub T);

/// The method `Listed(value).participant()` finds first (the receiver by
/// value): for a value that is a participant.
pub trait IsParticipant {
    /// The participant's type.
    type Participant: Participant;
    /// The value itself.
    fn participant(self) -> Self::Participant;
}

impl<P: Participant> IsParticipant for Listed<P> {
    type Participant = P;
    fn participant(self) -> P {
        self.0
    }
}

/// The method `Listed(value).participant()` finds otherwise (the receiver
/// borrowed): for a value that is not a participant.
pub trait IsNotParticipant {
    /// A stand-in.
    fn participant(&self) -> NotAService;
}

impl<T> IsNotParticipant for Listed<T> {
    fn participant(&self) -> NotAService {
        NotAService
    }
}

/// What stands in for a listed value that is not a service, in a block that
/// does not compile.
pub struct NotAService;

impl Participant for NotAService {
    fn name(&self) -> &str {
        "not a service"
    }

    fn max_retries(&self) -> Option<u32> {
        None
    }

    fn phase(&self, _: Phase) -> impl Future<Output = Result<(), BoxError>> + Send + '_ {
        std::future::ready(Err("not a service".into()))
    }
}

/// One service of a `tcc!` block: the service, the slot its phase futures
/// run in, and its run of the current phase.
pub struct Member<'a, P, F, M>
where
    P: Participant,
    F: Future<Output = Result<(), BoxError>>,
    M: Fn(Phase) -> F,
{
    participant: &'a P,
    run: PhaseRun<Slot<'a, P, F, M>>,
    /// Whether the current phase still runs for this service.
    active: bool,
    /// Whether its Try started: Cancel runs only then.
    tried: bool,
}

/// A member of a `tcc!` block: `participant`, whose phase futures
/// `make_phase` builds into `slot` (an empty slot pinned by the expansion).
pub fn member<'a, P, F, M>(
    participant: &'a P,
    slot: Pin<&'a mut Option<F>>,
    make_phase: M,
) -> Member<'a, P, F, M>
where
    P: Participant,
    F: Future<Output = Result<(), BoxError>> + Send,
    M: Fn(Phase) -> F + Send,
{
    let attempts = Slot {
        participant,
        slot,
        make_phase,
    };
    Member {
        participant,
        // Set up for real by `Members::begin`, before each phase.
        run: PhaseRun::new(
            0,
            attempts,
            TransactionId::from_u128(0),
            Phase::Try,
            Retries::NONE,
            None,
        ),
        active: false,
        tried: false,
    }
}

/// Where one member's attempts run: a pinned slot, refilled each attempt.
struct Slot<'a, P, F, M> {
    participant: &'a P,
    slot: Pin<&'a mut Option<F>>,
    make_phase: M,
}

impl<P, F, M> Attempts for Slot<'_, P, F, M>
where
    P: Participant,
    F: Future<Output = Result<(), BoxError>>,
    M: Fn(Phase) -> F,
{
    fn name(&self) -> &str {
        self.participant.name()
    }

    fn poll_attempt(
        &mut self,
        phase: Phase,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<(), BoxError>> {
        if self.slot.is_none() {
            self.slot.set(Some((self.make_phase)(phase)));
        }
        match self.slot.as_mut().as_pin_mut() {
            Some(future) => future.poll(cx),
            None => Poll::Ready(Err("the phase's future was dropped before it ended".into())),
        }
    }

    fn end_attempt(&mut self) {
        self.slot.set(None);
    }

    fn started(&self, phase: Phase) {
        if let Some(service) = self.participant.as_service() {
            service.mark_started(phase);
        }
    }

    fn ended(&self, phase: Phase, succeeded: bool) {
        if let Some(service) = self.participant.as_service() {
            service.record(phase, succeeded);
        }
    }
}

/// The services of a `tcc!` block, nested as `(first, (second, (..., ())))`.
pub trait Members: Send {
    /// Calls `f` with each participant that is a [`Service`] handle.
    #[doc(hidden)]
    fn visit(&self, f: &mut impl FnMut(&Service));

    /// Sets each service up to run `phase`, from `index` on.
    #[doc(hidden)]
    fn begin(&mut self, index: usize, id: TransactionId, phase: Phase, settings: &Settings);

    /// Runs the phase at once on every member it applies to (Try and
    /// Confirm: all; Cancel: those whose Try started). Polls every run still
    /// active, starting those not yet started, in order, and hands each
    /// outcome to `record`. Breaks as soon as `record` says to
    /// stop; otherwise continues with whether a run is still pending.
    #[doc(hidden)]
    fn poll_runs(
        &mut self,
        cx: &mut std::task::Context<'_>,
        record: &mut impl FnMut(Outcome) -> bool,
    ) -> ControlFlow<(), bool>;

    /// After the Try phase: notes which services' Tries started, drops the
    /// runs that fail-fast cut short and calls `dropped` with their indexes.
    #[doc(hidden)]
    fn settle_tries(&mut self, index: usize, dropped: &mut impl FnMut(usize));
}

impl Members for () {
    fn visit(&self, _: &mut impl FnMut(&Service)) {}
    fn begin(&mut self, _: usize, _: TransactionId, _: Phase, _: &Settings) {}
    fn poll_runs(
        &mut self,
        _: &mut std::task::Context<'_>,
        _: &mut impl FnMut(Outcome) -> bool,
    ) -> ControlFlow<(), bool> {
        ControlFlow::Continue(false)
    }
    fn settle_tries(&mut self, _: usize, _: &mut impl FnMut(usize)) {}
}

impl<P, F, M, T> Members for (Member<'_, P, F, M>, T)
where
    P: Participant,
    F: Future<Output = Result<(), BoxError>> + Send,
    M: Fn(Phase) -> F + Send,
    T: Members,
{
    fn visit(&self, f: &mut impl FnMut(&Service)) {
        if let Some(service) = self.0.participant.as_service() {
            f(service);
        }
        self.1.visit(f);
    }

    fn begin(&mut self, index: usize, id: TransactionId, phase: Phase, settings: &Settings) {
        let member = &mut self.0;
        member.active = phase != Phase::Cancel || member.tried;
        let participant = member.participant;
        let own = match participant.as_service() {
            Some(service) => *service.settings(),
            None => Settings {
                max_retries: participant.max_retries(),
                ..Settings::DEFAULT
            },
        };
        let (retries, timeout) = resolve(settings, &own, phase);
        member.run.restart(index, id, phase, retries, timeout);
        self.1.begin(index + 1, id, phase, settings);
    }

    fn poll_runs(
        &mut self,
        cx: &mut std::task::Context<'_>,
        record: &mut impl FnMut(Outcome) -> bool,
    ) -> ControlFlow<(), bool> {
        let member = &mut self.0;
        if member.active
            && let Poll::Ready(outcome) = member.run.poll_run(cx)
        {
            member.active = false;
            if record(outcome) {
                return ControlFlow::Break(());
            }
        }
        let pending = self.0.active;
        let rest_pending = self.1.poll_runs(cx, record)?;
        ControlFlow::Continue(pending || rest_pending)
    }

    fn settle_tries(&mut self, index: usize, dropped: &mut impl FnMut(usize)) {
        let member = &mut self.0;
        member.tried = member.run.attempts() > 0;
        if member.active && member.tried {
            member.run.end_attempt();
            dropped(index);
        }
        member.active = false;
        self.1.settle_tries(index + 1, dropped);
    }
}

/// The settings of a `tcc!` block, with the `Orchestrator`'s builder
/// methods, and the runner of its transaction.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    id: TransactionId,
    settings: Settings,
    fail_fast: bool,
}

impl Plan {
    /// Default settings, and the id of the transaction to come.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Plan {
            id: TransactionId::generate(),
            settings: Settings::DEFAULT,
            fail_fast: false,
        }
    }

    /// As [`Orchestrator::max_retries`](crate::Orchestrator::max_retries).
    #[must_use]
    pub fn max_retries(mut self, n: u32) -> Self {
        self.settings.max_retries = Some(n);
        self
    }

    /// As [`Orchestrator::retry`](crate::Orchestrator::retry).
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.settings.set_retry(policy);
        self
    }

    /// As [`Orchestrator::try_timeout`](crate::Orchestrator::try_timeout).
    #[must_use]
    pub fn try_timeout(mut self, timeout: Duration) -> Self {
        self.settings.try_timeout = Some(timeout);
        self
    }

    /// As [`Orchestrator::fail_fast`](crate::Orchestrator::fail_fast).
    #[must_use]
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.fail_fast = fail_fast;
        self
    }

    /// Runs `transaction` (the block's future, which ends in
    /// [`run`](Plan::run)) as `Orchestrator::orchestrate` runs its own: in
    /// the caller's future, moved to a task of its own if the caller drops
    /// it before the end, refused outside a tokio runtime.
    ///
    /// The transaction is boxed here, once: it holds every service's slot,
    /// so the future returned, which callers move about, stays small.
    pub fn start<T>(self, transaction: T) -> impl Future<Output = Result<Report, Error>> + Send
    where
        T: Future<Output = Result<Report, Error>> + Send + 'static,
    {
        // Moved once, into its box: it is the size of every service's slot.
        // Its span is entered by `run`, inside.
        let transaction = Box::pin(transaction);
        async move {
            let runtime = transaction::runtime()?;
            transaction::drive(self.id, runtime, transaction).await
        }
    }

    /// Runs the transaction over `members`, whose names are `names`, to its
    /// end and reports it.
    pub async fn run<L: Members>(self, names: &[&str], members: &mut L) -> Result<Report, Error> {
        let Plan { id, settings, .. } = self;
        if let Some(twice) = first_duplicate(names.iter().copied()) {
            return Err(transaction::duplicate(twice));
        }
        let mut services = Vec::new();
        let mut invalid = settings.retry.and_then(|policy| policy.validate().err());
        members.visit(&mut |service| {
            let own = service.settings().retry;
            invalid = invalid
                .take()
                .or_else(|| own.and_then(|policy| policy.validate().err()));
            services.push(service.clone());
        });
        if let Some(invalid) = invalid {
            return Err(transaction::invalid_policy(invalid));
        }
        let claims = Claims::claim(services)?;
        // From an iterator of known length: one allocation, which the
        // context and the report share.
        let mut ledger = Ledger::new(id, Entries::listed(names.iter().copied()));
        let mut context = Some(Context::new(id, ledger.entries().names()));
        let mut phase = Phase::Try;
        members.begin(0, id, phase, &settings);
        let mut all_succeeded = true;
        // The rounds run in one loop, so that a round that ends at once goes
        // straight on to the next, in the same poll and the same context.
        let span = tracing::debug_span!("tcc_transaction", id = %id);
        poll_fn(|cx| {
            let _entered = span.enter();
            Context::enter(&mut context, || {
                loop {
                    let stop_on_failure = phase == Phase::Try && self.fail_fast;
                    let mut record = |outcome: Outcome| {
                        all_succeeded &= outcome.result.is_ok();
                        let stop = stop_on_failure && outcome.result.is_err();
                        ledger.record(phase, outcome);
                        stop
                    };
                    if let ControlFlow::Continue(true) = members.poll_runs(cx, &mut record) {
                        return Poll::Pending;
                    }
                    if phase != Phase::Try {
                        return Poll::Ready(());
                    }
                    // Tries that fail-fast cut short started, so they will be
                    // cancelled like the rest; they are reported as started
                    // but not succeeded.
                    members.settle_tries(0, &mut |index| {
                        all_succeeded = false;
                        ledger.record_dropped_try(index);
                    });
                    phase = if all_succeeded {
                        tracing::debug!("every try succeeded; confirming");
                        Phase::Confirm
                    } else {
                        tracing::debug!("a try failed; cancelling every started service");
                        Phase::Cancel
                    };
                    members.begin(0, id, phase, &settings);
                }
            })
        })
        .await;
        drop(claims);
        ledger.finish()
    }
}
