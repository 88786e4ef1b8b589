//! The barrier through sqlx: [`postgres`] (feature `sqlx-postgres`) and
//! [`sqlite`] (feature `sqlx-sqlite`).
//!
//! The same table, rules and guarantees as the rusqlite and tokio-postgres
//! backends (see [the barrier's docs](crate::barrier)); a database may serve
//! participants of both kinds. Each phase runs in a `sqlx::Transaction`:
//! [`postgres::run`] and [`sqlite::run`] begin one on a pool, retry it when
//! the database says so, and commit; `guard` works inside a transaction the
//! caller began.
//!
//! sqlx 0.9 or later: its SQLite driver takes a range of `libsqlite3-sys`
//! versions, so it links the same SQLite as rusqlite 0.40 (the `sqlite`
//! feature) in one program. Our SQLite backend does not choose how SQLite
//! is linked: enable `sqlx/sqlite` (bundled) or `sqlx/sqlite-unbundled` in
//! your own dependencies, as for rusqlite. sqlx 0.9 needs Rust 1.94.
//!
//! A body given to `run` is written `|tx| Box::pin(async move { ... })`,
//! and runs its statements on `&mut **tx` (see [`Tx`]).

use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;

#[cfg(feature = "sqlx-postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx-postgres")))]
pub mod postgres;
#[cfg(feature = "sqlx-sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx-sqlite")))]
pub mod sqlite;

/// The future of a body given to `run` or `run_branch`: boxed and `Send`,
/// borrowing the transaction for `'t`. Write the body as
/// `|tx| Box::pin(async move { ... })`.
///
/// Why not an `async` closure: the future of an `async` closure that holds
/// a borrow across an `.await` is not provably `Send` today, and a phase's
/// future must be `Send`.
pub type BodyFuture<'t, R> = Pin<Box<dyn Future<Output = R> + Send + 't>>;

/// The transaction a body of `run` or `run_branch` runs in: it derefs to
/// the database's connection, so statements run on `&mut **tx`.
///
/// It exists for its lifetime `'a`, the lifetime of what the body captures.
/// The body is called with a fresh transaction at each attempt, for a
/// lifetime `'t` it cannot name; `&'t mut Tx<'a, DB>` tells the compiler
/// that `'a` outlives `'t`, so the body's future may borrow what the
/// closure captured (`&self`, a `&Branch`). Without it, such a borrow would
/// have to be `'static`.
pub struct Tx<'a, DB: sqlx::Database> {
    tx: sqlx::Transaction<'static, DB>,
    captures: PhantomData<&'a ()>,
}

impl<DB: sqlx::Database> Tx<'_, DB> {
    fn new(tx: sqlx::Transaction<'static, DB>) -> Self {
        Tx {
            tx,
            captures: PhantomData,
        }
    }

    async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl<DB: sqlx::Database> Deref for Tx<'_, DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.tx
    }
}

impl<DB: sqlx::Database> DerefMut for Tx<'_, DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }
}
