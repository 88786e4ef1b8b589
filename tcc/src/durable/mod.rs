//! The transaction log: what a durable transaction writes, so that a crash at
//! any instant loses nothing.
//!
//! A [`Log`] keeps one record per unfinished transaction. The engine writes it
//! at fixed moments of a transaction's life; each write is either *durable*
//! (on disk before the call resolves) or *lazy* (applied in order, on disk with
//! the next durable write, lost in a crash before that).
//!
//! | moment | call | durable? | a crash just before leaves | a crash just after leaves |
//! |---|---|---|---|---|
//! | before the first Try | [`Log::begin`] | yes | nothing: no Try ran | an undecided intent: recovery cancels every participant (presumed abort) |
//! | before the first Confirm or Cancel | [`Log::decide`] | yes | an undecided intent: cancelled | a decision: recovery drives phase 2 to its end |
//! | after each phase call | [`Log::note`] | lazy | the decision: recovery repeats calls that may have run (phases are idempotent) | same, with fewer repeats |
//! | all participants done | [`Log::finish`]`(`[`End::Done`]`)` | lazy | the decision: phase 2 runs again, harmlessly | the compact outcome (or, if lost, the decision again) |
//! | retries exhausted | [`Log::finish`]`(`[`End::NeedsRepair`]`)` | yes | the decision: recovery retries | a transaction listed by [`Log::needs_repair`] |
//! | an operator re-drives it | [`Log::reopen`] | yes | still needs repair | decided again, claimed by the caller |
//! | an operator marks it for the next recovery pass | [`Log::requeue`] | yes | still needs repair | decided again, held by no one: the next claim takes it |
//! | an operator fixed it by hand | [`Log::resolve`] | yes | still needs repair | its outcome and the operator's note, for lookups |
//!
//! Lazy writes are safe to lose because every phase may be repeated: a lost
//! [`note`](Log::note) only makes recovery call a participant again, and a lost
//! `finish(Done)` only makes it run phase 2 again. What must never be lost is
//! the intent (else a Try's reservation has no owner) and the decision (else
//! one participant could be confirmed and another cancelled).
//!
//! So after a crash the log holds, for every transaction whose
//! [`begin`](Log::begin) resolved: its intent; its decision if
//! [`decide`](Log::decide) resolved (and possibly if it was only called); the
//! notes and ends written up to the last durable commit.
//! Recovery ([`claim_unfinished`](Log::claim_unfinished)) finds each
//! unfinished one: undecided ones are cancelled everywhere, decided ones see
//! their decision through, resuming each participant's retries from the
//! attempts noted.
//!
//! # For operators
//!
//! [`list`](Log::list) (with a [`Filter`]), [`get`](Log::get) and
//! [`summary`](Log::summary) read what the log holds, including the
//! outcomes of finished transactions it keeps; a transaction that needs
//! repair is [`requeue`](Log::requeue)d for the next recovery pass once its
//! cause is fixed, or [`resolve`](Log::resolve)d with a [`Resolution`] (who
//! fixed it by hand, and how), which its outcome keeps. The `tcc` command
//! line tool (cargo feature `cli`) and `tcc::admin` (feature `admin`) offer
//! these to people.
//!
//! # Stores
//!
//! - [`MemoryLog`]: the same rules, in memory, with no durability. For tests,
//!   and for programs that want lookups by id without a file.
//! - [`RedbLog`] (cargo feature `redb`, on by default): one file, crash-safe,
//!   one writer thread that shares fsyncs between concurrent transactions
//!   (group commit). Finished transactions leave only a compact outcome (id,
//!   decision, start and end times), the oldest pruned beyond a retention
//!   (100,000 by default), so the file stays bounded under steady load.
//!   Made once by [`RedbLog::create`], opened by [`RedbLog::open`], which
//!   refuses a missing, emptied or damaged file rather than start afresh;
//!   every record carries a checksum, and one that fails is set aside as
//!   [`Status::Unreadable`] while the others are recovered.
//! - `PostgresLog` (cargo feature `postgres-log`): tables in PostgreSQL,
//!   shared by many coordinator processes, each transaction held under a
//!   lease that expires on the database's clock; see its docs.
//! - `FaultyLog` (cargo feature `test-util`): wraps a log and fails, or
//!   "crashes", at the k-th write, for tests of recovery, yours included.
//!
//! # Leases and epochs: one interface for one process or several
//!
//! Each write after [`begin`](Log::begin) names a [`Lease`]: the right to write
//! that transaction's record. A lease is taken by [`begin`](Log::begin),
//! [`claim_unfinished`](Log::claim_unfinished) or [`reopen`](Log::reopen), and
//! ends with [`finish`](Log::finish) or [`release`](Log::release). Every claim
//! bumps the record's *epoch*, and every write is conditional on the epoch of
//! its lease being the record's: a write under a stale lease fails with
//! [`LogErrorKind::Fenced`] and changes nothing.
//!
//! The embedded store is the single-owner case: one process holds the file
//! (locked against any other), and the leases it holds are the transactions it
//! began or claimed and has not finished or released. A store shared by
//! several coordinator processes (`PostgresLog`) gives each lease an expiry on
//! the database's clock, which [`renew`](Log::renew) pushes forward; once it
//! has passed, another coordinator may claim the transaction, and the one that
//! paused past it is fenced out: two processes never drive one transaction at
//! once, and the decision is never made twice. How the calls map onto SQL,
//! and the races tested, are in `docs/design.md` (section 4) in the
//! repository.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::{Phase, TransactionId};

#[cfg(feature = "redb")]
mod codec;
#[cfg(feature = "test-util")]
mod faulty;
mod memory;
#[cfg(feature = "postgres-log")]
mod postgres;
#[cfg(feature = "redb")]
mod redb;
mod rules;

/// The decision a log records; also [`tcc::Decision`](crate::Decision),
/// since every transaction makes one, durable or not.
pub use crate::phase::Decision;
#[cfg(feature = "test-util")]
pub use faulty::{Fault, FaultyLog};
pub use memory::MemoryLog;
#[cfg(feature = "postgres-log")]
pub use postgres::{PostgresLog, PostgresOptions};
#[cfg(feature = "redb")]
pub use redb::{CommitStats, RedbLog, RedbOptions};

/// The most a transaction's intent may hold, its participants' names,
/// kinds and data together: 2 GiB. The file store writes each field's
/// length in 32 bits and keeps no record above 3 GiB; the margin is for the
/// record's own fields (its header, and 12 bytes of lengths a participant).
/// Notes are kept apart from the record, each in its own row. An orchestration
/// over more is refused at its start, before anything is written or run.
pub(crate) const MAX_INTENT_BYTES: usize = 2 << 30;

// Checked where it is defined, at compile time: within redb's 3 GiB, and
// each length fits the codec's 32 bits.
const _: () = assert!(MAX_INTENT_BYTES < 3 << 30 && MAX_INTENT_BYTES <= u32::MAX as usize);

/// What a [`Log`] call returns: a boxed future, so that [`Log`] is object
/// safe (`Arc<dyn Log>`).
pub type LogFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LogError>> + Send + 'a>>;

/// One participant as the log keeps it: enough to rebuild it after a crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantEntry {
    /// The participant's name in the transaction (its service name).
    pub name: String,
    /// Which registered kind of service rebuilds it after a restart.
    pub kind: String,
    /// Its per-transaction data, serialized (serde_json); opaque to the log.
    pub data: Vec<u8>,
}

/// What a transaction is about to do: written before its first Try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    /// The transaction's id, unique in the log.
    pub id: TransactionId,
    /// Every participant, in the order the engine indexes them.
    pub participants: Vec<ParticipantEntry>,
}

/// Where a transaction stands in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The intent is written, no decision yet. Recovery cancels it (presumed
    /// abort).
    Undecided,
    /// Decided; phase 2 runs, or will run again after a crash.
    Decided(Decision),
    /// Phase 2 gave up on some participant: waiting for an operator
    /// ([`Log::reopen`] to drive it again, [`Log::resolve`] once fixed by hand).
    NeedsRepair(Decision),
    /// Finished. Only the decision is kept, for a bounded number of
    /// transactions (see [`Log::get`]).
    Done(Decision),
    /// The log holds a record for this id that it cannot read (its checksum
    /// fails, or it is cut short): nothing in it can be trusted, not even its
    /// decision, so recovery never drives it. Set aside for an operator,
    /// listed by [`Log::needs_repair`] with the reason in
    /// [`TransactionRecord::damage`]; [`Log::resolve`] removes it once seen
    /// to by hand.
    Unreadable,
}

impl Status {
    /// The decision, if one was made.
    pub fn decision(self) -> Option<Decision> {
        match self {
            Status::Undecided | Status::Unreadable => None,
            Status::Decided(d) | Status::NeedsRepair(d) | Status::Done(d) => Some(d),
        }
    }
}

/// How far one participant got in one phase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PhaseProgress {
    /// Calls made so far (a resumed retry loop starts from here).
    pub attempts: u32,
    /// Whether the phase succeeded for this participant.
    pub succeeded: bool,
    /// The last failure, as text, for an operator.
    pub last_error: Option<String>,
}

/// Everything the log knows about one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionRecord {
    /// What was written before the first Try.
    pub intent: Intent,
    /// Where it stands.
    pub status: Status,
    /// One entry per participant, in intent order; indexed by Phase as usize
    /// (Try=0, Confirm=1, Cancel=2).
    pub progress: Vec<[PhaseProgress; 3]>,
    /// When [`Log::begin`] wrote it (the Unix epoch for an unreadable one).
    pub started_at: SystemTime,
    /// When [`Log::decide`] wrote its decision; `None` while undecided, for
    /// a transaction cancelled without a decision (presumed abort), and for
    /// one decided by a version of tcc that did not keep the time.
    pub decided_at: Option<SystemTime>,
    /// When it ended: finished ([`Status::Done`]), or, for one that needs
    /// repair, when its phase 2 last gave up. `None` otherwise.
    pub ended_at: Option<SystemTime>,
    /// Who resolved it by hand, and how ([`Log::resolve`]): on the outcome
    /// of a finished transaction only.
    pub resolution: Option<Resolution>,
    /// Why the log cannot read this record, when its status is
    /// [`Status::Unreadable`] (then `intent.participants` and `progress` are
    /// empty); `None` otherwise.
    pub damage: Option<String>,
}

impl TransactionRecord {
    /// The progress of participant `participant` in `phase`, if it exists.
    pub fn phase_progress(&self, participant: usize, phase: Phase) -> Option<&PhaseProgress> {
        self.progress.get(participant).map(|p| &p[phase as usize])
    }

    /// A record with nothing but its id, status and start: what a store
    /// fills in further.
    pub(crate) fn bare(id: TransactionId, status: Status, started_at: SystemTime) -> Self {
        TransactionRecord {
            intent: Intent {
                id,
                participants: Vec::new(),
            },
            status,
            progress: Vec::new(),
            started_at,
            decided_at: None,
            ended_at: None,
            resolution: None,
            damage: None,
        }
    }
}

/// An operator's account of a transaction resolved by hand
/// ([`Log::resolve`]): kept with its outcome, so that whoever looks at it
/// later learns who saw to it and what was done.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "admin", derive(serde::Serialize, serde::Deserialize))]
pub struct Resolution {
    /// Who resolved it: an operator's name, as they give it.
    pub by: String,
    /// What was wrong and what was done by hand.
    pub note: String,
}

impl Resolution {
    /// `by`'s account `note`.
    pub fn new(by: impl Into<String>, note: impl Into<String>) -> Self {
        Resolution {
            by: by.into(),
            note: note.into(),
        }
    }
}

/// The statuses [`Log::list`] groups transactions by, for a [`Filter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusGroup {
    /// [`Undecided`](Status::Undecided) or [`Decided`](Status::Decided):
    /// being driven by a coordinator, or waiting for a recovery pass.
    Unfinished,
    /// [`NeedsRepair`](Status::NeedsRepair), or
    /// [`Unreadable`](Status::Unreadable) and set aside: waiting for an
    /// operator.
    NeedsRepair,
    /// [`Done`](Status::Done): finished, its outcome kept within the log's
    /// retention.
    Done,
}

impl StatusGroup {
    /// Every group, in the order [`Log::list`] returns them.
    pub const ALL: [StatusGroup; 3] = [
        StatusGroup::NeedsRepair,
        StatusGroup::Unfinished,
        StatusGroup::Done,
    ];

    /// The group of `status`.
    pub fn of(status: Status) -> StatusGroup {
        match status {
            Status::Undecided | Status::Decided(_) => StatusGroup::Unfinished,
            Status::NeedsRepair(_) | Status::Unreadable => StatusGroup::NeedsRepair,
            Status::Done(_) => StatusGroup::Done,
        }
    }

    /// Its name, as the `tcc` tool and `tcc::admin` spell it:
    /// `unfinished`, `needs-repair`, `done`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StatusGroup::Unfinished => "unfinished",
            StatusGroup::NeedsRepair => "needs-repair",
            StatusGroup::Done => "done",
        }
    }
}

impl fmt::Display for StatusGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not the name of a [`StatusGroup`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown status group {0:?}: expected unfinished, needs-repair or done")]
pub struct ParseStatusGroupError(String);

impl std::str::FromStr for StatusGroup {
    type Err = ParseStatusGroupError;

    /// Reads what [`as_str`](StatusGroup::as_str) writes (`needs_repair`
    /// too).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "unfinished" => Ok(StatusGroup::Unfinished),
            "needs-repair" | "needs_repair" => Ok(StatusGroup::NeedsRepair),
            "done" => Ok(StatusGroup::Done),
            other => Err(ParseStatusGroupError(other.chars().take(64).collect())),
        }
    }
}

/// Which transactions [`Log::list`] returns: those of a [`StatusGroup`]
/// (every group by default), with a given service among their
/// participants, begun longer ago than an age, at most a limit (100 by
/// default).
///
/// ```
/// use std::time::Duration;
/// use tcc::durable::{Filter, StatusGroup};
///
/// // Stuck for over ten minutes, with `payment` among their participants.
/// let stuck = Filter::new()
///     .with_status(StatusGroup::NeedsRepair)
///     .with_service("payment")
///     .with_older_than(Duration::from_secs(600))
///     .with_limit(20);
/// assert_eq!(stuck.limit(), 20);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    status: Option<StatusGroup>,
    service: Option<String>,
    older_than: Option<std::time::Duration>,
    limit: usize,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            status: None,
            service: None,
            older_than: None,
            limit: 100,
        }
    }
}

impl Filter {
    /// Every transaction, up to 100.
    pub fn new() -> Self {
        Filter::default()
    }

    /// Only the transactions of `group`.
    pub fn with_status(mut self, group: StatusGroup) -> Self {
        self.status = Some(group);
        self
    }

    /// Only the transactions with a participant named `service`. A finished
    /// transaction's outcome keeps no participants, so this leaves out
    /// every [`Done`](StatusGroup::Done) one.
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// Only the transactions begun more than `age` ago, by the store's
    /// clock.
    pub fn with_older_than(mut self, age: std::time::Duration) -> Self {
        self.older_than = Some(age);
        self
    }

    /// At most `limit` transactions.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The group asked for, if one was.
    pub fn status(&self) -> Option<StatusGroup> {
        self.status
    }

    /// The service asked for, if one was.
    pub fn service(&self) -> Option<&str> {
        self.service.as_deref()
    }

    /// The least age asked for, if one was.
    pub fn older_than(&self) -> Option<std::time::Duration> {
        self.older_than
    }

    /// The most transactions to return.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the transactions of `group` are wanted.
    pub fn includes(&self, group: StatusGroup) -> bool {
        self.status.is_none_or(|wanted| wanted == group)
    }

    /// Whether `record` has the service and the age asked for, `now` being
    /// the store's clock (its group is the store's to check, by where it
    /// keeps it).
    pub fn matches(&self, record: &TransactionRecord, now: SystemTime) -> bool {
        let service = self.service.as_deref().is_none_or(|service| {
            record
                .intent
                .participants
                .iter()
                .any(|participant| participant.name == service)
        });
        let old = self.older_than.is_none_or(|age| {
            now.duration_since(record.started_at)
                .is_ok_and(|since| since > age)
        });
        service && old
    }
}

/// What a log holds, counted ([`Log::summary`]): for an operator's
/// dashboard or a health check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogSummary {
    /// Transactions begun, not decided yet.
    pub undecided: u64,
    /// Transactions decided, their phase 2 under way or waiting for
    /// recovery.
    pub decided: u64,
    /// Transactions waiting for an operator ([`Status::NeedsRepair`]).
    pub needs_repair: u64,
    /// Records the log cannot read ([`Status::Unreadable`]), set aside or
    /// not yet.
    pub unreadable: u64,
    /// Outcomes of finished transactions kept (within the retention).
    pub done: u64,
    /// The oldest undecided or decided transaction, and when it began.
    pub oldest_unfinished: Option<(TransactionId, SystemTime)>,
    /// The oldest transaction needing repair, and when it began.
    pub oldest_needs_repair: Option<(TransactionId, SystemTime)>,
    /// What the log takes on disk, in bytes: the file, or the tables; `None`
    /// for a store in memory.
    pub bytes: Option<u64>,
}

/// The right to write a transaction's record: taken by `begin`,
/// `claim_unfinished` or `reopen`.
///
/// Every write after the claim is conditional on `epoch` (fencing): a write
/// with a stale epoch fails with [`LogErrorKind::Fenced`]. The embedded store
/// is the single-owner case (one process, file lock); the PostgreSQL store
/// shared by several coordinators holds leases that expire (judged on the
/// database's clock), renewed by [`Log::renew`], and bumps `epoch` on every
/// claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The transaction this lease writes.
    pub id: TransactionId,
    /// The record's epoch when the lease was taken.
    pub epoch: u64,
}

/// A lease this process holds, given back to its log ([`Log::release`]) when
/// dropped before [`ended`](LeaseGuard::ended) is called: a transaction whose
/// driver went away (a recovery pass dropped half-way, an aborted task, a
/// runtime shutting down) is then claimed again by the next recovery pass
/// of this process, rather than held by nobody until it restarts.
pub(crate) struct LeaseGuard {
    log: Arc<dyn Log>,
    lease: Lease,
    /// When the request that took the lease, or last extended it, was sent:
    /// a lease that expires ([`Log::lease_ttl`]) runs from the store's clock
    /// at that request, which is later.
    taken: tokio::time::Instant,
    ended: bool,
}

impl LeaseGuard {
    /// Holds `lease`, taken from `log` by a request sent at `taken`.
    pub(crate) fn new(log: Arc<dyn Log>, lease: Lease, taken: tokio::time::Instant) -> Self {
        LeaseGuard {
            log,
            lease,
            taken,
            ended: false,
        }
    }

    /// When the request that took the lease, or last extended it, was sent.
    pub(crate) fn taken(&self) -> tokio::time::Instant {
        self.taken
    }

    /// A request sent at `at` extended the lease (a decision written).
    pub(crate) fn extended(&mut self, at: tokio::time::Instant) {
        self.taken = at;
    }

    pub(crate) fn log(&self) -> &Arc<dyn Log> {
        &self.log
    }

    pub(crate) fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The log ended the lease ([`Log::finish`] succeeded): nothing to give
    /// back.
    pub(crate) fn ended(&mut self) {
        self.ended = true;
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if !self.ended {
            self.log.release(&self.lease);
        }
    }
}

impl fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("lease", &self.lease)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// The leases a [`Log`] call's answer carries. A store gives them back
/// when the caller went away before reading the answer (its future
/// dropped), since no one else could.
pub(crate) trait Leases {
    fn leases(&self) -> Vec<&Lease>;
}

/// A store's reply not read yet. Dropped unread (its caller went away), it
/// gives back to `log` the leases the reply carries: closed first, so that
/// a writer that has not replied yet fails to, and can give them back
/// itself.
pub(crate) struct Unread<'a, T: Leases> {
    log: &'a dyn Log,
    answer: oneshot::Receiver<Result<T, LogError>>,
    read: bool,
}

impl<'a, T: Leases> Unread<'a, T> {
    /// Guards `answer`, a reply of `log`.
    pub(crate) fn new(log: &'a dyn Log, answer: oneshot::Receiver<Result<T, LogError>>) -> Self {
        Unread {
            log,
            answer,
            read: false,
        }
    }
}

impl<T: Leases> Future for Unread<'_, T> {
    /// The reply, or `Err` if the writer dropped it unanswered.
    type Output = Result<Result<T, LogError>, oneshot::error::RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = ready!(Pin::new(&mut self.answer).poll(cx));
        self.read = true;
        Poll::Ready(answer)
    }
}

impl<T: Leases> Drop for Unread<'_, T> {
    fn drop(&mut self) {
        if self.read {
            return;
        }
        self.answer.close();
        if let Ok(Ok(answer)) = self.answer.try_recv() {
            for lease in answer.leases() {
                self.log.release(lease);
            }
        }
    }
}

/// Answers that carry no lease.
macro_rules! no_leases {
    ($($answer:ty),*) => {$(
        impl Leases for $answer {
            fn leases(&self) -> Vec<&Lease> {
                Vec::new()
            }
        }
    )*};
}

no_leases!(
    (),
    bool,
    u64,
    Decision,
    LogSummary,
    Option<TransactionRecord>,
    Vec<TransactionRecord>
);

impl Leases for Lease {
    fn leases(&self) -> Vec<&Lease> {
        vec![self]
    }
}

impl Leases for Option<(Lease, TransactionRecord)> {
    fn leases(&self) -> Vec<&Lease> {
        self.iter().map(|(lease, _)| lease).collect()
    }
}

impl Leases for Vec<(Lease, TransactionRecord)> {
    fn leases(&self) -> Vec<&Lease> {
        self.iter().map(|(lease, _)| lease).collect()
    }
}

/// How a transaction ends, for [`Log::finish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Every participant finished its phase 2.
    Done,
    /// Some participant's phase 2 gave up: keep the record for an operator.
    NeedsRepair,
}

/// Where a durable transaction's state is kept. See the [module docs](self)
/// for what is written when, and what a crash leaves.
///
/// Every write of one transaction is applied in the order it was called,
/// including [`note`](Log::note)s, which are not awaited.
///
/// # Cancel safety
///
/// A call may be applied even if its future is dropped before it resolves
/// (the stores here apply it when it is made). A call that takes a lease
/// ([`begin`](Log::begin), [`claim_unfinished`](Log::claim_unfinished),
/// [`reopen`](Log::reopen)) whose future is dropped unread gives that lease
/// back, as [`release`](Log::release) would: otherwise no one in the process
/// would hold it, and its recovery could not take the transaction. A store
/// of your own must do the same.
pub trait Log: Send + Sync + 'static {
    /// Writes the intent, durably (fsync'd) before it resolves. Fails with
    /// `Duplicate` if the id exists.
    fn begin(&self, intent: &Intent) -> LogFuture<'_, Lease>;

    /// Compare-and-set of the decision, durable before it resolves: sets
    /// `decision` if the transaction has none and returns it; if one is
    /// already there, returns that one (never two decisions). A store whose
    /// leases expire ([`lease_ttl`](Log::lease_ttl)) extends the lease with
    /// it, as [`renew`](Log::renew) does.
    fn decide(&self, lease: &Lease, decision: Decision) -> LogFuture<'_, Decision>;

    /// A participant's phase progress. Not synced on its own and not awaited:
    /// enqueued, applied in order before any later write of the same
    /// transaction, made durable by the next durable commit. A note under a
    /// stale lease is dropped (the next awaited write under that lease is
    /// refused with [`Fenced`](LogErrorKind::Fenced)); so is one for a
    /// participant the intent does not have.
    fn note(&self, lease: &Lease, participant: u32, phase: Phase, progress: PhaseProgress);

    /// The end of a transaction. `Done`: its record is removed (a compact
    /// outcome kept for lookups, pruned beyond a bounded retention), need not
    /// be synced at once. `NeedsRepair`: kept, durable before resolving.
    /// Ends the lease in this process. An undecided transaction ends as
    /// cancelled (presumed abort).
    fn finish(&self, lease: &Lease, end: End) -> LogFuture<'_, ()>;

    /// Claims up to `limit` unfinished transactions (Undecided or Decided, not
    /// NeedsRepair) that no live lease holds (embedded: none begun/claimed by
    /// this process and not yet finished or released), each with a new lease
    /// (epoch bumped).
    ///
    /// A record among them that the store cannot read is not claimed: it is
    /// moved to "needs repair" (its contents kept as they are, for an
    /// operator), and returned once, with
    /// [`Status::Unreadable`] and its reason in
    /// [`damage`](TransactionRecord::damage), under a lease that writes
    /// nothing (every write under it is [`Fenced`](LogErrorKind::Fenced)).
    /// One damaged record never stops the others from being recovered.
    fn claim_unfinished(&self, limit: usize) -> LogFuture<'_, Vec<(Lease, TransactionRecord)>>;

    /// Gives a claim back unchanged (e.g. a participant kind is not
    /// registered in this process).
    fn release(&self, lease: &Lease);

    /// Extends a lease; the embedded store has nothing to renew.
    fn renew(&self, lease: &Lease) -> LogFuture<'_, ()> {
        let _ = lease;
        Box::pin(async { Ok(()) })
    }

    /// How long a lease lasts unless renewed, for a store whose leases
    /// expire (shared by several processes); `None` (the default) for one
    /// whose leases last as long as the process. The engine renews a lease
    /// every third of it while a transaction's phases run.
    fn lease_ttl(&self) -> Option<std::time::Duration> {
        None
    }

    /// One transaction's state: its record while unfinished or needing
    /// repair; `Status::Done` for a finished one still within retention (then
    /// `intent.participants` and `progress` are empty); None if unknown.
    fn get(&self, id: TransactionId) -> LogFuture<'_, Option<TransactionRecord>>;

    /// Transactions in `NeedsRepair`, oldest first, up to `limit`; records
    /// the store cannot read ([`Status::Unreadable`], with the reason) come
    /// first.
    fn needs_repair(&self, limit: usize) -> LogFuture<'_, Vec<TransactionRecord>>;

    /// Claims a NeedsRepair transaction to drive it again: status back to
    /// Decided(its decision), durable, new lease. None if it is not in
    /// NeedsRepair.
    fn reopen(&self, id: TransactionId) -> LogFuture<'_, Option<(Lease, TransactionRecord)>>;

    /// Marks a NeedsRepair transaction for the next recovery pass, of any
    /// coordinator of the log: status back to Decided(its decision), durable,
    /// held by no lease (the epoch moves), and a fresh retry budget (the
    /// attempts noted in phase 2 set back to 0; whether each participant
    /// succeeded, and its last error, are kept). False if it is not in
    /// NeedsRepair; an [`Unreadable`](Status::Unreadable) record is not
    /// requeued (nothing in it can be trusted).
    fn requeue(&self, id: TransactionId) -> LogFuture<'_, bool>;

    /// An operator resolved it by hand: NeedsRepair -> Done, durable, its
    /// outcome keeping `resolution`. False if it was not in NeedsRepair. An
    /// [`Unreadable`](Status::Unreadable) record set aside is removed, with
    /// no outcome kept (its decision is unknown).
    fn resolve(&self, id: TransactionId, resolution: &Resolution) -> LogFuture<'_, bool>;

    /// How many transactions are unfinished (Undecided, Decided or
    /// NeedsRepair): for audits and metrics.
    fn unfinished_count(&self) -> LogFuture<'_, u64>;

    /// The transactions `filter` asks for, at most its limit: first those
    /// needing repair (unreadable records first, then the oldest begun
    /// first), then the unfinished (the oldest begun first), then the
    /// finished (the most recently finished first; their outcomes keep no
    /// participants or progress). Meant for an operator, now and then: a
    /// store may read every record it holds to sort them.
    fn list(&self, filter: &Filter) -> LogFuture<'_, Vec<TransactionRecord>>;

    /// What the log holds, counted, with its oldest unfinished transactions
    /// and its size. Reads every unfinished record: for an operator, now and
    /// then.
    fn summary(&self) -> LogFuture<'_, LogSummary>;

    /// How many transactions are in NeedsRepair, unreadable records set
    /// aside included: what [`needs_repair`](Log::needs_repair) would list
    /// with no limit. The `tcc_transactions_needing_repair` gauge
    /// ([`tcc::metrics`](crate::metrics)) is set from it. The default
    /// counts that list, reading every record; the stores here count
    /// without reading them, and a store of your own should too.
    fn needs_repair_count(&self) -> LogFuture<'_, u64> {
        Box::pin(async move { Ok(self.needs_repair(usize::MAX).await?.len() as u64) })
    }
}

/// Sets the `tcc_transactions_needing_repair` gauge from `log`; a log that
/// fails to count leaves it as it was.
pub(crate) async fn publish_needing_repair(log: &dyn Log) {
    match log.needs_repair_count().await {
        Ok(count) => crate::metrics::needing_repair(count),
        Err(error) => {
            tracing::debug!(%error, "the log could not count the transactions needing repair")
        }
    }
}

/// What kind of thing went wrong in a [`Log`]; see [`LogError::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LogErrorKind {
    /// The log file is already open, in another process or in this one.
    AlreadyOpen,
    /// Reading or writing the file failed.
    Io,
    /// The file holds something this version cannot read: a damaged file,
    /// or one record whose checksum fails (the message names the file, and
    /// the transaction if it is one record).
    Corrupt,
    /// No log at the path: no file, an empty one, or a redb file with no
    /// tables (a `create` cut short). `open` never makes a new log in place
    /// of a lost one; `create` makes a new one.
    Missing,
    /// `create` found a log at the path already: open it instead.
    Exists,
    /// A record too large for the log's format: a field (a participant's
    /// data, name or error) of 4 GiB or more, or, in `RedbLog`, a record or
    /// a progress note over 3 GiB. Only that call is refused; the log goes on.
    TooLarge,
    /// [`Log::begin`] with an id the log already has.
    Duplicate,
    /// A write under a lease that is no longer the record's (another claim
    /// took it, or it ended).
    Fenced,
    /// The transaction is not in the log.
    NotFound,
    /// The log is shut down, or stopped after an earlier failure.
    Closed,
    /// A failure injected by `FaultyLog` (cargo feature `test-util`).
    Injected,
    /// The database has no log tables, older ones, or tables that are not
    /// the log's, or settings the log cannot be durable with: the message
    /// says what to run or change.
    Schema,
    /// The address or options given to open the log are not valid: a
    /// PostgreSQL URL that does not parse, a lease of zero.
    Config,
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a log; [`kind`](LogError::kind) says what, `Display`
/// says it for a person (with the path or the transaction id).
pub struct LogError {
    kind: LogErrorKind,
    message: String,
    source: Option<Source>,
    /// Set when the failure is one unreadable record: the rest of the log,
    /// and the write transaction that read it, are sound.
    unreadable: Option<TransactionId>,
}

impl LogError {
    /// An error of `kind`, described by `message`.
    pub fn new(kind: LogErrorKind, message: impl Into<String>) -> Self {
        LogError {
            kind,
            message: message.into(),
            source: None,
            unreadable: None,
        }
    }

    /// The record of `id` cannot be read (`Corrupt`); `message` says why,
    /// naming the file and the transaction.
    pub(crate) fn unreadable(id: TransactionId, message: impl Into<String>) -> Self {
        LogError {
            unreadable: Some(id),
            ..LogError::new(LogErrorKind::Corrupt, message)
        }
    }

    /// The transaction whose record could not be read, if that is all this
    /// error is about.
    pub(crate) fn unreadable_record(&self) -> Option<TransactionId> {
        self.unreadable
    }

    /// The same error, caused by `source` (shown after the message with
    /// its own sources, and returned by `source()`).
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The same kind and text, without the source (which cannot be
    /// cloned): for each caller of a batch that failed as a whole.
    pub(crate) fn copy_for_caller(&self) -> LogError {
        LogError::new(self.kind, self.to_string())
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> LogErrorKind {
        self.kind
    }

    pub(crate) fn fenced(lease: &Lease) -> Self {
        LogError::new(
            LogErrorKind::Fenced,
            format!(
                "transaction {} is no longer held by this lease (epoch {}): it was finished, released or claimed again",
                lease.id, lease.epoch
            ),
        )
    }

    pub(crate) fn not_found(id: TransactionId) -> Self {
        LogError::new(
            LogErrorKind::NotFound,
            format!("transaction {id} is not in the log"),
        )
    }
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {}", crate::error::Chain(&**source))?;
        }
        Ok(())
    }
}

impl fmt::Debug for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for LogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}
