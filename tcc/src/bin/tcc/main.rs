//! `tcc`: look after a transaction log from the command line. Cargo feature
//! `cli` (`cargo install tcc --features cli`).
//!
//! It reaches a log three ways: a log file no process holds (`--log
//! PATH`), a PostgreSQL log beside running coordinators (`--log
//! postgres://...`), and a running coordinator's admin router (`--url
//! http://host:port/tcc`, `tcc::admin::router`), the one way into a log
//! file a coordinator holds. `tcc --help` says the rest.

#![forbid(unsafe_code)]

mod http;
mod orphans;
mod render;
mod source;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tcc::TransactionId;
use tcc::durable::{Filter, Resolution, StatusGroup};

use source::Source;

/// The exit codes, as `--help` documents them.
mod exit {
    /// Done; `orphans` found none.
    pub const OK: u8 = 0;
    /// `orphans` found reservations no coordinator will release.
    pub const FOUND: u8 = 1;
    /// A mistake in the command: a bad argument, an unknown transaction, a
    /// transaction not in the state the command needs (clap's own usage
    /// errors exit 2 as well).
    pub const BAD_INPUT: u8 = 2;
    /// The log (or the barrier's database) cannot be reached or read: no
    /// such file, a file a running coordinator holds, a URL that does not
    /// connect, a schema to migrate, an I/O error.
    pub const UNREACHABLE: u8 = 3;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  done (orphans: none found)
  1  orphans: reservations found that no coordinator will release
  2  a mistake in the command: bad arguments, an unknown transaction id,
     a transaction not in the state the command needs
  3  the log or the barrier's database cannot be reached or read: no such
     file, a file held by a running coordinator, a URL that does not
     connect, tables to migrate";

const ABOUT: &str = "Look after a tcc transaction log: find stuck transactions, inspect them, \
re-drive or resolve them, count what the log holds, and find reservations no coordinator \
will release.";

const LONG_ABOUT: &str = "\
Look after a tcc transaction log: find stuck transactions, inspect them, re-drive or
resolve them, count what the log holds, and find reservations no coordinator will release.

The log is reached one of three ways:
  --log PATH              a log file that no process holds (a running coordinator locks
                          its file: use --url for it)
  --log postgres://...    a PostgreSQL log, beside the coordinators running on it
  --url http://HOST/tcc   a running coordinator's admin router (tcc::admin::router,
                          mounted by the application, e.g. under /tcc)

The tool runs no participant's code: `retry` marks a transaction for the next recovery
pass of a coordinator, which has the services registered. A transaction a live coordinator
drives is never changed. Open a log file with the tool of your application's tcc version:
a newer one upgrades the file's format, which the older one then refuses.";

#[derive(Debug, Parser)]
#[command(name = "tcc", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    at: LogAt,
    /// Print JSON, one object per line (times as RFC 3339), for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Where the log is.
#[derive(Debug, Args)]
struct LogAt {
    /// The log: a file no process holds, or a postgres:// URL.
    #[arg(
        long,
        global = true,
        env = "TCC_LOG",
        value_name = "PATH|postgres://...",
        conflicts_with = "url"
    )]
    log: Option<String>,
    /// A running coordinator's admin router: http://HOST:PORT/PREFIX
    /// (where the application mounted tcc::admin::router).
    #[arg(
        long,
        global = true,
        env = "TCC_URL",
        value_name = "http://HOST:PORT/tcc"
    )]
    url: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List transactions: those needing repair first, then the unfinished
    /// (each the oldest first), then the finished (the newest first).
    #[command(after_help = EXIT_CODES)]
    List {
        /// Only these. A finished transaction's outcome keeps no
        /// participants, so --service leaves out the done ones.
        #[arg(long, value_enum)]
        state: Option<State>,
        /// Only those with this service among their participants.
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
        /// Only those begun longer ago than this (90s, 10m, 2h, 3days).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Option<Duration>,
        /// At most this many.
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: usize,
    },
    /// Show one transaction: its participants, each phase's attempts and
    /// last error, its decision and its timeline.
    #[command(after_help = EXIT_CODES)]
    Show {
        /// The transaction's id (32 hex digits).
        #[arg(value_parser = parse_id)]
        id: TransactionId,
    },
    /// Re-drive phase 2 of a transaction that needs repair, once its cause
    /// is fixed: marks it for the next recovery pass of a coordinator of the
    /// log, which has the services registered (no participant's code runs
    /// in this tool). It needs repair again if that fails again.
    #[command(after_help = EXIT_CODES)]
    Retry {
        /// The transaction's id (32 hex digits).
        #[arg(value_parser = parse_id)]
        id: TransactionId,
    },
    /// Mark a transaction that needs repair as repaired by hand: finished,
    /// left alone by recovery, with who and why kept in its outcome.
    #[command(after_help = EXIT_CODES)]
    Resolve {
        /// The transaction's id (32 hex digits).
        #[arg(value_parser = parse_id)]
        id: TransactionId,
        /// What was wrong and what was done by hand.
        #[arg(long, value_name = "TEXT")]
        note: String,
        /// Who resolved it (default: $USER).
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
    },
    /// Count what the log holds by state, with the oldest unfinished
    /// transaction and the log's size.
    #[command(after_help = EXIT_CODES)]
    Stats,
    /// Find reservations no coordinator will release: barrier rows left
    /// `tried` (or `started`) for longer than --older-than whose transaction
    /// the log does not hold as unfinished (a log lost or replaced, a
    /// participant's data restored from a backup, a bug). Exits 1 when it
    /// finds any, so that a cron job can alert on it.
    #[command(after_help = EXIT_CODES)]
    Orphans {
        /// The participant's barrier table: sqlite:PATH or a postgres:// URL.
        #[arg(long, value_name = "sqlite:PATH|postgres://...")]
        barrier: String,
        /// Rows unchanged for longer than this (90s, 10m, 2h, 3days).
        #[arg(long, value_name = "AGE", default_value = "10m", value_parser = parse_age)]
        older_than: Duration,
    },
}

/// `--state`, as the tool spells the log's status groups.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum State {
    /// Undecided or decided: being driven, or waiting for recovery.
    Unfinished,
    /// Waiting for an operator (unreadable records too).
    NeedsRepair,
    /// Finished, within the log's retention.
    Done,
}

impl From<State> for StatusGroup {
    fn from(state: State) -> Self {
        match state {
            State::Unfinished => StatusGroup::Unfinished,
            State::NeedsRepair => StatusGroup::NeedsRepair,
            State::Done => StatusGroup::Done,
        }
    }
}

fn parse_age(text: &str) -> Result<Duration, String> {
    tcc::admin::parse_age(text)
}

fn parse_id(text: &str) -> Result<TransactionId, String> {
    text.parse().map_err(|_| {
        let shown: String = text.chars().take(64).collect();
        format!("`{shown}` is not a transaction id: one is 32 hex digits")
    })
}

/// Why a command failed: a line for the person, and the exit code.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
    /// The log's refusal, when that is what it is.
    refusal: Option<tcc::admin::RefusalKind>,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            refusal: None,
        }
    }
}

impl From<tcc::admin::Refusal> for Failure {
    fn from(refusal: tcc::admin::Refusal) -> Self {
        use tcc::admin::RefusalKind;
        let code = match refusal.kind {
            RefusalKind::BadRequest
            | RefusalKind::UnknownTransaction
            | RefusalKind::NotInRepair => exit::BAD_INPUT,
            _ => exit::UNREACHABLE,
        };
        Failure {
            refusal: Some(refusal.kind),
            ..Failure::new(code, refusal.message)
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return fail(&Failure::new(
                exit::UNREACHABLE,
                format!("cannot start: {error}"),
            ));
        }
    };
    let outcome = runtime.block_on(run(cli));
    // The log's writer (a PostgreSQL log's task) ends with the runtime.
    drop(runtime);
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => fail(&failure),
    }
}

/// Help and the version as clap prints them; a mistake in the arguments as
/// one line, as every other failure: clap's first paragraph, without its
/// usage (`--help` has it).
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        error.exit();
    }
    let text = error.render().to_string();
    let first: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect();
    let first = first.join(" ");
    let first = first.strip_prefix("error: ").unwrap_or(&first);
    fail(&Failure::new(
        exit::BAD_INPUT,
        format!("{first} (tcc --help says more)"),
    ))
}

/// Says why on one line of stderr, and exits with its code.
fn fail(failure: &Failure) -> ExitCode {
    let line = failure.message.replace('\n', " ");
    let _ = writeln!(std::io::stderr(), "tcc: {line}");
    ExitCode::from(failure.code)
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let source = Source::open(&cli.at).await?;
    let json = cli.json;
    let mut out = render::Out::new(json);
    match cli.command {
        Command::List {
            state,
            service,
            older_than,
            limit,
        } => {
            let mut filter = Filter::new().with_limit(limit);
            if let Some(state) = state {
                filter = filter.with_status(state.into());
            }
            if let Some(service) = &service {
                filter = filter.with_service(service);
            }
            if let Some(age) = older_than {
                filter = filter.with_older_than(age);
            }
            let transactions = source.list(&filter).await?;
            if service.is_some() && !json && matches!(state, None | Some(State::Done)) {
                out.note("finished transactions keep no participants: --service lists unfinished and needs-repair ones only");
            }
            out.transactions(&transactions);
        }
        Command::Show { id } => out.transaction(&source.show(id).await?),
        Command::Retry { id } => out.change(&source.retry(id).await?),
        Command::Resolve { id, note, by } => {
            let by = by.or_else(operator).unwrap_or_else(|| "unknown".to_owned());
            out.change(&source.resolve(id, Resolution::new(by, note)).await?);
        }
        Command::Stats => out.summary(&source.summary().await?),
        Command::Orphans {
            barrier,
            older_than,
        } => {
            let found = orphans::find(&source, &barrier, older_than).await?;
            out.orphans(&found, older_than);
            if !found.is_empty() {
                return Ok(exit::FOUND);
            }
        }
    }
    Ok(exit::OK)
}

/// Who runs the tool, for a resolution's author.
fn operator() -> Option<String> {
    ["USER", "LOGNAME", "USERNAME"]
        .into_iter()
        .find_map(|name| {
            std::env::var(name)
                .ok()
                .filter(|user| !user.trim().is_empty())
        })
}
