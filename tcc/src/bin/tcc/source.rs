//! Where the tool reads and changes the log: a log it opens itself (a
//! file, PostgreSQL), or a running coordinator's admin router over HTTP.
//! Either way the same calls of `tcc::admin` run, here or there.

use std::path::Path;

use tcc::TransactionId;
use tcc::TransactionLog;
use tcc::admin::{self, ChangeJson, SummaryJson, TransactionJson};
use tcc::durable::{Filter, LogError, LogErrorKind, Resolution};

use crate::http::Remote;
use crate::{Failure, LogAt, exit};

/// The log the commands work on.
pub enum Source {
    /// A log opened by the tool: a file no process holds, or PostgreSQL.
    Log(TransactionLog),
    /// A running coordinator's admin router.
    Remote(Remote),
}

impl Source {
    /// The log `at` names, opened; or why it cannot be.
    pub async fn open(at: &LogAt) -> Result<Source, Failure> {
        match (&at.log, &at.url) {
            (Some(_), Some(_)) => Err(Failure::new(
                exit::BAD_INPUT,
                "give --log or --url, not both",
            )),
            (None, None) => Err(Failure::new(
                exit::BAD_INPUT,
                "say which log: --log PATH (a file no process holds), --log postgres://... or --url http://HOST:PORT/tcc (a running coordinator's admin router); or set TCC_LOG or TCC_URL",
            )),
            (None, Some(url)) => Remote::new(url).map(Source::Remote),
            (Some(log), None) if is_postgres(log) => open_postgres(log).await,
            (Some(log), None) if log.starts_with("http://") || log.starts_with("https://") => {
                Err(Failure::new(
                    exit::BAD_INPUT,
                    format!(
                        "--log takes a log file or a postgres:// URL; a coordinator's admin router is --url {log}"
                    ),
                ))
            }
            (Some(path), None) => open_file(Path::new(path)),
        }
    }

    pub async fn list(&self, filter: &Filter) -> Result<Vec<TransactionJson>, Failure> {
        match self {
            Source::Log(log) => Ok(admin::list(log, filter).await?),
            Source::Remote(remote) => remote.list(filter).await,
        }
    }

    pub async fn show(&self, id: TransactionId) -> Result<TransactionJson, Failure> {
        match self {
            Source::Log(log) => Ok(admin::show(log, id).await?),
            Source::Remote(remote) => remote.show(id).await,
        }
    }

    pub async fn retry(&self, id: TransactionId) -> Result<ChangeJson, Failure> {
        match self {
            Source::Log(log) => Ok(admin::retry(log, id).await?),
            Source::Remote(remote) => remote.retry(id).await,
        }
    }

    pub async fn resolve(
        &self,
        id: TransactionId,
        resolution: Resolution,
    ) -> Result<ChangeJson, Failure> {
        match self {
            Source::Log(log) => Ok(admin::resolve(log, id, resolution).await?),
            Source::Remote(remote) => remote.resolve(id, &resolution).await,
        }
    }

    pub async fn summary(&self) -> Result<SummaryJson, Failure> {
        match self {
            Source::Log(log) => Ok(admin::summary(log).await?),
            Source::Remote(remote) => remote.summary().await,
        }
    }
}

pub fn is_postgres(address: &str) -> bool {
    address.starts_with("postgres://") || address.starts_with("postgresql://")
}

/// `url` as it may be shown: without its password.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

async fn open_postgres(url: &str) -> Result<Source, Failure> {
    match TransactionLog::postgres_url(url).await {
        Ok(log) => Ok(Source::Log(log)),
        Err(error) => {
            let code = match error.kind() {
                LogErrorKind::Config => exit::BAD_INPUT,
                _ => exit::UNREACHABLE,
            };
            Err(Failure::new(
                code,
                format!("cannot open the log at {}: {error}", redacted(url)),
            ))
        }
    }
}

fn open_file(path: &Path) -> Result<Source, Failure> {
    if !path.exists() {
        return Err(Failure::new(
            exit::UNREACHABLE,
            format!("there is no log at {}: no such file", path.display()),
        ));
    }
    TransactionLog::open(path)
        .map(Source::Log)
        .map_err(|error| file_error(path, &error))
}

fn file_error(path: &Path, error: &LogError) -> Failure {
    let message = match error.kind() {
        LogErrorKind::AlreadyOpen => format!(
            "the log {} is held by a running coordinator (it locks its file while it runs), and the lock keeps every other process out, readers too: it cannot be inspected from here, not even read-only. Ask the coordinator itself through its admin router (tcc::admin::router, mounted by the application): tcc --url http://HOST:PORT/tcc ...",
            path.display()
        ),
        _ => format!("cannot open the log {}: {error}", path.display()),
    };
    Failure::new(exit::UNREACHABLE, message)
}
