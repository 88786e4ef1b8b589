//! Bugs that the fault-injection suite (`tests/fault_injection.rs`) found,
//! each kept as a plain test.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tcc::{ErrorKind, Orchestrator, Phase, Service, TimedOut};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Panics when dropped, as a phase's future may do in its destructor.
struct PanicsOnDrop(&'static str);

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("{} panicked while it was dropped", self.0);
        }
    }
}

/// A service whose Try never ends and panics when its future is dropped;
/// `cancels` counts its Cancel calls.
fn hangs_then_panics_on_drop(name: &'static str, cancels: Arc<AtomicU32>) -> Service {
    Service::new(
        name,
        move || async move {
            let _guard = PanicsOnDrop(name);
            std::future::pending::<Result<(), String>>().await
        },
        || async { Ok::<(), String>(()) },
        move || {
            cancels.fetch_add(1, Ordering::SeqCst);
            async { Ok::<(), String>(()) }
        },
    )
}

fn counted(name: &'static str, try_fails: bool, cancels: Arc<AtomicU32>) -> Service {
    Service::new(
        name,
        move || async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if try_fails { Err("no room") } else { Ok(()) }
        },
        || async { Ok::<(), &str>(()) },
        move || {
            cancels.fetch_add(1, Ordering::SeqCst);
            async { Ok::<(), &str>(()) }
        },
    )
}

/// Found by the suite: a Try future that panicked in its destructor when its
/// timeout dropped it killed the whole transaction (the caller got
/// `Interrupted`), so no service was cancelled.
#[tokio::test(start_paused = true)]
async fn a_try_that_panics_when_its_timeout_drops_it_is_still_cancelled() {
    let cancels = Arc::new(AtomicU32::new(0));
    let stuck = hangs_then_panics_on_drop("stuck", cancels.clone());
    let other = counted("other", false, cancels.clone());

    let error = Orchestrator::new([stuck.clone(), other.clone()])
        .try_timeout(Duration::from_secs(1))
        .orchestrate()
        .await
        .unwrap_err();

    assert_eq!(error.kind(), ErrorKind::TryFailed);
    assert_eq!((error.phase(), error.service_name()), (Phase::Try, "stuck"));
    assert_eq!(error.failures().len(), 1);
    assert!(error.failures()[0].cause().is::<TimedOut>());
    assert_eq!(cancels.load(Ordering::SeqCst), 2);
    assert!(stuck.cancel_succeeded() && other.cancel_succeeded());
}

/// Found by the suite: the same panic when `fail_fast` drops a Try still
/// running, after another Try failed.
#[tokio::test(start_paused = true)]
async fn a_try_that_panics_when_fail_fast_drops_it_is_still_cancelled() {
    let cancels = Arc::new(AtomicU32::new(0));
    let stuck = hangs_then_panics_on_drop("stuck", cancels.clone());
    let full = counted("full", true, cancels.clone());

    let error = Orchestrator::new([stuck.clone(), full.clone()])
        .fail_fast(true)
        .orchestrate()
        .await
        .unwrap_err();

    assert_eq!(error.kind(), ErrorKind::TryFailed);
    assert_eq!(error.service_name(), "full");
    // The dropped Try started, so it is cancelled, but it did not fail.
    assert_eq!(error.failures().len(), 1);
    assert_eq!(cancels.load(Ordering::SeqCst), 2);
    assert!(stuck.tried() && !stuck.try_succeeded() && stuck.cancel_succeeded());
    assert!(full.cancel_succeeded());
}

/// A subscriber that formats every field of every span and event, as any
/// real one does.
struct Formatting;

impl Subscriber for Formatting {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        span.record(&mut FormatAll);
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        values.record(&mut FormatAll);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        event.record(&mut FormatAll);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

struct FormatAll;

impl Visit for FormatAll {
    fn record_debug(&mut self, _: &Field, value: &dyn fmt::Debug) {
        let _ = format!("{value:?}");
    }
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

/// Found while extending the suite (a formatting subscriber, errors whose
/// `Display` panics): with a tracing subscriber on, the runtime's log lines
/// formatted a failed phase's error; one whose `Display` panicked killed the
/// transaction (`Interrupted`) before any service was cancelled.
#[tokio::test(start_paused = true)]
async fn an_error_whose_display_panics_does_not_stop_the_transaction() {
    let _subscriber = tracing::subscriber::set_default(Formatting);
    let cancels = Arc::new(AtomicU32::new(0));
    let service = |name: &'static str, try_fails: bool| {
        let cancels = cancels.clone();
        Service::new(
            name,
            move || async move { if try_fails { Err(Unprintable) } else { Ok(()) } },
            || async { Ok::<(), Unprintable>(()) },
            move || {
                cancels.fetch_add(1, Ordering::SeqCst);
                // Fails once, so that the retry is logged too.
                let first = cancels.load(Ordering::SeqCst) == 1;
                async move { if first { Err(Unprintable) } else { Ok(()) } }
            },
        )
    };
    let (bad, good) = (service("bad", true), service("good", false));

    let error = Orchestrator::new([bad.clone(), good.clone()])
        .retry(tcc::RetryPolicy::immediate(3))
        .orchestrate()
        .await
        .unwrap_err();

    assert_eq!(error.kind(), ErrorKind::TryFailed);
    assert_eq!(error.service_name(), "bad");
    assert!(error.failures()[0].cause().is::<Unprintable>());
    // Its text is in the error's `Display` (issue 16): shown as a note.
    assert!(
        error
            .to_string()
            .contains("try failed in `bad`: <the error's Display panicked>"),
        "{error}"
    );
    assert_eq!(cancels.load(Ordering::SeqCst), 3);
    assert!(bad.cancel_succeeded() && good.cancel_succeeded());
}

/// An error whose source chain loops back on itself.
#[derive(Debug)]
struct Cyclic;

impl fmt::Display for Cyclic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cyclic")
    }
}

impl std::error::Error for Cyclic {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self)
    }
}

/// An error whose `source()` panics.
#[derive(Debug)]
struct NoSource;

impl fmt::Display for NoSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no source")
    }
}

impl std::error::Error for NoSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        panic!("NoSource::source panicked")
    }
}

/// Found while extending the suite: deciding whether a failed Confirm was
/// permanent walked the error's whole source chain, so a chain that loops
/// back on itself hung the orchestration for ever (a busy loop: no timeout
/// could fire), and a `source()` that panicked killed it.
#[tokio::test(start_paused = true)]
async fn odd_source_chains_are_retried_like_any_error() {
    let ok = || async { Ok::<(), Cyclic>(()) };
    let cyclic = Service::new("cyclic", ok, || async { Err::<(), _>(Cyclic) }, ok);
    let no_source = Service::new(
        "no_source",
        || async { Ok::<(), NoSource>(()) },
        || async { Err::<(), _>(NoSource) },
        || async { Ok::<(), NoSource>(()) },
    );

    let error = Orchestrator::new([cyclic, no_source])
        .retry(tcc::RetryPolicy::immediate(2))
        .orchestrate()
        .await
        .unwrap_err();

    assert_eq!(error.kind(), ErrorKind::ConfirmFailed);
    // `Display` walks the same chains (issue 16), bounded, and stops at a
    // `source()` that panics.
    let texts: Vec<_> = error.failures().iter().map(|f| f.to_string()).collect();
    assert_eq!(
        texts,
        [
            "confirm of `cyclic` failed after 3 attempts: cyclic",
            "confirm of `no_source` failed after 3 attempts: no source"
        ]
    );
    let attempts: Vec<_> = error
        .failures()
        .iter()
        .map(|f| (f.service_name(), f.attempts()))
        .collect();
    assert_eq!(attempts, [("cyclic", 3), ("no_source", 3)]);
    // Asked by the caller, the answer comes back too.
    assert!(!error.failures()[0].is_permanent());
}
