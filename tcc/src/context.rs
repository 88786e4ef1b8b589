//! The transaction id and the task-local context a running phase can read.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::phase::Phase;
use crate::report::Names;

/// The unique id of one orchestration.
///
/// The high 64 bits are drawn at random once per process, the low 64 bits
/// count orchestrations within it, so ids are unique within a process and,
/// with overwhelming probability, across the coordinators of a system. It
/// prints as 32 lowercase hex digits and parses back with [`str::parse`], so
/// it can key idempotency records and, later, the durable transaction log.
///
/// ```
/// let id = tcc::TransactionId::generate();
/// let text = id.to_string();
/// assert_eq!(text.len(), 32);
/// assert_eq!(text.parse::<tcc::TransactionId>().unwrap(), id);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId(u128);

impl TransactionId {
    /// A new id, different from every other id this process generated.
    pub fn generate() -> Self {
        static PREFIX: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // RandomState is seeded from the OS's randomness: no extra crate needed.
        let prefix = *PREFIX.get_or_init(|| {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            hasher.finish()
        });
        let sequence = COUNTER.fetch_add(1, Ordering::Relaxed);
        TransactionId((u128::from(prefix) << 64) | u128::from(sequence))
    }

    /// The id as a number.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// An id from a number, such as one read back from a log.
    pub const fn from_u128(value: u128) -> Self {
        TransactionId(value)
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The text was not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transaction id {0:?}: expected 32 hex digits")]
pub struct ParseTransactionIdError(String);

impl FromStr for TransactionId {
    type Err = ParseTransactionIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let valid = text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit());
        match u128::from_str_radix(text, 16) {
            Ok(value) if valid => Ok(TransactionId(value)),
            _ => Err(ParseTransactionIdError(text.to_owned())),
        }
    }
}

thread_local! {
    /// The context of the transaction being polled on this thread. A
    /// transaction is polled only inside [`Context::enter`], which puts its
    /// context here for the length of the poll and takes it back after; each
    /// phase's poll first points it at itself with [`Context::focus`].
    static CURRENT: Cell<Option<Context>> = const { Cell::new(None) };
    /// Where in that transaction the phase being polled is. Kept apart from
    /// `CURRENT` because it is plain data, cheap to set at every poll.
    static POSITION: Cell<Position> = const { Cell::new(Position::START) };
}

/// A service, phase and attempt within a transaction.
#[derive(Clone, Copy)]
struct Position {
    index: usize,
    phase: Phase,
    attempt: u32,
}

impl Position {
    const START: Position = Position {
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
    /// The transaction's names, shared: pointing the context at another
    /// service changes `index`, not a reference count.
    names: Names,
    index: usize,
    phase: Phase,
    attempt: u32,
}

impl Context {
    /// A context for the services of one transaction, pointing at the first
    /// service's Try until [`focus`](Context::focus) moves it.
    pub(crate) fn new(transaction_id: TransactionId, names: Names) -> Self {
        Context {
            transaction_id,
            names,
            index: 0,
            phase: Phase::Try,
            attempt: 1,
        }
    }

    /// The context of the phase running in this task, or `None` outside a
    /// phase. Work a phase spawns onto other tasks does not inherit it: pass
    /// it along.
    pub fn current() -> Option<Context> {
        let context = CURRENT
            .try_with(|current| {
                let context = current.take();
                let copy = context.clone();
                current.set(context);
                copy
            })
            .ok()
            .flatten()?;
        let Position {
            index,
            phase,
            attempt,
        } = POSITION.get();
        Some(Context {
            index,
            phase,
            attempt,
            ..context
        })
    }

    /// The orchestration's id.
    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// The running service's name.
    pub fn service_name(&self) -> &str {
        self.names.name(self.index)
    }

    /// The running phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The attempt number, from 1. Try always runs with 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Runs `f` with `context` as the current context. The context moves in
    /// and back out, so entering costs no clone; an outer context (a phase
    /// polling another transaction inline) is restored after, even if `f`
    /// unwinds.
    pub(crate) fn enter<R>(context: &mut Option<Context>, f: impl FnOnce() -> R) -> R {
        /// Puts the outer context back and the entered one in its slot.
        struct Restore<'a> {
            slot: &'a mut Option<Context>,
            outer: Option<Context>,
            position: Position,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let outer = self.outer.take();
                if let Ok(entered) = CURRENT.try_with(|current| current.replace(outer)) {
                    *self.slot = entered;
                }
                let _ = POSITION.try_with(|position| position.set(self.position));
            }
        }
        let outer = CURRENT.with(|current| current.replace(context.take()));
        let _restore = Restore {
            slot: context,
            outer,
            position: POSITION.get(),
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
            .field("phase", &self.phase)
            .field("attempt", &self.attempt)
            .finish()
    }
}
