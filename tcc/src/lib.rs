//! Try-Confirm-Cancel transactions on tokio.
//!
//! A TCC transaction spans services that cannot share a database
//! transaction. Each service offers three phases: **Try** reserves resources
//! (a seat, a room, frozen money), **Confirm** makes the reservation final,
//! **Cancel** releases it. If every Try succeeds, every Confirm runs;
//! otherwise every service whose Try started is cancelled.
//!
//! `tcc` runs every Try at once, retries Confirm and Cancel with backoff
//! (each service on its own, never one after another), catches panics, keeps
//! every failure in its [`Error`], and finishes a transaction even when the
//! caller's future is dropped.
//!
//! ```
//! use std::collections::HashSet;
//! use std::sync::{Arc, Mutex};
//! use tcc::{Context, Orchestrator, Service, TransactionId};
//!
//! /// Units in stock, and the transactions holding one.
//! #[derive(Default)]
//! struct Stock {
//!     free: u32,
//!     held: HashSet<TransactionId>,
//! }
//!
//! /// Try holds a unit, Confirm books it, Cancel puts it back. Holds are
//! /// keyed by transaction id, so a Cancel after a failed Try (which held
//! /// nothing) releases nothing, and a retried phase is harmless.
//! fn inventory(name: &str, stock: Arc<Mutex<Stock>>) -> Service {
//!     let id = || Context::current().expect("inside a phase").transaction_id();
//!     let (hold, book, release) = (stock.clone(), stock.clone(), stock);
//!     Service::new(
//!         name,
//!         move || {
//!             let mut stock = hold.lock().unwrap();
//!             let result = match stock.free.checked_sub(1) {
//!                 Some(left) => {
//!                     stock.free = left;
//!                     stock.held.insert(id());
//!                     Ok(())
//!                 }
//!                 None => Err("sold out"),
//!             };
//!             async move { result }
//!         },
//!         move || {
//!             book.lock().unwrap().held.remove(&id());
//!             async { Ok::<(), &str>(()) }
//!         },
//!         move || {
//!             let mut stock = release.lock().unwrap();
//!             if stock.held.remove(&id()) {
//!                 stock.free += 1;
//!             }
//!             async { Ok::<(), &str>(()) }
//!         },
//!     )
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let seats = Arc::new(Mutex::new(Stock { free: 3, ..Stock::default() }));
//! let rooms = Arc::new(Mutex::new(Stock { free: 1, ..Stock::default() }));
//! let booking = Orchestrator::new([
//!     inventory("flight", seats.clone()),
//!     inventory("hotel", rooms.clone()),
//! ]);
//!
//! let report = booking.orchestrate().await.expect("first booking confirms");
//! println!("booked in transaction {}", report.transaction_id());
//!
//! let error = booking.orchestrate().await.expect_err("no room is left");
//! assert_eq!(error.service_name(), "hotel");
//! assert_eq!(error.phase(), tcc::Phase::Try);
//! // The second booking's seat went back to stock.
//! assert_eq!(seats.lock().unwrap().free, 2);
//! assert_eq!(rooms.lock().unwrap().free, 0);
//! # }
//! ```
//!
//! # Guarantees
//!
//! - Every Try starts at once; Try is never retried. A Try that panics, or
//!   outlives [`Orchestrator::try_timeout`], has failed.
//! - All Tries succeeded: every Confirm runs, each with its own retry loop.
//!   Any Try failed: every service whose Try started is cancelled, including
//!   the ones that failed, timed out or were dropped by
//!   [`fail_fast`](Orchestrator::fail_fast).
//! - Confirm and Cancel are retried up to the limit ([`RetryPolicy`]); an
//!   error marked [`Permanent`] stops the retries of its service at once.
//! - The [`Error`] keeps every [`Failure`]: a failed Cancel does not hide the
//!   Try failure that caused it.
//! - Once started, a transaction runs to its end even if the caller drops
//!   the future: it then moves to a tokio task of its own.
//! - Every orchestration has a [`TransactionId`]; a running phase reads it,
//!   with its service name and attempt, from [`Context::current`].
//!
//! # Surviving a crash
//!
//! Give an [`Orchestrator`] (or a `tcc!` block) a [`TransactionLog`] and its
//! transactions survive a crash of the process at any instant. Wire the log
//! once at start, and every mistake in the wiring is an error there, not in
//! the recovery after the first crash:
//!
//! - [`provide`](TransactionLog::provide) the resources services are rebuilt
//!   with; a second one of a type is a [`WiringError`] (name them:
//!   [`provide_named`](TransactionLog::provide_named));
//! - [`register`](TransactionLog::register) every kind of [`Recoverable`]
//!   service; a second type under a kind is a [`WiringError`], and a durable
//!   transaction with a kind not registered is refused before any Try
//!   ([`ErrorKind::NotRecoverable`]);
//! - [`recover`](TransactionLog::recover), and look at its
//!   [`RecoverySummary::left`] (the transactions it could not rebuild) and
//!   [`RecoverySummary::unreadable`] (those whose record the log could not
//!   read): both still hold what their Tries reserved. Log them, or refuse
//!   to start.
//!
//! The example on [`TransactionLog`] shows it whole.
//!
//! # Metrics
//!
//! Transactions by outcome, phase attempts by service, phase and result,
//! retries, recoveries, transactions in flight and needing repair, and the
//! durations of transactions, phases and the log's commits go through the
//! [`metrics`](https://docs.rs/metrics) facade to whatever recorder the
//! application installs (none: nothing is recorded). The [`metrics`]
//! module lists every one, with its labels and when it is recorded.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The modules, from the leaves up (each imports only modules before it):
// id, name, phase; retry, report, error; metrics; context, tcc_service, recoverable;
// attempt (one phase of one service), settings; durable (the log's stores);
// engine (the one life of a transaction); service (the type-erased handle);
// transaction_log (recovery and repair); orchestrator and typed, the two
// front ends.
mod attempt;
mod context;
pub mod durable;
mod engine;
mod error;
mod id;
pub mod metrics;
mod name;
mod orchestrator;
mod phase;
mod recoverable;
mod report;
mod retry;
mod service;
mod settings;
mod tcc_service;
mod transaction_log;
mod typed;

pub use context::Context;
pub use error::{BoxError, Error, ErrorKind, Failure, Panicked, Permanent, TimedOut};
pub use id::{ParseTransactionIdError, TransactionId};
pub use orchestrator::Orchestrator;
pub use phase::{Decision, Phase};
pub use recoverable::{MissingResource, Recoverable, Resources, WiringError};
pub use report::{PhaseRecord, Report, ServiceReport, ServiceReports};
pub use retry::{InvalidRetryPolicy, RetryPolicy};
pub use service::Service;
pub use settings::DEFAULT_ATTEMPT_TIMEOUT;
pub use tcc_service::TccService;
pub use transaction_log::{RecoverySummary, TransactionLog};

#[cfg(any(
    feature = "sqlite",
    feature = "postgres",
    feature = "sqlx-postgres",
    feature = "sqlx-sqlite",
    feature = "http-server"
))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(
        feature = "sqlite",
        feature = "postgres",
        feature = "sqlx-postgres",
        feature = "sqlx-sqlite",
        feature = "http-server"
    )))
)]
pub mod barrier;

#[cfg(any(feature = "http-server", feature = "http-client"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "http-server", feature = "http-client")))
)]
pub mod http;

#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;

// The macros, each documented on its own page: `#[tcc_service]`, its phase
// attributes `#[try_phase]`, `#[confirm]` and `#[cancel]`, `tcc!` and
// `#[derive(Recoverable)]`. (A doc comment here would be repeated on every
// one of those pages.)
pub use tcc_macros::{Recoverable, cancel, confirm, tcc, tcc_service, try_phase};

/// What the macros expand to. Not public API: it may change in any release.
#[doc(hidden)]
pub mod __private;

/// The README's example runs as a doc test, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
