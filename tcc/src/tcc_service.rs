//! The trait of a typed participant: [`TccService`].

use std::future::Future;
use std::sync::Arc;

use crate::error::BoxError;

/// A type whose three phases an orchestrator can run: the trait that
/// [`#[tcc_service]`](crate::tcc_service) implements for an annotated impl block.
///
/// Implement it by hand when a macro does not fit; any implementor converts
/// into a [`Service`] with `Service::from(value)` (or from an `Arc` of it).
///
/// The contract, as in every TCC system: `try_phase` reserves resources or
/// checks preconditions and is never retried; once every Try succeeded,
/// `confirm` must eventually succeed; `cancel` releases what `try_phase`
/// reserved, and may run after a Try that failed, timed out or never finished,
/// so it must tolerate finding nothing to release. Confirm and Cancel are
/// retried, so they must be idempotent: [`Context::current`](crate::Context::current) gives the
/// transaction id to key them by.
///
/// ```
/// use tcc::{BoxError, Service, TccService};
///
/// struct Audit;
///
/// impl TccService for Audit {
///     fn service_name(&self) -> &str {
///         "audit"
///     }
///     async fn try_phase(&self) -> Result<(), BoxError> {
///         Ok(())
///     }
///     async fn confirm(&self) -> Result<(), BoxError> {
///         Ok(())
///     }
///     async fn cancel(&self) -> Result<(), BoxError> {
///         Ok(())
///     }
/// }
///
/// let service = Service::from(Audit);
/// assert_eq!(service.name(), "audit");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a TCC service",
    label = "not a TCC service",
    note = "annotate its impl block with #[tcc_service] and mark one method each with #[try_phase], #[confirm] and #[cancel]"
)]
pub trait TccService: Send + Sync + 'static {
    /// The name the service is known by in reports, errors and logs. It must
    /// be unique within one orchestration.
    fn service_name(&self) -> &str;

    /// The Try phase: reserve resources or check preconditions. Never retried.
    fn try_phase(&self) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// The Confirm phase: make the reservation final. Retried with backoff.
    fn confirm(&self) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// The Cancel phase: release the reservation. Retried with backoff.
    fn cancel(&self) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// The service's own retry limit, used when the orchestrator sets none.
    fn max_retries(&self) -> Option<u32> {
        None
    }
}

impl<T: TccService> TccService for Arc<T> {
    fn service_name(&self) -> &str {
        T::service_name(self)
    }
    fn try_phase(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        T::try_phase(self)
    }
    fn confirm(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        T::confirm(self)
    }
    fn cancel(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        T::cancel(self)
    }
    fn max_retries(&self) -> Option<u32> {
        T::max_retries(self)
    }
}
