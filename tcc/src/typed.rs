//! Orchestrations whose services' types are known at compile time: what
//! `tcc!` expands to.
//!
//! An [`Orchestrator`](crate::Orchestrator) runs type-erased [`Service`]s,
//! so each phase of each service is a boxed future. A `tcc!` block knows its
//! services' types, so it keeps each service's phase future in a slot of its
//! own future (pinned there by the expansion) and polls the slots in turn: no
//! handle to build, no allocation per service. The engine walks the block's
//! [`Member`]s, an array on the block's stack, each pointing at its
//! service's [`Slot`] as a [`SlotRef`] (`&mut dyn Attempts`).
//!
//! Behaviour is the `Orchestrator`'s in every respect: both run on the one
//! engine ([`crate::engine`]); only where the attempts' futures live differs.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::Either;

use crate::attempt::Attempts;
use crate::engine::{self, Member, Options};
use crate::error::{BoxError, Error};
use crate::id::TransactionId;
use crate::phase::Phase;
use crate::recoverable::{LogEntry, Recoverable};
use crate::report::{Entries, Report};
use crate::retry::RetryPolicy;
use crate::service::Service;
use crate::settings::Settings;
use crate::tcc_service::TccService;
use crate::transaction_log::TransactionLog;

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

    /// The handle, when the participant is a [`Service`]: its settings and
    /// flags then apply as in an `Orchestrator`.
    fn as_service(&self) -> Option<&Service> {
        None
    }

    /// The kind and data of a participant the log can rebuild; `None` for
    /// one it cannot (a durable transaction refuses it).
    fn log_entry(&self) -> Option<LogEntry> {
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

    fn log_entry(&self) -> Option<LogEntry> {
        Service::log_entry(self)
    }
}

/// What a durable `tcc!` block accepts as a listed service: a
/// [`Recoverable`] type (or an `Arc` of one), or a [`Service`] (checked when
/// the transaction starts: one built with `Service::recoverable`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be rebuilt after a crash, so it cannot join a durable transaction",
    label = "not recoverable",
    note = "derive tcc::Recoverable for it (its per-transaction fields are saved in the log, its #[recoverable(resource)] fields come from the application at start), or leave out the block's `log` setting"
)]
pub trait Saveable {
    /// Its kind and data, for the log.
    fn log_entry(&self) -> Option<LogEntry>;
}

impl<S: Recoverable> Saveable for S {
    fn log_entry(&self) -> Option<LogEntry> {
        Some((S::KIND, self.save()))
    }
}

impl Saveable for Service {
    fn log_entry(&self) -> Option<LogEntry> {
        Service::log_entry(self)
    }
}

/// Checks a listed service of a durable `tcc!` block: the bound carries the
/// "cannot be rebuilt after a crash" message to the value.
pub fn check_durable<P: Saveable>(_: &P) {}

/// A listed service of a durable `tcc!` block: the value, with its data for
/// the log.
pub struct Durable<P>(pub P);

impl<P: Participant + Saveable> Participant for Durable<P> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn max_retries(&self) -> Option<u32> {
        self.0.max_retries()
    }

    fn phase(&self, phase: Phase) -> impl Future<Output = Result<(), BoxError>> + Send + '_ {
        self.0.phase(phase)
    }

    fn as_service(&self) -> Option<&Service> {
        self.0.as_service()
    }

    fn log_entry(&self) -> Option<LogEntry> {
        Saveable::log_entry(&self.0)
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

/// The attempts of a listed service of a `tcc!` block: `participant`, whose
/// phase futures `make_phase` builds into `slot` (an empty slot pinned by
/// the expansion).
pub fn slot<'a, P, F, M>(
    participant: &'a P,
    slot: Pin<&'a mut Option<F>>,
    make_phase: M,
) -> Slot<'a, P, F, M>
where
    P: Participant,
    F: Future<Output = Result<(), BoxError>> + Send,
    M: Fn(Phase) -> F + Send,
{
    Slot {
        participant,
        slot,
        make_phase,
    }
}

/// The attempts of a listed service, whatever its type: what the engine
/// walks a `tcc!` block's services as.
pub type SlotRef<'a> = &'a mut (dyn Attempts + Send + 'a);

/// A member of a `tcc!` block, its attempts in `slot`.
pub fn member<'a>(slot: SlotRef<'a>) -> Member<SlotRef<'a>> {
    Member::new(slot)
}

/// Where one member's attempts run: a pinned slot, refilled each attempt.
pub struct Slot<'a, P, F, M> {
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

    fn log_entry(&self) -> Option<LogEntry> {
        self.participant.log_entry()
    }

    fn retry_policy(&self) -> Option<RetryPolicy> {
        self.participant.as_service()?.settings().retry
    }

    fn settings(&self) -> Settings {
        match self.participant.as_service() {
            Some(service) => *service.settings(),
            None => Settings {
                max_retries: self.participant.max_retries(),
                ..Settings::DEFAULT
            },
        }
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

    fn ended(&self, status: &mut u8, phase: Phase, succeeded: bool) {
        if let Some(service) = self.participant.as_service() {
            service.publish(status, phase, succeeded);
        }
    }
}

/// The settings of a `tcc!` block, with the `Orchestrator`'s builder
/// methods, and the runner of its transaction.
#[derive(Clone, Debug)]
pub struct Block {
    id: TransactionId,
    options: Options,
}

impl Block {
    /// Default settings, and the id of the transaction to come.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Block {
            id: TransactionId::generate(),
            options: Options::DEFAULT,
        }
    }

    /// As [`Orchestrator::max_retries`](crate::Orchestrator::max_retries).
    #[must_use]
    pub fn max_retries(mut self, n: u32) -> Self {
        self.options.settings.max_retries = Some(n);
        self
    }

    /// As [`Orchestrator::retry`](crate::Orchestrator::retry).
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.options.settings.set_retry(policy);
        self
    }

    /// As [`Orchestrator::try_timeout`](crate::Orchestrator::try_timeout).
    #[must_use]
    pub fn try_timeout(mut self, timeout: Duration) -> Self {
        self.options.settings.try_timeout = Some(timeout);
        self
    }

    /// As [`Orchestrator::attempt_timeout`](crate::Orchestrator::attempt_timeout).
    #[must_use]
    pub fn attempt_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.options.settings.attempt_timeout = Some(timeout.into());
        self
    }

    /// As [`Orchestrator::log`](crate::Orchestrator::log).
    #[must_use]
    pub fn log(mut self, log: &TransactionLog) -> Self {
        self.options.log = Some(log.handle());
        self
    }

    /// The transaction's id, chosen by the caller (so that it can look the
    /// transaction up later), instead of a fresh one.
    #[must_use]
    pub fn id(mut self, id: TransactionId) -> Self {
        self.id = id;
        self
    }

    /// As [`Orchestrator::fail_fast`](crate::Orchestrator::fail_fast).
    #[must_use]
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.options.fail_fast = fail_fast;
        self
    }

    /// Runs `transaction` (the block's future, which ends in
    /// [`run`](Block::run)) as `Orchestrator::orchestrate` runs its own: in
    /// the caller's future, moved to a task of its own if the caller drops
    /// it before the end, refused outside a tokio runtime.
    ///
    /// The transaction is boxed here, once: it holds every service's slot,
    /// so the future returned, which callers move about, stays small.
    pub fn start<T>(self, transaction: T) -> impl Future<Output = Result<Report, Error>> + Send
    where
        T: Future<Output = Result<Report, Error>> + Send + 'static,
    {
        let transaction = Box::pin(transaction);
        async move {
            let runtime = engine::runtime()?;
            engine::drive(self.id, runtime, transaction).await
        }
    }

    /// Runs the transaction over `members`, whose names are `names`, to its
    /// end and reports it.
    pub async fn run(
        &self,
        names: &[&str],
        members: &mut [Member<SlotRef<'_>>],
    ) -> Result<Report, Error> {
        if let Some(twice) = engine::first_duplicate(names.iter().copied()) {
            return Err(engine::duplicate(twice));
        }
        let entries = Entries::listed(names.iter().copied());
        engine::run(self.id, &self.options, entries, members).await
    }
}
