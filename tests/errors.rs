//! What an error says: every failure kept, the worst phase and the first
//! service of it, and a message that tells what state is left.

mod common;

use std::time::Duration;

use common::{Step, healthy, scripted};
use tcc::{ErrorKind, Orchestrator, Phase, RetryPolicy};

#[tokio::test(start_paused = true)]
async fn a_failed_cancel_keeps_the_try_failure_that_caused_it() {
    let (flight, _) = scripted("flight", Step::Ok, Step::Ok, Step::Fail);
    let (hotel, _) = scripted("hotel", Step::Fail, Step::Ok, Step::Ok);
    let error = Orchestrator::new([flight, hotel])
        .max_retries(2)
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::CancelFailed);
    assert_eq!(
        (error.phase(), error.service_name()),
        (Phase::Cancel, "flight")
    );
    let failures: Vec<_> = error
        .failures()
        .iter()
        .map(|f| {
            (
                f.service_name(),
                f.phase(),
                f.attempts(),
                f.cause().to_string(),
            )
        })
        .collect();
    assert_eq!(
        failures,
        [
            ("hotel", Phase::Try, 1, "transient failure".to_owned()),
            ("flight", Phase::Cancel, 3, "transient failure".to_owned()),
        ]
    );
    assert_eq!(
        error.to_string(),
        format!(
            "cancel failed in `flight` after 3 attempts: transient failure; 1 service of \
             transaction {} could not be released and needs manual repair (cancelled because try \
             failed in `hotel`: transient failure)",
            error.report().unwrap().transaction_id()
        )
    );
    assert!(error.needs_repair());
}

#[tokio::test(start_paused = true)]
async fn the_named_service_is_the_first_given_not_the_first_to_fail() {
    // `late` fails long after `early`, but was given first.
    let (late, _) = scripted(
        "late",
        Step::SleepThenFail(Duration::from_secs(5)),
        Step::Ok,
        Step::Ok,
    );
    let (early, _) = scripted("early", Step::Fail, Step::Ok, Step::Ok);
    let (fine, _) = healthy("fine");
    let error = Orchestrator::new([fine, late, early])
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(error.service_name(), "late");
    let names: Vec<_> = error.failures().iter().map(|f| f.service_name()).collect();
    assert_eq!(names, ["late", "early"]);
    assert_eq!(
        error.to_string(),
        "try failed in `late` (and 1 other service): failure after a while; \
         all 3 started services were cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn a_try_failure_message_names_the_service_the_cause_and_the_state() {
    let (flight, _) = healthy("flight");
    let ok = || async { Ok::<(), String>(()) };
    let hotel = tcc::Service::new("hotel", || async { Err("no room".to_owned()) }, ok, ok);
    let error = Orchestrator::new([flight, hotel])
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "try failed in `hotel`: no room; all 2 started services were cancelled"
    );
    let failure = &error.failures()[0];
    assert_eq!(
        failure.to_string(),
        "try of `hotel` failed after 1 attempt: no room"
    );
    let source = std::error::Error::source(failure).unwrap();
    assert_eq!(source.to_string(), "no room");
}

#[tokio::test(start_paused = true)]
async fn a_confirm_failure_message_says_repair_is_needed() {
    let (ledger, _) = scripted("ledger", Step::Ok, Step::Fail, Step::Ok);
    let (mailer, _) = healthy("mailer");
    let error = Orchestrator::new([ledger, mailer])
        .retry(RetryPolicy::immediate(1))
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "confirm failed in `ledger` after 2 attempts: transient failure; 1 of 2 services not \
             confirmed: transaction {} is partly applied and needs manual repair",
            error.report().unwrap().transaction_id()
        )
    );
}

#[tokio::test(start_paused = true)]
async fn fail_fast_says_how_many_started_services_were_cancelled() {
    // The failure comes after every Try has started, so all were started.
    let mut services: Vec<_> = (0..3)
        .map(|i| {
            scripted(
                &format!("s{i}"),
                Step::Sleep(Duration::from_secs(5)),
                Step::Ok,
                Step::Ok,
            )
            .0
        })
        .collect();
    services.push(
        scripted(
            "last",
            Step::SleepThenFail(Duration::from_secs(1)),
            Step::Ok,
            Step::Ok,
        )
        .0,
    );
    let error = Orchestrator::new(services.clone())
        .fail_fast(true)
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "try failed in `last`: failure after a while; all 4 started services were cancelled"
    );
    assert!(services.iter().all(|s| s.tried() && s.cancel_succeeded()));

    let (only, _) = scripted("only", Step::Fail, Step::Ok, Step::Ok);
    let error = Orchestrator::new([only]).orchestrate().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "try failed in `only`: transient failure; 1 started service was cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn errors_and_reports_are_send_sync_and_usable_with_question_mark() {
    fn assert_send_sync<T: Send + Sync + 'static>(_: &T) {}
    async fn book() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let (hotel, _) = scripted("hotel", Step::Fail, Step::Ok, Step::Ok);
        Orchestrator::new([hotel]).orchestrate().await?;
        Ok(())
    }
    let error = book().await.unwrap_err();
    let error = error.downcast::<tcc::Error>().unwrap();
    assert_send_sync(&*error);
    assert_eq!(error.kind(), ErrorKind::TryFailed);
    assert_eq!(
        std::mem::size_of::<tcc::Error>(),
        std::mem::size_of::<usize>()
    );
}

#[tokio::test(start_paused = true)]
async fn a_confirm_failure_everywhere_says_every_reservation_is_held() {
    let (ledger, _) = scripted("ledger", Step::Ok, Step::Fail, Step::Ok);
    let error = Orchestrator::new([ledger])
        .retry(RetryPolicy::immediate(0))
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "confirm failed in `ledger` after 1 attempt: transient failure; none of the 1 \
             services confirmed: transaction {} still holds every reservation and needs manual \
             repair",
            error.report().unwrap().transaction_id()
        )
    );
}

/// An error whose `Display` leaves its cause to `source()`, as
/// `tokio_postgres::Error` ("db error") does.
#[derive(Debug)]
struct Terse {
    what: &'static str,
    source: Option<Box<Terse>>,
}

impl std::fmt::Display for Terse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.what)
    }
}

impl std::error::Error for Terse {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as _)
    }
}

/// Every error's `Display` shows the text of its sources, not only
/// `Debug`: a cause hidden in a source reaches whoever prints the error.
#[tokio::test(start_paused = true)]
async fn display_includes_the_text_of_every_source() {
    let cause = || Terse {
        what: "db error",
        source: Some(Box::new(Terse {
            what: "relation \"ledger\" does not exist",
            source: None,
        })),
    };
    let ok = || async { Ok::<(), Terse>(()) };
    let ledger = tcc::Service::new("ledger", ok, move || async move { Err(cause()) }, ok);
    let error = Orchestrator::new([ledger])
        .max_retries(1)
        .orchestrate()
        .await
        .unwrap_err();
    let failure = &error.failures()[0];
    assert_eq!(
        failure.to_string(),
        "confirm of `ledger` failed after 2 attempts: db error: relation \"ledger\" does not exist"
    );
    assert!(
        error
            .to_string()
            .starts_with("confirm failed in `ledger` after 2 attempts: db error: relation \"ledger\" does not exist;"),
        "{error}"
    );

    // A log error shows its source's text, and a text already shown is
    // not repeated.
    let log = tcc::durable::LogError::new(tcc::durable::LogErrorKind::Io, "cannot sync")
        .with_source(cause());
    assert_eq!(
        log.to_string(),
        "cannot sync: db error: relation \"ledger\" does not exist"
    );
}
