//! The model: what the documented semantics predict of a case.

use super::*;

/// One service's settings after the orchestrator's win over its own.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Effective {
    pub(crate) limit: u32,
    pub(crate) policy: PolicySpec,
    pub(crate) try_timeout: Option<Duration>,
}

pub(crate) fn effective(case: &Case, service: &ServiceSpec) -> Effective {
    let (orch_limit, orch_policy) = case.orchestrator.retry.resolved();
    let (own_limit, own_policy) = service.retry.resolved();
    let policy = orch_policy.or(own_policy).unwrap_or(PolicySpec::GoDefault);
    Effective {
        limit: orch_limit.or(own_limit).unwrap_or(policy.max_retries()),
        policy,
        try_timeout: case.orchestrator.try_timeout.or(service.try_timeout),
    }
}

/// How a service's Try ends if nothing stops it first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TryEnd {
    pub(crate) at: Duration,
    /// `None`: timed out.
    pub(crate) act: Option<Act>,
}

impl TryEnd {
    pub(crate) fn failed(self) -> bool {
        self.act != Some(Act::Ok)
    }
}

pub(crate) fn try_end(spec: &ServiceSpec, settings: Effective) -> TryEnd {
    let behaviour = spec.behaviours[Phase::Try as usize];
    let act = behaviour.outcome.act(1);
    let latency = behaviour.latency();
    // A Try that yields does not end at its first poll: a zero timeout ends it.
    let pending = latency > Duration::ZERO || behaviour.yields > 0;
    match settings.try_timeout {
        Some(limit)
            if act == Act::Hang
                || (act != Act::EagerPanic && latency > limit)
                || (act != Act::EagerPanic && limit.is_zero() && pending) =>
        {
            TryEnd {
                at: limit,
                act: None,
            }
        }
        _ => TryEnd {
            at: latency,
            act: Some(act),
        },
    }
}

/// How a Confirm or Cancel retry loop ends: attempts, success, and the range
/// of virtual time it takes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chain {
    pub(crate) attempts: u32,
    pub(crate) succeeded: bool,
    pub(crate) shortest: Duration,
    pub(crate) longest: Duration,
}

pub(crate) fn chain(behaviour: Behaviour, settings: Effective) -> Chain {
    let cap = settings.limit + 1;
    let (attempts, succeeded) = match behaviour.outcome {
        Outcome::Succeed => (1, true),
        Outcome::FailPermanently => (1, false),
        Outcome::FailThenSucceed(k) if k < cap => (k + 1, true),
        _ => (cap, false),
    };
    let mut shortest = behaviour.latency() * attempts;
    // Each sleep (latency, then backoff) may run one tick over.
    let mut longest = shortest + TICK * attempts * 2;
    for retry in 1..attempts {
        let (low, high) = settings.policy.delay_range(retry);
        shortest += low;
        longest += high;
    }
    Chain {
        attempts,
        succeeded,
        shortest,
        longest,
    }
}

pub(crate) struct Model {
    /// Whether a retry policy is out of range, so that the orchestration is
    /// refused before any phase runs.
    pub(crate) refused: bool,
    pub(crate) settings: Vec<Effective>,
    pub(crate) tries: Vec<TryEnd>,
    /// Whether every Try succeeds.
    pub(crate) all_ok: bool,
    /// When the Try phase ends: the last Try, or with `fail_fast` the first
    /// failure.
    pub(crate) try_phase_ends: Duration,
    /// An upper bound of the whole orchestration, valid whichever services
    /// end up cancelled.
    pub(crate) bound: Duration,
}

impl Model {
    pub(crate) fn new(case: &Case) -> Model {
        let settings: Vec<_> = case.services.iter().map(|s| effective(case, s)).collect();
        let tries: Vec<_> = case
            .services
            .iter()
            .zip(&settings)
            .map(|(s, e)| try_end(s, *e))
            .collect();
        let all_ok = tries.iter().all(|t| !t.failed());
        let last = tries.iter().map(|t| t.at).max().unwrap_or_default();
        let first_failure = tries.iter().filter(|t| t.failed()).map(|t| t.at).min();
        let try_phase_ends = match first_failure {
            Some(at) if case.orchestrator.fail_fast => at,
            _ => last,
        };
        let refused = std::iter::once(&case.orchestrator.retry)
            .chain(case.services.iter().map(|s| &s.retry))
            .any(|r| r.policy.is_some_and(PolicySpec::is_invalid));
        let mut model = Model {
            refused,
            settings,
            tries,
            all_ok,
            try_phase_ends,
            bound: Duration::ZERO,
        };
        let everyone: Vec<usize> = (0..case.services.len()).collect();
        model.bound = model.window(case, &everyone).1;
        model
    }

    pub(crate) fn settle_phase(&self) -> Phase {
        if self.all_ok {
            Phase::Confirm
        } else {
            Phase::Cancel
        }
    }

    pub(crate) fn chain(&self, case: &Case, index: usize) -> Chain {
        let behaviour = case.services[index].behaviours[self.settle_phase() as usize];
        chain(behaviour, self.settings[index])
    }

    /// The range of the orchestration's total time when `settled` are the
    /// services that run Confirm or Cancel.
    pub(crate) fn window(&self, case: &Case, settled: &[usize]) -> (Duration, Duration) {
        let chains = settled.iter().map(|&i| self.chain(case, i));
        let shortest = chains.clone().map(|c| c.shortest).max().unwrap_or_default();
        let longest = chains.map(|c| c.longest).max().unwrap_or_default();
        (
            self.try_phase_ends + shortest,
            self.try_phase_ends + TICK + longest,
        )
    }
}
