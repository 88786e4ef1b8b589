//! The durable log's floors, with real fsync, on the disk of the target
//! directory: what the store alone costs, for the engine's durable figures to
//! be compared with, in the same run.
//!
//! ```sh
//! cargo bench --bench durable            # the four floors
//! cargo bench --bench durable -- size    # the file's size over 1,000,000 transactions
//! cargo bench --bench durable -- notes   # a note's cost against the participants
//! ```
//!
//! 1. 64 concurrent callers, each looping over one transaction's writes:
//!    begin (2 participants, ~200 bytes), decide, 2 notes, finish(Done).
//! 2. One caller: median latency of begin + decide (two durable commits in a
//!    row), and of the whole sequence.
//!    2b. Bare redb: two durable commits of one insert each, median.
//! 3. A bare `fdatasync` of a 200-byte append, median: the disk's own floor.
//!    (2), (2b) and (3) run in alternating slices, as a shared disk's speed
//!    drifts.
//! 4. Recovery: claim and finish 100,000 unfinished transactions, in a log
//!    opened afresh.
//!
//! And the engine over the same store, in the same run, for the targets of
//! the durable-transactions issue:
//!
//! 5. 64 concurrent callers, each looping over durable `tcc!` transactions
//!    of two no-op recoverable services, alternating with (1): against (1).
//! 6. One caller: median latency of one durable `tcc!` transaction, in the
//!    same slices as (2): against (2), two durable commits in a row.
//! 7. `TransactionLog::recover` of 100,000 unfinished transactions (half
//!    decided), each rebuilt and finished through the engine: against (4).
//!
//! 8. (`-- notes`) One transaction of N participants (10 to 10,000), one
//!    note each: the mean time a note takes, which must not grow with N.
//!
//! `cargo test --benches` (CI) passes no `--bench`: a tiny run of each, in
//! seconds, that only proves the bench works.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tcc::durable::{Decision, End, Intent, Lease, Log, ParticipantEntry, PhaseProgress, RedbLog};
use tcc::{Phase, TransactionId, TransactionLog, tcc};
use tokio::task::JoinSet;

use common::RecoverableNoop;

/// Sizes of one run: the real one, or CI's proof that the bench works.
struct Sizes {
    concurrent_for: Duration,
    latency_runs: usize,
    fsyncs: usize,
    recovery: usize,
    size_transactions: u64,
}

const FULL: Sizes = Sizes {
    concurrent_for: Duration::from_secs(6),
    latency_runs: 2_000,
    fsyncs: 2_000,
    recovery: 100_000,
    size_transactions: 1_000_000,
};

const TINY: Sizes = Sizes {
    concurrent_for: Duration::from_millis(200),
    latency_runs: 20,
    fsyncs: 20,
    recovery: 256,
    size_transactions: 640,
};

const CALLERS: usize = 64;

/// Two participants with serde data, as a transfer has: ~200 bytes as
/// the log writes it.
fn intent() -> Intent {
    let participant = |name: &str, account: &str| ParticipantEntry {
        name: name.into(),
        kind: "account".into(),
        data: format!(r#"{{"account":"{account}","amount":125,"currency":"EUR"}}"#).into_bytes(),
    };
    Intent {
        id: TransactionId::generate(),
        participants: vec![participant("payer", "alice"), participant("payee", "bob")],
    }
}

/// (5, 6) one durable transaction of two no-op services.
async fn durable_transaction(log: &TransactionLog) -> Duration {
    let start = Instant::now();
    tcc! {
        log = log;
        RecoverableNoop { name: "payer".into() },
        RecoverableNoop { name: "payee".into() },
    }
    .await
    .unwrap();
    start.elapsed()
}

/// (7) writes `count` unfinished transactions of two no-op services (half
/// decided), reopens the file, and recovers them all through the engine.
async fn engine_recovery(dir: &Path, count: usize) -> f64 {
    let path = dir.join("engine-recovery.redb");
    {
        let log = Arc::new(RedbLog::create(&path).unwrap());
        let mut writers = JoinSet::new();
        for caller in 0..CALLERS {
            let log = log.clone();
            writers.spawn(async move {
                for i in (caller..count).step_by(CALLERS) {
                    let participant = |name: &str| ParticipantEntry {
                        name: name.into(),
                        kind: "noop".into(),
                        data: format!(r#"{{"name":"{name}"}}"#).into_bytes(),
                    };
                    let intent = Intent {
                        id: TransactionId::generate(),
                        participants: vec![participant("payer"), participant("payee")],
                    };
                    let lease = log.begin(&intent).await.unwrap();
                    if i % 2 == 0 {
                        log.decide(&lease, Decision::Confirm).await.unwrap();
                    }
                }
            });
        }
        join(writers).await;
    }
    let log = TransactionLog::open(&path).unwrap();
    log.register::<RecoverableNoop>().unwrap();
    let start = Instant::now();
    let summary = log.recover().await.unwrap();
    assert_eq!(summary.finished, count);
    assert_eq!(log.unfinished_count().await.unwrap(), 0);
    count as f64 / start.elapsed().as_secs_f64()
}

fn done() -> PhaseProgress {
    PhaseProgress {
        attempts: 1,
        succeeded: true,
        last_error: None,
    }
}

/// One transaction's writes, as the engine makes them; the time to the
/// decision, and to the end.
async fn transaction(log: &RedbLog) -> (Duration, Duration) {
    let start = Instant::now();
    let intent = intent();
    let lease = log.begin(&intent).await.unwrap();
    log.decide(&lease, Decision::Confirm).await.unwrap();
    let decided = start.elapsed();
    log.note(&lease, 0, Phase::Confirm, done());
    log.note(&lease, 1, Phase::Confirm, done());
    log.finish(&lease, End::Done).await.unwrap();
    (decided, start.elapsed())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The filesystem type under `path`, from /proc/mounts (Linux).
fn filesystem(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(point)
                .then(|| (point.len(), kind.to_owned()))
        })
        .max()
        .map_or_else(|| "unknown".into(), |(_, kind)| kind)
}

/// CPU time this process used so far, user and system (Linux).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the
    // name and state; in clock ticks, 100 a second on Linux.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// (1, 5) transactions/s of `CALLERS` concurrent callers, each looping
/// over `transaction` on its own clone of `target`, and the CPU time the
/// process spent per transaction.
async fn concurrent<T, F, Fut>(target: T, run_for: Duration, transaction: F) -> (f64, Duration)
where
    T: Clone + Send + 'static,
    F: Fn(T) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future + Send,
{
    let cpu = cpu_time();
    let start = Instant::now();
    let mut callers = JoinSet::new();
    for _ in 0..CALLERS {
        let target = target.clone();
        callers.spawn(async move {
            let mut count = 0u64;
            while start.elapsed() < run_for {
                transaction(target.clone()).await;
                count += 1;
            }
            count
        });
    }
    let total: u64 = join(callers).await.into_iter().sum();
    let per_transaction = (cpu_time() - cpu) / total.max(1) as u32;
    (
        total as f64 / start.elapsed().as_secs_f64(),
        per_transaction,
    )
}

/// (3) `runs` appends of 200 bytes, each followed by fdatasync.
fn fdatasyncs(dir: &Path, runs: usize) -> Vec<Duration> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("fsync.bin"))
        .unwrap();
    let record = [7u8; 200];
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            file.write_all(&record).unwrap();
            file.sync_data().unwrap();
            start.elapsed()
        })
        .collect()
}

/// (2b) `runs` times, two durable redb commits in a row, each inserting
/// one 200-byte value into one table: what any redb-based log pays at least
/// for begin + decide.
fn bare_redb(db: &redb::Database, runs: usize) -> Vec<Duration> {
    const TABLE: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new("bare");
    let value = [7u8; 200];
    (0..runs)
        .map(|_| {
            let key = TransactionId::generate().as_u128();
            let start = Instant::now();
            for _ in 0..2 {
                let txn = db.begin_write().unwrap();
                txn.open_table(TABLE)
                    .unwrap()
                    .insert(key, value.as_slice())
                    .unwrap();
                txn.commit().unwrap();
            }
            start.elapsed()
        })
        .collect()
}

/// (4) writes `count` unfinished transactions (half decided), reopens the
/// file as a restarted process would, and claims and finishes them all, 1000
/// claimed at a time, finished concurrently. Returns the time to open and
/// transactions/s.
async fn recovery(dir: &Path, count: usize) -> (Duration, f64) {
    let path = dir.join("recovery.redb");
    {
        let log = Arc::new(RedbLog::create(&path).unwrap());
        let mut writers = JoinSet::new();
        for caller in 0..CALLERS {
            let log = log.clone();
            writers.spawn(async move {
                for i in (caller..count).step_by(CALLERS) {
                    let lease = log.begin(&intent()).await.unwrap();
                    if i % 2 == 0 {
                        log.decide(&lease, Decision::Confirm).await.unwrap();
                    }
                }
            });
        }
        join(writers).await;
    }
    let start = Instant::now();
    let log = Arc::new(RedbLog::open(&path).unwrap());
    let opened = start.elapsed();
    let start = Instant::now();
    let mut finished = 0;
    loop {
        let claimed = log.claim_unfinished(1000).await.unwrap();
        if claimed.is_empty() {
            break;
        }
        finished += claimed.len();
        let mut finishing = JoinSet::new();
        for (lease, _) in claimed {
            let log = log.clone();
            finishing.spawn(async move { finish(&log, &lease).await });
        }
        join(finishing).await;
    }
    assert_eq!(finished, count);
    assert_eq!(log.unfinished_count().await.unwrap(), 0);
    (opened, count as f64 / start.elapsed().as_secs_f64())
}

/// What recovery writes for one transaction: the decision it lacked, if
/// any, two notes, the end.
async fn finish(log: &RedbLog, lease: &Lease) {
    log.decide(lease, Decision::Cancel).await.unwrap();
    log.note(lease, 0, Phase::Cancel, done());
    log.note(lease, 1, Phase::Cancel, done());
    log.finish(lease, End::Done).await.unwrap();
}

/// (8) the mean cost of a note in one transaction of `participants`
/// participants, each noted once, then read back once.
async fn notes(dir: &Path, participants: usize) -> Duration {
    let log = RedbLog::create(dir.join(format!("notes-{participants}.redb"))).unwrap();
    let intent = Intent {
        id: TransactionId::generate(),
        participants: (0..participants)
            .map(|i| ParticipantEntry {
                name: format!("participant-{i}"),
                kind: "noop".into(),
                data: format!(r#"{{"name":"participant-{i}"}}"#).into_bytes(),
            })
            .collect(),
    };
    let lease = log.begin(&intent).await.unwrap();
    let start = Instant::now();
    for participant in 0..participants {
        log.note(&lease, participant as u32, Phase::Try, done());
    }
    // A read is answered once every note before it was applied.
    let record = log.get(intent.id).await.unwrap().unwrap();
    assert!(
        record
            .progress
            .iter()
            .all(|p| p[Phase::Try as usize].succeeded)
    );
    start.elapsed() / participants as u32
}

/// The file's size while `total` transactions run through it at steady
/// load, printed every tenth.
async fn size(dir: &Path, total: u64) {
    let path = dir.join("size.redb");
    let log = Arc::new(RedbLog::create(&path).unwrap());
    let step = total / 10;
    let start = Instant::now();
    println!("| transactions | file size | elapsed |");
    println!("|---|---|---|");
    for tenth in 1..=10 {
        let mut callers = JoinSet::new();
        for caller in 0..CALLERS as u64 {
            let log = log.clone();
            callers.spawn(async move {
                for _ in (caller..step).step_by(CALLERS) {
                    transaction(&log).await;
                }
            });
        }
        join(callers).await;
        // A durable write: everything before it is in the file.
        let lease = log.begin(&intent()).await.unwrap();
        log.finish(&lease, End::Done).await.unwrap();
        let bytes = std::fs::metadata(&path).unwrap().len();
        println!(
            "| {} | {:.1} MiB | {:.0} s |",
            tenth * step,
            bytes as f64 / (1024.0 * 1024.0),
            start.elapsed().as_secs_f64()
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|arg| arg == "--bench");
    let sizes = if full { FULL } else { TINY };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The target directory is on a disk even where /tmp is a tmpfs, whose
    // fsync would cost nothing.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    println!(
        "log files in {} ({})",
        dir.path().display(),
        filesystem(dir.path())
    );

    if args.iter().any(|arg| arg == "notes") || !full {
        println!("| participants | mean time of one note |");
        println!("|---|---|");
        let counts: &[usize] = if full {
            &[10, 100, 1000, 4000, 10_000]
        } else {
            &[10, 100]
        };
        for &count in counts {
            let each = runtime.block_on(notes(dir.path(), count));
            println!("| {count} | {:.2} µs |", each.as_secs_f64() * 1e6);
        }
        if full {
            return;
        }
    }

    if args.iter().any(|arg| arg == "size") || !full {
        runtime.block_on(size(dir.path(), sizes.size_transactions));
        if full {
            return;
        }
    }

    // With the default gathering of answered callers, and without; the
    // two alternate, twice each, as the disk's speed drifts.
    let mut runs = Vec::new();
    let mut engine_runs = Vec::new();
    for round in 0..4 {
        let gather = if round % 2 == 0 {
            None
        } else {
            Some(Duration::ZERO)
        };
        let result = runtime.block_on(async {
            let mut options = RedbLog::options();
            if let Some(wait) = gather {
                options = options.max_gather(wait);
            }
            let path = dir.path().join(format!("concurrent-{round}.redb"));
            let log = Arc::new(options.create(path).unwrap());
            let (throughput, cpu) =
                concurrent(log.clone(), sizes.concurrent_for / 2, |log| async move {
                    transaction(&log).await;
                })
                .await;
            (throughput, log.stats(), cpu)
        });
        runs.push((gather.is_none(), result));
        // The engine over a log of the same options as the floor's best,
        // between the floor's rounds.
        if gather.is_none() {
            let engine = runtime.block_on(async {
                let path = dir.path().join(format!("engine-concurrent-{round}.redb"));
                let log = TransactionLog::create(path).unwrap();
                log.register::<RecoverableNoop>().unwrap();
                let run = concurrent(log, sizes.concurrent_for / 2, |log| async move {
                    durable_transaction(&log).await;
                });
                run.await.0
            });
            engine_runs.push(engine);
        }
    }
    let engine_throughput = engine_runs.iter().copied().fold(0.0, f64::max);
    let best = |gathering: bool| {
        runs.iter()
            .filter(|(g, _)| *g == gathering)
            .map(|(_, r)| *r)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap()
    };
    let (throughput, stats, cpu) = best(true);
    let (ungathered, ungathered_stats, _) = best(false);

    // One caller, bare redb and bare fdatasync, in alternating slices: a
    // shared disk's speed drifts from one second to the next.
    let log = RedbLog::create(dir.path().join("latency.redb")).unwrap();
    let bare = redb::Database::create(dir.path().join("bare.redb")).unwrap();
    let engine_log = TransactionLog::create(dir.path().join("engine-latency.redb")).unwrap();
    engine_log.register::<RecoverableNoop>().unwrap();
    let (mut samples, mut bare_samples, mut fsyncs) = (Vec::new(), Vec::new(), Vec::new());
    let mut engine_samples = Vec::new();
    runtime.block_on(transaction(&log)); // the first commit creates the file's pages
    runtime.block_on(durable_transaction(&engine_log));
    for _slice in 0..10 {
        samples.extend(runtime.block_on(one_caller(&log, sizes.latency_runs / 10)));
        for _ in 0..sizes.latency_runs / 10 {
            engine_samples.push(runtime.block_on(durable_transaction(&engine_log)));
        }
        bare_samples.extend(bare_redb(&bare, sizes.latency_runs / 10));
        fsyncs.extend(fdatasyncs(dir.path(), sizes.fsyncs / 10));
    }
    drop((log, engine_log));
    let engine_latency = median(engine_samples);
    let decided = median(samples.iter().map(|s| s.0).collect());
    let whole = median(samples.iter().map(|s| s.1).collect());
    let bare_two = median(bare_samples);
    let fsync = median(fsyncs);
    let (opened, recovered) = runtime.block_on(recovery(dir.path(), sizes.recovery));
    let engine_recovered = runtime.block_on(engine_recovery(dir.path(), sizes.recovery));

    println!();
    println!("| store floor (RedbLog, real fsync) | measured |");
    println!("|---|---|");
    println!(
        "| (1) {CALLERS} callers: begin + decide + 2 notes + finish(Done), best of 2 runs | {throughput:.0} transactions/s |"
    );
    println!(
        "| (1) its commits: durable / all, requests per commit, mean commit; CPU per transaction (both cores, callers included) | {} / {}, {:.1}, {:.0} µs; {:.0} µs |",
        stats.durable_commits,
        stats.commits,
        stats.requests as f64 / stats.commits.max(1) as f64,
        micros(stats.busy) / stats.commits.max(1) as f64,
        micros(cpu)
    );
    println!(
        "| (1) the same, each batch taking only what is queued (max_gather 0) | {ungathered:.0} transactions/s; {} / {} commits, {:.1} requests each |",
        ungathered_stats.durable_commits,
        ungathered_stats.commits,
        ungathered_stats.requests as f64 / ungathered_stats.commits.max(1) as f64
    );
    println!(
        "| (2) one caller: begin + decide (two durable commits), median | {:.0} µs |",
        micros(decided)
    );
    println!(
        "| (2) one caller: the whole sequence, median | {:.0} µs |",
        micros(whole)
    );
    println!(
        "| (2b) bare redb: two durable commits of one 200-byte insert, median | {:.0} µs (RedbLog's begin + decide: {:.2}×) |",
        micros(bare_two),
        micros(decided) / micros(bare_two)
    );
    println!(
        "| (3) bare fdatasync of a 200-byte append, median | {:.0} µs (one durable commit: {:.1} of them in (2), {:.1} in (2b)) |",
        micros(fsync),
        micros(decided) / 2.0 / micros(fsync),
        micros(bare_two) / 2.0 / micros(fsync)
    );
    println!(
        "| (4) recovery: claim + finish {} unfinished | {recovered:.0} transactions/s (open: {:.0} ms) |",
        sizes.recovery,
        opened.as_secs_f64() * 1000.0
    );
    println!();
    println!("| the engine over the same store | measured | against its floor |");
    println!("|---|---|---|");
    println!(
        "| (5) {CALLERS} callers: durable tcc! of 2 no-op services, best of 2 runs | {engine_throughput:.0} transactions/s | (1) / (5) = {:.2} |",
        throughput / engine_throughput
    );
    println!(
        "| (6) one caller: one durable tcc! transaction, median | {:.0} µs | {:+.0} % over (2) begin + decide |",
        micros(engine_latency),
        (micros(engine_latency) / micros(decided) - 1.0) * 100.0
    );
    println!(
        "| (7) TransactionLog::recover of {} unfinished | {engine_recovered:.0} transactions/s | (4) / (7) = {:.2} |",
        sizes.recovery,
        recovered / engine_recovered
    );
}

/// Every task's result, once all have ended.
async fn join<T: 'static>(mut set: JoinSet<T>) -> Vec<T> {
    let mut results = Vec::with_capacity(set.len());
    while let Some(result) = set.join_next().await {
        results.push(result.unwrap());
    }
    results
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// (2) `runs` transactions, one after another.
async fn one_caller(log: &RedbLog, runs: usize) -> Vec<(Duration, Duration)> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        samples.push(transaction(log).await);
    }
    samples
}
