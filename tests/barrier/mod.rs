//! The suite every barrier backend passes: property tests over deliveries of
//! Try, Confirm and Cancel with duplicates, reordering and concurrent
//! delivery. `tests/barrier_sqlite.rs`, `tests/barrier_postgres.rs` and
//! `tests/barrier_sqlx.rs` (both databases) run it, each with its
//! [`Backend`].
//!
//! The model is the rules, written here independently of the
//! library's table:
//! 1. a phase's business effect commits at most once per branch;
//! 2. a Try never runs after its branch's Cancel, and is refused then;
//! 3. a Confirm never runs without a committed Try;
//! 4. a Cancel with no committed Try before it runs no code (empty cancel);
//! 5. what the caller is told (ran, duplicate, empty cancel, refused) is
//!    what happened: an outcome `Ran` if and only if the effect committed;
//! 6. a Try that announced itself (effects outside the database) gets its
//!    Cancel's code run even if its own transaction never committed.
//!
//! Deliveries come in waves; the deliveries of a wave run at once, each on
//! its own connection. A wave passes if its outcomes are those of *some*
//! order of its deliveries, one at a time, under the model (the barrier is
//! linearizable); the committed effects must then equal the model's.
//!
//! Cases: `TCC_BARRIER_CASES` (default 32 per backend). A failure prints the
//! shrunk schedule; replay it by pasting it into a plain test.

#![allow(dead_code)]

pub mod cluster;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tcc::barrier::{BarrierError, BarrierErrorKind, Branch, Outcome};
use tcc::{Phase, TransactionId};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a test phase's code can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("injected failure after the business write")]
    Injected,
    #[error(transparent)]
    Barrier(#[from] BarrierError),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

/// A barrier backend under test, with a business table `effects
/// (transaction_id, service, phase)`.
pub trait Backend: Send + Sync + 'static {
    /// How many deliveries can run at once (one connection each).
    fn lanes(&self) -> usize;

    /// Delivers `branch`'s phase on connection `lane` through the backend's
    /// `run_branch`: in one transaction, the barrier, then one `effects` row
    /// for the branch and phase, then, if `fail`, an injected failure (which
    /// rolls it all back).
    fn deliver(
        &self,
        lane: usize,
        branch: Branch,
        fail: bool,
    ) -> BoxFuture<'_, Result<Outcome<()>, TestError>>;

    /// Announces `branch`'s Try on connection `lane` (the backend's
    /// `announce`, in a transaction of its own).
    fn announce(
        &self,
        lane: usize,
        branch: Branch,
    ) -> BoxFuture<'_, Result<Outcome<()>, TestError>>;

    /// The committed `effects` rows of a transaction: (service, phase).
    fn effects(&self, transaction: TransactionId) -> BoxFuture<'_, Vec<(String, String)>>;
}

/// What a delivery was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Ran,
    Duplicate,
    EmptyCancel,
    Refused(BarrierErrorKind),
    Injected,
}

pub fn seen(result: Result<Outcome<()>, TestError>) -> Seen {
    match result {
        Ok(Outcome::Ran(())) => Seen::Ran,
        Ok(Outcome::Duplicate) => Seen::Duplicate,
        Ok(Outcome::EmptyCancel) => Seen::EmptyCancel,
        Err(TestError::Injected) => Seen::Injected,
        Err(TestError::Barrier(error)) if error.kind() != BarrierErrorKind::Database => {
            assert!(error.is_permanent(), "a refusal must be permanent: {error}");
            Seen::Refused(error.kind())
        }
        Err(other) => panic!("a delivery failed for a reason no schedule explains: {other}"),
    }
}

/// One branch under the rules.
#[derive(Clone, Copy, Debug, Default)]
pub struct Model {
    /// A Try announced itself.
    started: bool,
    tried: bool,
    confirmed: bool,
    cancelled: bool,
    /// Committed effects of Try, Confirm, Cancel.
    effects: [u32; 3],
}

impl Model {
    /// What delivering `phase` does, one delivery at a time.
    pub fn deliver(&mut self, phase: Phase, fail: bool) -> Seen {
        use BarrierErrorKind as K;
        let slot = phase as usize;
        let run = |model: &mut Model| {
            if fail {
                return Seen::Injected;
            }
            model.effects[slot] += 1;
            match phase {
                Phase::Try => model.tried = true,
                Phase::Confirm => model.confirmed = true,
                Phase::Cancel => model.cancelled = true,
            }
            Seen::Ran
        };
        match phase {
            Phase::Try if self.cancelled => Seen::Refused(K::TryAfterCancel),
            Phase::Try if self.tried => Seen::Duplicate,
            Phase::Try => run(self),
            Phase::Confirm if self.cancelled => Seen::Refused(K::ConfirmAfterCancel),
            Phase::Confirm if !self.tried => Seen::Refused(K::ConfirmWithoutTry),
            Phase::Confirm if self.confirmed => Seen::Duplicate,
            Phase::Confirm => run(self),
            Phase::Cancel if self.confirmed => Seen::Refused(K::CancelAfterConfirm),
            Phase::Cancel if self.cancelled => Seen::Duplicate,
            Phase::Cancel if !self.tried && !self.started => {
                self.cancelled = true;
                Seen::EmptyCancel
            }
            Phase::Cancel => run(self),
        }
    }

    /// What announcing the Try does: it runs no business code.
    pub fn announce(&mut self) -> Seen {
        if self.cancelled {
            Seen::Refused(BarrierErrorKind::TryAfterCancel)
        } else if self.started || self.tried {
            Seen::Duplicate
        } else {
            self.started = true;
            Seen::Ran
        }
    }

    fn apply(&mut self, op: Op, fail: bool) -> Seen {
        match op {
            Op::Phase(phase) => self.deliver(phase, fail),
            Op::Announce => self.announce(),
        }
    }
}

/// What arrives at a branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Phase(Phase),
    /// A Try announcing effects outside the database.
    Announce,
}

/// One delivery: which branch (service), what, and whether the phase's
/// code fails after its write.
pub type Delivery = (usize, Op, bool);

pub const SERVICES: [&str; 2] = ["flight", "hotel"];

pub fn schedules(lanes: usize) -> impl Strategy<Value = Vec<Vec<Delivery>>> {
    let op = prop_oneof![
        3 => Just(Op::Phase(Phase::Try)),
        3 => Just(Op::Phase(Phase::Confirm)),
        3 => Just(Op::Phase(Phase::Cancel)),
        1 => Just(Op::Announce),
    ];
    let delivery = (0..SERVICES.len(), op, proptest::bool::weighted(0.2));
    prop::collection::vec(prop::collection::vec(delivery, 1..=lanes), 1..=6)
}

/// Runs one schedule against `backend` and checks it against the model.
pub async fn check<B: Backend>(backend: Arc<B>, waves: Vec<Vec<Delivery>>) {
    let transaction = TransactionId::generate();
    let mut models = [Model::default(); SERVICES.len()];
    for (number, wave) in waves.iter().enumerate() {
        let handles: Vec<_> = wave
            .iter()
            .enumerate()
            .map(|(lane, &(service, op, fail))| {
                let backend = backend.clone();
                tokio::spawn(async move {
                    seen(match op {
                        Op::Phase(phase) => {
                            let branch = Branch::new(transaction, SERVICES[service], phase);
                            backend.deliver(lane, branch, fail).await
                        }
                        Op::Announce => {
                            let branch = Branch::new(transaction, SERVICES[service], Phase::Try);
                            backend.announce(lane, branch).await
                        }
                    })
                })
            })
            .collect();
        let mut observed = Vec::with_capacity(handles.len());
        for handle in handles {
            observed.push(handle.await.expect("a delivery panicked"));
        }
        models = linearize(&models, wave, &observed).unwrap_or_else(|| {
            panic!(
                "wave {number} {wave:?} saw {observed:?}, which no order of its deliveries \
                 explains (models before it: {models:?})"
            )
        });
    }
    let mut committed = [[0u32; 3]; SERVICES.len()];
    for (service, phase) in backend.effects(transaction).await {
        let s = SERVICES
            .iter()
            .position(|name| *name == service)
            .expect("a known service");
        let p = ["try", "confirm", "cancel"]
            .iter()
            .position(|name| *name == phase)
            .expect("a phase");
        committed[s][p] += 1;
    }
    for (s, model) in models.iter().enumerate() {
        assert_eq!(
            committed[s], model.effects,
            "effects of `{}` (try, confirm, cancel) differ from the model after {waves:?}",
            SERVICES[s]
        );
        assert!(model.effects.iter().all(|&n| n <= 1), "an effect ran twice");
    }
}

/// The models after `wave`, if some order of its deliveries gives exactly
/// `observed`.
fn linearize(models: &[Model; 2], wave: &[Delivery], observed: &[Seen]) -> Option<[Model; 2]> {
    fn search(
        models: [Model; 2],
        wave: &[Delivery],
        observed: &[Seen],
        done: &mut Vec<bool>,
    ) -> Option<[Model; 2]> {
        if done.iter().all(|&d| d) {
            return Some(models);
        }
        for i in 0..wave.len() {
            if done[i] {
                continue;
            }
            let (service, op, fail) = wave[i];
            let mut next = models;
            if next[service].apply(op, fail) != observed[i] {
                continue;
            }
            done[i] = true;
            let found = search(next, wave, observed, done);
            done[i] = false;
            if found.is_some() {
                return found;
            }
        }
        None
    }
    search(*models, wave, observed, &mut vec![false; wave.len()])
}

/// The property test, on `runtime`, with `TCC_BARRIER_CASES` cases.
pub fn interleavings<B: Backend>(runtime: &tokio::runtime::Runtime, backend: Arc<B>) {
    let cases = std::env::var("TCC_BARRIER_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let lanes = backend.lanes();
    runner
        .run(&schedules(lanes), |waves| {
            runtime.block_on(check(backend.clone(), waves));
            Ok(())
        })
        .unwrap();
}

/// The model alone agrees with the examples, so the property test
/// compares against the rules, not against itself.
pub fn model_follows_the_rules() {
    use BarrierErrorKind as K;
    let mut m = Model::default();
    assert_eq!(m.deliver(Phase::Cancel, false), Seen::EmptyCancel);
    assert_eq!(
        m.deliver(Phase::Try, false),
        Seen::Refused(K::TryAfterCancel)
    );
    assert_eq!(m.effects, [0, 0, 0]);
    let mut m = Model::default();
    assert_eq!(
        m.deliver(Phase::Confirm, false),
        Seen::Refused(K::ConfirmWithoutTry)
    );
    assert_eq!(m.deliver(Phase::Try, true), Seen::Injected);
    assert_eq!(
        m.deliver(Phase::Confirm, false),
        Seen::Refused(K::ConfirmWithoutTry)
    );
    assert_eq!(m.deliver(Phase::Try, false), Seen::Ran);
    assert_eq!(m.deliver(Phase::Try, false), Seen::Duplicate);
    assert_eq!(m.deliver(Phase::Confirm, false), Seen::Ran);
    assert_eq!(m.deliver(Phase::Confirm, false), Seen::Duplicate);
    assert_eq!(
        m.deliver(Phase::Cancel, false),
        Seen::Refused(K::CancelAfterConfirm)
    );
    assert_eq!(m.effects, [1, 1, 0]);
    // An announced Try that failed still gets its Cancel's code run.
    let mut m = Model::default();
    assert_eq!(m.announce(), Seen::Ran);
    assert_eq!(m.announce(), Seen::Duplicate);
    assert_eq!(m.deliver(Phase::Try, true), Seen::Injected);
    assert_eq!(
        m.deliver(Phase::Confirm, false),
        Seen::Refused(K::ConfirmWithoutTry)
    );
    assert_eq!(m.deliver(Phase::Cancel, false), Seen::Ran);
    assert_eq!(m.announce(), Seen::Refused(K::TryAfterCancel));
    assert_eq!(m.effects, [0, 0, 1]);
}
