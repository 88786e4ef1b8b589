//! The transaction log's operator calls as JSON, and an [axum] router that
//! serves them from inside a running coordinator. Cargo feature `admin`.
//!
//! A coordinator on the embedded log holds its file locked, so nothing else
//! can open it while it runs, the `tcc` command line tool included. Mount
//! [`router`] in the application, and the tool reaches the log through it
//! (`tcc --url http://host:port/tcc list`); a person or a script can call it
//! too. It offers what the tool does:
//!
//! | request | answer |
//! |---|---|
//! | `GET /transactions?state=needs-repair&service=payment&older_than=10m&limit=50` | an array of [`TransactionJson`] ([`list`]); every parameter may be left out |
//! | `GET /transactions/{id}` | a [`TransactionJson`] ([`show`]) |
//! | `POST /transactions/{id}/retry` | a [`ChangeJson`] ([`retry`]): marked for the next recovery pass |
//! | `POST /transactions/{id}/resolve` with `{"by": "ada", "note": "refunded by hand"}` | a [`ChangeJson`] ([`resolve`]) |
//! | `GET /stats` | a [`SummaryJson`] ([`summary`]) |
//!
//! A refusal is a [`Refusal`] with its status: 400 for a bad request, 404
//! for a transaction the log does not know, 409 for one not in the state
//! the call needs, 500 when the log failed. Times are RFC 3339, in UTC.
//!
//! **The router has no authentication of its own**: `retry` and `resolve`
//! change the log. Mount it where only operators reach it (an admin
//! listener bound to localhost, or behind your authentication layer).
//!
//! ```
//! use axum::Router;
//! use tcc::TransactionLog;
//! use tcc::durable::MemoryLog;
//!
//! let log = TransactionLog::new(MemoryLog::new()); // the coordinator's log
//! let app: Router = Router::new()
//!     // .route("/bookings", post(create_booking)) ... the application's own
//!     .nest("/tcc", tcc::admin::router(log));
//! # drop(app);
//! ```
//!
//! The functions ([`list`], [`show`], [`retry`], [`resolve`], [`summary`])
//! are the calls themselves, for a tool of your own; the `tcc` tool runs
//! them on a log it opens itself (a file no process holds, or PostgreSQL).
//!
//! # Cancel safety
//!
//! Dropping one of these futures (a client that hangs up, which drops its
//! handler) leaves the log as the call it was making leaves it: [`list`],
//! [`show`] and [`summary`] only read; [`retry`] and [`resolve`] make one
//! write, [`TransactionLog::requeue`] or [`TransactionLog::resolve`], which
//! may or may not have reached the log; nothing is left half-done, and
//! [`show`] tells which.

use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::durable::{
    Filter, LogError, LogSummary, Resolution, Status, StatusGroup, TransactionRecord,
};
use crate::{Decision, Phase, TransactionId, TransactionLog};

/// The most transactions one listing returns.
pub const MAX_LIMIT: usize = 10_000;

/// The longest note (or name) [`resolve`] keeps, in bytes.
pub const MAX_NOTE_BYTES: usize = 64 * 1024;

/// A transaction, as [`list`] and [`show`] give it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionJson {
    /// Its id, 32 hex digits.
    pub id: String,
    /// `undecided`, `decided`, `needs_repair`, `done` or `unreadable`.
    pub status: String,
    /// Its decision, once made.
    pub decision: Option<Decision>,
    /// When it began (RFC 3339); `None` for a record the log cannot read.
    pub started_at: Option<String>,
    /// When its decision was written, if the log knows.
    pub decided_at: Option<String>,
    /// When it finished, or last gave up (needing repair).
    pub ended_at: Option<String>,
    /// Its participants, in order, with their progress (none for a finished
    /// one: its outcome keeps no participants).
    pub participants: Vec<ParticipantJson>,
    /// Who resolved it by hand, and how.
    pub resolution: Option<Resolution>,
    /// Why the log cannot read its record.
    pub damage: Option<String>,
}

/// One participant of a [`TransactionJson`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantJson {
    /// Its service name.
    pub name: String,
    /// The kind of service that rebuilds it after a crash.
    pub kind: String,
    /// Its saved data (JSON for `#[derive(Recoverable)]`), if it is UTF-8.
    pub data: Option<String>,
    /// Its Try.
    #[serde(rename = "try")]
    pub try_phase: PhaseJson,
    /// Its Confirm.
    pub confirm: PhaseJson,
    /// Its Cancel.
    pub cancel: PhaseJson,
}

impl ParticipantJson {
    /// Its progress in `phase`.
    pub fn phase(&self, phase: Phase) -> &PhaseJson {
        match phase {
            Phase::Try => &self.try_phase,
            Phase::Confirm => &self.confirm,
            Phase::Cancel => &self.cancel,
        }
    }
}

/// How far a participant got in one phase.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseJson {
    /// Calls made (since the last fresh retry budget).
    pub attempts: u32,
    /// Whether it succeeded.
    pub succeeded: bool,
    /// Its last failure.
    pub last_error: Option<String>,
}

/// What a log holds, counted, as [`summary`] gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryJson {
    /// Begun, not decided.
    pub undecided: u64,
    /// Decided, phase 2 under way or waiting for recovery.
    pub decided: u64,
    /// Waiting for an operator.
    pub needs_repair: u64,
    /// Records the log cannot read.
    pub unreadable: u64,
    /// Outcomes of finished transactions kept.
    pub done: u64,
    /// The oldest undecided or decided transaction.
    pub oldest_unfinished: Option<OldestJson>,
    /// The oldest transaction needing repair.
    pub oldest_needs_repair: Option<OldestJson>,
    /// The log's size on disk, in bytes (none in memory).
    pub bytes: Option<u64>,
}

/// The oldest transaction of a group, in a [`SummaryJson`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OldestJson {
    /// Its id.
    pub id: String,
    /// When it began (RFC 3339).
    pub started_at: String,
}

/// What [`retry`] or [`resolve`] did: a sentence for a person, and the
/// transaction as it is now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeJson {
    /// What was done, and what happens next.
    pub message: String,
    /// The transaction after the change.
    pub transaction: TransactionJson,
}

/// The body of `POST /transactions/{id}/resolve`.
pub type ResolveJson = Resolution;

/// Why a call was refused: [`RefusalKind`] for a program, a sentence for a
/// person. The body of every answer that is not a success.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// What kind of refusal.
    #[serde(rename = "error")]
    pub kind: RefusalKind,
    /// What was wrong, in a sentence.
    pub message: String,
}

/// What kind of [`Refusal`], and its HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RefusalKind {
    /// The request is not valid: a malformed id or parameter, an empty
    /// note (400).
    BadRequest,
    /// The log does not know the transaction (404).
    UnknownTransaction,
    /// The transaction is not in the state the call needs: only one that
    /// needs repair is retried or resolved (409).
    NotInRepair,
    /// The log failed (500).
    LogFailed,
    /// A kind this version does not know (from a newer server).
    #[serde(other)]
    Other,
}

impl RefusalKind {
    /// Its HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            RefusalKind::BadRequest => StatusCode::BAD_REQUEST,
            RefusalKind::UnknownTransaction => StatusCode::NOT_FOUND,
            RefusalKind::NotInRepair => StatusCode::CONFLICT,
            RefusalKind::LogFailed | RefusalKind::Other => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl Refusal {
    fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Refusal {
            kind,
            message: message.into(),
        }
    }

    fn log_failed(error: LogError) -> Self {
        Refusal::new(RefusalKind::LogFailed, format!("the log failed: {error}"))
    }

    fn unknown(id: TransactionId) -> Self {
        Refusal::new(
            RefusalKind::UnknownTransaction,
            format!(
                "transaction {id} is not in the log (never begun here, or finished longer ago than the log keeps outcomes)"
            ),
        )
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.kind.status(), Json(self)).into_response()
    }
}

/// A time as RFC 3339, in UTC, to the millisecond.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// The name [`TransactionJson::status`] gives `status`.
pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::Undecided => "undecided",
        Status::Decided(_) => "decided",
        Status::NeedsRepair(_) => "needs_repair",
        Status::Done(_) => "done",
        Status::Unreadable => "unreadable",
    }
}

impl From<&TransactionRecord> for TransactionJson {
    fn from(record: &TransactionRecord) -> Self {
        let phase = |participant: usize, phase: Phase| {
            record
                .phase_progress(participant, phase)
                .map(|progress| PhaseJson {
                    attempts: progress.attempts,
                    succeeded: progress.succeeded,
                    last_error: progress.last_error.clone(),
                })
                .unwrap_or_default()
        };
        let participants = record
            .intent
            .participants
            .iter()
            .enumerate()
            .map(|(index, participant)| ParticipantJson {
                name: participant.name.clone(),
                kind: participant.kind.clone(),
                data: String::from_utf8(participant.data.clone()).ok(),
                try_phase: phase(index, Phase::Try),
                confirm: phase(index, Phase::Confirm),
                cancel: phase(index, Phase::Cancel),
            })
            .collect();
        TransactionJson {
            id: record.intent.id.to_string(),
            status: status_name(record.status).to_owned(),
            decision: record.status.decision(),
            started_at: (record.status != Status::Unreadable).then(|| rfc3339(record.started_at)),
            decided_at: record.decided_at.map(rfc3339),
            ended_at: record.ended_at.map(rfc3339),
            participants,
            resolution: record.resolution.clone(),
            damage: record.damage.clone(),
        }
    }
}

impl From<&LogSummary> for SummaryJson {
    fn from(summary: &LogSummary) -> Self {
        let oldest = |oldest: Option<(TransactionId, SystemTime)>| {
            oldest.map(|(id, started_at)| OldestJson {
                id: id.to_string(),
                started_at: rfc3339(started_at),
            })
        };
        SummaryJson {
            undecided: summary.undecided,
            decided: summary.decided,
            needs_repair: summary.needs_repair,
            unreadable: summary.unreadable,
            done: summary.done,
            oldest_unfinished: oldest(summary.oldest_unfinished),
            oldest_needs_repair: oldest(summary.oldest_needs_repair),
            bytes: summary.bytes,
        }
    }
}

/// The transactions `filter` asks for (see [`Log::list`](crate::durable::Log::list)),
/// at most [`MAX_LIMIT`].
pub async fn list(log: &TransactionLog, filter: &Filter) -> Result<Vec<TransactionJson>, Refusal> {
    if filter.limit() > MAX_LIMIT {
        return Err(Refusal::new(
            RefusalKind::BadRequest,
            format!("a listing returns at most {MAX_LIMIT} transactions"),
        ));
    }
    let records = log.list(filter).await.map_err(Refusal::log_failed)?;
    Ok(records.iter().map(TransactionJson::from).collect())
}

/// Transaction `id`: its record while unfinished or needing repair, its
/// outcome once finished (within the log's retention).
pub async fn show(log: &TransactionLog, id: TransactionId) -> Result<TransactionJson, Refusal> {
    let record = log.status(id).await.map_err(Refusal::log_failed)?;
    let record = record.ok_or_else(|| Refusal::unknown(id))?;
    Ok(TransactionJson::from(&record))
}

/// Marks transaction `id`, which needs repair, for the next recovery pass
/// of any coordinator of the log, which re-drives its phase 2 with the
/// services registered there ([`TransactionLog::requeue`]). Runs no
/// participant's code itself.
pub async fn retry(log: &TransactionLog, id: TransactionId) -> Result<ChangeJson, Refusal> {
    let before = show_record(log, id).await?;
    let decision = in_repair(&before, "re-driven")?;
    if !log.requeue(id).await.map_err(Refusal::log_failed)? {
        return Err(changed_meanwhile(id));
    }
    let phase = decision.phase();
    Ok(ChangeJson {
        message: format!(
            "transaction {id} is marked for retry: the next recovery pass of a coordinator of this log (TransactionLog::spawn_recovery, or recover at its start) re-drives its {phase} with the services registered there, with a fresh retry budget; no participant's code ran here"
        ),
        transaction: show(log, id).await?,
    })
}

/// Marks transaction `id`, which needs repair, as resolved by hand: it is
/// finished, and its outcome keeps `resolution` ([`TransactionLog::resolve`]).
/// The author and the note must not be empty, nor over
/// [`MAX_NOTE_BYTES`].
pub async fn resolve(
    log: &TransactionLog,
    id: TransactionId,
    resolution: Resolution,
) -> Result<ChangeJson, Refusal> {
    for (what, text) in [("note", &resolution.note), ("author", &resolution.by)] {
        if text.trim().is_empty() {
            return Err(Refusal::new(
                RefusalKind::BadRequest,
                format!("a resolution needs a {what}: who resolved it, and what was done by hand"),
            ));
        }
        if text.len() > MAX_NOTE_BYTES {
            return Err(Refusal::new(
                RefusalKind::BadRequest,
                format!(
                    "a resolution's {what} is {} bytes; at most {MAX_NOTE_BYTES} are kept",
                    text.len()
                ),
            ));
        }
    }
    let before = show_record(log, id).await?;
    if before.status != Status::Unreadable {
        in_repair(&before, "resolved")?;
    }
    let resolved = log
        .resolve(id, resolution)
        .await
        .map_err(Refusal::log_failed)?;
    if !resolved {
        return Err(changed_meanwhile(id));
    }
    let message = match before.status {
        Status::Unreadable => format!(
            "transaction {id} is resolved: its unreadable record is removed, keeping nothing (its decision was unknown)"
        ),
        _ => format!(
            "transaction {id} is resolved by hand: finished, recovery leaves it alone, and its outcome keeps who and why"
        ),
    };
    let transaction = match log.status(id).await.map_err(Refusal::log_failed)? {
        Some(record) => TransactionJson::from(&record),
        None => TransactionJson::from(&before),
    };
    Ok(ChangeJson {
        message,
        transaction,
    })
}

/// What the log holds, counted ([`TransactionLog::summary`]).
pub async fn summary(log: &TransactionLog) -> Result<SummaryJson, Refusal> {
    let summary = log.summary().await.map_err(Refusal::log_failed)?;
    Ok(SummaryJson::from(&summary))
}

async fn show_record(
    log: &TransactionLog,
    id: TransactionId,
) -> Result<TransactionRecord, Refusal> {
    let record = log.status(id).await.map_err(Refusal::log_failed)?;
    record.ok_or_else(|| Refusal::unknown(id))
}

/// The decision of `record` if it needs repair, or why it cannot be
/// `what` (re-driven, resolved).
fn in_repair(record: &TransactionRecord, what: &str) -> Result<Decision, Refusal> {
    let id = record.intent.id;
    let why = match record.status {
        Status::NeedsRepair(decision) => return Ok(decision),
        Status::Undecided | Status::Decided(_) => format!(
            "transaction {id} is {}, not in need of repair: a coordinator is driving it, or its next recovery pass will; only a transaction that needs repair is {what}",
            status_name(record.status)
        ),
        Status::Done(decision) => format!(
            "transaction {id} is done ({}): there is nothing left to do; only a transaction that needs repair is {what}",
            decision.phase()
        ),
        Status::Unreadable => format!(
            "transaction {id}'s record cannot be read, so not even its decision can be trusted: it cannot be {what}; see to its participants by hand, then resolve it"
        ),
    };
    Err(Refusal::new(RefusalKind::NotInRepair, why))
}

fn changed_meanwhile(id: TransactionId) -> Refusal {
    Refusal::new(
        RefusalKind::NotInRepair,
        format!("transaction {id} no longer needs repair: it was re-driven or resolved meanwhile"),
    )
}

/// The query of `GET /transactions`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ListQuery {
    state: Option<String>,
    service: Option<String>,
    older_than: Option<String>,
    limit: Option<usize>,
}

impl ListQuery {
    fn filter(self) -> Result<Filter, Refusal> {
        let bad = |message: String| Refusal::new(RefusalKind::BadRequest, message);
        let mut filter = Filter::new();
        if let Some(state) = self.state {
            let group: StatusGroup = state.parse().map_err(|e| bad(format!("state: {e}")))?;
            filter = filter.with_status(group);
        }
        if let Some(service) = self.service {
            filter = filter.with_service(service);
        }
        if let Some(age) = self.older_than {
            filter = filter.with_older_than(parse_age(&age).map_err(bad)?);
        }
        if let Some(limit) = self.limit {
            filter = filter.with_limit(limit);
        }
        Ok(filter)
    }
}

/// An age as a person writes it (`90s`, `10m`, `2h 30m`, `3days`), or why
/// it is not one.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|error| {
        let shown: String = text.chars().take(64).collect();
        format!("`{shown}` is not an age ({error}): write it as 90s, 10m, 2h or 3days")
    })
}

/// The id in a request's path.
fn parse_id(text: &str) -> Result<TransactionId, Refusal> {
    text.parse().map_err(|_| {
        let shown: String = text.chars().take(64).collect();
        Refusal::new(
            RefusalKind::BadRequest,
            format!("`{shown}` is not a transaction id: one is 32 hex digits"),
        )
    })
}

/// The operator's calls as JSON over HTTP, on `log`: mount it under a
/// prefix of your application (`Router::new().nest("/tcc", router(log))`).
/// See the [module docs](self) for the requests, and mind that it has no
/// authentication of its own.
pub fn router(log: TransactionLog) -> axum::Router {
    axum::Router::new()
        .route("/transactions", get(list_handler))
        .route("/transactions/{id}", get(show_handler))
        .route("/transactions/{id}/retry", post(retry_handler))
        .route("/transactions/{id}/resolve", post(resolve_handler))
        .route("/stats", get(summary_handler))
        .with_state(log)
}

async fn list_handler(
    State(log): State<TransactionLog>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<TransactionJson>>, Refusal> {
    let Query(query) =
        query.map_err(|rejection| Refusal::new(RefusalKind::BadRequest, rejection.body_text()))?;
    Ok(Json(list(&log, &query.filter()?).await?))
}

async fn show_handler(
    State(log): State<TransactionLog>,
    Path(id): Path<String>,
) -> Result<Json<TransactionJson>, Refusal> {
    Ok(Json(show(&log, parse_id(&id)?).await?))
}

async fn retry_handler(
    State(log): State<TransactionLog>,
    Path(id): Path<String>,
) -> Result<Json<ChangeJson>, Refusal> {
    Ok(Json(retry(&log, parse_id(&id)?).await?))
}

async fn resolve_handler(
    State(log): State<TransactionLog>,
    Path(id): Path<String>,
    body: Result<Json<ResolveJson>, JsonRejection>,
) -> Result<Json<ChangeJson>, Refusal> {
    let id = parse_id(&id)?;
    let Json(resolution) =
        body.map_err(|rejection| Refusal::new(RefusalKind::BadRequest, rejection.body_text()))?;
    Ok(Json(resolve(&log, id, resolution).await?))
}

async fn summary_handler(State(log): State<TransactionLog>) -> Result<Json<SummaryJson>, Refusal> {
    Ok(Json(summary(&log).await?))
}
