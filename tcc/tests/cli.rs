//! The `tcc` tool, driven as a user would: the binary run as a child process
//! against logs this test makes, its output and exit code read.
//!
//! 1. A log file no process holds: a stuck transaction is listed (table and
//!    `--json`), shown, counted, re-driven with `retry` (which runs no
//!    participant's code: the next coordinator to open the log finishes
//!    it), and another is resolved with who and why kept.
//! 2. Bad input gets one line on stderr and a non-zero exit: unknown and
//!    malformed ids, a missing file, a file a running coordinator holds
//!    (saying to use `--url`, and that not even reading is possible), a
//!    URL that does not connect, a transaction not in the state the
//!    command needs (left as it was).
//! 3. PostgreSQL, beside a running coordinator: the tool lists and shows
//!    what it holds, leaves a transaction a live lease holds alone, and
//!    `retry` hands the stuck one to that coordinator's recovery task,
//!    which finishes it; `orphans` on a PostgreSQL barrier table.
//! 4. Over HTTP, the admin router of `examples/http_handler.rs`: a booking
//!    that needs repair is listed, shown and re-driven, and the server
//!    finishes it.
//! 5. `orphans` on a SQLite barrier table: reservations held past the age
//!    whose transactions the log does not hold unfinished are found (exit
//!    1); none, exit 0.
//!
//! PostgreSQL runs on the throwaway cluster of `tests/barrier/cluster.rs`;
//! without its server binaries that test passes after one line on stderr,
//! unless `TCC_REQUIRE_POSTGRES=1`.

#[allow(dead_code)]
#[path = "../../tests/barrier/cluster.rs"]
mod cluster;

#[allow(dead_code)]
#[path = "../../examples/http_handler.rs"]
mod http_handler;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tcc::barrier::{Branch, sqlite as barrier};
use tcc::durable::PostgresLog;
use tcc::{BoxError, Phase, Recoverable, RetryPolicy, TransactionId, TransactionLog};
use tcc::{tcc, tcc_service};

/// Runs `tcc` with `args`, as a user would, with neither `TCC_LOG` nor
/// `TCC_URL` set.
fn tcc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tcc"))
        .args(args)
        .env_remove("TCC_LOG")
        .env_remove("TCC_URL")
        .env("USER", "tester")
        .output()
        .expect("run the tcc binary")
}

/// [`tcc`] from async code, off the runtime's threads (a server of the
/// test may be on them).
async fn tcc_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tcc(&args)
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A success, or a panic showing what the tool said.
fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "tcc failed ({:?}): {}{}",
        output.status.code(),
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// A failure with exit code `code` and one line on stderr, which it
/// returns.
fn refused(output: Output, code: i32) -> String {
    let text = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {text}",
        stdout(&output)
    );
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    assert!(
        text.starts_with("tcc: ") || text.starts_with("error: "),
        "{text}"
    );
    text
}

/// `--json` lines, parsed.
fn json_lines(output: &str) -> Vec<serde_json::Value> {
    output
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
        .collect()
}

/// Whether the desk's Confirm fails, and how many Confirms it saw succeed.
#[derive(Default)]
struct Switch {
    down: AtomicBool,
    confirmed: AtomicU32,
}

/// A participant whose Confirm fails while its switch is down, and whose
/// Try fails when asked to.
#[derive(Recoverable)]
#[recoverable(kind = "desk")]
struct Desk {
    #[recoverable(resource)]
    switch: Arc<Switch>,
    seat: u32,
    fail_try: bool,
}

#[tcc_service(name = "desk")]
impl Desk {
    #[try_phase]
    async fn hold(&self) -> Result<(), BoxError> {
        match self.fail_try {
            true => Err(format!("seat {} is taken", self.seat).into()),
            false => Ok(()),
        }
    }
    #[confirm]
    async fn book(&self) -> Result<(), BoxError> {
        if self.switch.down.load(Ordering::SeqCst) {
            return Err("the desk is down".into());
        }
        self.switch.confirmed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    #[cancel]
    async fn release(&self) -> Result<(), BoxError> {
        Ok(())
    }
}

/// A participant that never fails.
#[derive(Recoverable)]
#[recoverable(kind = "lamp")]
struct Lamp {
    watts: u32,
}

#[tcc_service(name = "lamp")]
impl Lamp {
    #[try_phase]
    async fn hold(&self) -> Result<(), BoxError> {
        let _ = self.watts;
        Ok(())
    }
    #[confirm]
    async fn book(&self) -> Result<(), BoxError> {
        Ok(())
    }
    #[cancel]
    async fn release(&self) -> Result<(), BoxError> {
        Ok(())
    }
}

/// `log` wired as a coordinator of desks and lamps.
fn wire(log: &TransactionLog, switch: &Arc<Switch>) {
    log.provide(switch.clone())
        .and_then(|log| log.register::<Desk>())
        .and_then(|log| log.register::<Lamp>())
        .expect("one resource, two kinds");
    log.retry(RetryPolicy::immediate(2));
}

/// Runs one transaction of a desk and a lamp on `log`; its id.
async fn book(log: &TransactionLog, switch: &Arc<Switch>, fail_try: bool) -> TransactionId {
    let outcome = tcc! {
        log = log;
        retry = RetryPolicy::immediate(2);
        Desk { switch: switch.clone(), seat: 7, fail_try },
        Lamp { watts: 40 },
    }
    .await;
    match outcome {
        Ok(report) => report.transaction_id(),
        Err(error) => error.report().expect("it ran").transaction_id(),
    }
}

/// A transaction that needs repair: the desk's Confirm fails.
async fn stuck(log: &TransactionLog, switch: &Arc<Switch>) -> TransactionId {
    switch.down.store(true, Ordering::SeqCst);
    let id = book(log, switch, false).await;
    switch.down.store(false, Ordering::SeqCst);
    id
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A log file, made by a coordinator that has stopped, holding one
/// transaction that needs repair, one confirmed, one cancelled: their ids.
fn log_file(path: &Path, switch: &Arc<Switch>) -> [TransactionId; 3] {
    runtime().block_on(async {
        let log = TransactionLog::create(path).unwrap();
        wire(&log, switch);
        let confirmed = book(&log, switch, false).await;
        let cancelled = book(&log, switch, true).await;
        let stuck = stuck(&log, switch).await;
        [stuck, confirmed, cancelled]
    })
}

#[test]
fn a_stuck_transaction_in_a_log_file_is_listed_shown_and_retried_by_the_next_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let file = path.to_str().unwrap();
    let switch = Arc::new(Switch::default());
    let [stuck, confirmed, cancelled] = log_file(&path, &switch);
    let (stuck, confirmed, cancelled) = (
        stuck.to_string(),
        confirmed.to_string(),
        cancelled.to_string(),
    );

    // The table: the stuck one first, then the finished, newest first.
    let table = ok(tcc(&["--log", file, "list"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    for header in ["ID", "STATE", "AGE", "SERVICES", "ATTEMPTS", "LAST ERROR"] {
        assert!(lines[0].contains(header), "{table}");
    }
    assert!(lines[1].starts_with(&stuck), "{table}");
    for cell in [
        "needs repair (confirm)",
        "s ago",
        "desk,lamp",
        " 3 ",
        "desk: the desk is down",
    ] {
        assert!(lines[1].contains(cell), "{cell:?} in {table}");
    }
    assert!(lines[2].starts_with(&cancelled), "{table}");
    assert!(lines[2].contains("done (cancel)"), "{table}");
    assert!(lines[3].starts_with(&confirmed), "{table}");
    // Aligned: the second column starts at the same place on every line.
    let second = |line: &str| {
        let gap = line.find("  ").unwrap();
        gap + line[gap..].find(|c: char| c != ' ').unwrap()
    };
    assert!(lines.iter().all(|line| second(line) == 34), "{table}");

    // --json: one object a line, times as RFC 3339.
    let listed = json_lines(&ok(tcc(&["--log", file, "list", "--json"])));
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0]["id"], stuck.as_str());
    assert_eq!(listed[0]["status"], "needs_repair");
    assert_eq!(listed[0]["decision"], "confirm");
    let started = listed[0]["started_at"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(started).is_ok(), "{started}");
    let desk = &listed[0]["participants"][0];
    assert_eq!(desk["name"], "desk");
    assert_eq!(desk["confirm"]["attempts"], 3);
    assert_eq!(desk["confirm"]["last_error"], "the desk is down");
    assert_eq!(desk["data"], r#"{"fail_try":false,"seat":7}"#);

    // The filters.
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--log", file, "list", "--json"];
        all.extend_from_slice(args);
        json_lines(&ok(tcc(&all)))
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&["--state", "needs-repair"]), [stuck.as_str()]);
    assert_eq!(
        ids(&["--state", "done"]),
        [cancelled.clone(), confirmed.clone()]
    );
    assert!(ids(&["--state", "unfinished"]).is_empty());
    assert_eq!(ids(&["--service", "lamp"]), [stuck.as_str()]);
    assert!(ids(&["--service", "sofa"]).is_empty());
    assert!(ids(&["--older-than", "1h"]).is_empty());
    assert_eq!(ids(&["--limit", "2"]).len(), 2);

    // show: participants, each phase, the decision and the timeline.
    let shown = ok(tcc(&["--log", file, "show", &stuck]));
    for text in [
        &format!("transaction {stuck}")[..],
        "needs repair (confirm)",
        "started",
        "decided",
        "gave up",
        "SERVICE",
        "desk",
        "failed (3 attempts): the desk is down",
        "lamp",
        "ok (1 attempt)",
        &format!("tcc retry {stuck}"),
    ] {
        assert!(shown.contains(text), "{text:?} in {shown}");
    }
    let shown = json_lines(&ok(tcc(&["--log", file, "show", &stuck, "--json"])));
    assert_eq!(shown, listed[..1]);
    let done = ok(tcc(&["--log", file, "show", &confirmed]));
    assert!(done.contains("done (confirm)"), "{done}");
    assert!(done.contains("finished"), "{done}");

    // stats.
    let stats = ok(tcc(&["--log", file, "stats"]));
    for text in [
        "needs repair         1",
        "done                 2",
        &format!("oldest needs repair  {stuck}")[..],
        "KiB",
    ] {
        assert!(stats.contains(text), "{text:?} in {stats}");
    }
    let stats = json_lines(&ok(tcc(&["--log", file, "stats", "--json"])));
    assert_eq!(stats[0]["needs_repair"], 1);
    assert_eq!(stats[0]["done"], 2);
    assert_eq!(stats[0]["bytes"], std::fs::metadata(&path).unwrap().len());

    // retry: marked for the next recovery pass, no participant ran.
    let confirmed_before = switch.confirmed.load(Ordering::SeqCst);
    let said = ok(tcc(&["--log", file, "retry", &stuck]));
    assert!(said.contains("marked for retry"), "{said}");
    assert!(said.contains("next recovery pass"), "{said}");
    assert!(said.contains("now: decided (confirm)"), "{said}");
    assert_eq!(switch.confirmed.load(Ordering::SeqCst), confirmed_before);
    let again = refused(tcc(&["--log", file, "retry", &stuck]), 2);
    assert!(again.contains("not in need of repair"), "{again}");

    // The next coordinator to open the log finishes it.
    runtime().block_on(async {
        let log = TransactionLog::open(&path).unwrap();
        wire(&log, &switch);
        let summary = log.recover().await.unwrap();
        assert_eq!(summary.finished, 1, "{summary:?}");
    });
    assert_eq!(
        switch.confirmed.load(Ordering::SeqCst),
        confirmed_before + 1
    );
    let shown = json_lines(&ok(tcc(&["--log", file, "show", &stuck, "--json"])));
    assert_eq!(shown[0]["status"], "done");
    assert_eq!(shown[0]["decision"], "confirm");
}

#[test]
fn resolve_keeps_who_and_why_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let file = path.to_str().unwrap();
    let switch = Arc::new(Switch::default());
    let [stuck, ..] = log_file(&path, &switch);
    let stuck = stuck.to_string();

    let empty = refused(tcc(&["--log", file, "resolve", &stuck, "--note", " "]), 2);
    assert!(empty.contains("needs a note"), "{empty}");
    let missing = tcc(&["--log", file, "resolve", &stuck]);
    assert_eq!(missing.status.code(), Some(2), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("--note"), "{}", stderr(&missing));

    let said = ok(tcc(&[
        "--log",
        file,
        "resolve",
        &stuck,
        "--note",
        "booked the desk by phone",
        "--by",
        "ada",
    ]));
    assert!(said.contains("resolved by hand"), "{said}");
    let shown = ok(tcc(&["--log", file, "show", &stuck]));
    assert!(
        shown.contains("done (confirm), resolved by hand"),
        "{shown}"
    );
    assert!(
        shown.contains("by ada: booked the desk by phone"),
        "{shown}"
    );
    let shown = json_lines(&ok(tcc(&["--log", file, "show", &stuck, "--json"])));
    assert_eq!(shown[0]["resolution"]["by"], "ada");
    assert_eq!(shown[0]["resolution"]["note"], "booked the desk by phone");
    let again = refused(
        tcc(&["--log", file, "resolve", &stuck, "--note", "again"]),
        2,
    );
    assert!(again.contains("done (confirm)"), "{again}");

    // Without --by: the user running it.
    let [other, ..] = log_file(&dir.path().join("other.redb"), &switch);
    let other_file = dir.path().join("other.redb");
    let other_file = other_file.to_str().unwrap();
    let other = other.to_string();
    ok(tcc(&[
        "--log", other_file, "resolve", &other, "--note", "seen to",
    ]));
    let shown = json_lines(&ok(tcc(&["--log", other_file, "show", &other, "--json"])));
    assert_eq!(shown[0]["resolution"]["by"], "tester");
}

#[test]
fn bad_input_gets_one_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let file = path.to_str().unwrap();
    let switch = Arc::new(Switch::default());
    log_file(&path, &switch);

    // An id the log does not know, and one that is not an id.
    let unknown = TransactionId::generate().to_string();
    for verb in ["show", "retry"] {
        let said = refused(tcc(&["--log", file, verb, &unknown]), 2);
        assert!(said.contains("not in the log"), "{said}");
    }
    let said = refused(tcc(&["--log", file, "show", "not-an-id"]), 2);
    assert!(said.contains("not a transaction id"), "{said}");

    // No log said, a missing one, a URL given as a file.
    let said = refused(tcc(&["list"]), 2);
    assert!(said.contains("--log") && said.contains("--url"), "{said}");
    let missing = dir.path().join("nowhere.redb");
    let said = refused(tcc(&["--log", missing.to_str().unwrap(), "list"]), 3);
    assert!(said.contains("no log at"), "{said}");
    let said = refused(tcc(&["--log", "http://127.0.0.1:1/tcc", "list"]), 2);
    assert!(said.contains("--url http://127.0.0.1:1/tcc"), "{said}");
    let said = refused(tcc(&["--url", "https://example.invalid/tcc", "list"]), 2);
    assert!(said.contains("https is not supported"), "{said}");
    let said = refused(tcc(&["list", "--older-than", "ten minutes"]), 2);
    assert!(said.contains("not an age"), "{said}");

    // A URL that does not connect: a port nothing listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/tcc");
    let said = refused(tcc(&["--url", &url, "stats"]), 3);
    assert!(said.contains("cannot reach"), "{said}");
    let said = refused(
        tcc(&[
            "--log",
            "postgres://tcc@127.0.0.1:1/none?connect_timeout=2",
            "stats",
        ]),
        3,
    );
    assert!(said.contains("cannot open the log"), "{said}");

    // A file a running coordinator holds: say so, and the way in.
    let running = runtime().block_on(async { TransactionLog::open(&path).unwrap() });
    let said = refused(tcc(&["--log", file, "list"]), 3);
    assert!(said.contains("held by a running coordinator"), "{said}");
    assert!(said.contains("not even read-only"), "{said}");
    assert!(said.contains("--url http://HOST:PORT/tcc"), "{said}");
    drop(running);

    // A transaction a coordinator runs: neither retried nor resolved, and
    // left as it was.
    let rt = runtime();
    let (log, id) = rt.block_on(async {
        let log = TransactionLog::open(&path).unwrap();
        wire(&log, &switch);
        let lease = log
            .store()
            .begin(&tcc::durable::Intent {
                id: TransactionId::generate(),
                participants: Vec::new(),
            })
            .await
            .unwrap();
        (log, lease.id)
    });
    drop(log);
    let id = id.to_string();
    for args in [&["retry", &id][..], &["resolve", &id, "--note", "no"][..]] {
        let mut all = vec!["--log", file];
        all.extend_from_slice(args);
        let said = refused(tcc(&all), 2);
        assert!(said.contains("undecided, not in need of repair"), "{said}");
    }
    let shown = json_lines(&ok(tcc(&["--log", file, "show", &id, "--json"])));
    assert_eq!(shown[0]["status"], "undecided");

    // Its output read by a reader that went away (`tcc list | head -1`):
    // it stops, and does not panic.
    for args in [&["list"][..], &["list", "--json"], &["stats"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tcc"))
            .args(["--log", file])
            .args(args)
            .env_remove("TCC_LOG")
            .env_remove("TCC_URL")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert_eq!(stderr(&output), "", "{args:?}");
    }
}

#[test]
fn orphans_on_sqlite_are_found_past_the_age_and_exit_1_and_none_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let file = path.to_str().unwrap();
    let switch = Arc::new(Switch::default());
    let [stuck, confirmed, cancelled] = log_file(&path, &switch);
    let unknown = TransactionId::generate();
    let young = TransactionId::generate();

    // The participant's database: its barrier rows, `tried`, an hour ago
    // bar the young one; the confirmed one's row finished.
    let barrier_path = dir.path().join("desk.sqlite");
    let conn = rusqlite::Connection::open(&barrier_path).unwrap();
    barrier::migrate(&conn).unwrap();
    let mut conn = conn;
    for id in [stuck, confirmed, cancelled, unknown] {
        let branch = Branch::new(id, "desk", Phase::Try);
        barrier::run_branch(&mut conn, &branch, |_| {
            Ok::<_, tcc::barrier::BarrierError>(())
        })
        .unwrap();
    }
    let confirm = Branch::new(confirmed, "desk", Phase::Confirm);
    barrier::run_branch(&mut conn, &confirm, |_| {
        Ok::<_, tcc::barrier::BarrierError>(())
    })
    .unwrap();
    conn.execute(
        "UPDATE tcc_barrier SET updated_at = updated_at - 3600000",
        [],
    )
    .unwrap();
    let branch = Branch::new(young, "desk", Phase::Try);
    barrier::run_branch(&mut conn, &branch, |_| {
        Ok::<_, tcc::barrier::BarrierError>(())
    })
    .unwrap();
    let sqlite = format!("sqlite:{}", barrier_path.display());

    // The cancelled one (its Cancel never reached this database) and the
    // one the log never heard of; not the stuck one (the log holds it),
    // the finished row, or the young one.
    let found = tcc(&["--log", file, "orphans", "--barrier", &sqlite]);
    assert_eq!(found.status.code(), Some(1), "{}", stderr(&found));
    let table = stdout(&found);
    for text in [
        &cancelled.to_string()[..],
        "done (cancel)",
        "release it by hand",
        &unknown.to_string(),
        "not in the log",
        "1h ago",
        "2 reservation(s) held longer than 10m",
    ] {
        assert!(table.contains(text), "{text:?} in {table}");
    }
    for id in [stuck, confirmed, young] {
        assert!(!table.contains(&id.to_string()), "{id} in {table}");
    }
    let found = tcc(&["--log", file, "orphans", "--barrier", &sqlite, "--json"]);
    assert_eq!(found.status.code(), Some(1));
    let found = json_lines(&stdout(&found));
    let ids: Vec<_> = found
        .iter()
        .map(|o| o["transaction_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&cancelled.to_string().as_str()));
    assert!(ids.contains(&unknown.to_string().as_str()));
    assert!(
        found
            .iter()
            .all(|o| o["age_seconds"].as_u64().unwrap() >= 3600)
    );

    // Past two hours: none, exit 0.
    let none = ok(tcc(&[
        "--log",
        file,
        "orphans",
        "--barrier",
        &sqlite,
        "--older-than",
        "2h",
    ]));
    assert!(none.contains("no reservation older than 2h"), "{none}");

    // A barrier given wrong, or missing.
    let said = refused(
        tcc(&["--log", file, "orphans", "--barrier", "desk.sqlite"]),
        2,
    );
    assert!(said.contains("sqlite:PATH"), "{said}");
    let missing = format!("sqlite:{}", dir.path().join("none.sqlite").display());
    let said = refused(tcc(&["--log", file, "orphans", "--barrier", &missing]), 3);
    assert!(said.contains("no such file"), "{said}");
}

/// Waits, boundedly, until `transaction`'s `--json` status is `status`.
async fn wait_for_status(log: &[&str], id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut args = log.to_vec();
        args.extend_from_slice(&["show", id, "--json"]);
        let shown = json_lines(&ok(tcc_async(&args).await));
        if shown[0]["status"] == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {} after 30 s",
            shown[0]["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_the_web_examples_admin_router_serves_the_tool() {
    let state = http_handler::AppState::new(4, 3);
    let server = http_handler::serve(state.clone()).await.unwrap();
    let booking = http_handler::BookingRequest {
        reference: "dee".into(),
        seats: 1,
        rooms: 1,
        simulate: Some(http_handler::Simulate::HotelConfirmDown),
    };
    let asked = Instant::now();
    let (status, reply) = http_handler::post_booking(server, &booking).await.unwrap();
    assert_eq!(status.as_u16(), 500, "{reply:?}");
    let id = reply.transaction_id.unwrap();
    let url = format!("http://{server}/tcc");
    let remote = ["--url", url.as_str()];

    let table = ok(tcc_async(&["--url", &url, "list"]).await);
    let line = table.lines().nth(1).unwrap_or_default();
    assert!(line.starts_with(&id), "{table}");
    assert!(line.contains("needs repair (confirm)"), "{table}");
    assert!(line.contains("flight,hotel"), "{table}");
    assert!(line.contains("hotel is unavailable"), "{table}");
    let shown = ok(tcc_async(&["--url", &url, "show", &id]).await);
    assert!(
        shown.contains("failed (4 attempts): hotel is unavailable"),
        "{shown}"
    );
    assert!(
        shown.contains(r#"{"reference":"dee","slow":false,"units":1}"#),
        "{shown}"
    );
    let stats = json_lines(&ok(tcc_async(&["--url", &url, "stats", "--json"]).await));
    assert_eq!(stats[0]["needs_repair"], 1);

    // The server holds its log's file: the tool says to come this way.
    let log = state.log_path();
    let said = refused(
        tcc_async(&["--log", log.to_str().unwrap(), "list"]).await,
        3,
    );
    assert!(said.contains("--url"), "{said}");
    // A router mounted elsewhere, and a refusal carried over HTTP.
    let said = refused(
        tcc_async(&["--url", &format!("http://{server}/admin"), "stats"]).await,
        3,
    );
    assert!(said.contains("not with the admin router's JSON"), "{said}");
    let unknown = TransactionId::generate().to_string();
    let said = refused(tcc_async(&["--url", &url, "show", &unknown]).await, 2);
    assert!(said.contains("not in the log"), "{said}");

    // Once the outage is over: re-driven by the server's recovery task.
    tokio::time::sleep((asked + http_handler::OUTAGE).saturating_duration_since(Instant::now()))
        .await;
    let said = ok(tcc_async(&["--url", &url, "retry", &id]).await);
    assert!(said.contains("marked for retry"), "{said}");
    wait_for_status(&remote, &id, "done").await;
    let booked = state
        .hotel
        .stock()
        .booked
        .values()
        .any(|h| h.reference == "dee");
    assert!(booked, "dee's room is booked");
    assert!(state.hotel.stock().held.is_empty());
}

/// The desks' barrier table in the log's schema, with one `tried` row an
/// hour old for a transaction the log never heard of: its id.
async fn orphan_on_postgres(client: &tokio_postgres::Client) -> TransactionId {
    tcc::barrier::postgres::migrate(client).await.unwrap();
    let id = TransactionId::generate();
    client
        .execute(
            "INSERT INTO tcc_barrier (transaction_id, service, state, updated_at)
             VALUES ($1, 'desk', 'tried', now() - interval '1 hour')",
            &[&id.to_string()],
        )
        .await
        .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_beside_a_running_coordinator_retry_hands_it_to_that_coordinator() {
    let Some(cluster) = cluster::Cluster::get() else {
        return;
    };
    let schema = "tcc_cli";
    let client = cluster.connect(schema).await;
    let url = cluster.url(schema);
    let store = PostgresLog::options()
        .migrate(true)
        .lease_ttl(Duration::from_secs(30))
        .connect(&url)
        .await
        .unwrap();
    let coordinator = TransactionLog::new(store);
    let switch = Arc::new(Switch::default());
    wire(&coordinator, &switch);
    let recovery = coordinator.spawn_recovery(Duration::from_millis(200));
    let stuck = stuck(&coordinator, &switch).await.to_string();
    // One held by the coordinator's live lease: begun, not decided.
    let running = coordinator
        .store()
        .begin(&tcc::durable::Intent {
            id: TransactionId::generate(),
            participants: Vec::new(),
        })
        .await
        .unwrap();
    let running = running.id.to_string();
    let log = ["--log", url.as_str()];

    let listed = json_lines(&ok(tcc_async(&["--log", &url, "list", "--json"]).await));
    let statuses: Vec<_> = listed
        .iter()
        .map(|t| (t["id"].as_str().unwrap(), t["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            (stuck.as_str(), "needs_repair"),
            (running.as_str(), "undecided")
        ]
    );
    let shown = ok(tcc_async(&["--log", &url, "show", &stuck]).await);
    assert!(
        shown.contains("failed (3 attempts): the desk is down"),
        "{shown}"
    );
    let stats = json_lines(&ok(tcc_async(&["--log", &url, "stats", "--json"]).await));
    assert_eq!(
        (
            stats[0]["needs_repair"].as_u64(),
            stats[0]["undecided"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert!(stats[0]["bytes"].as_u64().unwrap() > 0);

    // The live one is left alone.
    let said = refused(tcc_async(&["--log", &url, "retry", &running]).await, 2);
    assert!(said.contains("not in need of repair"), "{said}");

    // The stuck one: handed to the coordinator's recovery task, which
    // confirms it; the tool ran no participant.
    let said = ok(tcc_async(&["--log", &url, "retry", &stuck]).await);
    assert!(said.contains("marked for retry"), "{said}");
    wait_for_status(&log, &stuck, "done").await;
    assert_eq!(switch.confirmed.load(Ordering::SeqCst), 1);
    let shown = json_lines(&ok(
        tcc_async(&["--log", &url, "show", &running, "--json"]).await
    ));
    assert_eq!(shown[0]["status"], "undecided", "still the coordinator's");

    // orphans on the PostgreSQL barrier table.
    let orphan = orphan_on_postgres(&client).await;
    let found = tcc_async(&["--log", &url, "orphans", "--barrier", &url, "--json"]).await;
    assert_eq!(found.status.code(), Some(1), "{}", stderr(&found));
    let found = json_lines(&stdout(&found));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["transaction_id"], orphan.to_string());
    assert_eq!(found[0]["log"], "not in the log");
    recovery.abort();
}
