//! The context a running phase can read: [`Context`].

use std::cell::{Cell, RefCell};
use std::fmt;

use crate::id::TransactionId;
use crate::phase::Phase;
use crate::report::Entries;

thread_local! {
    /// The context of the transaction being polled on this thread. A
    /// transaction is polled only inside [`Context::enter`], which puts its
    /// context here for the length of the poll and takes it back after; each
    /// phase's poll first points it at itself with [`Context::focus`].
    static CURRENT: RefCell<Option<Context>> = const { RefCell::new(None) };

    /// Where in that transaction the phase being polled is: the
    /// [`Position`] of the context in `CURRENT`, which `Context::current`
    /// reads from here. Apart from `CURRENT` because `focus` sets it before
    /// every poll of a phase: a `Cell` of a `Copy` value, initialised as a
    /// constant and with nothing to drop, is a plain store; the `RefCell`
    /// would check its borrow and the thread-local's state as well
    /// (BENCHMARKS.md, issue 18).
    static POSITION: Cell<Position> = const { Cell::new(Position::FIRST) };
}

/// A service, its phase and its attempt.
#[derive(Clone, Copy)]
struct Position {
    index: usize,
    phase: Phase,
    attempt: u32,
}

impl Position {
    /// The first service's Try.
    const FIRST: Position = Position {
        index: 0,
        phase: Phase::Try,
        attempt: 1,
    };
}

/// What a running phase can learn about itself: the transaction it belongs
/// to, its service, its phase and its attempt number.
///
/// Participants use it to make Confirm and Cancel idempotent (key a record by
/// [`transaction_id`](Context::transaction_id) and service), and to tell a
/// first attempt from a retry.
///
/// ```
/// use tcc::{Context, Orchestrator, Service};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ok = || async { Ok::<(), std::io::Error>(()) };
/// let audit = Service::new(
///     "audit",
///     || async {
///         let context = Context::current().expect("inside a phase");
///         assert_eq!(context.service_name(), "audit");
///         assert_eq!(context.attempt(), 1);
///         println!("try of transaction {}", context.transaction_id());
///         Ok::<(), std::io::Error>(())
///     },
///     ok,
///     ok,
/// );
/// let report = Orchestrator::new([audit]).orchestrate().await.unwrap();
/// println!("confirmed {}", report.transaction_id());
/// assert!(Context::current().is_none());
/// # }
/// ```
#[derive(Clone)]
pub struct Context {
    transaction_id: TransactionId,
    /// The transaction's services, shared with its ledger: for their names.
    entries: Entries,
    position: Position,
}

impl Context {
    /// A context for the services of one transaction, pointing at the first
    /// service's Try until [`focus`](Context::focus) moves it.
    pub(crate) fn new(transaction_id: TransactionId, entries: Entries) -> Self {
        Context {
            transaction_id,
            entries,
            position: Position::FIRST,
        }
    }

    /// The context of the phase running in this task, or `None` outside a
    /// phase. Work a phase spawns onto other tasks does not inherit it: pass
    /// it along.
    pub fn current() -> Option<Context> {
        let mut context = CURRENT
            .try_with(|current| current.borrow().clone())
            .ok()??;
        context.position = POSITION.get();
        Some(context)
    }

    /// The orchestration's id.
    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// The running service's name.
    pub fn service_name(&self) -> &str {
        self.entries.text(self.position.index)
    }

    /// The running phase.
    pub fn phase(&self) -> Phase {
        self.position.phase
    }

    /// The attempt number, from 1. Try always runs with 1.
    pub fn attempt(&self) -> u32 {
        self.position.attempt
    }

    /// Runs `f` with `context` as the current context. The context moves in
    /// and back out, so entering costs no clone; an outer context (a phase
    /// polling another transaction inline) is restored after, even if `f`
    /// unwinds.
    pub(crate) fn enter<R>(context: &mut Option<Context>, f: impl FnOnce() -> R) -> R {
        /// Puts the outer context and its position back, and the entered
        /// one, where it got to, in its slot.
        struct Restore<'a> {
            slot: &'a mut Option<Context>,
            outer: Option<Context>,
            outer_position: Position,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let outer = self.outer.take();
                let position = POSITION.replace(self.outer_position);
                if let Ok(mut entered) = CURRENT.try_with(|current| current.replace(outer)) {
                    if let Some(entered) = &mut entered {
                        entered.position = position;
                    }
                    *self.slot = entered;
                }
            }
        }
        let position = context.as_ref().map_or(Position::FIRST, |c| c.position);
        let outer = CURRENT.with(|current| current.replace(context.take()));
        let _restore = Restore {
            slot: context,
            outer,
            outer_position: POSITION.replace(position),
        };
        f()
    }

    /// Points the current context at service `index`, `phase` and `attempt`
    /// of the entered transaction, before that phase is polled.
    pub(crate) fn focus(index: usize, phase: Phase, attempt: u32) {
        POSITION.set(Position {
            index,
            phase,
            attempt,
        });
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("transaction_id", &self.transaction_id)
            .field("service_name", &self.service_name())
            .field("phase", &self.position.phase)
            .field("attempt", &self.position.attempt)
            .finish()
    }
}
