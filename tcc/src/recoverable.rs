//! Services that a coordinator can rebuild after a crash: [`Recoverable`],
//! and the application's [`Resources`] they are rebuilt with.

use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
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
/// `#[recoverable(resource)]` are resources, fetched by type, or
/// `#[recoverable(resource = "name")]`, fetched by type and name when two
/// resources share a type (see [`Resources`]); every other field is data and
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
/// resources.insert(Pool(Arc::new("postgres://bank".into()))).unwrap();
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
pub(crate) type LogEntry = (&'static str, Result<Vec<u8>, BoxError>);

/// The application's own resources (connection pools, clients), which
/// recoverable services are rebuilt with. They are never written to the log.
///
/// One value per type, or, where two resources share a type (two
/// connections, `Arc<Mutex<Connection>>` each), one value per type and
/// name: [`insert_named`](Resources::insert_named) and
/// [`get_named`](Resources::get_named), `#[recoverable(resource = "name")]`
/// in the derive. A second value under the same type and name is refused,
/// never a silent replacement, so a service is never rebuilt with another's
/// resource.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tcc::{Recoverable, Resources, BoxError, tcc_service};
///
/// type Db = Arc<Mutex<Vec<String>>>; // a connection, for the example
///
/// /// Rebuilt with the `inventory` database, never the wallet's.
/// #[derive(Recoverable)]
/// struct Reserve {
///     #[recoverable(resource = "inventory")]
///     db: Db,
///     item: String,
/// }
///
/// #[tcc_service(name = "reserve")]
/// impl Reserve {
///     #[try_phase]
///     async fn hold(&self) -> Result<(), BoxError> { Ok(()) }
///     #[confirm]
///     async fn take(&self) -> Result<(), BoxError> {
///         self.db.lock().unwrap().push(self.item.clone());
///         Ok(())
///     }
///     #[cancel]
///     async fn release(&self) -> Result<(), BoxError> { Ok(()) }
/// }
///
/// let (inventory, wallet) = (Db::default(), Db::default());
/// let mut resources = Resources::new();
/// resources.insert_named("inventory", inventory.clone()).unwrap();
/// resources.insert_named("wallet", wallet.clone()).unwrap();
/// // The same type and name twice is a mistake, said at once.
/// assert!(resources.insert_named("wallet", Db::default()).is_err());
///
/// let saved = Reserve { db: inventory.clone(), item: "seat 7".into() }.save().unwrap();
/// let rebuilt = Reserve::rebuild(&saved, &resources).unwrap();
/// assert!(Arc::ptr_eq(&rebuilt.db, &inventory));
/// ```
#[derive(Clone, Default)]
pub struct Resources {
    values: HashMap<(TypeId, Option<String>), Arc<dyn Any + Send + Sync>>,
}

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Resources::default()
    }

    /// Adds `value`, the one resource of its type that [`get`](Resources::get)
    /// returns. An error if one was added before: a resource is never
    /// replaced. Two resources of one type take names
    /// ([`insert_named`](Resources::insert_named)).
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) -> Result<(), WiringError> {
        self.add(None, value)
    }

    /// Adds `value` under `name`, which [`get_named`](Resources::get_named)
    /// (and `#[recoverable(resource = "name")]`) fetches it by. An error if
    /// a value of its type was added under `name` before.
    pub fn insert_named<T: Send + Sync + 'static>(
        &mut self,
        name: &str,
        value: T,
    ) -> Result<(), WiringError> {
        self.add(Some(name), value)
    }

    fn add<T: Send + Sync + 'static>(
        &mut self,
        name: Option<&str>,
        value: T,
    ) -> Result<(), WiringError> {
        match self
            .values
            .entry((TypeId::of::<T>(), name.map(str::to_owned)))
        {
            Entry::Occupied(_) => Err(WiringError::DuplicateResource {
                type_name: type_name::<T>(),
                name: name.map(str::to_owned),
            }),
            Entry::Vacant(slot) => {
                slot.insert(Arc::new(value));
                Ok(())
            }
        }
    }

    /// The value of type `T` added with [`insert`](Resources::insert), or
    /// an error naming the type when none was.
    pub fn get<T: Send + Sync + 'static>(&self) -> Result<&T, MissingResource> {
        self.find(None)
    }

    /// The value of type `T` added under `name` with
    /// [`insert_named`](Resources::insert_named), or an error naming the
    /// type and the name when none was.
    pub fn get_named<T: Send + Sync + 'static>(&self, name: &str) -> Result<&T, MissingResource> {
        self.find(Some(name))
    }

    fn find<T: Send + Sync + 'static>(&self, name: Option<&str>) -> Result<&T, MissingResource> {
        self.values
            .get(&(TypeId::of::<T>(), name.map(str::to_owned)))
            .and_then(|value| value.downcast_ref())
            .ok_or_else(|| MissingResource {
                type_name: type_name::<T>(),
                name: name.map(str::to_owned),
            })
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingResource {
    type_name: &'static str,
    name: Option<String>,
}

impl fmt::Display for MissingResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            None => write!(
                f,
                "no resource of type `{}` was provided to the transaction log; call `provide` at start",
                self.type_name
            ),
            Some(name) => write!(
                f,
                "no resource of type `{}` named `{name}` was provided to the transaction log; call `provide_named({name:?}, ..)` at start",
                self.type_name
            ),
        }
    }
}

impl std::error::Error for MissingResource {}

/// A mistake in wiring a [`TransactionLog`](crate::TransactionLog) at start
/// (or filling [`Resources`]): refused when it is made, since recovery after
/// a crash would otherwise rebuild a service with the wrong resource, or
/// the wrong type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WiringError {
    /// A second resource of one type (and name) was provided: which one a
    /// service is rebuilt with would be a guess.
    #[error(
        "a resource of type `{type_name}`{} was provided twice; give each resource of one type its own name (`provide_named`, and `#[recoverable(resource = \"name\")]` on the field)",
        name.as_ref().map_or_else(String::new, |name| format!(" named `{name}`"))
    )]
    DuplicateResource {
        /// The resource's type.
        type_name: &'static str,
        /// Its name, if it was provided with one.
        name: Option<String>,
    },
    /// Two different types were registered under one kind: recovery could
    /// not tell which one a logged participant is.
    #[error(
        "service kind `{kind}` is registered twice, by `{first}` and by `{second}`; give one of them another kind (`#[recoverable(kind = \"..\")]`, or `Recoverable::KIND`)"
    )]
    DuplicateKind {
        /// The kind both claim.
        kind: String,
        /// The type registered first, which stays.
        first: &'static str,
        /// The type refused.
        second: &'static str,
    },
}
