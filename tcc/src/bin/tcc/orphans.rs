//! `tcc orphans`: reservations that no coordinator will ever release.
//!
//! A participant's barrier row left `tried` (or `started`) holds what its
//! Try reserved until its Confirm or Cancel comes, and the coordinator
//! sends those as long as its log holds the transaction unfinished. So a
//! row held past an age whose transaction the log does not hold (it has
//! no record of it, or only its outcome) is a reservation no one will
//! release: the log was lost or replaced, the participant's data was
//! restored from a backup taken before its Confirm or Cancel, a transaction
//! was resolved by hand without this branch, or a bug.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tcc::Decision;
use tcc::admin::RefusalKind;
use tcc::barrier::{HeldBranch, postgres, sqlite};

use crate::source::{Source, is_postgres, redacted};
use crate::{Failure, exit};

/// A reservation no coordinator will release, and what to do with it.
#[derive(Debug, Serialize)]
pub struct Orphan {
    /// The transaction id its barrier row holds.
    pub transaction_id: String,
    /// The participant's service.
    pub service: String,
    /// `tried` or `started`.
    pub state: &'static str,
    /// How long the row has been unchanged, in seconds.
    pub age_seconds: u64,
    /// When it last changed (RFC 3339).
    pub held_since: String,
    /// What the log holds of its transaction.
    pub log: String,
    /// What to do with it.
    pub advice: &'static str,
}

/// The barrier's rows held longer than `older_than` whose transactions the
/// log `source` does not hold unfinished.
pub async fn find(
    source: &Source,
    barrier: &str,
    older_than: Duration,
) -> Result<Vec<Orphan>, Failure> {
    let now = SystemTime::now();
    let mut orphans = Vec::new();
    for branch in held(barrier, older_than).await? {
        let (log, advice) = match branch.transaction() {
            None => (
                "not a transaction id".to_owned(),
                "not written by tcc's barrier: look into it",
            ),
            Some(id) => match source.show(id).await {
                // Unfinished or needing repair: a coordinator, or an
                // operator, will see to it.
                Ok(transaction) if transaction.status != "done" => continue,
                Ok(transaction) => match transaction.decision {
                    Some(Decision::Confirm) => (
                        "done (confirm)".to_owned(),
                        "its transaction confirmed: confirm it by hand",
                    ),
                    _ => (
                        "done (cancel)".to_owned(),
                        "its transaction cancelled: release it by hand",
                    ),
                },
                Err(failure) if failure.refusal == Some(RefusalKind::UnknownTransaction) => (
                    "not in the log".to_owned(),
                    "find how its transaction ended (its other participants), then confirm or release it by hand",
                ),
                Err(failure) => return Err(failure),
            },
        };
        orphans.push(Orphan {
            held_since: tcc::admin::rfc3339(now.checked_sub(branch.age).unwrap_or(now)),
            age_seconds: branch.age.as_secs(),
            transaction_id: branch.transaction_id,
            service: branch.service,
            state: branch.state,
            log,
            advice,
        });
    }
    Ok(orphans)
}

/// The rows of `barrier` holding a reservation longer than `older_than`.
async fn held(barrier: &str, older_than: Duration) -> Result<Vec<HeldBranch>, Failure> {
    if let Some(path) = barrier.strip_prefix("sqlite:") {
        let path = Path::new(path.strip_prefix("//").unwrap_or(path));
        return held_in_sqlite(path, older_than);
    }
    if is_postgres(barrier) {
        return held_in_postgres(barrier, older_than).await;
    }
    let shown: String = barrier.chars().take(200).collect();
    Err(Failure::new(
        exit::BAD_INPUT,
        format!(
            "--barrier {shown}: give the barrier's database as sqlite:PATH or a postgres:// URL"
        ),
    ))
}

fn held_in_sqlite(path: &Path, older_than: Duration) -> Result<Vec<HeldBranch>, Failure> {
    let unreadable = |why: String| {
        Failure::new(
            exit::UNREACHABLE,
            format!("cannot read the barrier table in {}: {why}", path.display()),
        )
    };
    if !path.is_file() {
        return Err(unreadable("no such file".into()));
    }
    // Read-only: the tool never writes a participant's database.
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(path, flags)
        .map_err(|error| unreadable(error.to_string()))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|error| unreadable(error.to_string()))?;
    sqlite::held_longer_than(&conn, older_than).map_err(|error| unreadable(error.to_string()))
}

async fn held_in_postgres(url: &str, older_than: Duration) -> Result<Vec<HeldBranch>, Failure> {
    let shown = redacted(url);
    let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
        Failure::new(
            exit::BAD_INPUT,
            format!("--barrier {shown}: not a postgres:// URL that parses"),
        )
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|error| {
            Failure::new(
                exit::UNREACHABLE,
                format!("cannot connect to the barrier's database at {shown}: {error}"),
            )
        })?;
    let connection = tokio::spawn(connection);
    let held = postgres::held_longer_than(&client, older_than)
        .await
        .map_err(|error| {
            Failure::new(
                exit::UNREACHABLE,
                format!("cannot read the barrier table at {shown}: {error}"),
            )
        });
    drop(client);
    let _ = connection.await;
    held
}
