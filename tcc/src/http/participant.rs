//! The participant's side: the `Branch` extractor, and `participant`, which
//! serves the three phases of one resource through the barrier.

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use super::{PHASE, SERVICE, TRANSACTION_ID};
use crate::barrier::Branch;
use crate::{Phase, TransactionId};

/// A header of the protocol that a request lacks, or holds a value that
/// cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingHeader {
    /// `TCC-Transaction-Id`.
    TransactionId,
    /// `TCC-Service`.
    Service,
    /// `TCC-Phase`.
    Phase,
}

impl MissingHeader {
    /// The header's name.
    pub fn name(self) -> &'static str {
        match self {
            MissingHeader::TransactionId => "TCC-Transaction-Id",
            MissingHeader::Service => "TCC-Service",
            MissingHeader::Phase => "TCC-Phase",
        }
    }
}

/// Why a request is not a phase of the protocol: answered with 400 and a
/// body that names the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchRejection {
    header: MissingHeader,
    /// What the header held, when it held something unreadable.
    found: Option<String>,
}

impl BranchRejection {
    /// The header at fault.
    pub fn header(&self) -> MissingHeader {
        self.header
    }
}

impl fmt::Display for BranchRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.header.name();
        match (&self.found, self.header) {
            (None, _) => write!(f, "the request has no `{name}` header"),
            (Some(found), MissingHeader::TransactionId) => write!(
                f,
                "the `{name}` header is not a transaction id (32 hex digits): {found:?}"
            ),
            (Some(found), MissingHeader::Phase) => write!(
                f,
                "the `{name}` header is not `try`, `confirm` or `cancel`: {found:?}"
            ),
            (Some(found), MissingHeader::Service) => {
                write!(f, "the `{name}` header is not a name: {found:?}")
            }
        }
    }
}

impl std::error::Error for BranchRejection {}

impl IntoResponse for BranchRejection {
    fn into_response(self) -> Response {
        error_response(StatusCode::BAD_REQUEST, &self.to_string())
    }
}

/// A JSON error body, as the protocol has it: `{"error": "..."}`.
fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Reads the branch from the protocol's three headers (see
/// [the protocol](super#the-protocol)); a request without them is refused
/// with 400 and a body naming the header.
impl<S: Send + Sync> FromRequestParts<S> for Branch {
    type Rejection = BranchRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let header = |which: MissingHeader, name: &str| {
            let value = parts.headers.get(name).ok_or(BranchRejection {
                header: which,
                found: None,
            })?;
            // UTF-8, not only visible ASCII: a service's name may be any
            // text, and reqwest sends it as its bytes.
            std::str::from_utf8(value.as_bytes()).map_err(|_| BranchRejection {
                header: which,
                found: Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
            })
        };
        let unreadable = |which: MissingHeader, text: &str| BranchRejection {
            header: which,
            found: Some(text.to_owned()),
        };
        let id = header(MissingHeader::TransactionId, TRANSACTION_ID)?;
        let id: TransactionId = id
            .parse()
            .map_err(|_| unreadable(MissingHeader::TransactionId, id))?;
        let service = header(MissingHeader::Service, SERVICE)?;
        if service.is_empty() {
            return Err(unreadable(MissingHeader::Service, service));
        }
        let phase = header(MissingHeader::Phase, PHASE)?;
        let phase = match phase {
            "try" => Phase::Try,
            "confirm" => Phase::Confirm,
            "cancel" => Phase::Cancel,
            other => return Err(unreadable(MissingHeader::Phase, other)),
        };
        Ok(Branch::new(id, service, phase))
    }
}

#[cfg(any(feature = "sqlx-postgres", feature = "sqlx-sqlite"))]
pub use served::{Call, PhaseError, PhaseErrorKind, participant};

/// `participant`: phases served through the sqlx barrier.
#[cfg(any(feature = "sqlx-postgres", feature = "sqlx-sqlite"))]
mod served {
    use std::fmt;
    use std::future::Future;
    use std::sync::Arc;

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use serde::de::DeserializeOwned;

    use super::error_response;
    use crate::Phase;
    use crate::barrier::sqlx::{BodyFuture, Tx};
    use crate::barrier::{BarrierError, Branch, Outcome};
    use crate::error::BoxError;

    /// One phase delivered to a handler of [`participant`]: its branch
    /// (transaction id, service, phase) and the request's body.
    #[derive(Clone, Debug)]
    pub struct Call<T> {
        /// The branch: key your work by its transaction id.
        pub branch: Branch,
        /// The body the coordinator sent, read as JSON.
        pub body: T,
    }

    /// What kind of [`PhaseError`] this is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum PhaseErrorKind {
        /// Refused for good (409): a Try that cannot reserve, a phase the
        /// barrier refuses.
        Refused,
        /// Failed for now (503): the coordinator retries a Confirm or
        /// Cancel.
        Failed,
    }

    /// How a phase served by [`participant`] failed. Its transaction rolls
    /// back with the barrier's row, so the phase may be delivered again.
    #[derive(Debug)]
    pub struct PhaseError {
        kind: PhaseErrorKind,
        source: BoxError,
    }

    impl PhaseError {
        /// Refused for good, answered with 409 and `why`: a Try that cannot
        /// reserve (sold out, insufficient funds).
        pub fn refused(why: impl Into<BoxError>) -> Self {
            PhaseError {
                kind: PhaseErrorKind::Refused,
                source: why.into(),
            }
        }

        /// Failed for now, answered with 503 and `why`: the coordinator
        /// tries a Confirm or Cancel again.
        pub fn failed(why: impl Into<BoxError>) -> Self {
            PhaseError {
                kind: PhaseErrorKind::Failed,
                source: why.into(),
            }
        }

        /// Refused or failed.
        pub fn kind(&self) -> PhaseErrorKind {
            self.kind
        }
    }

    impl fmt::Display for PhaseError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", crate::error::Chain(&*self.source))
        }
    }

    impl std::error::Error for PhaseError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.source)
        }
    }

    /// A refusal of the barrier is for good; a database failure is for now.
    impl From<BarrierError> for PhaseError {
        fn from(error: BarrierError) -> Self {
            match error.is_permanent() {
                true => PhaseError::refused(error),
                false => PhaseError::failed(error),
            }
        }
    }

    /// For now: the barrier retries a serialization failure or a busy
    /// database itself, and the coordinator retries what is left.
    impl From<sqlx::Error> for PhaseError {
        fn from(error: sqlx::Error) -> Self {
            PhaseError::failed(error)
        }
    }

    impl IntoResponse for PhaseError {
        fn into_response(self) -> Response {
            let status = match self.kind {
                PhaseErrorKind::Refused => StatusCode::CONFLICT,
                PhaseErrorKind::Failed => StatusCode::SERVICE_UNAVAILABLE,
            };
            error_response(status, &self.to_string())
        }
    }

    /// A database the barrier runs on through sqlx: PostgreSQL (feature
    /// `sqlx-postgres`) and SQLite (feature `sqlx-sqlite`).
    pub trait BarrierDatabase: sqlx::Database + private::Sealed {
        #[doc(hidden)]
        fn run_branch<'a, F>(
            pool: &'a sqlx::Pool<Self>,
            branch: &'a Branch,
            body: F,
        ) -> impl Future<Output = Result<Outcome<()>, PhaseError>> + Send + 'a
        where
            F: for<'t> FnMut(&'t mut Tx<'static, Self>) -> BodyFuture<'t, Result<(), PhaseError>>
                + Send
                + 'a;
    }

    mod private {
        pub trait Sealed {}
    }

    #[cfg(feature = "sqlx-postgres")]
    impl private::Sealed for sqlx::Postgres {}

    #[cfg(feature = "sqlx-postgres")]
    impl BarrierDatabase for sqlx::Postgres {
        fn run_branch<'a, F>(
            pool: &'a sqlx::Pool<Self>,
            branch: &'a Branch,
            body: F,
        ) -> impl Future<Output = Result<Outcome<()>, PhaseError>> + Send + 'a
        where
            F: for<'t> FnMut(&'t mut Tx<'static, Self>) -> BodyFuture<'t, Result<(), PhaseError>>
                + Send
                + 'a,
        {
            crate::barrier::sqlx::postgres::run_branch(pool, branch, body)
        }
    }

    #[cfg(feature = "sqlx-sqlite")]
    impl private::Sealed for sqlx_sqlite::Sqlite {}

    #[cfg(feature = "sqlx-sqlite")]
    impl BarrierDatabase for sqlx_sqlite::Sqlite {
        fn run_branch<'a, F>(
            pool: &'a sqlx::Pool<Self>,
            branch: &'a Branch,
            body: F,
        ) -> impl Future<Output = Result<Outcome<()>, PhaseError>> + Send + 'a
        where
            F: for<'t> FnMut(&'t mut Tx<'static, Self>) -> BodyFuture<'t, Result<(), PhaseError>>
                + Send
                + 'a,
        {
            crate::barrier::sqlx::sqlite::run_branch(pool, branch, body)
        }
    }

    /// A phase's handler: runs in the barrier's transaction `tx` (its
    /// statements on `&mut **tx`), and may be called again if the database
    /// asks for the transaction to be run again.
    type Handler<DB, T> = Arc<
        dyn for<'t> Fn(&'t mut Tx<'static, DB>, Call<T>) -> BodyFuture<'t, Result<(), PhaseError>>
            + Send
            + Sync,
    >;

    struct Phases<DB: sqlx::Database, T> {
        pool: sqlx::Pool<DB>,
        handlers: [Handler<DB, T>; 3],
    }

    /// Serves the three phases of one resource: `POST /try`, `/confirm`
    /// and `/cancel` (mount the router where you like, e.g. under
    /// `/stock`). Each phase runs in one transaction on `pool`: the
    /// barrier's row, then its handler if the barrier lets it through, then
    /// the commit. A duplicate, an empty cancel and a Try after its Cancel
    /// are answered without the handler running; a handler's error rolls
    /// everything back. The handlers get the [`Call`]: the branch and the
    /// body read as JSON into `T`.
    ///
    /// Answers: 200 and `{"outcome": ...}` when done; 409 when refused (by
    /// the barrier, or a handler's [`PhaseError::refused`]); 503 when it
    /// failed for now; 400 for a request without the protocol's headers, a
    /// phase header that is not the path's, or a body that is not a `T`.
    /// axum refuses a body over 2 MB (413, a refusal for good) unless the
    /// router is given a larger `axum::extract::DefaultBodyLimit`: mind it
    /// if a coordinator sends large bodies, as every phase gets the same one.
    ///
    /// ```
    /// use serde::Deserialize;
    /// use sqlx::SqlitePool;
    /// use tcc::http::{participant, PhaseError};
    ///
    /// #[derive(Clone, Deserialize)]
    /// struct Order {
    ///     item: String,
    ///     quantity: i64,
    /// }
    ///
    /// fn stock(db: SqlitePool) -> axum::Router {
    ///     participant(
    ///         db,
    ///         |tx, call: tcc::http::Call<Order>| Box::pin(async move {
    ///             let held = sqlx::query(
    ///                 "UPDATE stock SET held = held + ?2 WHERE item = ?1 AND free - held >= ?2",
    ///             )
    ///             .bind(&call.body.item)
    ///             .bind(call.body.quantity)
    ///             .execute(&mut **tx)
    ///             .await?;
    ///             if held.rows_affected() == 0 {
    ///                 return Err(PhaseError::refused(format!("{} is sold out", call.body.item)));
    ///             }
    ///             Ok(())
    ///         }),
    ///         |tx, call: tcc::http::Call<Order>| Box::pin(async move {
    ///             sqlx::query("UPDATE stock SET held = held - ?2, free = free - ?2 WHERE item = ?1")
    ///                 .bind(&call.body.item)
    ///                 .bind(call.body.quantity)
    ///                 .execute(&mut **tx)
    ///                 .await?;
    ///             Ok(())
    ///         }),
    ///         |tx, call: tcc::http::Call<Order>| Box::pin(async move {
    ///             sqlx::query("UPDATE stock SET held = held - ?2 WHERE item = ?1")
    ///                 .bind(&call.body.item)
    ///                 .bind(call.body.quantity)
    ///                 .execute(&mut **tx)
    ///                 .await?;
    ///             Ok(())
    ///         }),
    ///     )
    /// }
    /// # let _ = stock;
    /// ```
    pub fn participant<DB, T, Try, Confirm, Cancel>(
        pool: sqlx::Pool<DB>,
        try_phase: Try,
        confirm: Confirm,
        cancel: Cancel,
    ) -> Router
    where
        DB: BarrierDatabase,
        T: DeserializeOwned + Clone + Send + Sync + 'static,
        Try: for<'t> Fn(&'t mut Tx<'static, DB>, Call<T>) -> BodyFuture<'t, Result<(), PhaseError>>
            + Send
            + Sync
            + 'static,
        Confirm: for<'t> Fn(&'t mut Tx<'static, DB>, Call<T>) -> BodyFuture<'t, Result<(), PhaseError>>
            + Send
            + Sync
            + 'static,
        Cancel: for<'t> Fn(&'t mut Tx<'static, DB>, Call<T>) -> BodyFuture<'t, Result<(), PhaseError>>
            + Send
            + Sync
            + 'static,
    {
        let phases = Arc::new(Phases {
            pool,
            handlers: [Arc::new(try_phase), Arc::new(confirm), Arc::new(cancel)],
        });
        Router::new()
            .route("/try", post(serve::<DB, T, { Phase::Try as u8 }>))
            .route("/confirm", post(serve::<DB, T, { Phase::Confirm as u8 }>))
            .route("/cancel", post(serve::<DB, T, { Phase::Cancel as u8 }>))
            .with_state(phases)
    }

    /// Serves one phase (`PHASE`, as `Phase as u8`: the route's).
    async fn serve<DB, T, const PHASE: u8>(
        State(phases): State<Arc<Phases<DB, T>>>,
        branch: Result<Branch, super::BranchRejection>,
        body: Bytes,
    ) -> Response
    where
        DB: BarrierDatabase,
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let branch = match branch {
            Ok(branch) => branch,
            Err(rejection) => return rejection.into_response(),
        };
        let path = branch.phase();
        if path as u8 != PHASE {
            let message = format!(
                "the `TCC-Phase` header says {path}, but the request was sent to another phase's path"
            );
            return error_response(StatusCode::BAD_REQUEST, &message);
        }
        let body: T = match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(error) => {
                let message = format!("the body is not what this participant reads: {error}");
                return error_response(StatusCode::BAD_REQUEST, &message);
            }
        };
        let handler = &phases.handlers[PHASE as usize];
        let call = Call {
            branch: branch.clone(),
            body,
        };
        let outcome = DB::run_branch(&phases.pool, &branch, |tx| handler(tx, call.clone())).await;
        let outcome = match outcome {
            Ok(Outcome::Ran(())) => "ran",
            Ok(Outcome::Duplicate) => "duplicate",
            Ok(Outcome::EmptyCancel) => "empty_cancel",
            Err(error) => {
                if error.kind() == PhaseErrorKind::Failed {
                    tracing::warn!(%branch, %error, "a phase failed; the coordinator will retry it");
                }
                return error.into_response();
            }
        };
        (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "outcome": outcome }).to_string(),
        )
            .into_response()
    }
}
