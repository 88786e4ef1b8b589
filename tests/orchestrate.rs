//! The orchestration's phases: concurrency, decisions, timeouts, panics,
//! fail-fast, drop safety and refusals.

mod common;

use std::time::Duration;

use common::{Script, Step, healthy, scripted};
use tcc::{ErrorKind, Orchestrator, Panicked, Phase, RetryPolicy, TimedOut};
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);

/// `n` services whose Try and Confirm each take a second.
fn sleepy(n: usize) -> Vec<(tcc::Service, std::sync::Arc<common::Probe>)> {
    (0..n)
        .map(|i| {
            scripted(
                &format!("s{i}"),
                Step::Sleep(SECOND),
                Step::Sleep(SECOND),
                Step::Ok,
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn every_try_starts_at_once_and_then_every_confirm() {
    let services = sleepy(10);
    let start = Instant::now();
    let report = Orchestrator::new(services.iter().map(|(s, _)| s.clone()))
        .orchestrate()
        .await
        .expect("all phases succeed");
    // One round of Try and one of Confirm, not ten of each.
    assert_eq!(start.elapsed(), 2 * SECOND);
    for (service, probe) in &services {
        assert_eq!(
            (
                probe.calls(Phase::Try),
                probe.calls(Phase::Confirm),
                probe.calls(Phase::Cancel)
            ),
            (1, 1, 0)
        );
        assert!(service.try_succeeded() && service.confirm_succeeded() && !service.canceled());
    }
    assert_eq!(report.services().len(), 10);
    assert!(report.services().all(|s| s.succeeded(Phase::Confirm)));
}

#[tokio::test(start_paused = true)]
async fn a_failed_try_cancels_every_started_service_including_itself() {
    let (flight, flight_probe) = healthy("flight");
    let (hotel, hotel_probe) = scripted("hotel", Step::Fail, Step::Ok, Step::Ok);
    let error = Orchestrator::new([flight.clone(), hotel.clone()])
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TryFailed);
    assert_eq!((error.phase(), error.service_name()), (Phase::Try, "hotel"));
    for probe in [&flight_probe, &hotel_probe] {
        assert_eq!(probe.calls(Phase::Confirm), 0);
        assert_eq!(probe.calls(Phase::Cancel), 1);
    }
    // Try is never retried.
    assert_eq!(hotel_probe.calls(Phase::Try), 1);
    assert!(!error.needs_repair());
}

#[tokio::test(start_paused = true)]
async fn by_default_every_try_settles_before_the_decision() {
    let (fast, _) = scripted("fast", Step::Fail, Step::Ok, Step::Ok);
    let (slow, slow_probe) = scripted("slow", Step::Sleep(5 * SECOND), Step::Ok, Step::Ok);
    let start = Instant::now();
    let error = Orchestrator::new([fast, slow.clone()])
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), 5 * SECOND);
    assert_eq!(
        slow_probe.finished(Phase::Try),
        1,
        "the slow try ran to its end"
    );
    assert!(slow.try_succeeded() && slow.cancel_succeeded());
    let report = error.report().unwrap();
    assert!(report.service("slow").unwrap().succeeded(Phase::Try));
}

#[tokio::test(start_paused = true)]
async fn fail_fast_drops_the_tries_in_flight_and_cancels_them() {
    let (slow, slow_probe) = scripted("slow", Step::Sleep(5 * SECOND), Step::Ok, Step::Ok);
    let (failing, _) = scripted("failing", Step::SleepThenFail(SECOND), Step::Ok, Step::Ok);
    let start = Instant::now();
    let error = Orchestrator::new([slow.clone(), failing])
        .fail_fast(true)
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), SECOND, "no wait for the slow try");
    assert_eq!(
        (
            slow_probe.calls(Phase::Try),
            slow_probe.finished(Phase::Try)
        ),
        (1, 0)
    );
    assert_eq!(
        slow_probe.calls(Phase::Cancel),
        1,
        "a dropped try was started: cancel it"
    );
    assert!(slow.tried() && !slow.try_succeeded() && slow.cancel_succeeded());
    // The dropped try did not fail: only the failing one is a failure.
    let failed: Vec<_> = error.failures().iter().map(|f| f.service_name()).collect();
    assert_eq!(failed, ["failing"]);
    let record = error
        .report()
        .unwrap()
        .service("slow")
        .unwrap()
        .phase(Phase::Try);
    assert_eq!((record.attempts, record.succeeded), (1, false));
}

#[tokio::test(start_paused = true)]
async fn fail_fast_never_cancels_a_try_that_never_started() {
    let mut services = vec![scripted("first", Step::Fail, Step::Ok, Step::Ok)];
    services.extend((0..20).map(|i| healthy(&format!("s{i}"))));
    let error = Orchestrator::new(services.iter().map(|(s, _)| s.clone()))
        .fail_fast(true)
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TryFailed);
    for (service, probe) in &services {
        let started = probe.calls(Phase::Try) == 1;
        assert_eq!(service.tried(), started);
        assert_eq!(
            probe.calls(Phase::Cancel),
            u32::from(started),
            "{}",
            service.name()
        );
        assert_eq!(probe.calls(Phase::Confirm), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_try_that_outlives_its_timeout_fails_and_is_cancelled() {
    let (stuck, stuck_probe) = scripted("stuck", Step::Hang, Step::Ok, Step::Ok);
    let (fine, _) = healthy("fine");
    let start = Instant::now();
    let error = Orchestrator::new([fine, stuck.clone()])
        .try_timeout(2 * SECOND)
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), 2 * SECOND);
    assert_eq!(error.service_name(), "stuck");
    let cause = error.failures()[0].cause();
    assert_eq!(cause.downcast_ref::<TimedOut>().unwrap().limit, 2 * SECOND);
    assert_eq!(stuck_probe.calls(Phase::Cancel), 1);
    assert!(stuck.canceled());
}

#[tokio::test(start_paused = true)]
async fn a_confirm_attempt_that_hangs_times_out_and_is_retried() {
    let (flight, probe) = scripted("flight", Step::Ok, [Step::Hang, Step::Ok], Step::Ok);
    let start = Instant::now();
    let report = Orchestrator::new([flight])
        .retry(RetryPolicy::immediate(3))
        .attempt_timeout(5 * SECOND)
        .orchestrate()
        .await
        .expect("the retry confirms");
    assert_eq!(start.elapsed(), 5 * SECOND);
    assert_eq!(
        report.service("flight").unwrap().attempts(Phase::Confirm),
        2
    );
    assert_eq!(probe.calls(Phase::Confirm), 2);
    assert_eq!(
        probe.finished(Phase::Confirm),
        1,
        "the hung attempt was dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancel_attempt_that_hangs_times_out_and_is_retried_to_its_limit() {
    let (flight, probe) = scripted("flight", Step::Fail, Step::Ok, Step::Hang);
    let start = Instant::now();
    let error = Orchestrator::new([flight])
        .retry(RetryPolicy::immediate(2))
        .attempt_timeout(SECOND)
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), 3 * SECOND, "three attempts of one second");
    assert_eq!(error.kind(), ErrorKind::CancelFailed);
    let failure = &error.failures()[1];
    assert_eq!((failure.phase(), failure.attempts()), (Phase::Cancel, 3));
    let cause = failure.cause().downcast_ref::<TimedOut>().unwrap();
    assert_eq!(
        cause,
        &TimedOut {
            phase: Phase::Cancel,
            limit: SECOND
        }
    );
    assert_eq!(cause.to_string(), "cancel timed out after 1s");
    assert_eq!(probe.calls(Phase::Cancel), 3);
}

#[tokio::test(start_paused = true)]
async fn confirm_and_cancel_attempts_time_out_after_30_seconds_by_default() {
    assert_eq!(tcc::DEFAULT_ATTEMPT_TIMEOUT, 30 * SECOND);
    let (flight, _) = scripted("flight", Step::Ok, [Step::Hang, Step::Ok], Step::Ok);
    let start = Instant::now();
    Orchestrator::new([flight])
        .retry(RetryPolicy::immediate(1))
        .orchestrate()
        .await
        .unwrap();
    assert_eq!(start.elapsed(), 30 * SECOND);
}

#[tokio::test(start_paused = true)]
async fn a_service_attempt_timeout_applies_unless_the_orchestrator_sets_one() {
    let make = || scripted("flight", Step::Ok, [Step::Hang, Step::Ok], Step::Ok).0;
    let start = Instant::now();
    Orchestrator::new([make().attempt_timeout(2 * SECOND)])
        .retry(RetryPolicy::immediate(1))
        .orchestrate()
        .await
        .unwrap();
    assert_eq!(start.elapsed(), 2 * SECOND, "the service's own limit");
    let start = Instant::now();
    Orchestrator::new([make().attempt_timeout(2 * SECOND)])
        .retry(RetryPolicy::immediate(1))
        .attempt_timeout(7 * SECOND)
        .orchestrate()
        .await
        .unwrap();
    assert_eq!(start.elapsed(), 7 * SECOND, "the orchestrator's wins");
}

#[tokio::test(start_paused = true)]
async fn try_timeout_does_not_limit_confirm_nor_attempt_timeout_try() {
    let (flight, _) = scripted(
        "flight",
        Step::Sleep(4 * SECOND),
        Step::Sleep(4 * SECOND),
        Step::Ok,
    );
    let start = Instant::now();
    Orchestrator::new([flight])
        .try_timeout(5 * SECOND)
        .attempt_timeout(5 * SECOND)
        .orchestrate()
        .await
        .expect("each phase stays within its own limit");
    assert_eq!(start.elapsed(), 8 * SECOND);
}

#[tokio::test(start_paused = true)]
async fn a_service_try_timeout_applies_unless_the_orchestrator_sets_one() {
    let (own, _) = scripted("own", Step::Sleep(3 * SECOND), Step::Ok, Step::Ok);
    let own = own.try_timeout(SECOND);
    let start = Instant::now();
    let error = Orchestrator::new([own.clone()])
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!((start.elapsed(), error.service_name()), (SECOND, "own"));

    let start = Instant::now();
    Orchestrator::new([own])
        .try_timeout(10 * SECOND)
        .orchestrate()
        .await
        .expect("the orchestrator's longer timeout wins");
    assert_eq!(start.elapsed(), 3 * SECOND);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_phase_fails_without_unwinding_into_the_caller() {
    let (flight, flight_probe) = healthy("flight");
    let (hotel, _) = scripted("hotel", Step::Panic, Step::Ok, Step::Panic);
    let error = Orchestrator::new([flight, hotel.clone()])
        .max_retries(2)
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::CancelFailed);
    let panics: Vec<_> = error
        .failures()
        .iter()
        .map(|f| {
            (
                f.phase(),
                f.attempts(),
                f.cause().downcast_ref::<Panicked>().unwrap().message(),
            )
        })
        .collect();
    assert_eq!(
        panics,
        [
            (Phase::Try, 1, "scripted panic"),
            (Phase::Cancel, 3, "scripted panic")
        ]
    );
    assert_eq!(flight_probe.calls(Phase::Cancel), 1);
    assert!(hotel.canceled() && !hotel.cancel_succeeded());
}

#[tokio::test(start_paused = true)]
async fn a_panic_while_building_the_future_is_caught_too() {
    let ok = || async { Ok::<(), String>(()) };
    let broken = tcc::Service::new(
        "broken",
        || -> std::future::Ready<Result<(), String>> { panic!("no future for you") },
        ok,
        ok,
    );
    let error = Orchestrator::new([broken.clone()])
        .orchestrate()
        .await
        .unwrap_err();
    let cause = error.failures()[0]
        .cause()
        .downcast_ref::<Panicked>()
        .unwrap();
    assert_eq!(cause.message(), "no future for you");
    assert!(broken.tried() && broken.cancel_succeeded());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_orchestration_still_confirms() {
    let services = sleepy(3);
    let orchestrator = Orchestrator::new(services.iter().map(|(s, _)| s.clone()));
    // The caller gives up while the tries are running.
    let given_up = tokio::time::timeout(SECOND / 2, orchestrator.orchestrate()).await;
    assert!(given_up.is_err());
    tokio::time::sleep(10 * SECOND).await;
    for (service, probe) in &services {
        assert_eq!(
            (probe.finished(Phase::Try), probe.finished(Phase::Confirm)),
            (1, 1)
        );
        assert!(service.confirm_succeeded());
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_orchestration_still_cancels() {
    let (flight, flight_probe) = scripted("flight", Step::Sleep(SECOND), Step::Ok, Step::Ok);
    let (hotel, hotel_probe) = scripted("hotel", Step::SleepThenFail(SECOND), Step::Ok, Step::Ok);
    let orchestrator = Orchestrator::new([flight, hotel]);
    assert!(
        tokio::time::timeout(SECOND / 2, orchestrator.orchestrate())
            .await
            .is_err()
    );
    tokio::time::sleep(10 * SECOND).await;
    assert_eq!(flight_probe.finished(Phase::Cancel), 1);
    assert_eq!(hotel_probe.finished(Phase::Cancel), 1);
    assert_eq!(flight_probe.calls(Phase::Confirm), 0);
}

#[tokio::test(start_paused = true)]
async fn a_service_can_be_orchestrated_again_with_fresh_flags() {
    let (flight, _) = healthy("flight");
    let (hotel, _) = scripted("hotel", Script::fail_times(1), Step::Ok, Step::Ok);
    let orchestrator = Orchestrator::new([flight.clone(), hotel]);
    orchestrator.orchestrate().await.unwrap_err();
    assert!(flight.canceled() && !flight.confirmed());
    orchestrator
        .orchestrate()
        .await
        .expect("the second try succeeds");
    assert!(flight.confirmed() && !flight.canceled(), "flags were reset");
}

#[tokio::test(start_paused = true)]
async fn a_service_in_a_running_orchestration_joins_another_at_once() {
    let (shared, shared_probe) = scripted("shared", Step::Sleep(SECOND), Step::Ok, Step::Ok);
    let (other, other_probe) = scripted("other", Step::Fail, Step::Ok, Step::Ok);
    let orchestrator = Orchestrator::new([shared.clone()]);
    let first = tokio::spawn(async move { orchestrator.orchestrate().await });
    tokio::time::sleep(SECOND / 2).await;
    let start = Instant::now();
    let error = Orchestrator::new([other, shared.clone()])
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), SECOND, "it did not wait for the first");
    assert_eq!(error.kind(), ErrorKind::TryFailed);
    let report = error.report().unwrap();
    assert!(report.service("shared").unwrap().succeeded(Phase::Cancel));
    assert_eq!(other_probe.calls(Phase::Cancel), 1);
    let first = first.await.unwrap().expect("the first is undisturbed");
    let mine = first.service("shared").unwrap();
    assert!(mine.succeeded(Phase::Confirm) && mine.attempts(Phase::Cancel) == 0);
    assert_eq!(shared_probe.calls(Phase::Try), 2);
    assert_eq!(shared_probe.calls(Phase::Confirm), 1);
    assert_eq!(shared_probe.calls(Phase::Cancel), 1);
    // The flags read the status of the transaction that ended last (the
    // second, cancelled), never a mix of the two.
    assert!(shared.canceled() && shared.cancel_succeeded() && !shared.confirmed());
}

#[tokio::test(start_paused = true)]
async fn empty_and_duplicate_orchestrations_are_refused_before_any_phase() {
    let error = Orchestrator::new([]).orchestrate().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NoServices);
    assert!(error.failures().is_empty() && error.report().is_none());

    let (a, a_probe) = healthy("same");
    let (b, b_probe) = healthy("same");
    let error = Orchestrator::new([a.clone(), b])
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.service_name()),
        (ErrorKind::DuplicateService, "same")
    );
    assert_eq!(
        error.to_string(),
        "orchestration refused: two services are named `same`"
    );
    assert_eq!(a_probe.calls(Phase::Try) + b_probe.calls(Phase::Try), 0);

    // The same handle twice is a duplicate too, and nothing stays claimed.
    let error = Orchestrator::new([a.clone(), a.clone()])
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DuplicateService);
    Orchestrator::new([a]).orchestrate().await.unwrap();
}

#[test]
fn outside_a_tokio_runtime_orchestrate_returns_an_error() {
    let (service, probe) = healthy("lonely");
    let orchestrator = Orchestrator::new([service]);
    let mut future = std::pin::pin!(orchestrator.orchestrate());
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    let std::task::Poll::Ready(Err(error)) = future.as_mut().poll(&mut context) else {
        panic!("expected an immediate error");
    };
    assert_eq!(error.kind(), ErrorKind::NoRuntime);
    assert_eq!(probe.calls(Phase::Try), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_orchestrations_on_a_multi_thread_runtime() {
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let services: Vec<_> = (0..5).map(|j| healthy(&format!("s{j}")).0).collect();
            let fail = i % 3 == 0;
            let mut services = services;
            if fail {
                services.push(scripted("bad", Step::Fail, Step::Ok, Step::Ok).0);
            }
            tokio::spawn(async move {
                let result = Orchestrator::new(services.clone()).orchestrate().await;
                (fail, result.is_ok(), services)
            })
        })
        .collect();
    for task in tasks {
        let (fail, ok, services) = task.await.unwrap();
        assert_eq!(ok, !fail);
        for service in services {
            assert_eq!(service.confirm_succeeded(), !fail);
            assert_eq!(service.cancel_succeeded(), fail);
        }
    }
}

#[test]
fn a_runtime_without_a_timer_gives_an_error_not_a_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (service, _) = scripted("ledger", Step::Ok, Step::Fail, Step::Ok);
    let orchestrator = Orchestrator::new([service.clone()]);
    let error = runtime.block_on(orchestrator.orchestrate()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Interrupted);
    assert!(error.to_string().contains("timers are disabled"), "{error}");
    // The service was given back.
    let error = runtime.block_on(orchestrator.orchestrate()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Interrupted, "not ServiceBusy");
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_among_many_services_is_found() {
    let mut services: Vec<_> = (0..40).map(|i| healthy(&format!("s{i}")).0).collect();
    services[30] = healthy("s7").0;
    let error = Orchestrator::new(services.clone())
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.service_name()),
        (ErrorKind::DuplicateService, "s7")
    );
    assert!(services.iter().all(|s| !s.tried()));
}

#[tokio::test(start_paused = true)]
async fn names_of_one_length_that_end_alike_are_told_apart() {
    // Few services (compared pairwise) and many (hashed) alike.
    for count in [3, 20] {
        let mut names: Vec<String> = (0..count).map(|i| format!("{i:0>3}-room-1234")).collect();
        let services: Vec<_> = names.iter().map(|name| healthy(name).0).collect();
        Orchestrator::new(services).orchestrate().await.unwrap();

        names.push(names[1].clone());
        let services: Vec<_> = names.iter().map(|name| healthy(name).0).collect();
        let error = Orchestrator::new(services).orchestrate().await.unwrap_err();
        assert_eq!(
            (error.kind(), error.service_name()),
            (ErrorKind::DuplicateService, names[1].as_str())
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_of_none_sets_no_limit() {
    let (flight, probe) = scripted("flight", Step::Ok, Step::Sleep(3600 * SECOND), Step::Ok);
    let start = Instant::now();
    Orchestrator::new([flight.attempt_timeout(5 * SECOND)])
        .attempt_timeout(None)
        .orchestrate()
        .await
        .expect("an hour-long confirm is waited for");
    assert_eq!(start.elapsed(), 3600 * SECOND);
    assert_eq!(probe.calls(Phase::Confirm), 1);
}
