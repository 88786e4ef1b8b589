//! What a case is made of, and the strategies that draw one.

use super::*;

/// What one attempt of a phase does once its latency has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Succeed,
    Fail,
    /// Fails the first `k` attempts, then succeeds.
    FailThenSucceed(u32),
    /// Fails with a [`Permanent`] error.
    FailPermanently,
    /// Panics; `eager` panics in the phase function itself, before it
    /// returns a future, the rest panic inside the future.
    Panic {
        eager: bool,
    },
    /// Never completes (Try only, and only with a `try_timeout`).
    Hang,
}

/// How one attempt ends, as the phase function decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Act {
    Ok,
    Err,
    Permanent,
    Panic,
    EagerPanic,
    Hang,
}

impl Outcome {
    pub(crate) fn act(self, attempt: u32) -> Act {
        match self {
            Outcome::Succeed => Act::Ok,
            Outcome::Fail => Act::Err,
            Outcome::FailThenSucceed(k) if attempt <= k => Act::Err,
            Outcome::FailThenSucceed(_) => Act::Ok,
            Outcome::FailPermanently => Act::Permanent,
            Outcome::Panic { eager: true } => Act::EagerPanic,
            Outcome::Panic { eager: false } => Act::Panic,
            Outcome::Hang => Act::Hang,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Behaviour {
    pub(crate) outcome: Outcome,
    /// Virtual time each attempt takes before it ends (not for eager panics).
    pub(crate) latency: Duration,
    /// Panics in the future's destructor when it is dropped before it ends
    /// (a timed-out Try, or one `fail_fast` drops). (One that panics while
    /// it is dropped after it ends may be dropped inside the runtime's poll,
    /// where that panic counts as the attempt's: not generated.)
    pub(crate) panic_on_drop: bool,
    /// Yields to the scheduler this many times first, so that futures
    /// ending at the same instant interleave in more orders.
    pub(crate) yields: u32,
    /// Runs a whole orchestration of its own first, as a phase that starts a
    /// sub-transaction does.
    pub(crate) nested: bool,
    /// Fails with an error whose `Display` panics (the runtime's log lines
    /// format it: a subscriber that records every field is installed).
    pub(crate) unprintable: bool,
    /// Fails with an error whose source chain loops back on itself.
    pub(crate) cyclic: bool,
}

impl Behaviour {
    pub(crate) fn latency(self) -> Duration {
        match self.outcome {
            Outcome::Panic { eager: true } => Duration::ZERO,
            _ => self.latency,
        }
    }
}

/// A retry policy, in terms the model can compute bounds from (the policy's
/// own fields are private).
#[derive(Clone, Copy, Debug)]
pub(crate) enum PolicySpec {
    /// `RetryPolicy::default()`: the Go library's policy.
    GoDefault,
    /// `RetryPolicy::immediate(n)`.
    Immediate(u32),
    Custom {
        max_retries: u32,
        initial_ms: u64,
        multiplier: f64,
        max_interval_ms: u64,
        jitter: f64,
    },
    /// A multiplier and jitter out of range: the orchestration is refused
    /// before any phase runs.
    Invalid {
        max_retries: u32,
        multiplier: f64,
        jitter: f64,
    },
}

impl PolicySpec {
    pub(crate) fn is_invalid(self) -> bool {
        matches!(self, PolicySpec::Invalid { .. })
    }

    pub(crate) fn build(self) -> RetryPolicy {
        match self {
            PolicySpec::GoDefault => RetryPolicy::default(),
            PolicySpec::Immediate(n) => RetryPolicy::immediate(n),
            PolicySpec::Custom {
                max_retries,
                initial_ms,
                multiplier,
                max_interval_ms,
                jitter,
            } => RetryPolicy::default()
                .with_max_retries(max_retries)
                .with_initial_interval(Duration::from_millis(initial_ms))
                .with_multiplier(multiplier)
                .with_max_interval(Duration::from_millis(max_interval_ms))
                .with_jitter(jitter),
            PolicySpec::Invalid {
                max_retries,
                multiplier,
                jitter,
            } => RetryPolicy::immediate(max_retries)
                .with_multiplier(multiplier)
                .with_jitter(jitter),
        }
    }

    /// (retries, initial s, multiplier, cap s, jitter)
    pub(crate) fn params(self) -> (u32, f64, f64, f64, f64) {
        match self {
            PolicySpec::GoDefault => (10, 0.5, 1.5, 60.0, 0.5),
            PolicySpec::Immediate(n) | PolicySpec::Invalid { max_retries: n, .. } => {
                (n, 0.0, 1.0, 0.0, 0.0)
            }
            PolicySpec::Custom {
                max_retries,
                initial_ms,
                multiplier,
                max_interval_ms,
                jitter,
            } => (
                max_retries,
                initial_ms as f64 / 1e3,
                multiplier,
                max_interval_ms as f64 / 1e3,
                jitter,
            ),
        }
    }

    pub(crate) fn max_retries(self) -> u32 {
        self.params().0
    }

    /// The documented range of the delay before retry `retry` (from 1):
    /// about initial × multiplier^(retry-1), ± jitter, never above the cap.
    pub(crate) fn delay_range(self, retry: u32) -> (Duration, Duration) {
        let (_, initial, multiplier, cap, jitter) = self.params();
        let base = (initial * multiplier.powi(retry as i32 - 1)).min(cap);
        let low = (base * (1.0 - jitter)).clamp(0.0, cap);
        let high = (base * (1.0 + jitter)).clamp(0.0, cap);
        let fudge = Duration::from_micros(1);
        (
            Duration::from_secs_f64(low).saturating_sub(fudge),
            Duration::from_secs_f64(high) + fudge,
        )
    }
}

/// Retry settings as given to a builder: a limit, a policy, or both, in
/// either order (a later call wins where they overlap).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetrySpec {
    pub(crate) max_retries: Option<u32>,
    pub(crate) policy: Option<PolicySpec>,
    pub(crate) policy_first: bool,
}

impl RetrySpec {
    /// The limit and policy the builder calls leave, as documented:
    /// `retry(p)` sets the policy and its limit, `max_retries(n)` the limit.
    pub(crate) fn resolved(self) -> (Option<u32>, Option<PolicySpec>) {
        let from_policy = self.policy.map(PolicySpec::max_retries);
        let limit = match (self.max_retries, from_policy) {
            (Some(n), Some(p)) => Some(if self.policy_first { n } else { p }),
            (n, p) => n.or(p),
        };
        (limit, self.policy)
    }

    /// Makes the builder calls, in the drawn order, on a service or an
    /// orchestrator (both take the same two settings).
    pub(crate) fn apply<T: RetrySettings>(self, mut target: T) -> T {
        let policy = |target: T| match self.policy {
            Some(p) => target.retry(p.build()),
            None => target,
        };
        if self.policy_first {
            target = policy(target);
        }
        if let Some(n) = self.max_retries {
            target = target.max_retries(n);
        }
        if !self.policy_first {
            target = policy(target);
        }
        target
    }
}

/// The retry builders that `Service` and `Orchestrator` share.
pub(crate) trait RetrySettings: Sized {
    fn retry(self, policy: RetryPolicy) -> Self;
    fn max_retries(self, n: u32) -> Self;
}

impl RetrySettings for Service {
    fn retry(self, policy: RetryPolicy) -> Self {
        Service::retry(self, policy)
    }
    fn max_retries(self, n: u32) -> Self {
        Service::max_retries(self, n)
    }
}

impl RetrySettings for Orchestrator {
    fn retry(self, policy: RetryPolicy) -> Self {
        Orchestrator::retry(self, policy)
    }
    fn max_retries(self, n: u32) -> Self {
        Orchestrator::max_retries(self, n)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ServiceSpec {
    /// Indexed by `Phase as usize`.
    pub(crate) behaviours: [Behaviour; 3],
    pub(crate) retry: RetrySpec,
    pub(crate) try_timeout: Option<Duration>,
}

#[derive(Clone, Debug)]
pub(crate) struct OrchestratorSpec {
    pub(crate) retry: RetrySpec,
    pub(crate) try_timeout: Option<Duration>,
    pub(crate) fail_fast: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct Case {
    pub(crate) services: Vec<ServiceSpec>,
    pub(crate) orchestrator: OrchestratorSpec,
    /// When set, the caller drops the orchestration future after this share
    /// (in thousandths) of the time bound.
    pub(crate) drop_at_permille: Option<u32>,
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// 0 (half the time) or 10 ms to 5 s in steps of 10 ms. Timeouts other than
/// zero end in 5 ms, so a Try never ends at the very instant its timeout
/// fires (a zero timeout lets a Try that ends at its first poll succeed).
pub(crate) fn latency() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        (1..=500u64).prop_map(|n| Duration::from_millis(n * 10)),
    ]
}

/// No timeout, a zero timeout (a Try that does not end at its first poll
/// times out), or 5 ms to 6 s.
pub(crate) fn timeout() -> impl Strategy<Value = Option<Duration>> {
    prop_oneof![
        20 => Just(None),
        1 => Just(Some(Duration::ZERO)),
        10 => (0..=600u64).prop_map(|n| Some(Duration::from_millis(n * 10 + 5))),
    ]
}

/// Try outcomes; `calm` (0 to 3) makes failures rarer, so that cases with
/// many services still reach Confirm.
pub(crate) fn try_outcome(calm: u32) -> impl Strategy<Value = Outcome> {
    let ok = [2, 8, 40, 200][calm as usize];
    prop_oneof![
        ok => Just(Outcome::Succeed),
        2 => Just(Outcome::Fail),
        1 => (1..=3u32).prop_map(Outcome::FailThenSucceed),
        1 => Just(Outcome::FailPermanently),
        1 => any::<bool>().prop_map(|eager| Outcome::Panic { eager }),
        2 => Just(Outcome::Hang),
    ]
}

/// Confirm and Cancel outcomes; `calm` as for [`try_outcome`].
pub(crate) fn settle_outcome(calm: u32) -> impl Strategy<Value = Outcome> {
    let ok = [2, 10, 50, 300][calm as usize];
    prop_oneof![
        ok => Just(Outcome::Succeed),
        2 => Just(Outcome::Fail),
        3 => (1..=6u32).prop_map(Outcome::FailThenSucceed),
        1 => Just(Outcome::FailPermanently),
        1 => any::<bool>().prop_map(|eager| Outcome::Panic { eager }),
    ]
}

pub(crate) fn behaviour(
    outcome: impl Strategy<Value = Outcome>,
) -> impl Strategy<Value = Behaviour> {
    let rare = || proptest::bool::weighted(0.05);
    let yields = prop_oneof![3 => Just(0u32), 1 => 1..=3u32];
    let odd_errors = (rare(), rare());
    (outcome, latency(), rare(), rare(), yields, odd_errors).prop_map(
        |(outcome, latency, panic_on_drop, nested, yields, (unprintable, cyclic))| Behaviour {
            outcome,
            latency,
            panic_on_drop,
            nested,
            yields,
            unprintable,
            cyclic,
        },
    )
}

pub(crate) fn policy() -> impl Strategy<Value = PolicySpec> {
    prop_oneof![
        50 => Just(PolicySpec::GoDefault),
        50 => (0..=5u32).prop_map(PolicySpec::Immediate),
        200 => (0..=5u32, 0..=1000u64, 1.0..3.0f64, 0..=5000u64, 0.0..=1.0f64).prop_map(
            |(max_retries, initial_ms, multiplier, max_interval_ms, jitter)| PolicySpec::Custom {
                max_retries,
                initial_ms,
                multiplier,
                max_interval_ms,
                jitter,
            }
        ),
        // Rare: with twenty services, about one case in twenty has one.
        1 => (0..=5u32, prop_oneof![
            Just((f64::NAN, 0.0)),
            Just((0.5, 0.0)),
            Just((1.0, 1.5)),
            Just((1.0, -0.1)),
        ])
        .prop_map(|(max_retries, (multiplier, jitter))| PolicySpec::Invalid {
            max_retries,
            multiplier,
            jitter,
        }),
    ]
}

pub(crate) fn retry_spec() -> impl Strategy<Value = RetrySpec> {
    (
        proptest::option::of(0..=5u32),
        proptest::option::weighted(0.3, policy()),
        any::<bool>(),
    )
        .prop_map(|(max_retries, policy, policy_first)| RetrySpec {
            max_retries,
            policy,
            policy_first,
        })
}

pub(crate) fn service_spec(try_calm: u32, settle_calm: u32) -> impl Strategy<Value = ServiceSpec> {
    (
        behaviour(try_outcome(try_calm)),
        behaviour(settle_outcome(settle_calm)),
        behaviour(settle_outcome(settle_calm)),
        retry_spec(),
        timeout(),
    )
        .prop_map(|(try_, confirm, cancel, retry, try_timeout)| ServiceSpec {
            behaviours: [try_, confirm, cancel],
            retry,
            try_timeout,
        })
}

/// A case for the `Orchestrator` API: settings on the orchestrator and on
/// services.
pub(crate) fn case() -> impl Strategy<Value = Case> {
    raw_case().prop_map(finish_case)
}

/// A case for `tcc!`, whose inline services carry no settings of their own:
/// the block always sets every orchestrator setting, each to the value that
/// leaving it out would give (`try_timeout = Duration::MAX` for none).
pub(crate) fn macro_case() -> impl Strategy<Value = Case> {
    raw_case().prop_map(|mut case| {
        for service in &mut case.services {
            service.retry = RetrySpec {
                max_retries: None,
                policy: None,
                policy_first: false,
            };
            service.try_timeout = None;
        }
        let (limit, policy) = case.orchestrator.retry.resolved();
        let policy = policy.unwrap_or(PolicySpec::GoDefault);
        case.orchestrator.retry = RetrySpec {
            max_retries: Some(limit.unwrap_or(policy.max_retries())),
            policy: Some(policy),
            policy_first: true,
        };
        finish_case(case)
    })
}

/// A case for a multi-thread runtime in real time: phases end at once (they
/// may yield), delays are zero, nothing hangs and the caller keeps the
/// future, so no case waits on the clock.
pub(crate) fn threaded_case() -> impl Strategy<Value = Case> {
    // Retries a few milliseconds apart, with jitter: real waits whose lower
    // bounds the checks hold exactly.
    let instant = |spec: &mut RetrySpec| {
        spec.policy = spec.policy.map(|p| match p {
            PolicySpec::Invalid { .. } => p,
            _ => PolicySpec::Custom {
                max_retries: p.max_retries(),
                initial_ms: 2,
                multiplier: 2.0,
                max_interval_ms: 8,
                jitter: 0.5,
            },
        });
    };
    raw_case().prop_map(move |mut case| {
        for service in &mut case.services {
            for behaviour in &mut service.behaviours {
                behaviour.latency = Duration::ZERO;
                if behaviour.outcome == Outcome::Hang {
                    behaviour.outcome = Outcome::Succeed;
                }
            }
            service.try_timeout = None;
            instant(&mut service.retry);
            // Without a policy of its own, a service falls back to the
            // default one and its delays.
            service.retry.policy.get_or_insert(PolicySpec::Immediate(0));
        }
        case.orchestrator.try_timeout = None;
        instant(&mut case.orchestrator.retry);
        case.drop_at_permille = None;
        finish_case(case)
    })
}

pub(crate) fn raw_case() -> impl Strategy<Value = Case> {
    let orchestrator =
        (retry_spec(), timeout(), any::<bool>()).prop_map(|(retry, try_timeout, fail_fast)| {
            OrchestratorSpec {
                retry,
                try_timeout,
                fail_fast,
            }
        });
    let drop = proptest::option::weighted(0.25, 0..=1000u32);
    let services = (1..=20usize, 0..4u32, 0..4u32).prop_flat_map(|(n, try_calm, settle_calm)| {
        proptest::collection::vec(service_spec(try_calm, settle_calm), n)
    });
    (services, orchestrator, drop).prop_map(|(services, orchestrator, drop_at_permille)| Case {
        services,
        orchestrator,
        drop_at_permille,
    })
}

/// Hang only where a timeout will end it.
pub(crate) fn finish_case(mut case: Case) -> Case {
    for service in &mut case.services {
        let timeout = case.orchestrator.try_timeout.or(service.try_timeout);
        let try_ = &mut service.behaviours[Phase::Try as usize];
        if try_.outcome == Outcome::Hang && timeout.is_none() {
            try_.outcome = Outcome::Succeed;
        }
        // Whether a nested orchestration ends at its first poll is not for
        // the model to guess: not under a zero timeout.
        if timeout == Some(Duration::ZERO) {
            try_.nested = false;
        }
    }
    case
}
