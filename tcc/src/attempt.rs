//! Running one phase of one service: [`PhaseRun`], which makes every attempt
//! (panics caught, context set, each attempt timed out) and, for Confirm and
//! Cancel, waits and retries.
//!
//! A run is polled by the engine through [`PhaseRun::poll_run`]. Where an
//! attempt's future lives is up to its [`Attempts`]: a `Service`'s is
//! boxed (one allocation an attempt), a `tcc!` member's sits in a slot
//! pinned inside the block's future (none).

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Poll, ready};
use std::time::Duration;

use tokio::time::Sleep;

use crate::context::Context;
use crate::error::{BoxError, Chain, Panicked, Permanent, TimedOut};
use crate::id::TransactionId;
use crate::phase::Phase;
use crate::recoverable::LogEntry;
use crate::retry::{RetryPolicy, mix, name_hash};
use crate::settings::{Retries, Settings};

/// How a phase of one service ended: its index in the orchestration, the
/// attempts made, and the last attempt's result.
pub(crate) struct PhaseEnd {
    pub(crate) index: usize,
    pub(crate) attempts: u32,
    pub(crate) result: Result<(), BoxError>,
}

/// The attempts a [`PhaseRun`] makes: how one service builds, polls and
/// drops the future of one attempt. Not public API: `tcc!` expands to
/// code that uses it.
pub trait Attempts {
    /// The service's name, for logs and the jitter seed.
    fn name(&self) -> &str;

    /// The service's own settings; the orchestration's win over them.
    fn settings(&self) -> Settings;

    /// The service's own retry policy, if it has one: what a transaction
    /// checks before any phase runs, without copying every setting.
    fn retry_policy(&self) -> Option<RetryPolicy>;

    /// The kind and data of a recoverable service, for the log; `None` for
    /// one that cannot be rebuilt after a crash.
    fn log_entry(&self) -> Option<LogEntry>;

    /// Polls the current attempt at `phase`, building its future first when
    /// there is none. Called inside the context and the panic guard.
    fn poll_attempt(
        &mut self,
        phase: Phase,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<(), BoxError>>;

    /// Drops the current attempt's future, if there is one.
    fn end_attempt(&mut self);

    /// An attempt at `phase` ended: a `Service` notes it in `status`, its
    /// status in this transaction, and publishes that for its getters.
    fn ended(&self, status: &mut u8, phase: Phase, succeeded: bool);
}

impl<A: Attempts + ?Sized> Attempts for &mut A {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn settings(&self) -> Settings {
        (**self).settings()
    }

    fn retry_policy(&self) -> Option<RetryPolicy> {
        (**self).retry_policy()
    }

    fn log_entry(&self) -> Option<LogEntry> {
        (**self).log_entry()
    }

    fn poll_attempt(
        &mut self,
        phase: Phase,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<(), BoxError>> {
        (**self).poll_attempt(phase, cx)
    }

    fn end_attempt(&mut self) {
        (**self).end_attempt()
    }

    fn ended(&self, status: &mut u8, phase: Phase, succeeded: bool) {
        (**self).ended(status, phase, succeeded)
    }
}

/// What every run of one round shares, lent to each run's
/// [`poll_run`](PhaseRun::poll_run) rather than copied into it, so that a
/// run holds only its own state.
pub(crate) struct Round<'a> {
    pub(crate) transaction_id: TransactionId,
    pub(crate) phase: Phase,
    /// The orchestration's settings; `None` for a phase run directly,
    /// outside any orchestration: one attempt, no time limit.
    pub(crate) settings: Option<&'a Settings>,
    /// Whether the attempts are counted (`tcc::metrics`): a recorder was in
    /// force when the transaction started.
    pub(crate) recording: bool,
}

impl Round<'_> {
    /// The retries and the time limit of each attempt of a service whose
    /// own settings are `own`. Resolved only when needed: when an attempt
    /// is left pending, or fails.
    fn limits(&self, own: &Settings) -> (Retries, Option<Duration>) {
        match self.settings {
            Some(settings) => settings.resolve(own, self.phase),
            None => (Retries::NONE, None),
        }
    }
}

/// One phase of one service, from its first attempt to its last.
///
/// An `Orchestrator` keeps one for every service of a transaction, so its
/// size is per service: 48 bytes a member with a `Service`'s attempts, 1.6
/// MB less at 100,000 services than with the stage's timer inside an enum
/// and the status kept by each kind of [`Attempts`] (BENCHMARKS.md, "The
/// members, smaller").
pub(crate) struct PhaseRun<A: Attempts> {
    service: A,
    /// While an attempt runs, its deadline, set when its first poll leaves
    /// it pending; while it waits before a retry, the wait. `None` at the
    /// start of an attempt.
    timer: Option<Pin<Box<Sleep>>>,
    attempts: u32,
    stage: Stage,
    /// The service's status in this transaction, kept for its `Attempts`
    /// to publish (`Service`'s getters).
    status: u8,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The next poll starts the next attempt.
    Start,
    /// An attempt is running; its future is built on its first poll, inside
    /// the context and the panic guard.
    Running,
    /// Waiting (the timer) before a retry.
    Backoff,
}

impl<A: Attempts> PhaseRun<A> {
    /// A run of `service`'s phase, not started.
    pub(crate) fn new(service: A) -> Self {
        PhaseRun {
            service,
            timer: None,
            attempts: 0,
            stage: Stage::Start,
            status: 0,
        }
    }

    /// The service whose attempts this run makes.
    pub(crate) fn service(&self) -> &A {
        &self.service
    }

    /// An attempt at `phase` ended: its service's status says so.
    pub(crate) fn ended(&mut self, phase: Phase, succeeded: bool) {
        self.service.ended(&mut self.status, phase, succeeded);
    }

    /// Makes the run start over, as a new run would, counting `attempts`
    /// already made (by a process that crashed since).
    pub(crate) fn restart(&mut self, attempts: u32) {
        // Only a run cut short in an attempt (a Try that fail-fast gave up
        // on) still holds one; every other run ended its last attempt, so
        // it skips the panic guard.
        if self.stage == Stage::Running {
            self.end_attempt();
        }
        self.attempts = attempts;
        self.stage = Stage::Start;
        self.stop_timer();
    }

    /// Drops the timer, if there is one. Checked here: dropping a `Sleep` is
    /// a call (not inlined), and most attempts end on their first poll
    /// without one (33-40 instructions a service, measured: BENCHMARKS.md,
    /// "The members, smaller").
    fn stop_timer(&mut self) {
        if self.timer.is_some() {
            self.timer = None;
        }
    }

    /// Ends the running attempt, if any, dropping its future where a panic
    /// in its destructor cannot take the transaction down with it.
    pub(crate) fn end_attempt(&mut self) {
        if catch_unwind(AssertUnwindSafe(|| self.service.end_attempt())).is_err() {
            tracing::warn!("a phase's future panicked while it was dropped");
        }
    }

    /// Polls the running attempt, with the context pointed at it and panics
    /// caught. Runs inside the transaction's [`Context::enter`].
    fn poll_attempt(
        &mut self,
        index: usize,
        phase: Phase,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<(), BoxError>> {
        Context::focus(index, phase, self.attempts);
        let service = &mut self.service;
        match catch_unwind(AssertUnwindSafe(|| service.poll_attempt(phase, cx))) {
            Ok(poll) => poll,
            Err(payload) => Poll::Ready(Err(Box::new(Panicked::from_payload(&*payload)))),
        }
    }

    /// The jitter seed: the same for a given transaction and service.
    fn seed(&self, transaction_id: TransactionId) -> u64 {
        let id = transaction_id.as_u128();
        mix((id as u64) ^ ((id >> 64) as u64)) ^ name_hash(self.service.name())
    }

    fn finish(
        &mut self,
        index: usize,
        phase: Phase,
        result: Result<(), BoxError>,
    ) -> Poll<PhaseEnd> {
        self.ended(phase, result.is_ok());
        Poll::Ready(PhaseEnd {
            index,
            attempts: self.attempts,
            result,
        })
    }
}

impl<A: Attempts> Drop for PhaseRun<A> {
    /// A run dropped in the middle of an attempt (a Try that fail-fast gives
    /// up on) drops the attempt's future here, where a panic in its
    /// destructor cannot take the whole transaction down with it.
    fn drop(&mut self) {
        // Only a run cut short in an attempt (a Try that fail-fast gave up
        // on) still holds one; every other run ended its last attempt, so
        // it skips the panic guard.
        if self.stage == Stage::Running {
            self.end_attempt();
        }
    }
}

/// Whether retrying cannot help: [`Permanent::is_in`], with a `source()`
/// that panics taken as the end of the chain, so that a phase's odd error
/// type can neither hang nor crash the transaction.
fn is_permanent(error: &(dyn std::error::Error + 'static)) -> bool {
    catch_unwind(AssertUnwindSafe(|| Permanent::is_in(error))).unwrap_or(false)
}

impl<A: Attempts> PhaseRun<A> {
    /// Drives the run: starts each attempt, waits out its backoff, retries.
    /// Nothing in a run is pinned (an attempt's future is boxed, or pinned
    /// where its [`Attempts`] keep it), so it needs no `Pin` to be polled.
    ///
    /// The run is service number `index` of `round`.
    pub(crate) fn poll_run(
        &mut self,
        round: &Round<'_>,
        index: usize,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<PhaseEnd> {
        let this = self;
        let phase = round.phase;
        loop {
            match this.stage {
                Stage::Start => {
                    this.attempts = this.attempts.saturating_add(1);
                    if round.recording && this.attempts > 1 {
                        crate::metrics::retry(this.service.name(), phase);
                    }
                    this.stage = Stage::Running;
                }
                Stage::Backoff => {
                    if let Some(wait) = &mut this.timer {
                        ready!(wait.as_mut().poll(cx));
                    }
                    this.stage = Stage::Start;
                    this.stop_timer();
                }
                Stage::Running => {
                    let result = match this.poll_attempt(index, phase, cx) {
                        Poll::Ready(result) => result,
                        Poll::Pending => {
                            // The time limit counts from the first poll that
                            // leaves the attempt pending: most attempts end
                            // on their first poll, and so never pay for a
                            // timer (the first poll is synchronous, so the
                            // limit starts at most one poll late).
                            if this.timer.is_none() {
                                let (_, timeout) = round.limits(&this.service.settings());
                                this.timer =
                                    timeout.map(|limit| Box::pin(tokio::time::sleep(limit)));
                            }
                            let timed_out = this
                                .timer
                                .as_mut()
                                .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                            if !timed_out {
                                return Poll::Pending;
                            }
                            let (_, limit) = round.limits(&this.service.settings());
                            let limit = limit.unwrap_or_default();
                            Err(Box::new(TimedOut { phase, limit }) as BoxError)
                        }
                    };
                    // The attempt is over (a timed-out one is cancelled by
                    // this drop), and so is its deadline.
                    this.stage = Stage::Start;
                    this.stop_timer();
                    this.end_attempt();
                    if round.recording {
                        crate::metrics::attempt_ended(this.service.name(), phase, &result);
                    }
                    let error = match result {
                        Ok(()) => return this.finish(index, phase, Ok(())),
                        Err(error) => error,
                    };
                    let (retries, _) = round.limits(&this.service.settings());
                    if this.attempts > retries.limit || is_permanent(&*error) {
                        return this.finish(index, phase, Err(error));
                    }
                    this.ended(phase, false);
                    let seed = this.seed(round.transaction_id);
                    let delay = retries.policy.delay(this.attempts, seed);
                    tracing::warn!(
                        service = this.service.name(),
                        phase = %phase,
                        attempt = this.attempts,
                        error = %Chain(&*error),
                        retry_in = ?delay,
                        "phase failed; retrying"
                    );
                    this.stage = Stage::Backoff;
                    this.timer = Some(Box::pin(tokio::time::sleep(delay)));
                }
            }
        }
    }
}
