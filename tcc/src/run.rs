//! Running one service's phase: a single attempt (panics caught, Try timed
//! out, context set) and the retry loop of Confirm and Cancel.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;

use crate::context::{Context, TransactionId};
use crate::error::{BoxError, Panicked, Permanent, TryTimedOut};
use crate::phase::Phase;
use crate::retry::{RetryPolicy, mix, name_hash};
use crate::service::Service;

/// Runs one attempt of `context.phase()` on `service`. A panic, in the phase
/// function or in its future, becomes a [`Panicked`] error; a future still
/// running after `timeout` is dropped and becomes a [`TryTimedOut`] error.
pub(crate) async fn attempt(
    service: &Service,
    context: Context,
    timeout: Option<Duration>,
) -> Result<(), BoxError> {
    let phase = context.phase();
    // The phase function is called inside the guarded future, so a panic
    // while building the future is caught too.
    let guarded = AssertUnwindSafe(async { service.shared.phases.run(phase).await }).catch_unwind();
    let scoped = context.scope(guarded);
    let outcome = match timeout {
        Some(limit) => match tokio::time::timeout(limit, scoped).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(Box::new(TryTimedOut(limit))),
        },
        None => scoped.await,
    };
    outcome.unwrap_or_else(|payload| Err(Box::new(Panicked::from_payload(&*payload))))
}

/// How one service's Confirm or Cancel is retried in one orchestration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retries {
    pub(crate) policy: RetryPolicy,
    pub(crate) limit: u32,
}

/// Runs `phase` until it succeeds, fails permanently or uses up its retries.
/// Returns the number of attempts and the last attempt's result.
pub(crate) async fn with_retries(
    service: &Service,
    transaction_id: TransactionId,
    phase: Phase,
    retries: Retries,
) -> (u32, Result<(), BoxError>) {
    let id = transaction_id.as_u128();
    let seed = mix((id as u64) ^ ((id >> 64) as u64)) ^ name_hash(service.name());
    let mut attempts = 1;
    loop {
        service.mark_started(phase);
        let context = Context::new(transaction_id, service.shared.name.clone(), phase, attempts);
        let result = attempt(service, context, None).await;
        let error = match result {
            Ok(()) => {
                service.record(phase, true);
                return (attempts, Ok(()));
            }
            Err(error) => error,
        };
        if attempts > retries.limit || Permanent::is_in(&*error) {
            service.record(phase, false);
            return (attempts, Err(error));
        }
        let delay = retries.policy.delay(attempts, seed);
        tracing::warn!(
            service = service.name(),
            %phase,
            attempt = attempts,
            error = %error,
            retry_in = ?delay,
            "phase failed; retrying"
        );
        tokio::time::sleep(delay).await;
        attempts = attempts.saturating_add(1);
    }
}
