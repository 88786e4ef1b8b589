//! Services that a coordinator can rebuild after a crash: [`Recoverable`],
//! and the application's [`Resources`] they are rebuilt with.

use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::error::BoxError;
use crate::tcc_service::TccService;

/// A service whose per-transaction data the transaction log keeps, so that
/// a coordinator that restarts can rebuild it and finish its transaction.
///
/// A recoverable service is two things: **data** that belongs to one
/// transaction (which account, how much), saved in the log before its Try
/// runs; and **resources** that belong to the process (a connection pool, an
/// HTTP client), never saved, handed to [`rebuild`](Recoverable::rebuild)
/// from the [`Resources`] the application registered at start.
///
/// Derive it (`#[derive(tcc::Recoverable)]`, the fields marked
/// `#[recoverable(resource)]` are resources, every other field is data and
/// must be serde-serializable), or implement it by hand with any encoding:
///
/// ```
/// use std::sync::Arc;
/// use tcc::{BoxError, Recoverable, Resources, tcc_service};
///
/// /// The application's pool, shared by every transaction.
/// #[derive(Clone)]
/// struct Pool(Arc<String>);
///
/// struct Refund {
///     pool: Pool,
///     order: u64,
/// }
///
/// #[tcc_service(name = "refund")]
/// impl Refund {
///     #[try_phase]
///     async fn hold(&self) -> Result<(), BoxError> { Ok(()) }
///     #[confirm]
///     async fn pay(&self) -> Result<(), BoxError> { Ok(()) }
///     #[cancel]
///     async fn release(&self) -> Result<(), BoxError> { Ok(()) }
/// }
///
/// impl Recoverable for Refund {
///     const KIND: &'static str = "refund";
///     fn save(&self) -> Result<Vec<u8>, BoxError> {
///         Ok(self.order.to_string().into_bytes())
///     }
///     fn rebuild(data: &[u8], resources: &Resources) -> Result<Self, BoxError> {
///         let order = std::str::from_utf8(data)?.parse()?;
///         Ok(Refund { pool: resources.get::<Pool>()?.clone(), order })
///     }
/// }
///
/// let mut resources = Resources::new();
/// resources.insert(Pool(Arc::new("postgres://bank".into())));
/// let refund = Refund { pool: resources.get::<Pool>().unwrap().clone(), order: 7 };
/// let again = Refund::rebuild(&refund.save().unwrap(), &resources).unwrap();
/// assert_eq!(again.order, 7);
/// ```
///
/// # Changing the data of a kind
///
/// Transactions saved by an older version of the program may still be in the
/// log when a newer one recovers them, so `rebuild` must read every shape of
/// data that was ever saved under [`KIND`](Recoverable::KIND). With the
/// derive (JSON objects keyed by field name): a new field needs a default
/// (`#[recoverable(default)]`, or an `Option`), a removed field is ignored, a
/// renamed field keeps its old name with `#[recoverable(rename = "old")]`.
/// A change that cannot be read back that way gets a new `KIND`, and the old
/// kind stays registered until the log holds none of it.
pub trait Recoverable: TccService + Sized {
    /// The name this kind of service is registered and saved under. It must
    /// not change while the log holds transactions of it.
    const KIND: &'static str;

    /// This service's data for the log. A transaction whose services'
    /// data comes to 2 GiB or more is refused before any phase runs.
    fn save(&self) -> Result<Vec<u8>, BoxError>;

    /// The service again, from data that [`save`](Recoverable::save) wrote
    /// (possibly an older version's) and the application's resources.
    fn rebuild(data: &[u8], resources: &Resources) -> Result<Self, BoxError>;
}

impl<T: Recoverable> Recoverable for Arc<T> {
    const KIND: &'static str = T::KIND;

    fn save(&self) -> Result<Vec<u8>, BoxError> {
        T::save(self)
    }

    fn rebuild(data: &[u8], resources: &Resources) -> Result<Self, BoxError> {
        T::rebuild(data, resources).map(Arc::new)
    }
}

/// A recoverable service's kind and its data (or why saving it failed).
pub(crate) type Saved = (&'static str, Result<Vec<u8>, BoxError>);

/// The application's own resources (connection pools, clients), one value
/// per type, which recoverable services are rebuilt with. They are never
/// written to the log.
#[derive(Clone, Default)]
pub struct Resources {
    values: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Resources::default()
    }

    /// Adds `value`, replacing any earlier value of its type.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T`, or an error naming the type when none was
    /// added.
    pub fn get<T: Send + Sync + 'static>(&self) -> Result<&T, MissingResource> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|value| value.downcast_ref())
            .ok_or(MissingResource(type_name::<T>()))
    }
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resources")
            .field("count", &self.values.len())
            .finish()
    }
}

/// A service was rebuilt with a resource the application never provided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no resource of type `{0}` was provided to the transaction log")]
pub struct MissingResource(&'static str);
