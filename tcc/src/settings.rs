//! The settings an orchestration and each service may carry, and how they
//! resolve for one phase of one service.

use std::time::Duration;

use crate::phase::Phase;
use crate::retry::RetryPolicy;

/// How long a Confirm or Cancel attempt may run, unless set otherwise: one
/// that hangs is then dropped, counted as failed and retried, so a hung
/// participant cannot hold its transaction forever.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// How one service's phase is retried in one orchestration; Try has a limit
/// of 0.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retries {
    pub(crate) policy: RetryPolicy,
    pub(crate) limit: u32,
}

impl Retries {
    pub(crate) const NONE: Retries = Retries {
        policy: RetryPolicy::immediate(0),
        limit: 0,
    };
}

/// Settings of an orchestration, or of one service; the orchestration's own
/// settings win over a service's. Not public API: reachable only through
/// what `tcc!` expands to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub(crate) max_retries: Option<u32>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) try_timeout: Option<Duration>,
    /// Unset, or set: to a limit, or to none.
    pub(crate) attempt_timeout: Option<Option<Duration>>,
}

impl Settings {
    pub(crate) const DEFAULT: Settings = Settings {
        max_retries: None,
        retry: None,
        try_timeout: None,
        attempt_timeout: None,
    };

    /// Sets the backoff policy and, with it, its retry limit: the one rule
    /// behind every `retry` builder.
    pub(crate) fn set_retry(&mut self, policy: RetryPolicy) {
        self.max_retries = Some(policy.max_retries);
        self.retry = Some(policy);
    }

    /// How a service whose own settings are `own` runs `phase`: these
    /// settings where they are set, the service's otherwise, then the
    /// defaults. Returns its retries and the time limit of each attempt.
    pub(crate) fn resolve(&self, own: &Settings, phase: Phase) -> (Retries, Option<Duration>) {
        if phase == Phase::Try {
            return (Retries::NONE, self.try_timeout.or(own.try_timeout));
        }
        let policy = self.retry.or(own.retry).unwrap_or_default();
        let limit = self
            .max_retries
            .or(own.max_retries)
            .unwrap_or(policy.max_retries);
        let timeout = self
            .attempt_timeout
            .or(own.attempt_timeout)
            .unwrap_or(Some(DEFAULT_ATTEMPT_TIMEOUT));
        (Retries { policy, limit }, timeout)
    }
}
