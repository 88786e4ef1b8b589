//! Confirm and Cancel retries: limits, backoff, permanent errors, and no
//! service waiting on another's retries.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Script, Step, healthy, scripted};
use tcc::{ErrorKind, Orchestrator, Phase, RetryPolicy};
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);

/// One second between retries, no jitter: elapsed time counts retries.
fn every_second(max_retries: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(max_retries)
        .with_initial_interval(SECOND)
        .with_multiplier(1.0)
        .with_jitter(0.0)
}

#[tokio::test(start_paused = true)]
async fn max_retries_n_allows_n_plus_one_attempts() {
    for n in [0, 1, 4] {
        let (service, probe) = scripted("ledger", Step::Ok, Step::Fail, Step::Ok);
        let error = Orchestrator::new([service])
            .retry(RetryPolicy::immediate(10))
            .max_retries(n)
            .orchestrate()
            .await
            .unwrap_err();
        assert_eq!(probe.calls(Phase::Confirm), n + 1);
        assert_eq!(error.failures()[0].attempts(), n + 1);
        assert_eq!(error.kind(), ErrorKind::ConfirmFailed);
    }
}

#[tokio::test(start_paused = true)]
async fn the_default_is_ten_retries() {
    let (service, probe) = scripted("ledger", Step::Fail, Step::Ok, Step::Fail);
    Orchestrator::new([service])
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(probe.calls(Phase::Cancel), 11);
}

#[tokio::test(start_paused = true)]
async fn a_confirm_that_recovers_within_its_retries_succeeds() {
    let (service, probe) = scripted("ledger", Step::Ok, Script::fail_times(3), Step::Ok);
    let start = Instant::now();
    let report = Orchestrator::new([service.clone()])
        .retry(every_second(5))
        .orchestrate()
        .await
        .unwrap();
    assert_eq!(start.elapsed(), 3 * SECOND);
    assert_eq!(probe.calls(Phase::Confirm), 4);
    assert_eq!(
        report.service("ledger").unwrap().attempts(Phase::Confirm),
        4
    );
    assert!(service.confirm_succeeded());
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_stops_the_retries_at_once() {
    let (service, probe) = scripted("ledger", Step::Fail, Step::Ok, Step::FailPermanently);
    let start = Instant::now();
    let error = Orchestrator::new([service])
        .retry(every_second(10))
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(probe.calls(Phase::Cancel), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    let cancel = &error.failures()[1];
    assert_eq!((cancel.phase(), cancel.attempts()), (Phase::Cancel, 1));
    assert!(cancel.is_permanent());
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_deep_in_the_source_chain_counts() {
    #[derive(Debug, thiserror::Error)]
    #[error("ledger refused the entry")]
    struct Refused(#[source] tcc::Permanent);

    let ok = || async { Ok::<(), Refused>(()) };
    let service = tcc::Service::new(
        "ledger",
        ok,
        || async { Err(Refused(tcc::Permanent::new("closed"))) },
        ok,
    );
    let error = Orchestrator::new([service])
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(error.failures()[0].attempts(), 1);
    assert!(error.failures()[0].cause().is::<Refused>());
}

#[tokio::test(start_paused = true)]
async fn one_service_retrying_never_delays_another() {
    // Each confirm fails four times: four one-second waits each. Run one
    // after another they would take 12 s; side by side they take 4 s.
    let services: Vec<_> = (0..3)
        .map(|i| scripted(&format!("s{i}"), Step::Ok, Script::fail_times(4), Step::Ok))
        .collect();
    let (quick, quick_probe) = healthy("quick");
    let start = Instant::now();
    Orchestrator::new(
        services
            .iter()
            .map(|(s, _)| s.clone())
            .chain([quick.clone()]),
    )
    .retry(every_second(10))
    .orchestrate()
    .await
    .unwrap();
    assert_eq!(start.elapsed(), 4 * SECOND);
    assert_eq!(quick_probe.calls(Phase::Confirm), 1);
}

#[tokio::test(start_paused = true)]
async fn a_confirm_out_of_retries_does_not_stop_the_others() {
    let (stuck, _) = scripted("stuck", Step::Ok, Step::Fail, Step::Ok);
    let (slow, slow_probe) = scripted("slow", Step::Ok, Script::fail_times(2), Step::Ok);
    let (fine, _) = healthy("fine");
    let error = Orchestrator::new([fine.clone(), stuck, slow.clone()])
        .retry(every_second(2))
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(
        (error.phase(), error.service_name()),
        (Phase::Confirm, "stuck")
    );
    assert_eq!(error.failures().len(), 1);
    assert_eq!(error.failures()[0].attempts(), 3);
    assert!(error.needs_repair());
    // `slow` used up its retries to succeed, beside the stuck one.
    assert_eq!(slow_probe.calls(Phase::Confirm), 3);
    assert!(fine.confirm_succeeded() && slow.confirm_succeeded());
}

#[tokio::test(start_paused = true)]
async fn a_service_limit_applies_unless_the_orchestrator_sets_one() {
    let (own, own_probe) = scripted("own", Step::Ok, Step::Fail, Step::Ok);
    let (plain, plain_probe) = scripted("plain", Step::Ok, Step::Fail, Step::Ok);
    let own = own.retry(every_second(2));
    Orchestrator::new([own.clone(), plain.clone().retry(every_second(3))])
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(
        (
            own_probe.calls(Phase::Confirm),
            plain_probe.calls(Phase::Confirm)
        ),
        (3, 4)
    );

    let (limited, limited_probe) = scripted("limited", Step::Ok, Step::Fail, Step::Ok);
    Orchestrator::new([limited.max_retries(1)])
        .retry(RetryPolicy::immediate(5))
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(
        limited_probe.calls(Phase::Confirm),
        6,
        "the orchestrator's policy wins"
    );

    let (own_limit, own_limit_probe) = scripted("own-limit", Step::Ok, Step::Fail, Step::Ok);
    Orchestrator::new([own_limit.max_retries(1).retry(RetryPolicy::immediate(7))])
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(
        own_limit_probe.calls(Phase::Confirm),
        8,
        "the later setting wins"
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_and_is_capped() {
    let (service, _) = scripted("ledger", Step::Ok, Step::Fail, Step::Ok);
    let policy = RetryPolicy::default()
        .with_max_retries(5)
        .with_initial_interval(SECOND)
        .with_multiplier(2.0)
        .with_max_interval(5 * SECOND)
        .with_jitter(0.0);
    let start = Instant::now();
    Orchestrator::new([service])
        .retry(policy)
        .orchestrate()
        .await
        .unwrap_err();
    // 1 + 2 + 4 + 5 + 5 seconds between the six attempts.
    assert_eq!(start.elapsed(), 17 * SECOND);
}

#[tokio::test(start_paused = true)]
async fn jittered_delays_stay_within_their_band() {
    let (service, _) = scripted("ledger", Step::Ok, Step::Fail, Step::Ok);
    let policy = every_second(4).with_jitter(0.5);
    let start = Instant::now();
    Orchestrator::new([service])
        .retry(policy)
        .orchestrate()
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        elapsed >= 2 * SECOND && elapsed <= 6 * SECOND,
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_invalid_policy_is_refused_before_any_phase() {
    let (service, probe) = healthy("ledger");
    for policy in [
        RetryPolicy::default().with_multiplier(0.5),
        RetryPolicy::default().with_multiplier(f64::INFINITY),
        RetryPolicy::default().with_jitter(-0.1),
    ] {
        let error = Orchestrator::new([service.clone()])
            .retry(policy)
            .orchestrate()
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidRetryPolicy);
        let error = Orchestrator::new([service.clone().retry(policy)])
            .orchestrate()
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidRetryPolicy);
    }
    assert_eq!(probe.calls(Phase::Try), 0);
}

#[tokio::test(start_paused = true)]
async fn every_attempt_knows_its_number_and_transaction() {
    let (service, probe) = scripted("ledger", Step::Ok, Script::fail_times(2), Step::Ok);
    let report = Orchestrator::new([service])
        .retry(every_second(3))
        .orchestrate()
        .await
        .unwrap();
    let seen: Vec<_> = probe
        .contexts
        .lock()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c.phase(),
                c.attempt(),
                c.transaction_id(),
                c.service_name().to_owned(),
            )
        })
        .collect();
    let id = report.transaction_id();
    let ledger = || "ledger".to_owned();
    assert_eq!(
        seen,
        [
            (Phase::Try, 1, id, ledger()),
            (Phase::Confirm, 1, id, ledger()),
            (Phase::Confirm, 2, id, ledger()),
            (Phase::Confirm, 3, id, ledger()),
        ]
    );
}

/// A service whose Confirm always fails, and the instant of each of its
/// Confirm attempts.
fn stamped(name: &str) -> (tcc::Service, Arc<Mutex<Vec<Instant>>>) {
    let instants = Arc::new(Mutex::new(Vec::new()));
    let seen = instants.clone();
    let ok = || async { Ok::<(), String>(()) };
    let service = tcc::Service::new(
        name,
        ok,
        move || {
            seen.lock().unwrap().push(Instant::now());
            async { Err::<(), _>("ledger offline".to_owned()) }
        },
        ok,
    );
    (service, instants)
}

/// The waits between the attempts made at `instants`.
fn gaps(instants: &Mutex<Vec<Instant>>) -> Vec<Duration> {
    let instants = instants.lock().unwrap();
    instants.windows(2).map(|w| w[1] - w[0]).collect()
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Ten days ±50 % before every retry: each wait is in 5 ..= 15 days. The
/// timer counts in milliseconds, so waits that differ by less than one
/// coincide: a band this wide (10^9 ms) makes a chance coincidence among a
/// few waits about one in ten million, where one second (10^3 ms) would
/// make it a few percent.
fn jittered(max_retries: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(max_retries)
        .with_initial_interval(10 * DAY)
        .with_multiplier(1.0)
        .with_max_interval(30 * DAY)
        .with_jitter(0.5)
}

fn assert_in_band(waits: &[Duration]) {
    for wait in waits {
        assert!(
            (5 * DAY..=15 * DAY).contains(wait),
            "{wait:?} is outside 10 days ± 50 %"
        );
    }
}

/// Services that fail together (a shared dependency down) must not retry
/// together: jitter is seeded by the service's name, so each one waits its
/// own time, and each of its retries a new one.
#[tokio::test(start_paused = true)]
async fn services_failing_together_retry_at_different_instants() {
    let services: Vec<_> = (0..8).map(|i| stamped(&format!("shard-{i}"))).collect();
    Orchestrator::new(services.iter().map(|(s, _)| s.clone()))
        .retry(jittered(3))
        .orchestrate()
        .await
        .unwrap_err();

    let waits: Vec<Vec<Duration>> = services.iter().map(|(_, i)| gaps(i)).collect();
    for own in &waits {
        assert_eq!(own.len(), 3);
        assert_in_band(own);
        assert!(
            own.windows(2).any(|w| w[0] != w[1]),
            "one service's retries are evenly spaced: {own:?}"
        );
    }
    let first: HashSet<Duration> = waits.iter().map(|own| own[0]).collect();
    assert_eq!(first.len(), 8, "services retry in lockstep: {waits:?}");
}

/// The same service failing in transaction after transaction must not retry
/// on the same beat each time: jitter is seeded by the transaction id too.
#[tokio::test(start_paused = true)]
async fn one_service_retries_at_different_instants_in_each_transaction() {
    let (service, instants) = stamped("ledger");
    let mut seen = Vec::new();
    for _ in 0..6 {
        instants.lock().unwrap().clear();
        Orchestrator::new([service.clone()])
            .retry(jittered(2))
            .orchestrate()
            .await
            .unwrap_err();
        let waits = gaps(&instants);
        assert_eq!(waits.len(), 2);
        assert_in_band(&waits);
        seen.push(waits);
    }
    let first: HashSet<Duration> = seen.iter().map(|waits| waits[0]).collect();
    assert_eq!(first.len(), 6, "transactions retry in lockstep: {seen:?}");
}

/// Two coordinator processes number their transactions alike (the low 64
/// bits count) and differ in the process's random prefix (the high 64): the
/// same service in their first transactions must not retry in lockstep.
#[tokio::test(start_paused = true)]
async fn transactions_of_different_processes_retry_at_different_instants() {
    let (service, instants) = stamped("ledger");
    let mut seen = Vec::new();
    for process in 1..=6_u128 {
        instants.lock().unwrap().clear();
        let id = tcc::TransactionId::from_u128(process << 64);
        Orchestrator::new([service.clone()])
            .retry(jittered(2))
            .orchestrate_as(id)
            .await
            .unwrap_err();
        let waits = gaps(&instants);
        assert_in_band(&waits);
        seen.push(waits[0]);
    }
    let first: HashSet<Duration> = seen.iter().copied().collect();
    assert_eq!(first.len(), 6, "processes retry in lockstep: {seen:?}");
}
