//! TCC over HTTP: participants that are services of their own.
//!
//! A participant is three HTTP endpoints; the coordinator calls them. On the
//! participant's side (feature `http-server`, axum),
//! [`participant`] serves the three phases of one resource as a `Router`,
//! each phase inside the participant's own database transaction through the
//! barrier (sqlx: features `sqlx-postgres` or `sqlx-sqlite`), and the
//! [`Branch`] extractor reads the protocol's headers for handlers of your
//! own. On the coordinator's side (feature `http-client`, reqwest),
//! [`Remote`] is a recoverable participant that calls one: usable in `tcc!`
//! next to local services and with `Orchestrator`, and saved in the
//! transaction log, so recovery calls it again after a crash with nothing
//! registered but its kind.
//!
//! ```toml
//! [dependencies]
//! tcc = { version = "0.1", features = ["http-server", "sqlx-sqlite"] }  # a participant
//! tcc = { version = "0.1", features = ["http-client"] }                 # a coordinator
//! ```
//!
//! # The protocol
//!
//! For participants in any language. The coordinator sends each phase as a
//! `POST` to the participant's base URL followed by the phase:
//! `{base}/try`, `{base}/confirm`, `{base}/cancel`, with these headers:
//!
//! | header | value |
//! |---|---|
//! | `TCC-Transaction-Id` | the transaction's id: 32 lowercase hex digits |
//! | `TCC-Service` | the participant's name in the transaction: with the id, the key of its barrier row |
//! | `TCC-Phase` | `try`, `confirm` or `cancel`, the same as the path |
//! | `Content-Type` | `application/json` |
//!
//! The body is the JSON the coordinator gave the participant (the same for
//! all three phases, and saved in its log). Confirm and Cancel may arrive
//! more than once, and a Cancel may arrive without, or before, its Try: a
//! participant keys its work by (transaction id, service) and keeps a
//! barrier, as [`participant`] does.
//!
//! The answer's status carries the rules:
//!
//! | status | means | the coordinator |
//! |---|---|---|
//! | 2xx | done (a repeated phase, or a Cancel with nothing to cancel, too) | goes on |
//! | 409, and every other 4xx but 408 and 429 | refused, for good: a Try that cannot reserve, a phase the barrier refuses, a request it cannot read | a Try fails (the transaction is cancelled); a Confirm or Cancel is not tried again (the transaction needs repair) |
//! | 5xx, 408, 429, no answer in time, a connection lost | failed for now | a Confirm or Cancel is tried again with backoff; a Try fails |
//!
//! The body of an error answer says why, as `{"error": "..."}` or as plain
//! text: the coordinator puts it in the phase's error, with the URL and the
//! status. [`participant`] answers a success with `{"outcome": "ran"}`,
//! `{"outcome": "duplicate"}` or `{"outcome": "empty_cancel"}`.
//!
//! A request without one of the three headers, or with one that cannot be
//! read, is refused with 400 and a body naming the header. A participant
//! answers at the URL it was called on: a redirect is taken as a refusal,
//! never followed to a 2xx elsewhere that would pass for done.

#[cfg(feature = "http-server")]
mod participant;
#[cfg(feature = "http-client")]
mod remote;

#[cfg(feature = "http-server")]
pub use participant::{BranchRejection, MissingHeader};
#[cfg(all(
    feature = "http-server",
    any(feature = "sqlx-postgres", feature = "sqlx-sqlite")
))]
pub use participant::{Call, PhaseError, PhaseErrorKind, participant};
#[cfg(feature = "http-client")]
pub use remote::Remote;

/// The barrier's branch, and [`participant`]'s extractor of it: `Branch`
/// implements axum's `FromRequestParts`, reading the three headers.
#[cfg(feature = "http-server")]
pub use crate::barrier::Branch;

/// The header of the transaction's id.
pub const TRANSACTION_ID: &str = "tcc-transaction-id";
/// The header of the participant's name in the transaction.
pub const SERVICE: &str = "tcc-service";
/// The header of the phase: `try`, `confirm` or `cancel`.
pub const PHASE: &str = "tcc-phase";

/// Whether an answer's status says the participant refused for good
/// (every 4xx but 408 Request Timeout and 429 Too Many Requests), rather
/// than failed for now (5xx, 408, 429).
pub fn is_refusal(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}
