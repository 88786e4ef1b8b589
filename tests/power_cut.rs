//! Power cuts under load: acknowledged outcomes survive them.
//!
//! A child process runs 512 concurrent durable transactions on a
//! [`TransactionLog`] in a disk that loses power ([`power::Disk`]): two
//! recoverable participants a transaction, each phase pausing 0-2 ms, one
//! transaction in five refused by a Try. It prints each id before the call
//! (`b ID`) and its outcome after (`c ID` confirmed, `x ID` cancelled after
//! a failed Try, `e ID KIND` any other error). After 2-5 s the power is cut
//! under it, it is killed, and the disk mounted again; the next child
//! loads the log again, taking what the last one left in turn: recovered
//! before the load, left alone (so unfinished records pile up under the new
//! load), or recovered by `spawn_recovery` during it. After the last
//! cut this test opens the log itself, recovers, and reads every id:
//!
//! 1. every `c ID` is `Done(Confirm)`, every `x ID` is `Done(Cancel)`:
//!    what was acknowledged is what the log keeps (retention is above the
//!    number of transactions, so none is pruned);
//! 2. every other id begun is `Done` either way, or unknown (its intent
//!    never reached the disk): nothing is left unfinished;
//! 3. the log opens after every cut.
//!
//! Cuts: 20 by default, `TCC_POWER_CUTS=N` for more. Root and a loop device
//! are needed; without them the test prints one line and passes, unless
//! `TCC_REQUIRE_POWER_CUT` is set (`.ci/run` sets it).
//!
//! It is a plain `main` (`harness = false`): the same binary, given
//! `child DIR RECOVERY`, is the child.

#[path = "common/power.rs"]
mod power;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tcc::durable::{Decision, RedbLog, Status};
use tcc::{
    BoxError, Orchestrator, Recoverable, Service, TccService, TransactionId, TransactionLog,
};

/// Above any number of transactions a test makes: no outcome is pruned.
const RETENTION: u64 = 10_000_000;
/// Concurrent callers in the child.
const CALLERS: usize = 512;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        // What `cargo test -- --list` asks of every test binary.
        println!("power_cut: test");
        return ExitCode::SUCCESS;
    }
    if let [command, dir, recovery] = &args[..]
        && command == "child"
    {
        child(Path::new(dir), recovery);
        return ExitCode::SUCCESS;
    }
    // A name filter given to `cargo test` that is not this test's.
    let filter = args.iter().find(|a| !a.starts_with('-'));
    if filter.is_some_and(|f| !"power_cut".contains(f.as_str())) {
        return ExitCode::SUCCESS;
    }
    acknowledged_outcomes_survive_power_cuts();
    ExitCode::SUCCESS
}

/// One participant of a probe transaction.
#[derive(Recoverable)]
#[recoverable(kind = "probe")]
struct Step {
    name: String,
    refuse_try: bool,
    pause_us: u64,
}

impl Step {
    async fn pause(&self) {
        tokio::time::sleep(Duration::from_micros(self.pause_us)).await;
    }
}

impl TccService for Step {
    fn service_name(&self) -> &str {
        &self.name
    }
    async fn try_phase(&self) -> Result<(), BoxError> {
        self.pause().await;
        if self.refuse_try {
            return Err("refused".into());
        }
        Ok(())
    }
    async fn confirm(&self) -> Result<(), BoxError> {
        self.pause().await;
        Ok(())
    }
    async fn cancel(&self) -> Result<(), BoxError> {
        self.pause().await;
        Ok(())
    }
}

fn open_log(path: &Path) -> TransactionLog {
    let store = RedbLog::options()
        .retention(RETENTION)
        .open(path)
        .unwrap_or_else(|e| panic!("the log opens after a power cut: {e}"));
    let log = TransactionLog::new(store);
    log.register::<Step>().expect("one kind, registered once");
    log
}

/// How a child takes what the last one left.
const RECOVERY: [&str; 3] = ["before", "none", "during"];

/// The child: takes what the last one left as `recovery` says (one of
/// [`RECOVERY`]), and loads the log until it is killed.
fn child(dir: &Path, recovery: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let log = open_log(&dir.join("tcc.redb"));
        match recovery {
            "before" => {
                let summary = log.recover().await.expect("recovery after a power cut");
                assert!(summary.left.is_empty(), "left: {:?}", summary.left);
            }
            "during" => drop(log.spawn_recovery(Duration::from_millis(500))),
            _ => {}
        }
        println!("ready");
        let mut callers = tokio::task::JoinSet::new();
        for caller in 0..CALLERS {
            let log = log.clone();
            callers.spawn(async move {
                let seed = u64::from(std::process::id()) << 32 | u64::try_from(caller).unwrap();
                let mut random = Random(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
                loop {
                    let id = TransactionId::generate();
                    let refused = random.below(5) == 0;
                    let steps = ["a", "b"].map(|name| {
                        Service::recoverable(Step {
                            name: name.to_owned(),
                            refuse_try: refused && name == "b",
                            pause_us: random.below(2000),
                        })
                    });
                    let orchestrator = Orchestrator::new(steps).log(&log);
                    println!("b {id}");
                    match orchestrator.orchestrate_as(id).await {
                        Ok(_) => println!("c {id}"),
                        Err(e) if e.kind() == tcc::ErrorKind::TryFailed => println!("x {id}"),
                        Err(e) => println!("e {id} {:?}", e.kind()),
                    }
                }
            });
        }
        // The callers loop until the child is killed: one ends only by
        // panicking, which ends the child with its message.
        if let Some(Err(ended)) = callers.join_next().await {
            std::panic::resume_unwind(ended.into_panic());
        }
    });
}

/// What the children printed of one id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Seen {
    Begun,
    Confirmed,
    Cancelled,
    Failed,
}

fn acknowledged_outcomes_survive_power_cuts() {
    let Some(mut disk) = power::Disk::new() else {
        return;
    };
    // Made once; each child opens it, and refuses to start over a lost one.
    drop(
        RedbLog::options()
            .retention(RETENTION)
            .create(disk.path().join("tcc.redb"))
            .expect("the log is created"),
    );
    let cuts = power::cuts(20);
    let mut seen: HashMap<TransactionId, Seen> = HashMap::new();
    let mut random = Random(std::process::id().into());
    let started = Instant::now();
    for cut in 0..cuts {
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .arg("child")
            .arg(disk.path())
            .arg(RECOVERY[cut % RECOVERY.len()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the child starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ready, ready_rx) = std::sync::mpsc::channel();
        let reader = {
            let lines = lines.clone();
            let stdout = BufReader::new(child.stdout.take().expect("piped"));
            thread::spawn(move || {
                for line in stdout.lines() {
                    let Ok(line) = line else { return };
                    if line == "ready" {
                        let _ = ready.send(());
                    } else {
                        lines.lock().unwrap().push(line);
                    }
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(300))
            .unwrap_or_else(|_| panic!("cut {cut}: the child never got ready"));
        thread::sleep(Duration::from_millis(2000 + random.below(3000)));
        disk.cut(child.id());
        child.kill().expect("SIGKILL");
        child.wait().expect("the child is reaped");
        reader.join().expect("the reader ends with the child");
        disk.remount();
        for line in lines.lock().unwrap().drain(..) {
            // A line cut short by the kill lacks its id, or part of it.
            let mut words = line.split(' ');
            let (Some(what), Some(id)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(id) = id.parse() else { continue };
            let entry = seen.entry(id).or_insert(Seen::Begun);
            *entry = match what {
                "c" => Seen::Confirmed,
                "x" => Seen::Cancelled,
                "e" => Seen::Failed,
                _ => *entry,
            };
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut wrong = Vec::new();
    let mut count: HashMap<Seen, usize> = HashMap::new();
    runtime.block_on(async {
        let log = open_log(&disk.path().join("tcc.redb"));
        let summary = log.recover().await.expect("the last recovery");
        assert!(summary.left.is_empty(), "left: {:?}", summary.left);
        for (&id, &what) in &seen {
            *count.entry(what).or_default() += 1;
            let status = log.status(id).await.expect("a lookup").map(|r| r.status);
            let right = match what {
                Seen::Confirmed => status == Some(Status::Done(Decision::Confirm)),
                Seen::Cancelled => status == Some(Status::Done(Decision::Cancel)),
                Seen::Begun | Seen::Failed => matches!(status, None | Some(Status::Done(_))),
            };
            if !right {
                wrong.push((id, what, status));
            }
        }
    });
    eprintln!(
        "power_cut: {cuts} cuts in {:.0?}: {} confirmed, {} cancelled, {} in doubt, {} failed otherwise; {} contradicted",
        started.elapsed(),
        count.get(&Seen::Confirmed).unwrap_or(&0),
        count.get(&Seen::Cancelled).unwrap_or(&0),
        count.get(&Seen::Begun).unwrap_or(&0),
        count.get(&Seen::Failed).unwrap_or(&0),
        wrong.len(),
    );
    assert!(
        wrong.is_empty(),
        "{} outcomes contradicted after {cuts} power cuts, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    assert!(
        count.get(&Seen::Confirmed).is_some_and(|&n| n > 0),
        "no transaction was confirmed: the load did not run"
    );
}

/// Xorshift: enough for pauses and refusals.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
