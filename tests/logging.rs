//! The log lines: each failed attempt and each failed phase is a warning that
//! names the service, the phase, the attempt and the error's own text; a
//! transaction left in need of repair is an error that says what the caller
//! was told. Captured with a small subscriber of our own.

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Script, Step, scripted};
use tcc::{Orchestrator, Phase, RetryPolicy, Service, tcc};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// One event as a subscriber sees it: its level and every field, formatted.
#[derive(Clone, Debug)]
struct Line {
    level: Level,
    fields: BTreeMap<String, String>,
}

impl Line {
    /// The field `name`, formatted; empty when the event has none.
    fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }

    /// The attempt count, whatever the field is called (`attempt` for one
    /// attempt, `attempts` for a phase that ended).
    fn attempt(&self) -> Option<u32> {
        ["attempt", "attempts"]
            .iter()
            .find_map(|name| self.fields.get(*name)?.parse().ok())
    }
}

/// Records every event on the thread it is set for.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Line>>>);

impl Capture {
    /// Events at `level`.
    fn at(&self, level: Level) -> Vec<Line> {
        let lines = self.0.lock().unwrap();
        lines.iter().filter(|l| l.level == level).cloned().collect()
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = Line {
            level: *event.metadata().level(),
            fields: fields.0,
        };
        self.0.lock().unwrap().push(line);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// Sets a capturing subscriber for the current thread (a paused-time test
/// runs on one) until the guard is dropped.
fn capture() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let guard = tracing::subscriber::set_default(capture.clone());
    (capture, guard)
}

fn assert_names(line: &Line, service: &str, phase: Phase, attempt: u32, error: &str) {
    assert_eq!(line.field("service"), service, "{line:?}");
    assert_eq!(line.field("phase"), phase.to_string(), "{line:?}");
    assert_eq!(line.attempt(), Some(attempt), "{line:?}");
    assert!(line.field("error").contains(error), "{line:?}");
}

/// A Confirm that never succeeds: a warning for each failed attempt with the
/// wait before the next, one for the phase, and an error for the
/// transaction, which carries what the caller was told.
#[tokio::test(start_paused = true)]
async fn a_confirm_out_of_retries_logs_each_attempt_and_the_repair_needed() {
    let (capture, _guard) = capture();
    let ok = || async { Ok::<(), String>(()) };
    let ledger = Service::new(
        "ledger",
        ok,
        || async { Err::<(), _>("ledger offline".to_owned()) },
        ok,
    );
    let policy = RetryPolicy::default()
        .with_max_retries(2)
        .with_initial_interval(Duration::from_secs(1))
        .with_multiplier(2.0)
        .with_jitter(0.0);
    let error = Orchestrator::new([ledger])
        .retry(policy)
        .orchestrate()
        .await
        .unwrap_err();

    let warnings = capture.at(Level::WARN);
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    for (attempt, line) in (1..).zip(&warnings) {
        assert_names(line, "ledger", Phase::Confirm, attempt, "ledger offline");
    }
    assert_eq!(warnings[0].field("retry_in"), "1s");
    assert_eq!(warnings[1].field("retry_in"), "2s");

    let errors = capture.at(Level::ERROR);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field("error"), error.to_string());
}

/// A failed Try is one warning with the error's text; a transaction that
/// cancelled cleanly needs no repair and logs no error.
#[tokio::test(start_paused = true)]
async fn a_failed_try_is_a_warning_and_a_clean_cancel_no_error() {
    let (capture, _guard) = capture();
    let (flight, _) = scripted("flight", Step::Ok, Step::Ok, Step::Ok);
    let hotel = Service::new(
        "hotel",
        || async { Err::<(), _>("no room left".to_owned()) },
        || async { Ok::<(), String>(()) },
        || async { Ok::<(), String>(()) },
    );
    Orchestrator::new([flight, hotel])
        .orchestrate()
        .await
        .unwrap_err();

    let warnings = capture.at(Level::WARN);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_names(&warnings[0], "hotel", Phase::Try, 1, "no room left");
    assert!(capture.at(Level::ERROR).is_empty());
}

/// The same lines for a `tcc!` block: here a Cancel that fails once and
/// then succeeds.
#[tokio::test(start_paused = true)]
async fn a_block_logs_as_an_orchestrator_does() {
    let (capture, _guard) = capture();
    let (flight, _) = scripted(
        "flight",
        Step::Ok,
        Step::Ok,
        Script::of(&[Step::Fail, Step::Ok]),
    );
    tcc! {
        retry = RetryPolicy::immediate(3);
        flight,
        "hotel" => {
            try_phase: async { Err::<(), _>("no room left") },
            confirm: async { Ok::<(), String>(()) },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await
    .unwrap_err();

    let warnings = capture.at(Level::WARN);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_names(&warnings[0], "hotel", Phase::Try, 1, "no room left");
    assert_names(
        &warnings[1],
        "flight",
        Phase::Cancel,
        1,
        "transient failure",
    );
    assert!(capture.at(Level::ERROR).is_empty());
}

/// An error whose `Display` panics.
#[derive(Debug)]
struct Unprintable;

impl fmt::Display for Unprintable {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        panic!("Unprintable cannot be displayed")
    }
}

impl std::error::Error for Unprintable {}

/// An error that cannot be displayed still leaves a line that says so, not
/// an empty field.
#[tokio::test(start_paused = true)]
async fn an_error_that_cannot_be_displayed_is_logged_as_such() {
    let (capture, _guard) = capture();
    let hotel = Service::new(
        "hotel",
        || async { Err::<(), _>(Unprintable) },
        || async { Ok::<(), Unprintable>(()) },
        || async { Ok::<(), Unprintable>(()) },
    );
    Orchestrator::new([hotel]).orchestrate().await.unwrap_err();

    let warnings = capture.at(Level::WARN);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].field("service"), "hotel");
    assert!(
        warnings[0].field("error").contains("panicked"),
        "{warnings:?}"
    );
}
