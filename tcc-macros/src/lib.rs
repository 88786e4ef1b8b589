//! Procedural macros of the [`tcc`](https://docs.rs/tcc) crate:
//! [`macro@tcc_service`] turns an impl block into a TCC service, [`tcc!`]
//! declares an orchestration inline. Use them through `tcc`, which
//! re-exports them (`tcc::tcc_service`, `tcc::tcc!`).
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use tcc::{tcc, tcc_service};
//!
//! struct Seats {
//!     free: AtomicU32,
//! }
//!
//! #[tcc_service(name = "flight")]
//! impl Seats {
//!     #[try_phase]
//!     async fn hold(&self) -> Result<(), String> {
//!         self.free
//!             .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
//!             .map(drop)
//!             .map_err(|_| "sold out".to_owned())
//!     }
//!
//!     #[confirm]
//!     async fn book(&self) -> Result<(), String> {
//!         Ok(())
//!     }
//!
//!     #[cancel]
//!     async fn release(&self) -> Result<(), String> {
//!         self.free.fetch_add(1, Ordering::SeqCst);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let report = tcc! {
//!     Seats { free: AtomicU32::new(3) },
//!     "payment" => {
//!         try_phase: async { Ok::<(), String>(()) },
//!         confirm: async { Ok::<(), String>(()) },
//!         cancel: async { Ok::<(), String>(()) },
//!     },
//! }
//! .await
//! .expect("both services confirm");
//! assert_eq!(report.services().len(), 2);
//! # }
//! ```
//!
//! Mistakes are compile errors that point at the offending token: a missing
//! or misspelt phase, a phase that is not an `async fn` taking `&self` and
//! returning `Result<(), E>`, two services with the same name, a value that
//! is not a service. See each macro for the full list.

#![forbid(unsafe_code)]

mod errors;
mod orchestration;
mod recoverable;
mod service;
mod suggest;

use proc_macro::TokenStream;

/// Makes the type of an inherent impl block a TCC service.
///
/// Mark one method each with `#[try_phase]`, `#[confirm]` and `#[cancel]`.
/// The macro implements `tcc::TccService` for the type, so a value (or an
/// `Arc` of one) converts into a `tcc::Service` and can be listed in
/// [`tcc!`]. Other methods, and the phase methods themselves, stay as
/// they are: call them directly in tests.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use tcc::{Orchestrator, Service, tcc_service};
///
/// /// Seats on a flight, `held` by running transactions.
/// struct FlightSeats {
///     free: AtomicU32,
///     held: AtomicU32,
/// }
///
/// #[tcc_service(name = "flight", max_retries = 3)]
/// impl FlightSeats {
///     fn new(seats: u32) -> Self {
///         FlightSeats { free: AtomicU32::new(seats), held: AtomicU32::new(0) }
///     }
///
///     #[try_phase]
///     async fn hold(&self) -> Result<(), String> {
///         self.free
///             .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
///             .map_err(|_| "sold out".to_owned())?;
///         self.held.fetch_add(1, Ordering::SeqCst);
///         Ok(())
///     }
///
///     #[confirm]
///     async fn book(&self) -> Result<(), String> {
///         self.held.fetch_sub(1, Ordering::SeqCst);
///         Ok(())
///     }
///
///     #[cancel]
///     async fn release(&self) -> Result<(), std::io::Error> {
///         // Also runs after a Try that failed: release only what was held.
///         if self.held.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
///             self.free.fetch_add(1, Ordering::SeqCst);
///         }
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let seats = Arc::new(FlightSeats::new(3));
/// let flight: Service = seats.clone().into(); // or `FlightSeats::new(3).into()`
/// assert_eq!(flight.name(), "flight");
///
/// Orchestrator::new([flight]).orchestrate().await.unwrap();
/// assert_eq!(seats.free.load(Ordering::SeqCst), 2);
/// # }
/// ```
///
/// # Phase methods
///
/// Each phase is an `async fn` taking `&self` and nothing else, returning
/// `Result<(), E>` where `E` converts into `tcc::BoxError` (any
/// `std::error::Error + Send + Sync`, `String`, `&'static str`,
/// `tcc::Permanent` ...); each phase may have its own `E`. Its future must
/// be `Send`. A phase learns which transaction it serves from
/// `tcc::Context::current()`, the key that makes Confirm and Cancel
/// idempotent.
///
/// The phase attributes need no import: `#[tcc_service]` reads them and
/// takes them off. (`#[tcc::confirm]` works too.) Used anywhere else, they
/// are an error.
///
/// # Arguments
///
/// - `name = "..."`: the service's name in reports and errors; by default
///   the type's name without generics (`FlightSeats`). It must be unique
///   within an orchestration.
/// - `max_retries = N`: the service's own retry limit for Confirm and
///   Cancel (a `u32` expression); an orchestrator's limit, when set, wins.
///
/// # Generic types
///
/// Generic impl blocks work: the service trait is implemented for every
/// instance that is `Send + Sync + 'static`.
///
/// ```
/// use std::fmt::Display;
/// use tcc::{Service, tcc_service};
///
/// struct Audit<T> {
///     subject: T,
/// }
///
/// #[tcc_service(name = "audit")]
/// impl<T: Display> Audit<T> {
///     #[try_phase]
///     async fn open(&self) -> Result<(), String> {
///         let _record = format!("opening {}", self.subject);
///         Ok(())
///     }
///     #[confirm]
///     async fn close(&self) -> Result<(), String> {
///         Ok(())
///     }
///     #[cancel]
///     async fn void(&self) -> Result<(), String> {
///         Ok(())
///     }
/// }
///
/// let service = Service::from(Audit { subject: "order 7" });
/// assert_eq!(service.name(), "audit");
/// ```
///
/// # Compile-time checks
///
/// Each mistake is one error, on the offending token. On an impl block with
/// errors, the block is still emitted (phase attributes stripped) with a
/// stand-in of the service trait, so no other errors follow, not even where
/// the type is used as a service:
///
/// - no `#[try_phase]`, `#[confirm]` or `#[cancel]` method, or one of them
///   twice; a misspelt one such as `#[confrim]` (the nearest is suggested);
///   two phase attributes on one method; a phase attribute with arguments or
///   on something other than a method;
/// - a phase that is not an `async fn`, is `unsafe`, has type parameters,
///   takes `self`, `&mut self`, no receiver or more arguments, or does not
///   return `Result<(), E>`;
/// - an `E` that is not an error type, on the `E`: "`u32` is not an error
///   type, so a phase cannot fail with it";
/// - a phase whose future is not `Send`, on the method's name: rustc's
///   "future cannot be sent between threads safely", which shows the value
///   held across an `.await`, with a note naming the phase
///   (`confirm_future_must_be_send`);
/// - the attribute on a trait impl or on anything but an impl block;
/// - an argument other than `name` and `max_retries`.
///
/// ```compile_fail
/// struct Payment;
///
/// #[tcc::tcc_service]
/// impl Payment {
///     #[try_phase]
///     async fn freeze(&self) -> Result<(), String> { Ok(()) }
///     #[confirm]
///     async fn debit(&self) -> Result<(), String> { Ok(()) }
///     // error: service `Payment` has no #[cancel] method; add #[cancel] to
///     // the `async fn` that releases the reservation
/// }
/// ```
#[proc_macro_attribute]
pub fn tcc_service(args: TokenStream, input: TokenStream) -> TokenStream {
    service::tcc_service(args.into(), input.into()).into()
}

/// Runs a TCC transaction declared inline, for instance in a web handler.
///
/// `tcc! { .. }` evaluates to a future of `Result<tcc::Report, tcc::Error>`
/// with the semantics of `tcc::Orchestrator::orchestrate`: every Try at once;
/// then every Confirm, or every Cancel of the services whose Try started,
/// each retried on its own; every failure in the error.
///
/// Unlike an `Orchestrator`, which runs type-erased `tcc::Service` handles,
/// the block knows its services' types: each phase's future runs in place,
/// in a slot of the block's own future, and no handle is built. A run makes
/// three allocations whatever the number of services (the transaction,
/// boxed so that it can outlive the caller, its services' names and their
/// records). A `tcc::Service` listed in the block keeps its own settings
/// and status flags, as in an `Orchestrator`.
///
/// With `log = &log;` (a `tcc::TransactionLog`) the transaction is durable:
/// every listed service must implement `tcc::Recoverable` (a compile error
/// on the value otherwise; an inline service is refused outright) and its
/// kind must be registered on the log (refused before any Try otherwise), its
/// data is saved before the first Try and the decision before the first
/// Confirm or Cancel, so a crash at any instant is finished by recovery.
/// `id = some_id;` runs it under an id the caller chose beforehand.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use tcc::{tcc, tcc_service};
///
/// /// A wallet whose operations borrow it, as most `async fn`s do.
/// #[derive(Default)]
/// struct Wallet {
///     balance: AtomicU32,
///     frozen: AtomicU32,
/// }
///
/// impl Wallet {
///     async fn freeze(&self, amount: u32) -> Result<(), String> {
///         self.balance
///             .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(amount))
///             .map_err(|_| "insufficient funds".to_owned())?;
///         self.frozen.fetch_add(amount, Ordering::SeqCst);
///         Ok(())
///     }
///     async fn debit(&self, amount: u32) -> Result<(), String> {
///         self.frozen.fetch_sub(amount, Ordering::SeqCst);
///         Ok(())
///     }
///     async fn unfreeze(&self, amount: u32) -> Result<(), String> {
///         self.frozen.fetch_sub(amount, Ordering::SeqCst);
///         self.balance.fetch_add(amount, Ordering::SeqCst);
///         Ok(())
///     }
/// }
///
/// struct Flights;
///
/// #[tcc_service]
/// impl Flights {
///     #[try_phase]
///     async fn hold(&self) -> Result<(), String> { Ok(()) }
///     #[confirm]
///     async fn book(&self) -> Result<(), String> { Ok(()) }
///     #[cancel]
///     async fn release(&self) -> Result<(), String> { Ok(()) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tcc::Error> {
/// let wallet = Arc::new(Wallet::default());
/// wallet.balance.store(100, Ordering::SeqCst);
/// let amount = 30;
///
/// let report = tcc! {
///     max_retries = 3;
///     try_timeout = Duration::from_secs(2);
///     Flights,
///     "payment" => clone(wallet) {
///         try_phase: wallet.freeze(amount),
///         confirm: wallet.debit(amount),
///         cancel: wallet.unfreeze(amount),
///     },
/// }
/// .await?;
///
/// assert_eq!(report.services().len(), 2);
/// assert_eq!(wallet.balance.load(Ordering::SeqCst), 70);
/// # Ok(())
/// # }
/// ```
///
/// # Grammar
///
/// ```text
/// tcc! {
///     (SETTING = EXPR;)*             // optional, before the services
///     SERVICE, SERVICE, ...          // at least one; trailing comma optional
/// }
///
/// SETTING := max_retries             // u32: Orchestrator::max_retries
///          | retry                   // RetryPolicy: Orchestrator::retry
///          | try_timeout             // Duration: Orchestrator::try_timeout
///          | attempt_timeout         // Duration: the time limit of each Confirm
///                                    // and Cancel attempt (Orchestrator::attempt_timeout)
///          | fail_fast               // bool: Orchestrator::fail_fast
///          | log                     // &TransactionLog: Orchestrator::log (durable)
///          | id                      // TransactionId: Orchestrator::orchestrate_as
///
/// SERVICE := EXPR                    // a value of a #[tcc_service] type, an Arc of
///                                    // one, any TccService, or a tcc::Service
///          | "name" => { PHASES }               // an inline service
///          | "name" => clone(a, b, ..) { PHASES }
///
/// PHASES  := try_phase: EXPR, confirm: EXPR, cancel: EXPR   // any order
/// ```
///
/// Settings are applied in the order written, so a `max_retries` after a
/// `retry` policy changes the policy's limit. Settings win over the same
/// setting of a service. The comma after an inline service's block may be
/// left out.
///
/// # Inline services and what they capture
///
/// Each phase is an expression that yields a future of `Result<(), E>`
/// (`E` as for [`macro@tcc_service`]). It is evaluated anew for every
/// attempt, so a retried Confirm gets a fresh future.
///
/// The transaction can outlive the block: it runs inside the caller's
/// future, and if the caller drops that future before the end, it moves to a
/// task of its own and finishes there (drop safety). So, as with
/// `tokio::spawn`, phase futures must be `Send + 'static`, and an inline
/// service takes what its phases name, as a `move` closure does: the
/// compiler enforces both. Three ways to satisfy it:
///
/// - `clone(a, b)` before the block clones `a` and `b` into the service (the
///   caller keeps its own), then again into every attempt, whose expression
///   is awaited inside an `async move` block. The phase may then borrow them,
///   as `wallet.freeze(amount)` does above. `Copy` values (`amount`) need no
///   listing.
/// - an `async move` block over values that are `Copy` or cloned inside
///   the phase expression:
///   `try_phase: { let wallet = wallet.clone(); async move { wallet.freeze(30).await } }`.
/// - a function returning a future that owns what it needs, such as
///   `fn freeze(wallet: &Arc<Wallet>) -> impl Future<..> + use<>`.
///
/// A phase that borrows a local of the block is refused by rustc's borrow
/// checker, whose message a macro cannot replace: it is the only error,
///
/// ```text
/// error: lifetime may not live long enough
///   |             try_phase: async { wallet.fetch_sub(10, Ordering::SeqCst); Ok::<(), String>(()) },
///   |                        ^^^^^ argument requires that `'1` must outlive `'static`
///   = note: closure implements `Fn`, so references to captured variables can't escape the closure
/// ```
///
/// and it means: the phase must own what it uses. The fix is to list what it
/// uses in `clone(..)`:
///
/// ```compile_fail
/// # use std::sync::Arc;
/// # use std::sync::atomic::{AtomicU32, Ordering};
/// # async fn handler() {
/// let wallet = Arc::new(AtomicU32::new(100));
/// let _ = tcc::tcc! {
///     "payment" => {
///         // borrows `wallet`, but the transaction may outlive this function
///         try_phase: async { wallet.fetch_sub(10, Ordering::SeqCst); Ok::<(), String>(()) },
///         confirm: async { Ok::<(), String>(()) },
///         cancel: async { Ok::<(), String>(()) },
///     },
/// };
/// # }
/// ```
///
/// ```
/// # use std::sync::Arc;
/// # use std::sync::atomic::{AtomicU32, Ordering};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let wallet = Arc::new(AtomicU32::new(100));
/// tcc::tcc! {
///     // each attempt gets its own clone of `wallet`, which the phase borrows
///     "payment" => clone(wallet) {
///         try_phase: async { wallet.fetch_sub(10, Ordering::SeqCst); Ok::<(), String>(()) },
///         confirm: async { Ok::<(), String>(()) },
///         cancel: async { Ok::<(), String>(()) },
///     },
/// }
/// .await
/// .unwrap();
/// assert_eq!(wallet.load(Ordering::SeqCst), 90);
/// # }
/// ```
///
/// # When things run
///
/// The services are built where `tcc!` is evaluated; nothing runs until the
/// future is first polled. The transaction then runs inside that future, as
/// long as the caller polls it; if the caller drops it before the end, the
/// transaction moves to a tokio task of its own and finishes there.
///
/// # Compile-time checks
///
/// - no services; an unknown setting, or one given twice, or after a
///   service; an unknown phase key (the nearest valid one is suggested);
/// - an inline service missing a phase, or given one twice; two inline
///   services with the same name (typed services' names are checked when
///   the transaction starts);
/// - a phase that is not a future ("a phase must be a future of
///   `Result<(), E>`, and `{closure}` is not a future", with rustc's "use
///   parentheses to call this closure" where it applies), whose future does
///   not resolve to `Result<(), E>`, or whose `E` is not an error type; a
///   phase whose future is not `Send` (rustc's message, with the value held
///   across an `.await` and a note naming the phase); each one error, on the
///   phase's expression;
/// - a value whose type is not a TCC service:
///
/// ```compile_fail
/// struct Hotel;
///
/// # async fn handler() {
/// // error[E0277]: `Hotel` is not a TCC service
/// //   = note: annotate its impl block with #[tcc_service] and mark one
/// //     method each with #[try_phase], #[confirm] and #[cancel]
/// let _ = tcc::tcc! { Hotel }.await;
/// # }
/// ```
#[proc_macro]
pub fn tcc(input: TokenStream) -> TokenStream {
    orchestration::tcc(input.into()).into()
}

/// Marks the Try method of a [`macro@tcc_service`] impl block: it reserves
/// resources or checks preconditions, and is never retried. Anywhere else it
/// is an error.
#[proc_macro_attribute]
pub fn try_phase(_args: TokenStream, input: TokenStream) -> TokenStream {
    service::misplaced("try_phase", input.into()).into()
}

/// Marks the Confirm method of a [`macro@tcc_service`] impl block: it makes
/// the reservation final, and is retried until it succeeds or the retries
/// run out. Anywhere else it is an error.
#[proc_macro_attribute]
pub fn confirm(_args: TokenStream, input: TokenStream) -> TokenStream {
    service::misplaced("confirm", input.into()).into()
}

/// Marks the Cancel method of a [`macro@tcc_service`] impl block: it releases
/// the reservation, also after a Try that failed or never finished, and is
/// retried like Confirm. Anywhere else it is an error.
#[proc_macro_attribute]
pub fn cancel(_args: TokenStream, input: TokenStream) -> TokenStream {
    service::misplaced("cancel", input.into()).into()
}

/// Derives `tcc::Recoverable` for a service struct, so that it can join a
/// durable transaction.
///
/// Every field is the service's per-transaction **data**, saved in the
/// transaction log as a JSON object keyed by field name before the Try
/// runs (its type must implement serde's `Serialize` and `Deserialize`),
/// except the fields marked `#[recoverable(resource)]`: the application's
/// own **resources** (a connection pool, a client), never saved, taken back
/// from `tcc::TransactionLog::provide` when a crashed transaction is
/// rebuilt (their type must be `Clone`).
///
/// - `#[recoverable(kind = "..")]` on the struct: the kind it is registered
///   and saved under (the struct's name by default, so two `Debit`s of two
///   modules need a kind each: `register` refuses the second). Keep it
///   stable.
/// - `#[recoverable(resource = "..")]` on a field: a resource fetched by
///   its type and this name, for two resources of one type (two
///   connections): `TransactionLog::provide_named("inventory", conn)`.
/// - `#[recoverable(default)]` on a field: data saved by an older version
///   may lack it; it then takes `Default::default()` (an `Option` field is
///   `None` without it).
/// - `#[recoverable(rename = "..")]` on a field: the name it is saved
///   under, to keep reading data saved before the field was renamed.
///
/// ```
/// use tcc::{BoxError, Recoverable, Resources, tcc_service};
///
/// #[derive(Clone)]
/// struct Pool;
///
/// #[derive(Recoverable)]
/// #[recoverable(kind = "debit")]
/// struct Debit {
///     #[recoverable(resource)]
///     pool: Pool,
///     account: String,
///     amount: i64,
///     #[recoverable(default)]
///     memo: String,
/// }
///
/// #[tcc_service(name = "debit")]
/// impl Debit {
///     #[try_phase]
///     async fn freeze(&self) -> Result<(), BoxError> { Ok(()) }
///     #[confirm]
///     async fn take(&self) -> Result<(), BoxError> { Ok(()) }
///     #[cancel]
///     async fn unfreeze(&self) -> Result<(), BoxError> { Ok(()) }
/// }
///
/// let debit = Debit { pool: Pool, account: "alice".into(), amount: 30, memo: String::new() };
/// let saved = debit.save().unwrap();
/// assert_eq!(saved, br#"{"account":"alice","amount":30,"memo":""}"#);
///
/// let mut resources = Resources::new();
/// resources.insert(Pool).unwrap();
/// // Data saved before `memo` existed still reads back.
/// let old = Debit::rebuild(br#"{"account":"bob","amount":5}"#, &resources).unwrap();
/// assert_eq!((old.account.as_str(), old.amount, old.memo.as_str()), ("bob", 5, ""));
/// ```
#[proc_macro_derive(Recoverable, attributes(recoverable))]
pub fn derive_recoverable(input: TokenStream) -> TokenStream {
    recoverable::derive(input.into()).into()
}
