//! What the macros expand to. Not public API: it may change in any release.

pub use crate::engine::{Member, Members};
pub use crate::typed::{
    Durable, Inline, IsNotParticipant, IsParticipant, Listed, NotAService, Participant, Plan,
    Saveable, check, check_durable, member,
};
pub use crate::{BoxError, Phase, TccService};
pub use core::future::Future;
pub use core::option::Option;
pub use core::pin::pin;
pub use core::result::Result;
pub use futures_util::future::Either;

/// A `#[tcc_service]` method's future, its error converted on failure.
pub fn erase<F, E>(future: F) -> impl Future<Output = Result<(), BoxError>> + Send
where
    F: Future<Output = Result<(), E>> + Send,
    E: Into<BoxError> + 'static,
{
    crate::service::erase(future)
}

/// An inline phase's future, its error converted on failure. It may
/// outlive the block (its transaction goes on if the caller goes away),
/// so it must own what it uses.
pub fn inline_phase<F, E>(future: F) -> impl Future<Output = Result<(), BoxError>> + Send + 'static
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    crate::service::erase(future)
}

pub use derive_support::{
    CanLoad, CanSave, CannotLoad, CannotSave, Field, Load, Saved, SavedField, missing, saved_field,
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
    pub struct Saved(Map<String, Value>);

    impl Saved {
        /// No fields yet.
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            Saved(Map::new())
        }

        /// The bytes the log keeps.
        pub fn finish(self) -> Result<Vec<u8>, BoxError> {
            Ok(serde_json::to_vec(&self.0)?)
        }

        /// The fields saved for a service of type `type_name`.
        pub fn read(bytes: &[u8], type_name: &str) -> Result<Self, BoxError> {
            serde_json::from_slice(bytes).map(Saved).map_err(|error| {
                format!("the saved data of `{type_name}` is not a JSON object: {error}").into()
            })
        }
    }

    /// A field to save.
    pub struct Field<'a, T>(pub &'a T);

    /// Saves a field whose type serde can serialize.
    pub trait CanSave {
        /// Saves the field under `key`.
        fn save_into(&self, data: &mut Saved, key: &str) -> Result<(), BoxError>;
    }

    impl<T: Serialize> CanSave for Field<'_, T> {
        fn save_into(&self, data: &mut Saved, key: &str) -> Result<(), BoxError> {
            data.0.insert(key.to_owned(), serde_json::to_value(self.0)?);
            Ok(())
        }
    }

    /// What a field that cannot be saved falls back to, in code that does
    /// not compile anyway ([`saved_field`] gives its one error).
    pub trait CannotSave {
        /// Fails.
        fn save_into(&self, _: &mut Saved, key: &str) -> Result<(), BoxError> {
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
        fn load_from(&self, data: &mut Saved, key: &str) -> Result<Option<T>, BoxError>;
    }

    impl<T: DeserializeOwned> CanLoad<T> for Load<T> {
        fn load_from(&self, data: &mut Saved, key: &str) -> Result<Option<T>, BoxError> {
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
        fn load_from(&self, _: &mut Saved, key: &str) -> Result<Option<T>, BoxError> {
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

    impl<T: Serialize + DeserializeOwned> SavedField for T {}

    /// Checks a data field's type: the bound carries the message.
    pub fn saved_field<T: SavedField>() {}
}
