//! The checks: what a case's record must show, against the model.

use super::*;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

pub(crate) fn check(
    case: &Case,
    model: &Model,
    logs: &[ServiceLog],
    names: &[String],
    services: Option<&[Service]>,
    caller: &Caller,
    clock: Clock,
) -> Result<(), String> {
    // Whether instants are the model's to the tick (paused time), and how
    // far past an upper bound one may be.
    let exact = clock == Clock::Paused;
    let slack = if exact { TICK } else { REAL_SLACK };
    let fail_fast = case.orchestrator.fail_fast;
    let name = |i: usize| names[i].as_str();
    for (i, log) in logs.iter().enumerate() {
        ensure!(log.problems.is_empty(), "`{}`: {:?}", name(i), log.problems);
    }
    if model.refused {
        return check_refused(logs, services, caller);
    }

    // Invariant 8: a panic that escaped would have failed the test already;
    // a panic inside the transaction's task shows as an interrupted result.
    if let Caller::Returned { result: Err(e), .. } = caller {
        ensure!(
            e.kind() != ErrorKind::Interrupted,
            "inv 8: the transaction's task died: {e}"
        );
    }

    // How each Try went, as the Try functions saw it.
    let started: Vec<bool> = logs
        .iter()
        .map(|l| !l.attempts(Phase::Try).is_empty())
        .collect();
    let try_ok: Vec<bool> = logs.iter().map(|l| l.succeeded(Phase::Try)).collect();
    let every_try_ok = try_ok.iter().all(|ok| *ok);
    ensure!(
        every_try_ok == model.all_ok,
        "model: every Try succeeds = {}, but the Tries saw {try_ok:?}",
        model.all_ok
    );
    let decided_at = model.try_phase_ends;
    for (i, log) in logs.iter().enumerate() {
        let tries = log.attempts(Phase::Try);
        // Invariant 3, Try: never retried.
        ensure!(
            tries.len() <= 1,
            "inv 3: `{}` tried {} times",
            name(i),
            tries.len()
        );
        let predicted = model.tries[i];
        let Some(attempt) = tries.first() else {
            // Only fail_fast leaves a Try unstarted, and only when a Try
            // failed at once, before the orchestrator reached this one.
            ensure!(
                fail_fast && decided_at.is_zero() && !model.all_ok,
                "semantics 1: the Try of `{}` never started",
                name(i)
            );
            continue;
        };
        ensure!(
            attempt.started.is_zero() || !exact,
            "semantics 1: the Try of `{}` started at {:?}, not with the others",
            name(i),
            attempt.started
        );
        let (end, at) = attempt
            .ended
            .ok_or_else(|| format!("the Try of `{}` never ended", name(i)))?;
        let timed_out = predicted.act.is_none() && (at == predicted.at || !exact);
        let dropped_by_fail_fast =
            fail_fast && (at == decided_at || !exact) && predicted.at >= decided_at;
        match end {
            End::Dropped => ensure!(
                timed_out || dropped_by_fail_fast,
                "the Try of `{}` was dropped at {at:?}; predicted {predicted:?}, \
                 Try phase ends at {decided_at:?}",
                name(i)
            ),
            _ => {
                let as_predicted = matches!(
                    (end, predicted.act),
                    (End::Ok, Some(Act::Ok))
                        | (End::Err, Some(Act::Err))
                        | (End::Permanent, Some(Act::Permanent))
                        | (End::Panic, Some(Act::Panic | Act::EagerPanic))
                );
                ensure!(
                    (at == predicted.at || !exact) && as_predicted,
                    "the Try of `{}` ended {end:?} at {at:?}; predicted {predicted:?}",
                    name(i)
                );
                ensure!(
                    at <= decided_at || !exact,
                    "the Try of `{}` ended at {at:?}, after the Try phase ended at \
                     {decided_at:?}",
                    name(i)
                );
            }
        }
    }

    // Invariants 1 and 2: which services are confirmed or cancelled.
    for (i, log) in logs.iter().enumerate() {
        let confirmed = !log.attempts(Phase::Confirm).is_empty();
        let cancelled = !log.attempts(Phase::Cancel).is_empty();
        ensure!(
            !(confirmed && cancelled),
            "inv 1: `{}` saw both Confirm and Cancel",
            name(i)
        );
        ensure!(
            !confirmed || every_try_ok,
            "inv 1: `{}` confirmed although a Try failed",
            name(i)
        );
        ensure!(
            !cancelled || !every_try_ok,
            "inv 1: `{}` cancelled although every Try succeeded",
            name(i)
        );
        if every_try_ok {
            ensure!(
                confirmed,
                "`{}` not confirmed after every Try succeeded",
                name(i)
            );
        } else {
            ensure!(
                cancelled == started[i],
                "inv 2: `{}`: Try started = {}, cancelled = {cancelled}",
                name(i),
                started[i]
            );
        }
    }

    // Invariant 3 and the model, for Confirm and Cancel: attempt counts, no
    // attempt after a success or a permanent error, backoff between attempts.
    let settle = model.settle_phase();
    let settled: Vec<usize> = (0..logs.len())
        .filter(|&i| !logs[i].attempts(settle).is_empty())
        .collect();
    for &i in &settled {
        let attempts = logs[i].attempts(settle);
        let limit = model.settings[i].limit;
        ensure!(
            attempts.len() as u32 <= limit + 1,
            "inv 3: `{}` made {} {settle} attempts with a limit of {limit} retries",
            name(i),
            attempts.len()
        );
        for (k, attempt) in attempts.iter().enumerate() {
            let Some((end, _)) = attempt.ended else {
                return Err(format!(
                    "{settle} attempt {} of `{}` never ended",
                    k + 1,
                    name(i)
                ));
            };
            let last = k + 1 == attempts.len();
            ensure!(
                last || matches!(end, End::Err | End::Panic),
                "inv 3: `{}` made another {settle} attempt after attempt {} ended {end:?}",
                name(i),
                k + 1
            );
        }
        let predicted = model.chain(case, i);
        ensure!(
            attempts.len() as u32 == predicted.attempts
                && logs[i].succeeded(settle) == predicted.succeeded,
            "`{}`: {settle} made {} attempts, succeeded = {}; predicted {predicted:?} \
             (limit {limit})",
            name(i),
            attempts.len(),
            logs[i].succeeded(settle)
        );
        // Semantics 3/4: every service starts at once, when the Try phase
        // ends, and waits only its own backoff between attempts.
        ensure!(
            attempts[0].started == decided_at || !exact,
            "inv 6: `{}` started {settle} at {:?}, not when the Try phase ended at \
             {decided_at:?}",
            name(i),
            attempts[0].started
        );
        for (k, pair) in attempts.windows(2).enumerate() {
            let ended = pair[0].ended.map(|(_, at)| at).unwrap_or_default();
            let waited = pair[1].started.saturating_sub(ended);
            let (low, high) = model.settings[i].policy.delay_range(k as u32 + 1);
            ensure!(
                low <= waited && waited <= high + slack,
                "`{}` waited {waited:?} before {settle} retry {}; the policy allows \
                 {low:?}..={high:?}",
                name(i),
                k + 1
            );
        }
    }

    // Invariant 6: the end, within the time the settings imply.
    let (shortest, longest) = model.window(case, &settled);
    let last_event = logs
        .iter()
        .flat_map(|l| l.attempts.iter().flatten())
        .filter_map(|a| a.ended.map(|(_, at)| at))
        .max()
        .unwrap_or_default();
    ensure!(
        last_event <= longest + slack - TICK,
        "inv 6: the last phase ended at {last_event:?}, after the bound {longest:?}"
    );
    if let Caller::Returned { at, .. } = caller {
        ensure!(
            last_event <= *at,
            "the orchestration returned at {at:?}, but a phase ran until {last_event:?}"
        );
        ensure!(
            shortest <= *at && *at <= longest + slack - TICK,
            "inv 6: the orchestration returned at {at:?}, outside {shortest:?}..={longest:?}"
        );
    }

    // Invariant 5: the getters agree with what the phases saw.
    for (i, log) in logs.iter().enumerate().filter(|_| services.is_some()) {
        let service = &services.expect("filtered")[i];
        let seen = [
            started[i],
            log.succeeded(Phase::Try),
            !log.attempts(Phase::Confirm).is_empty(),
            log.succeeded(Phase::Confirm),
            !log.attempts(Phase::Cancel).is_empty(),
            log.succeeded(Phase::Cancel),
        ];
        ensure!(
            flags(service) == seen,
            "inv 5: getters of `{}` say {:?}, the phases saw {seen:?}",
            name(i),
            flags(service)
        );
    }

    // Every phase of one orchestration saw the same transaction id: one, if
    // any phase ran (a phase with no Context is a problem of its own, above).
    let ids: HashSet<TransactionId> = logs
        .iter()
        .flat_map(|l| l.transaction_ids.iter().copied())
        .collect();
    let any_ran = logs
        .iter()
        .any(|l| l.attempts.iter().any(|attempts| !attempts.is_empty()));
    ensure!(
        ids.len() == usize::from(any_ran),
        "the phases saw {} transaction ids ({ids:?}); a phase ran: {any_ran}",
        ids.len()
    );

    let Caller::Returned { result, .. } = caller else {
        return Ok(());
    };
    check_result(case, model, logs, names, result, &ids)
}

/// An orchestration with a retry policy out of range is refused before any
/// phase runs, and leaves the services as they were.
pub(crate) fn check_refused(
    logs: &[ServiceLog],
    services: Option<&[Service]>,
    caller: &Caller,
) -> Result<(), String> {
    let ran = logs
        .iter()
        .any(|l| l.attempts.iter().any(|a| !a.is_empty()));
    ensure!(!ran, "a refused orchestration ran a phase");
    if let Caller::Returned { result, .. } = caller {
        let refused = result.as_ref().err().is_some_and(|e| {
            e.kind() == ErrorKind::InvalidRetryPolicy
                && e.failures().is_empty()
                && e.report().is_none()
        });
        ensure!(refused, "an invalid retry policy gave {result:?}");
    }
    for service in services.unwrap_or_default() {
        ensure!(
            flags(service) == [false; 6],
            "a refused orchestration set the getters of `{}`: {:?}",
            service.name(),
            flags(service)
        );
    }
    Ok(())
}

/// Invariant 4 (and 5 for the report): the result says what happened.
pub(crate) fn check_result(
    case: &Case,
    model: &Model,
    logs: &[ServiceLog],
    names: &[String],
    result: &Result<Report, Error>,
    ids: &HashSet<TransactionId>,
) -> Result<(), String> {
    let name = |i: usize| names[i].as_str();
    let succeeded = logs
        .iter()
        .all(|l| l.succeeded(Phase::Try) && l.succeeded(Phase::Confirm));
    ensure!(
        result.is_ok() == succeeded,
        "inv 4: every Try and Confirm succeeded = {succeeded}, but the result is {result:?}"
    );
    let report = match result {
        Ok(report) => report,
        Err(error) => error
            .report()
            .ok_or_else(|| format!("inv 4: an error without a report: {error:?}"))?,
    };
    ensure!(
        ids.iter().all(|id| *id == report.transaction_id()),
        "the report's id {} is not the one the phases saw: {ids:?}",
        report.transaction_id()
    );
    ensure!(
        report.services().len() == names.len(),
        "the report has {} services, not {}",
        report.services().len(),
        names.len()
    );
    for (i, (record, log)) in report.services().zip(logs).enumerate() {
        ensure!(
            record.name() == name(i),
            "report order: {} at {i}",
            record.name()
        );
        for phase in PHASES {
            let attempts = log.attempts(phase).len() as u32;
            let succeeded = log.succeeded(phase);
            ensure!(
                (record.attempts(phase), record.succeeded(phase)) == (attempts, succeeded),
                "inv 5: the report says {phase} of `{}` made {} attempts, succeeded = {}; \
                 the phase saw {attempts}, {succeeded}",
                name(i),
                record.attempts(phase),
                record.succeeded(phase)
            );
        }
    }
    let Err(error) = result else {
        return Ok(());
    };

    // The failures: every service whose final attempt failed, ordered by
    // phase, then by service order.
    let listed: Vec<(&str, Phase, u32)> = error
        .failures()
        .iter()
        .map(|f| (f.service_name(), f.phase(), f.attempts()))
        .collect();
    let mut expected: Vec<(&str, Phase, u32)> = Vec::new();
    let dropped_try = |i: usize| logs[i].last_end(Phase::Try) == Some(End::Dropped);
    let timed_out = |i: usize| {
        let predicted = model.tries[i];
        let at = logs[i]
            .attempts(Phase::Try)
            .first()
            .and_then(|a| a.ended)
            .map(|e| e.1);
        dropped_try(i) && predicted.act.is_none() && at == Some(predicted.at)
    };
    if case.orchestrator.fail_fast && !model.all_ok {
        // The first failure ends the Try phase: exactly one Try failure, the
        // one that ended, or else one that timed out at that instant.
        let ended: Vec<usize> = (0..logs.len())
            .filter(|&i| logs[i].failed(Phase::Try))
            .collect();
        let first = listed.first().copied();
        ensure!(
            ended.len() <= 1,
            "fail_fast: several Try failures ran to their end: {ended:?}"
        );
        let candidates: Vec<usize> = if ended.is_empty() {
            (0..logs.len()).filter(|&i| timed_out(i)).collect()
        } else {
            ended
        };
        let Some(&winner) = candidates
            .iter()
            .find(|&&i| first.is_some_and(|f| f.0 == name(i)))
        else {
            return Err(format!(
                "inv 4: fail_fast: the first failure listed is {first:?}, expected one of {:?}",
                candidates.iter().map(|&i| name(i)).collect::<Vec<_>>()
            ));
        };
        expected.push((name(winner), Phase::Try, 1));
    } else {
        for (i, log) in logs.iter().enumerate() {
            if log.failed(Phase::Try) || timed_out(i) {
                expected.push((name(i), Phase::Try, 1));
            }
        }
    }
    for phase in [Phase::Confirm, Phase::Cancel] {
        for (i, log) in logs.iter().enumerate() {
            if log.failed(phase) {
                expected.push((name(i), phase, log.attempts(phase).len() as u32));
            }
        }
    }
    ensure!(
        listed == expected,
        "inv 4: failures() lists {listed:?}, expected {expected:?}"
    );

    // Each failure carries the cause of its final attempt.
    for failure in error.failures() {
        let i = names
            .iter()
            .position(|n| n == failure.service_name())
            .expect("listed services exist");
        let cause = failure.cause();
        let injected = cause.downcast_ref::<Injected>().or_else(|| {
            cause
                .downcast_ref::<Permanent>()?
                .0
                .downcast_ref::<Injected>()
        });
        let end = logs[i].last_end(failure.phase());
        let fits = match end {
            Some(End::Panic) => cause
                .downcast_ref::<Panicked>()
                .is_some_and(|p| p.message().starts_with(INJECTED)),
            Some(End::Dropped) => cause
                .downcast_ref::<TimedOut>()
                .is_some_and(|t| Some(t.limit) == model.settings[i].try_timeout),
            Some(End::Err | End::Permanent) => injected.is_some_and(|e| {
                e.attempt == failure.attempts()
                    && e.phase == failure.phase()
                    && e.service == failure.service_name()
            }),
            _ => false,
        };
        ensure!(
            fits,
            "inv 4: {failure} carries {cause:?}, but its last attempt ended {end:?}"
        );
        // (`is_permanent` walks the whole chain: not on a cyclic one.)
        let cyclic = injected.is_some_and(|e| e.cyclic);
        ensure!(
            cyclic || failure.is_permanent() == (end == Some(End::Permanent)),
            "inv 4: {failure}: is_permanent() = {}, last attempt ended {end:?}",
            failure.is_permanent()
        );
    }

    // phase(): the worst phase that failed; service_name(): its first
    // service in the order given.
    let worst = expected
        .iter()
        .map(|f| f.1)
        .max()
        .expect("an error lists failures");
    let first = expected
        .iter()
        .find(|f| f.1 == worst)
        .expect("worst is listed")
        .0;
    let kind = match worst {
        Phase::Try => ErrorKind::TryFailed,
        Phase::Confirm => ErrorKind::ConfirmFailed,
        Phase::Cancel => ErrorKind::CancelFailed,
    };
    ensure!(
        (error.phase(), error.service_name(), error.kind()) == (worst, first, kind),
        "inv 4: the error says ({}, `{}`, {:?}), expected ({worst}, `{first}`, {kind:?})",
        error.phase(),
        error.service_name(),
        error.kind()
    );
    // The message formats the causes; an injected one may refuse to.
    let unprintable = error.failures().iter().any(|f| {
        let cause = f.cause();
        let injected = cause.downcast_ref::<Injected>().or_else(|| {
            cause
                .downcast_ref::<Permanent>()?
                .0
                .downcast_ref::<Injected>()
        });
        injected.is_some_and(|e| e.unprintable)
    });
    if unprintable {
        return Ok(());
    }
    let message = error.to_string();
    let headline = format!("{worst} failed in `{first}`");
    ensure!(
        message.starts_with(&headline),
        "the message {message:?} does not start with {headline:?}"
    );
    // ... and what state is left.
    let count = |phase: Phase| expected.iter().filter(|f| f.1 == phase).count();
    let state = match worst {
        Phase::Try => {
            let started = logs
                .iter()
                .filter(|l| !l.attempts(Phase::Try).is_empty())
                .count();
            format!("{started} started")
        }
        Phase::Confirm if count(Phase::Confirm) == names.len() => {
            format!("none of the {} services confirmed", names.len())
        }
        Phase::Confirm => format!(
            "{} of {} services not confirmed",
            count(Phase::Confirm),
            names.len()
        ),
        Phase::Cancel => format!("{} service", count(Phase::Cancel)),
    };
    ensure!(
        message.contains(&state),
        "the message {message:?} does not say {state:?}"
    );
    Ok(())
}
