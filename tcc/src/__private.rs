//! What the macros expand to. Not public API: it may change in any release.

pub use crate::typed::{
    Block, Durable, Inline, IsNotParticipant, IsParticipant, Listed, NotAService, Participant,
    Saveable, SlotRef, check, check_durable, member, slot,
};
pub use crate::{BoxError, Phase, TccService};
pub use core::future::Future;
pub use core::option::Option;
pub use core::pin::pin;
pub use core::result::Result;
pub use futures_util::future::Either;

/// A `#[tcc_service]` method's future, its error converted on failure.
pub fn with_boxed_error<F, E>(future: F) -> impl Future<Output = Result<(), BoxError>> + Send
where
    F: Future<Output = Result<(), E>> + Send,
    E: Into<BoxError> + 'static,
{
    crate::service::with_boxed_error(future)
}

/// An inline phase's future, its error converted on failure. It may
/// outlive the block (its transaction goes on if the caller goes away),
/// so it must own what it uses.
pub fn inline_phase<F, E>(future: F) -> impl Future<Output = Result<(), BoxError>> + Send + 'static
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    crate::service::with_boxed_error(future)
}

// The checks below give each misuse of a phase one error, in the user's
// words, on the user's token (the expansion spans each call there):
//
// - `check_phase` holds every condition but `Send` as a custom trait
//   (`#[diagnostic::do_not_recommend]` on each blanket impl, so rustc
//   reports the trait with its message rather than the std bound under it).
//   Each condition reads an associated type of the one before, so once one
//   fails the rest are about rustc's error type and stay silent.
// - `Send` is left to rustc, whose message shows the value held across an
//   `.await` (a custom trait would lose that note); the function whose
//   bound fails is named for the phase, and rustc prints that name.
// - The messages do not name the phase: a type parameter would, but rustc
//   prints it with its full `#[doc(hidden)]` path. The error's span, on the
//   phase's expression or method, shows which phase it is.
// - `Phased(future).service_phase()` (or `.inline_phase()`) is the future
//   itself when every condition may hold, and a stand-in of the right type
//   when one surely fails (the by-value method is found first, the
//   by-reference one otherwise), so nothing downstream of a wrong phase
//   adds errors of its own.

/// A phase's value is a future.
#[diagnostic::on_unimplemented(
    message = "a phase must be a future of `Result<(), E>`, and `{Self}` is not a future",
    label = "not a future",
    note = "a phase is an expression that yields a future, such as an `async` block or a call of an `async fn`; it is evaluated anew for each attempt"
)]
pub trait PhaseFuture {
    /// What the future resolves to.
    type Output;
}

#[diagnostic::do_not_recommend]
impl<F: Future> PhaseFuture for F {
    type Output = F::Output;
}

/// A phase's future resolves to `Result<(), E>`.
#[diagnostic::on_unimplemented(
    message = "a phase's future must resolve to `Result<(), E>`, not to `{Self}`",
    label = "resolves to `{Self}`",
    note = "a phase ends with `Ok(())` when it succeeds and `Err(error)` when it fails, as in `async {{ ...; Ok::<(), String>(()) }}`"
)]
pub trait PhaseResult {
    /// The phase's error type.
    type Error;
}

#[diagnostic::do_not_recommend]
impl<E> PhaseResult for Result<(), E> {
    type Error = E;
}

/// A phase's error type converts into [`BoxError`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an error type, so a phase cannot fail with it",
    label = "not an error type",
    note = "a phase's error is a `std::error::Error + Send + Sync + 'static`, a `String`, a `&'static str` or a `tcc::Permanent`; for instance return `Result<(), String>` and convert with `.map_err(|e| e.to_string())`"
)]
pub trait PhaseError {}

#[diagnostic::do_not_recommend]
impl<E: Into<BoxError> + 'static> PhaseError for E {}

/// Checks that a phase's future resolves to `Result<(), E>` with an error
/// type `E`: one error, in the user's words, for the first condition that
/// fails.
pub fn check_phase<F>(_: &F)
where
    F: PhaseFuture,
    <F as PhaseFuture>::Output: PhaseResult,
    <<F as PhaseFuture>::Output as PhaseResult>::Error: PhaseError,
{
}

/// Checks that a phase's value is a future, where it is awaited inside an
/// `async move` block of the expansion (an inline service with `clone(..)`):
/// the block then gets the other checks.
pub fn check_future<F>(_: &F)
where
    F: PhaseFuture,
{
}

/// Checks that a Try phase's future is `Send`. rustc names this function
/// when it is not, and shows the line of the bound.
pub fn try_phase_future_must_be_send<F>(_: &F)
where
    F: Send, // a phase may move between threads: hold no `Rc`, `RefCell` borrow or `MutexGuard` across an `.await`
{
}

/// Checks that a Confirm phase's future is `Send`, as
/// [`try_phase_future_must_be_send`] does.
pub fn confirm_future_must_be_send<F>(_: &F)
where
    F: Send, // a phase may move between threads: hold no `Rc`, `RefCell` borrow or `MutexGuard` across an `.await`
{
}

/// Checks that a Cancel phase's future is `Send`, as
/// [`try_phase_future_must_be_send`] does.
pub fn cancel_future_must_be_send<F>(_: &F)
where
    F: Send, // a phase may move between threads: hold no `Rc`, `RefCell` borrow or `MutexGuard` across an `.await`
{
}

/// A phase's future on its way to the runtime: `Phased(future)` then
/// `.service_phase()` or `.inline_phase()`.
pub struct Phased<F>(pub F);

/// The method `Phased(future).service_phase()` finds first (the receiver
/// by value): for a future that is a phase of a `#[tcc_service]` type.
pub trait IsServicePhase {
    /// The future, its error converted on failure.
    fn service_phase(self) -> impl Future<Output = Result<(), BoxError>> + Send;
}

impl<F, E> IsServicePhase for Phased<F>
where
    F: Future<Output = Result<(), E>> + Send,
    E: Into<BoxError> + 'static,
{
    fn service_phase(self) -> impl Future<Output = Result<(), BoxError>> + Send {
        with_boxed_error(self.0)
    }
}

/// The method `Phased(future).inline_phase()` finds first (the receiver by
/// value): for a future that is a phase of an inline service. It may
/// outlive the block, so it must own what it uses.
pub trait IsInlinePhase {
    /// The future, its error converted on failure.
    fn inline_phase(self) -> impl Future<Output = Result<(), BoxError>> + Send + 'static;
}

impl<F, E> IsInlinePhase for Phased<F>
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    fn inline_phase(self) -> impl Future<Output = Result<(), BoxError>> + Send + 'static {
        inline_phase(self.0)
    }
}

/// The method `Phased(value).future()` finds first (the receiver by value):
/// for a future, which it returns.
pub trait IsFuture {
    /// The future.
    type Future: Future;
    /// The future itself.
    fn future(self) -> Self::Future;
}

impl<F: Future> IsFuture for Phased<F> {
    type Future = F;
    fn future(self) -> F {
        self.0
    }
}

/// The method `Phased(value).future()` finds otherwise (the receiver
/// borrowed): for a value that is not a future, which [`check_future`] has
/// already reported.
pub trait IsNotFuture {
    /// A stand-in.
    fn future(&self) -> NotAPhase;
}

impl<F> IsNotFuture for Phased<F> {
    fn future(&self) -> NotAPhase {
        not_a_phase()
    }
}

/// The methods `Phased(value)` finds otherwise (the receiver borrowed): for
/// a value that is not a phase, which [`check_phase`] or a `..._must_be_send`
/// check has already reported.
pub trait IsNotPhase {
    /// A stand-in.
    fn service_phase(&self) -> NotAPhase;
    /// A stand-in.
    fn inline_phase(&self) -> NotAPhase;
}

impl<F> IsNotPhase for Phased<F> {
    fn service_phase(&self) -> NotAPhase {
        not_a_phase()
    }
    fn inline_phase(&self) -> NotAPhase {
        not_a_phase()
    }
}

/// What stands in for a phase that is not one, in a block that does not
/// compile, and for every phase of a `#[tcc_service]` impl block that has
/// errors.
pub type NotAPhase = core::future::Ready<Result<(), BoxError>>;

/// The stand-in future: it fails at once.
pub fn not_a_phase() -> NotAPhase {
    core::future::ready(Err("not a phase".into()))
}

pub use derive_support::{
    CanLoad, CanSave, CannotLoad, CannotSave, Field, Load, SavedField, SavedFields, missing,
    saved_field,
};

/// What `#[derive(Recoverable)]` expands to: a service's data fields saved
/// as one JSON object keyed by field name.
mod derive_support {
    use std::marker::PhantomData;

    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use serde_json::{Map, Value};

    use crate::BoxError;

    /// The saved data of one service.
    pub struct SavedFields(Map<String, Value>);

    impl SavedFields {
        /// No fields yet.
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            SavedFields(Map::new())
        }

        /// The bytes the log keeps.
        pub fn finish(self) -> Result<Vec<u8>, BoxError> {
            Ok(serde_json::to_vec(&self.0)?)
        }

        /// The fields saved for a service of type `type_name`.
        pub fn read(bytes: &[u8], type_name: &str) -> Result<Self, BoxError> {
            serde_json::from_slice(bytes)
                .map(SavedFields)
                .map_err(|error| {
                    format!("the saved data of `{type_name}` is not a JSON object: {error}").into()
                })
        }
    }

    /// A field to save.
    pub struct Field<'a, T>(pub &'a T);

    /// Saves a field whose type serde can serialize.
    pub trait CanSave {
        /// Saves the field under `key`.
        fn save_into(&self, data: &mut SavedFields, key: &str) -> Result<(), BoxError>;
    }

    impl<T: Serialize> CanSave for Field<'_, T> {
        fn save_into(&self, data: &mut SavedFields, key: &str) -> Result<(), BoxError> {
            data.0.insert(key.to_owned(), serde_json::to_value(self.0)?);
            Ok(())
        }
    }

    /// What a field that cannot be saved falls back to, in code that does
    /// not compile anyway ([`saved_field`] gives its one error).
    pub trait CannotSave {
        /// Fails.
        fn save_into(&self, _: &mut SavedFields, key: &str) -> Result<(), BoxError> {
            Err(format!("field `{key}` cannot be saved").into())
        }
    }

    impl<T> CannotSave for &Field<'_, T> {}

    /// A field to read back, of type `T`.
    pub struct Load<T>(PhantomData<T>);

    impl<T> Load<T> {
        /// The reader of a `T`.
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            Load(PhantomData)
        }
    }

    /// Reads a field whose type serde can deserialize.
    pub trait CanLoad<T> {
        /// The field under `key`; `None` when older data lacks it (a
        /// missing field reads as `null` first, so an `Option` is `None`).
        fn load_from(&self, data: &mut SavedFields, key: &str) -> Result<Option<T>, BoxError>;
    }

    impl<T: DeserializeOwned> CanLoad<T> for Load<T> {
        fn load_from(&self, data: &mut SavedFields, key: &str) -> Result<Option<T>, BoxError> {
            match data.0.remove(key) {
                Some(value) => serde_json::from_value(value)
                    .map(Some)
                    .map_err(|error| format!("saved field `{key}`: {error}").into()),
                None => Ok(serde_json::from_value(Value::Null).ok()),
            }
        }
    }

    /// What a field that cannot be read back falls back to.
    pub trait CannotLoad<T> {
        /// Fails.
        fn load_from(&self, _: &mut SavedFields, key: &str) -> Result<Option<T>, BoxError> {
            Err(format!("field `{key}` cannot be read back").into())
        }
    }

    impl<T> CannotLoad<T> for &Load<T> {}

    /// The error of a field older data lacks, with no default.
    pub fn missing(type_name: &str, key: &str) -> BoxError {
        format!("the saved data of `{type_name}` has no field `{key}` (give the field #[recoverable(default)] if older versions did not save it)").into()
    }

    /// A type a recoverable service's data field may have.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be saved in the transaction log",
        label = "not serializable",
        note = "every field of a #[derive(Recoverable)] type is saved in the log (serde's `Serialize` and `Deserialize`), except the ones marked #[recoverable(resource)], which the application provides at start (`TransactionLog::provide`): mark it so if it is a pool, a client or another shared resource"
    )]
    pub trait SavedField {}

    // Not recommended: rustc then names `SavedField` with its message once,
    // rather than `Serialize` and `Deserialize` in two errors.
    #[diagnostic::do_not_recommend]
    impl<T: Serialize + DeserializeOwned> SavedField for T {}

    /// Checks a data field's type: the bound carries the message.
    pub fn saved_field<T: SavedField>() {}
}
