//! What the macros expand to. Not public API: it may change in any release.

pub use crate::engine::{Member, Members};
pub use crate::typed::{
    Inline, IsNotParticipant, IsParticipant, Listed, NotAService, Participant, Plan, check, member,
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
