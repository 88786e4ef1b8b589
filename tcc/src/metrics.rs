//! Metrics: what `tcc` records through the [`metrics`](https://docs.rs/metrics)
//! facade, for Prometheus or any other system a `metrics` recorder exports to.
//!
//! `tcc` installs no recorder and no exporter: the application installs one
//! (say `metrics-exporter-prometheus`) at start, and every metric below
//! appears. With none installed, a transaction finds that out once, at its
//! start, and records nothing: no label is built and no clock is read.
//!
//! ```
//! use metrics_exporter_prometheus::PrometheusBuilder;
//! use tcc::{Orchestrator, Service};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // At start: the recorder, and the metrics' descriptions (optional: they
//! // become the `# HELP` lines).
//! let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
//! tcc::metrics::describe();
//!
//! let ok = || async { Ok::<(), String>(()) };
//! let booking = Orchestrator::new([Service::new("flight", ok, ok, ok)]);
//! booking.orchestrate().await.unwrap();
//!
//! // What a `/metrics` route would serve.
//! let text = prometheus.render();
//! assert!(text.contains(r#"tcc_transactions_total{outcome="confirmed"} 1"#));
//! assert!(text.contains(
//!     r#"tcc_phase_attempts_total{service="flight",phase="confirm",result="ok"} 1"#
//! ));
//! # }
//! ```
//!
//! # The metrics
//!
//! Names and labels follow Prometheus' conventions: counters end in
//! `_total`, durations are in seconds and end in `_seconds`. Labels take a
//! few values each; a transaction's id is never a label (it is in the
//! [`Report`](crate::Report), the [`Error`](crate::Error) and the `tracing`
//! spans). `service` is a service's name as given to
//! [`Service::new`](crate::Service::new) or `#[tcc_service]`: keep service
//! names few and fixed (not one per customer), or the series multiply.
//!
//! | name | type | labels | counts or measures |
//! |---|---|---|---|
//! | `tcc_transactions_total` | counter | `outcome` | transactions started by [`Orchestrator::orchestrate`](crate::Orchestrator::orchestrate) (or `orchestrate_as`) or a `tcc!` block, once each, at their end |
//! | `tcc_transaction_duration_seconds` | histogram | `outcome` | the same transactions' time from start to end; refused ones are not measured |
//! | `tcc_transactions_in_flight` | gauge | | transactions this process is running now: started, recovered and re-driven ones |
//! | `tcc_transactions_needing_repair` | gauge | | transactions the log holds in "needs repair" (see below for when it is set) |
//! | `tcc_phase_attempts_total` | counter | `service`, `phase`, `result` | attempts at a phase, each retry one more |
//! | `tcc_phase_retries_total` | counter | `service`, `phase` | attempts after a phase's first (only Confirm and Cancel are retried) |
//! | `tcc_phase_duration_seconds` | histogram | `service`, `phase` | from the start of a phase's round to the end of the service's phase: its attempts and the waits between them |
//! | `tcc_recoveries_total` | counter | `result` | transactions a recovery pass ([`TransactionLog::recover`](crate::TransactionLog::recover)) met |
//! | `tcc_log_commit_duration_seconds` | histogram | `log` | one batch of the log's writer, applied and committed as one write transaction: from its start (redb: the write transaction opened; PostgreSQL: a pooled connection asked for) to the end of its commit |
//! | `tcc_log_batch_size` | histogram | `log` | the log calls one committed batch carried, reads included |
//!
//! The labels' values:
//!
//! - `outcome`: `confirmed` (every Confirm ran); `cancelled` (a Try failed,
//!   every Cancel ran); `needs_repair` (a Confirm or Cancel gave up,
//!   [`ErrorKind::ConfirmFailed`](crate::ErrorKind::ConfirmFailed) or
//!   [`CancelFailed`](crate::ErrorKind::CancelFailed)); `interrupted` (it
//!   stopped before its end and is left to recovery: its log failed after
//!   its Tries, its lease was lost, or its runtime shut down); `refused`
//!   (nothing ran: no services, two of one name, an invalid retry policy, no
//!   runtime, a service the log cannot rebuild, an id used before, or the log
//!   could not write the intent).
//! - `phase`: `try`, `confirm`, `cancel`.
//! - `result` of an attempt: `ok`; `timeout` (it outlived its time limit);
//!   `panic` (it panicked); `error` (it returned an error, permanent or not).
//! - `result` of a recovery: `confirmed`, `cancelled`, `needs_repair`,
//!   `interrupted` (its end could not be written: a later pass ends it),
//!   `refused` (its retry policy is invalid), as for `outcome`; `left` (a
//!   participant could not be rebuilt, [`RecoverySummary::left`](crate::RecoverySummary::left));
//!   `unreadable` ([`RecoverySummary::unreadable`](crate::RecoverySummary::unreadable)).
//!   A transaction left untouched is counted again by each pass that meets it.
//! - `log`: `redb` ([`RedbLog`](crate::durable::RedbLog)) or `postgres`
//!   (`PostgresLog`). [`MemoryLog`](crate::durable::MemoryLog) commits
//!   nothing, so records neither log metric. A redb batch of lazy writes
//!   only is committed without fsync, and is measured all the same; one
//!   that changed nothing (reads only) is not committed, nor measured. A
//!   PostgreSQL batch is one database transaction whatever it holds, and
//!   is measured when it commits.
//!
//! # When each is recorded
//!
//! - Transactions' counters and durations, at their end. A transaction that
//!   recovery finishes is counted in `tcc_recoveries_total`, not in
//!   `tcc_transactions_total`: the process that started it ended before it
//!   could be counted. A transaction an operator re-drives
//!   ([`TransactionLog::redrive`](crate::TransactionLog::redrive)) counts in
//!   neither (its phases and `tcc_transactions_in_flight` count).
//! - Phases' counters, at each attempt's start (retries) and end (attempts);
//!   their durations, at the end of the service's phase. A Try that
//!   fail-fast drops while it runs did not end: it is neither counted nor
//!   measured (its Cancel is). Phases run
//!   directly ([`Service::try_phase`](crate::Service::try_phase) and the
//!   like) are not recorded.
//! - `tcc_transactions_needing_repair` is read from the log, not counted by
//!   the process: at the end of each recovery pass, after this process ends
//!   a durable transaction in "needs repair", and after
//!   [`redrive`](crate::TransactionLog::redrive) and
//!   [`resolve`](crate::TransactionLog::resolve). It is absent until the
//!   first of those (call `recover` at start, as the wiring does). Several
//!   coordinators sharing a PostgreSQL log each report the same count, as
//!   of their last update; transactions without a log that need repair are
//!   not in it (they are in `tcc_transactions_total`).
//! - The log's, by the log's writer, after each committed batch.
//!
//! The recorder that counts is the one in force where the event happens: a
//! local recorder ([`metrics::with_local_recorder`]) set on the thread that
//! polls a transaction sees its transaction and phase metrics, but not the
//! log's, which its writer records on a thread or task of its own.
//!
//! Histograms are what the recorder makes of them: the Prometheus exporter
//! renders them as summaries unless given buckets
//! (`PrometheusBuilder::set_buckets_for_metric`), as `examples/http_handler.rs`
//! does.
//!
//! A recorder of zero size (a unit struct) is taken for the facade's
//! `NoopRecorder`, in force when none is installed, and records nothing:
//! give yours a field. (The facade tells no other way whether a recorder is
//! installed, and building the labels of a metric that no one records would
//! cost the in-memory path more than its 5 % budget.)

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{BoxError, Panicked, TimedOut};
use crate::phase::Phase;

/// `tcc_transactions_total`, a counter labelled `outcome`.
pub const TRANSACTIONS_TOTAL: &str = "tcc_transactions_total";
/// `tcc_transaction_duration_seconds`, a histogram labelled `outcome`.
pub const TRANSACTION_DURATION_SECONDS: &str = "tcc_transaction_duration_seconds";
/// `tcc_transactions_in_flight`, a gauge.
pub const TRANSACTIONS_IN_FLIGHT: &str = "tcc_transactions_in_flight";
/// `tcc_transactions_needing_repair`, a gauge.
pub const TRANSACTIONS_NEEDING_REPAIR: &str = "tcc_transactions_needing_repair";
/// `tcc_phase_attempts_total`, a counter labelled `service`, `phase`, `result`.
pub const PHASE_ATTEMPTS_TOTAL: &str = "tcc_phase_attempts_total";
/// `tcc_phase_retries_total`, a counter labelled `service`, `phase`.
pub const PHASE_RETRIES_TOTAL: &str = "tcc_phase_retries_total";
/// `tcc_phase_duration_seconds`, a histogram labelled `service`, `phase`.
pub const PHASE_DURATION_SECONDS: &str = "tcc_phase_duration_seconds";
/// `tcc_recoveries_total`, a counter labelled `result`.
pub const RECOVERIES_TOTAL: &str = "tcc_recoveries_total";
/// `tcc_log_commit_duration_seconds`, a histogram labelled `log`.
pub const LOG_COMMIT_DURATION_SECONDS: &str = "tcc_log_commit_duration_seconds";
/// `tcc_log_batch_size`, a histogram labelled `log`.
pub const LOG_BATCH_SIZE: &str = "tcc_log_batch_size";

/// Describes every metric above to the recorder in force (their unit and
/// help text; Prometheus shows them as `# HELP` lines). Optional: call it
/// once, after installing the recorder.
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        TRANSACTIONS_TOTAL,
        "Transactions started by an Orchestrator or a tcc! block, by how they ended"
    );
    describe_histogram!(
        TRANSACTION_DURATION_SECONDS,
        Unit::Seconds,
        "Time from a transaction's start to its end, by how it ended (refused ones not measured)"
    );
    describe_gauge!(
        TRANSACTIONS_IN_FLIGHT,
        "Transactions this process is running: started, recovered and re-driven ones"
    );
    describe_gauge!(
        TRANSACTIONS_NEEDING_REPAIR,
        "Transactions the log holds in needs repair, as of the last recovery pass, repair or needs-repair end"
    );
    describe_counter!(
        PHASE_ATTEMPTS_TOTAL,
        "Attempts at a phase of a service, by how each ended"
    );
    describe_counter!(
        PHASE_RETRIES_TOTAL,
        "Attempts at a Confirm or Cancel after the first"
    );
    describe_histogram!(
        PHASE_DURATION_SECONDS,
        Unit::Seconds,
        "Time from the start of a phase's round to the end of a service's phase, retries included"
    );
    describe_counter!(
        RECOVERIES_TOTAL,
        "Transactions a recovery pass met, by what became of them"
    );
    describe_histogram!(
        LOG_COMMIT_DURATION_SECONDS,
        Unit::Seconds,
        "Time to apply and commit one batch of transaction log writes"
    );
    describe_histogram!(
        LOG_BATCH_SIZE,
        Unit::Count,
        "Log calls carried by one committed batch"
    );
}

/// Whether a recorder is in force on this thread: a local one, or the
/// global one. The facade has no call that says so, and records through
/// its `NoopRecorder` when none is installed; that recorder is a unit
/// struct (a public one, so it stays one), and any recorder that stores
/// what it records has a size. A labelled metric builds its labels (a
/// `Vec`, a `String` for a service's name) before the recorder is asked,
/// which with no recorder cost the in-memory path several times its 5 %
/// budget; this check costs one thread-local read and one atomic load.
pub(crate) fn recording() -> bool {
    ::metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0)
}

/// How a transaction ended, as `outcome` and recovery's `result` name it.
/// (Not `Outcome`: that is the barrier's.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    Confirmed,
    Cancelled,
    NeedsRepair,
    Interrupted,
    Refused,
}

impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Ending::Confirmed => "confirmed",
            Ending::Cancelled => "cancelled",
            Ending::NeedsRepair => "needs_repair",
            Ending::Interrupted => "interrupted",
            Ending::Refused => "refused",
        }
    }
}

/// Who had the engine run a transaction: what its end counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// An `Orchestrator` or a `tcc!` block: `tcc_transactions_total`.
    Started,
    /// A recovery pass: `tcc_recoveries_total`.
    Recovered,
    /// An operator's `redrive`: neither.
    Redriven,
}

/// One transaction's metrics while it runs, when a recorder is in force:
/// it is in flight from [`start`](TransactionMetrics::start) until this is
/// dropped, which records how it ended ([`end`](TransactionMetrics::end);
/// interrupted if nothing said otherwise, as when its future is dropped
/// half-way).
///
/// Boxed: what it holds is only there while recording, and a transaction
/// that records nothing then moves one pointer about, not forty bytes.
/// With the check of `recording` before a phase's duration in
/// `Ledger::record`, this took the instructions `tcc!` runs at N = 10 from
/// 5.8 % more than without metrics to 3.1 % (BENCHMARKS.md).
pub(crate) struct TransactionMetrics(Option<Box<Running>>);

/// What a recorded transaction's metrics need to know.
struct Running {
    origin: Origin,
    started: Instant,
    round_started: Instant,
    outcome: Ending,
}

impl TransactionMetrics {
    /// Starts recording a transaction, if a recorder is in force.
    pub(crate) fn start(origin: Origin) -> TransactionMetrics {
        if !recording() {
            return TransactionMetrics(None);
        }
        TransactionMetrics(Some(Running::start(origin)))
    }

    /// Whether the transaction's metrics are recorded: its phases' too.
    pub(crate) fn recording(&self) -> bool {
        self.0.is_some()
    }

    /// A round of phases begins now.
    pub(crate) fn round_begun(&mut self) {
        if let Some(running) = &mut self.0 {
            running.round_started = Instant::now();
        }
    }

    /// `service`'s `phase` ended (after its last attempt).
    pub(crate) fn phase_ended(&self, service: &str, phase: Phase) {
        if let Some(running) = &self.0 {
            running.phase_ended(service, phase);
        }
    }

    /// The transaction ended so: recorded when this is dropped.
    pub(crate) fn end(&mut self, outcome: Ending) {
        if let Some(running) = &mut self.0 {
            running.outcome = outcome;
        }
    }
}

impl Drop for TransactionMetrics {
    fn drop(&mut self) {
        if let Some(running) = &self.0 {
            running.ended();
        }
    }
}

// What is recorded, out of line: the engine's hot paths only test whether
// a transaction records, and with no recorder the code that builds labels
// stays out of their way. Inlined there, it made the in-memory path 8-14 %
// slower on the clock at N = 10 and 100 for 3 % more instructions
// (BENCHMARKS.md, "Metrics (issue 19)").
impl Running {
    #[cold]
    #[inline(never)]
    fn start(origin: Origin) -> Box<Running> {
        ::metrics::gauge!(TRANSACTIONS_IN_FLIGHT).increment(1.0);
        let now = Instant::now();
        Box::new(Running {
            origin,
            started: now,
            round_started: now,
            outcome: Ending::Interrupted,
        })
    }

    #[cold]
    #[inline(never)]
    fn phase_ended(&self, service: &str, phase: Phase) {
        ::metrics::histogram!(
            PHASE_DURATION_SECONDS,
            "service" => service.to_owned(),
            "phase" => phase.as_str()
        )
        .record(self.round_started.elapsed());
    }

    #[cold]
    #[inline(never)]
    fn ended(&self) {
        let running = self;
        ::metrics::gauge!(TRANSACTIONS_IN_FLIGHT).decrement(1.0);
        let outcome = running.outcome;
        match running.origin {
            Origin::Started => {
                ::metrics::counter!(TRANSACTIONS_TOTAL, "outcome" => outcome.as_str()).increment(1);
                if outcome != Ending::Refused {
                    ::metrics::histogram!(
                        TRANSACTION_DURATION_SECONDS,
                        "outcome" => outcome.as_str()
                    )
                    .record(running.started.elapsed());
                }
            }
            Origin::Recovered => recovered(outcome.as_str()),
            Origin::Redriven => {}
        }
    }
}

/// A front end refused a transaction before the engine saw it (no
/// runtime, two services of one name).
pub(crate) fn refused() {
    ::metrics::counter!(TRANSACTIONS_TOTAL, "outcome" => "refused").increment(1);
}

/// A recovery pass met a transaction, with this `result`.
pub(crate) fn recovered(result: &'static str) {
    if recording() {
        ::metrics::counter!(RECOVERIES_TOTAL, "result" => result).increment(1);
    }
}

/// An attempt after the first of `service`'s `phase` starts. Called only
/// while recording.
#[cold]
#[inline(never)]
pub(crate) fn retry(service: &str, phase: Phase) {
    ::metrics::counter!(
        PHASE_RETRIES_TOTAL,
        "service" => service.to_owned(),
        "phase" => phase.as_str()
    )
    .increment(1);
}

/// An attempt at `service`'s `phase` ended with `result`. Called only while
/// recording.
#[cold]
#[inline(never)]
pub(crate) fn attempt_ended(service: &str, phase: Phase, result: &Result<(), BoxError>) {
    let result = match result {
        Ok(()) => "ok",
        // Both made by the attempt's runner, boxed as they are.
        Err(error) if error.is::<TimedOut>() => "timeout",
        Err(error) if error.is::<Panicked>() => "panic",
        Err(_) => "error",
    };
    ::metrics::counter!(
        PHASE_ATTEMPTS_TOTAL,
        "service" => service.to_owned(),
        "phase" => phase.as_str(),
        "result" => result
    )
    .increment(1);
}

/// The log holds `count` transactions in "needs repair".
pub(crate) fn needing_repair(count: u64) {
    ::metrics::gauge!(TRANSACTIONS_NEEDING_REPAIR).set(count as f64);
}

/// A `log` committed a batch of `requests` calls in `spent`.
pub(crate) fn log_committed(log: &'static str, spent: Duration, requests: usize) {
    if !recording() {
        return;
    }
    ::metrics::histogram!(LOG_COMMIT_DURATION_SECONDS, "log" => log).record(spent);
    ::metrics::histogram!(LOG_BATCH_SIZE, "log" => log).record(requests as f64);
}
