//! The PostgreSQL log under load (issue 17), against a throwaway cluster of
//! its own that commits as a production server does: fsync,
//! `synchronous_commit` and full-page writes on ([`Disk::Durable`]), on the
//! machine's disk, listening on a unix socket.
//!
//! ```sh
//! cargo bench --bench postgres_log                 # everything below
//! cargo bench --bench postgres_log -- writers=2    # the logs with 2 writers
//! ```
//!
//! 1. One coordinator process, 64 concurrent callers, each looping over
//!    durable `tcc!` transactions of two no-op recoverable services:
//!    committed transactions/s, the median of several runs of a few
//!    seconds. Beside each run, what it cost: database commits and WAL
//!    flushes a second (`pg_stat_database`, `pg_stat_wal`), and the CPU of
//!    the coordinator, of PostgreSQL and of the rest of the machine.
//!    The runs share one schema in steady state: 100,000 outcomes (the
//!    default retention, so each finish prunes), and a first run of half
//!    the length whose figures are dropped (the tables grow to their
//!    working size in it).
//! 2. The floor, in the same sitting, alternating with (1): pgbench of one
//!    `INSERT`, one epoch-conditional `UPDATE` and one asynchronous-commit
//!    `DELETE` per transaction (three commits, as `begin`, `decide` and
//!    `finish` are), 64 clients and one.
//! 3. Two and three coordinator processes on one schema (in steady state
//!    as in (1)), 64 callers each: the total.
//! 4. Failover: a coordinator under load is killed with SIGKILL; another
//!    one runs `spawn_recovery` every 100 ms; the time from the kill to the
//!    last of the killed one's transactions finished, against the lease's
//!    time to live (2 s).
//!
//! Coordinators are child processes: the bench's own binary, started again
//! with `TCC_BENCH_PG_ROLE` set. Without PostgreSQL server binaries the
//! bench prints one line and ends (`TCC_REQUIRE_POSTGRES=1` makes that a
//! failure).
//!
//! `cargo test --benches` (CI) passes no `--bench`: a tiny run of each, in
//! seconds, that only proves the bench works.

#[path = "../tests/barrier/cluster.rs"]
#[allow(dead_code)]
mod cluster;
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Cluster, Disk};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tcc::durable::PostgresLog;
use tcc::{TransactionLog, tcc};
use tokio::task::JoinSet;

use common::RecoverableNoop;

/// Concurrent callers in each coordinator.
const CALLERS: usize = 64;

/// `PostgresOptions::retention`'s default: how many outcomes a log in
/// steady state holds.
const RETENTION: u64 = 100_000;

/// Sizes of one run: the real one, or CI's proof that the bench works.
struct Sizes {
    /// How long each measured run lasts.
    run_for: Duration,
    /// Runs of one coordinator (and of the floor, alternating).
    runs: usize,
    /// Runs of two and of three coordinators.
    shared_runs: usize,
    /// Failovers measured.
    failovers: usize,
    /// The leases' time to live in the failover.
    ttl: Duration,
    /// How long pgbench runs (whole seconds).
    pgbench_secs: u32,
}

const FULL: Sizes = Sizes {
    run_for: Duration::from_secs(4),
    runs: 5,
    shared_runs: 3,
    failovers: 3,
    ttl: Duration::from_secs(2),
    pgbench_secs: 4,
};

const TINY: Sizes = Sizes {
    run_for: Duration::from_millis(300),
    runs: 1,
    shared_runs: 1,
    failovers: 1,
    ttl: Duration::from_millis(500),
    pgbench_secs: 1,
};

/// How often the rescuer of the failover runs a recovery pass.
const RECOVERY_EVERY: Duration = Duration::from_millis(100);

/// The child's role (`load`, `victim` or `rescuer`); the rest of its
/// settings come in the variables below.
const ROLE: &str = "TCC_BENCH_PG_ROLE";
const ADDRESS: &str = "TCC_BENCH_PG_ADDRESS";
const SCHEMA: &str = "TCC_BENCH_PG_SCHEMA";
const TTL_MS: &str = "TCC_BENCH_PG_TTL_MS";
const RUN_MS: &str = "TCC_BENCH_PG_RUN_MS";
const WRITERS: &str = "TCC_BENCH_PG_WRITERS";

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        child(&role);
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|arg| arg == "--bench");
    let sizes = if full { FULL } else { TINY };
    let writers: Option<usize> = args
        .iter()
        .find_map(|arg| arg.strip_prefix("writers=")?.parse().ok());
    let Some(cluster) = Cluster::start(Disk::Durable) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = runtime.block_on(connect(&cluster));
    let bench = Bench {
        cluster: &cluster,
        runtime: &runtime,
        admin: &admin,
        sizes: &sizes,
        writers,
        next_schema: std::cell::Cell::new(0),
    };
    println!(
        "PostgreSQL {} in {} (fsync, synchronous_commit, full_page_writes on); writers per log: {}",
        runtime.block_on(setting(&admin, "server_version")),
        std::env::temp_dir().display(),
        writers.map_or_else(|| "default".into(), |w| w.to_string()),
    );
    println!();
    println!(
        "| run | transactions/s | DB commits/s | WAL flushes/s | CPU: coordinators | PostgreSQL | rest of the machine (of 200 %) |"
    );
    println!("|---|---|---|---|---|---|---|");

    // (1) and (2) alternating, as the machine's speed drifts.
    let pgbench = bench.pgbench_setup();
    let (mut one, mut floor64, mut floor1) = (Vec::new(), Vec::new(), Vec::new());
    let schema = bench.steady_schema(1);
    for round in 0..sizes.runs {
        let run = bench.coordinators(&schema, 1, sizes.run_for);
        run.print(&format!("1 coordinator, run {}", round + 1));
        one.push(run.rate);
        if let Some(script) = &pgbench {
            let rate = bench.pgbench(script, 64);
            println!(
                "| pgbench floor, 64 clients, run {} | {rate:.0} | | | | | |",
                round + 1
            );
            floor64.push(rate);
        }
    }
    if let Some(script) = &pgbench {
        // Latency-bound and steady: one run.
        floor1.push(bench.pgbench(script, 1));
    }
    // (3)
    let mut shared = Vec::new();
    for n in [2, 3] {
        let mut rates = Vec::new();
        let schema = bench.steady_schema(n);
        for round in 0..sizes.shared_runs {
            let run = bench.coordinators(&schema, n, sizes.run_for);
            run.print(&format!("{n} coordinators, run {}", round + 1));
            rates.push(run.rate);
        }
        shared.push((n, median(rates)));
    }
    // (4)
    let failovers: Vec<Failover> = (0..sizes.failovers).map(|_| bench.failover()).collect();
    if let Some(script) = &pgbench {
        let _ = std::fs::remove_file(script);
    }

    println!();
    println!("| case | median |");
    println!("|---|---|");
    let one = median(one);
    println!(
        "| (1) 1 coordinator, {CALLERS} callers, durable tcc! of 2 no-op services | {one:.0} transactions/s ({:.2} of the 8,000 target) |",
        one / 8000.0
    );
    if pgbench.is_some() {
        println!(
            "| (2) pgbench floor: INSERT + conditional UPDATE + async DELETE, 64 clients / 1 client | {:.0} / {:.0} transactions/s |",
            median(floor64),
            median(floor1)
        );
    } else {
        println!("| (2) pgbench floor | not run: no pgbench |");
    }
    for (n, rate) in shared {
        println!(
            "| (3) {n} coordinators, {CALLERS} callers each, total | {rate:.0} transactions/s ({:.2}× one) |",
            rate / one
        );
    }
    println!();
    println!(
        "| (4) failover, TTL {} ms, recovery every {} ms | in flight at the kill | kill → the last of them finished |",
        sizes.ttl.as_millis(),
        RECOVERY_EVERY.as_millis()
    );
    println!("|---|---|---|");
    for (i, failover) in failovers.iter().enumerate() {
        println!(
            "| run {} | {} | {} ms ({:.2} TTL) |",
            i + 1,
            failover.in_flight,
            failover.last.as_millis(),
            failover.last.as_secs_f64() / sizes.ttl.as_secs_f64()
        );
    }
}

/// What the parent process holds while it runs the cases.
struct Bench<'a> {
    cluster: &'a Cluster,
    runtime: &'a tokio::runtime::Runtime,
    /// The parent's own connection: schemas, statistics, the failover's
    /// polling.
    admin: &'a tokio_postgres::Client,
    sizes: &'a Sizes,
    writers: Option<usize>,
    next_schema: std::cell::Cell<u32>,
}

/// One run of (1) or (3).
struct Run {
    /// Transactions/s, over every coordinator.
    rate: f64,
    commits: f64,
    wal_flushes: f64,
    /// CPU, in percent of one core.
    coordinators_cpu: f64,
    postgres_cpu: f64,
    rest_cpu: f64,
}

impl Run {
    fn print(&self, name: &str) {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} % | {:.0} % | {:.0} % |",
            self.rate,
            self.commits,
            self.wal_flushes,
            self.coordinators_cpu,
            self.postgres_cpu,
            self.rest_cpu
        );
    }
}

/// One failover of (4).
struct Failover {
    /// Unfinished rows at the first look after the kill.
    in_flight: i64,
    last: Duration,
}

/// A coordinator process, ready to start.
struct Coordinator {
    process: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Coordinator {
    fn go(&mut self) {
        writeln!(self.stdin, "go").unwrap();
        self.stdin.flush().unwrap();
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }
}

/// What the machine had done at one moment, for the figures of a run.
struct Counters {
    at: Instant,
    commits: i64,
    wal_syncs: i64,
    /// CPU ticks of the whole machine, busy.
    busy: u64,
    /// CPU ticks of the PostgreSQL server and its (reaped) backends.
    postgres: u64,
}

impl Bench<'_> {
    fn schema(&self) -> String {
        let n = self.next_schema.get();
        self.next_schema.set(n + 1);
        let schema = format!("bench_{n}");
        self.runtime.block_on(async {
            // Creates the schema.
            self.cluster.connect(&schema).await;
            PostgresLog::migrate(&pool(&self.cluster.address(), &schema, 1))
                .await
                .unwrap();
        });
        schema
    }

    /// Starts a coordinator process in `role` on `schema`, and waits until
    /// its log is open.
    fn spawn(&self, role: &str, schema: &str, ttl: Duration, run_for: Duration) -> Coordinator {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .env(ROLE, role)
            .env(ADDRESS, self.cluster.address())
            .env(SCHEMA, schema)
            .env(TTL_MS, ttl.as_millis().to_string())
            .env(RUN_MS, run_for.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(writers) = self.writers {
            command.env(WRITERS, writers.to_string());
        }
        let mut process = command.spawn().expect("start a coordinator");
        let stdin = process.stdin.take().unwrap();
        let stdout = BufReader::new(process.stdout.take().unwrap());
        let mut coordinator = Coordinator {
            process,
            stdin,
            stdout,
        };
        assert_eq!(coordinator.line().trim(), "ready", "the coordinator failed");
        coordinator
    }

    /// A schema as a log in steady state has it: as many outcomes as the
    /// default retention keeps (so that every finish prunes one), and
    /// tables that have grown to their working size in a first run,
    /// whose figures are dropped.
    fn steady_schema(&self, coordinators: usize) -> String {
        let schema = self.schema();
        self.runtime.block_on(async {
            self.admin
                .batch_execute(&format!(
                    "INSERT INTO {schema}.tcc_log_outcomes (id, decision, started_at, finished_at)
                     SELECT md5(i::text), 0, now(), now()
                     FROM generate_series(1, {RETENTION}) AS i;
                     ANALYZE {schema}.tcc_log_outcomes;"
                ))
                .await
                .unwrap();
        });
        self.coordinators(&schema, coordinators, self.sizes.run_for / 2);
        schema
    }

    /// (1, 3) `n` coordinators on `schema`, started together, for `run_for`.
    fn coordinators(&self, schema: &str, n: usize, run_for: Duration) -> Run {
        // Leases longer than any run: no failover here.
        let mut children: Vec<Coordinator> = (0..n)
            .map(|_| self.spawn("load", schema, Duration::from_secs(60), run_for))
            .collect();
        let before = self.counters();
        for child in &mut children {
            child.go();
        }
        let (mut rate, mut cpu) = (0.0, 0.0);
        for child in &mut children {
            // "done COUNT SECONDS CPU_SECONDS"
            let line = child.line();
            let fields: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .map(|f| f.parse().unwrap())
                .collect();
            assert_eq!(fields.len(), 3, "the coordinator failed: {line:?}");
            rate += fields[0] / fields[1];
            cpu += fields[2] / fields[1];
        }
        let after = self.counters();
        for mut child in children {
            child.process.wait().unwrap();
        }
        let secs = after.at.duration_since(before.at).as_secs_f64();
        let percent = |ticks: u64| ticks as f64 / TICKS as f64 / secs * 100.0;
        let postgres_cpu = percent(after.postgres - before.postgres);
        let coordinators_cpu = cpu * 100.0;
        Run {
            rate,
            commits: (after.commits - before.commits) as f64 / secs,
            wal_flushes: (after.wal_syncs - before.wal_syncs) as f64 / secs,
            coordinators_cpu,
            postgres_cpu,
            rest_cpu: (percent(after.busy - before.busy) - postgres_cpu - coordinators_cpu)
                .max(0.0),
        }
    }

    fn counters(&self) -> Counters {
        self.runtime.block_on(async {
            let row = self
                .admin
                .query_one(
                    "SELECT (SELECT xact_commit FROM pg_stat_database
                             WHERE datname = current_database()),
                            (SELECT wal_sync FROM pg_stat_wal)",
                    &[],
                )
                .await
                .unwrap();
            Counters {
                at: Instant::now(),
                commits: row.get(0),
                wal_syncs: row.get(1),
                busy: machine_busy(),
                postgres: postgres_ticks(self.cluster),
            }
        })
    }

    /// (4) kills a coordinator under load, and times how long another
    /// one's recovery takes to finish what it left.
    fn failover(&self) -> Failover {
        let schema = self.schema();
        let ttl = self.sizes.ttl;
        let mut rescuer = self.spawn("rescuer", &schema, ttl, Duration::ZERO);
        let mut victim = self.spawn("victim", &schema, ttl, Duration::ZERO);
        victim.go();
        std::thread::sleep(self.sizes.run_for);
        let killed = Instant::now();
        // SIGKILL.
        victim.process.kill().unwrap();
        victim.process.wait().unwrap();
        let count = format!("SELECT count(*) FROM {schema}.tcc_log_transactions");
        // (A batch the killed process sent just before may still commit on
        // its backend: the count can drop at once by a few.)
        let mut in_flight = None;
        let last = self.runtime.block_on(async {
            loop {
                let left: i64 = self.admin.query_one(&count, &[]).await.unwrap().get(0);
                in_flight.get_or_insert(left);
                if left == 0 {
                    return killed.elapsed();
                }
                assert!(
                    killed.elapsed() < ttl * 10,
                    "{left} transactions left unfinished"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        rescuer.go();
        rescuer.process.wait().unwrap();
        Failover {
            in_flight: in_flight.unwrap_or(0),
            last,
        }
    }

    /// (2) the floor's table and script, if pgbench is installed.
    fn pgbench_setup(&self) -> Option<std::path::PathBuf> {
        let script = std::env::temp_dir().join(format!("tcc-pgbench-{}.sql", std::process::id()));
        // A row as wide as the log's: an id, an epoch, ~200 bytes of intent.
        self.runtime.block_on(async {
            self.admin
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS public.pgbench_floor (
                         id bigint PRIMARY KEY, status smallint NOT NULL,
                         epoch bigint NOT NULL, data text NOT NULL
                     ) WITH (fillfactor = 70)",
                )
                .await
                .unwrap();
        });
        std::fs::write(
            &script,
            "\\set id random(1, 9000000000000000000)
INSERT INTO public.pgbench_floor VALUES (:id, 0, 1, repeat('x', 200));
UPDATE public.pgbench_floor SET status = 1 WHERE id = :id AND epoch = 1;
BEGIN;
SET LOCAL synchronous_commit TO off;
DELETE FROM public.pgbench_floor WHERE id = :id;
COMMIT;
",
        )
        .unwrap();
        let found = pgbench_path(self.cluster).is_some();
        if !found {
            println!("(2) skipped: no pgbench beside initdb or on PATH");
        }
        found.then_some(script)
    }

    /// (2) transactions/s of pgbench with `clients` clients.
    fn pgbench(&self, script: &std::path::Path, clients: usize) -> f64 {
        let pgbench = pgbench_path(self.cluster).unwrap();
        let mut command = Command::new(pgbench);
        for part in self.cluster.address().split_whitespace() {
            let (key, value) = part.split_once('=').unwrap();
            match key {
                "host" => command.args(["-h", value]),
                "port" => command.args(["-p", value]),
                "user" => command.args(["-U", value]),
                _ => command.env("PGDATABASE", value),
            };
        }
        let output = command
            .args(["-n", "-M", "prepared", "-j", "2", "-c"])
            .arg(clients.to_string())
            .arg("-T")
            .arg(self.sizes.pgbench_secs.to_string())
            .arg("-f")
            .arg(script)
            .output()
            .expect("run pgbench");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "pgbench failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("tps = "))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no tps in pgbench's output: {stdout}"))
    }
}

fn pgbench_path(cluster: &Cluster) -> Option<std::path::PathBuf> {
    let beside = cluster.bin().join("pgbench");
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("pgbench"));
    std::iter::once(beside)
        .chain(on_path)
        .find(|path| path.is_file())
}

/// A child coordinator: opens the log, says `ready`, waits for `go` on its
/// stdin, then plays its role.
fn child(role: &str) {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let millis = |name: &str| Duration::from_millis(var(name).parse().unwrap());
    let (ttl, run_for) = (millis(TTL_MS), millis(RUN_MS));
    let writers: Option<usize> = std::env::var(WRITERS).ok().map(|w| w.parse().unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let log = runtime.block_on(async {
        let mut options = PostgresLog::options().lease_ttl(ttl);
        if let Some(writers) = writers {
            options = options.writers(writers);
        }
        let pool = pool(&var(ADDRESS), &var(SCHEMA), writers.unwrap_or(1) + 2);
        // The bench has migrated the schema; a child started by hand (to
        // profile one coordinator) may be the first. Idempotent.
        PostgresLog::migrate(&pool).await.unwrap();
        let log = TransactionLog::new(options.open(pool).await.unwrap());
        log.register::<RecoverableNoop>().unwrap();
        log
    });
    let mut go = String::new();
    if role == "rescuer" {
        // Recovers from the start, until its stdin says so.
        let recovery = {
            let _runtime = runtime.enter();
            log.spawn_recovery(RECOVERY_EVERY)
        };
        println!("ready");
        std::io::stdin().read_line(&mut go).unwrap();
        recovery.abort();
        return;
    }
    println!("ready");
    std::io::stdin().read_line(&mut go).unwrap();
    match role {
        "load" => {
            let cpu = cpu_time();
            let start = Instant::now();
            let count = runtime.block_on(load(&log, Some(run_for)));
            let secs = start.elapsed().as_secs_f64();
            println!("done {count} {secs} {}", (cpu_time() - cpu).as_secs_f64());
        }
        // Runs until it is killed.
        "victim" => {
            runtime.block_on(load(&log, None));
        }
        other => panic!("unknown role {other}"),
    }
}

/// `CALLERS` callers, each looping over durable transactions for
/// `run_for` (forever if `None`); how many committed.
async fn load(log: &TransactionLog, run_for: Option<Duration>) -> u64 {
    let start = Instant::now();
    let mut callers = JoinSet::new();
    for _ in 0..CALLERS {
        let log = log.clone();
        callers.spawn(async move {
            let mut count = 0u64;
            while run_for.is_none_or(|run_for| start.elapsed() < run_for) {
                tcc! {
                    log = &log;
                    RecoverableNoop { name: "payer".into() },
                    RecoverableNoop { name: "payee".into() },
                }
                .await
                .unwrap();
                count += 1;
            }
            count
        });
    }
    let mut total = 0;
    while let Some(count) = callers.join_next().await {
        total += count.unwrap();
    }
    total
}

/// A pool of up to `size` connections on `schema`, committing with
/// `synchronous_commit` on (the cluster's default too).
fn pool(address: &str, schema: &str, size: usize) -> Pool {
    let mut config: tokio_postgres::Config = address.parse().unwrap();
    config.options(format!("-c search_path={schema} -c synchronous_commit=on"));
    config.application_name("tcc-log");
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager).max_size(size).build().unwrap()
}

async fn connect(cluster: &Cluster) -> tokio_postgres::Client {
    cluster.connect("public").await
}

async fn setting(client: &tokio_postgres::Client, name: &str) -> String {
    client
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .unwrap()
        .get(0)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Clock ticks a second, for /proc (100 on Linux).
const TICKS: u64 = 100;

/// The fields of /proc/PID/stat after the command name.
fn stat_fields(pid: &str) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        // The state is not a number: kept as 0, so indices stay.
        .map(|f| f.parse().unwrap_or(0))
        .collect()
}

/// CPU time this process used so far, user and system (Linux).
fn cpu_time() -> Duration {
    let fields = stat_fields("self");
    // utime and stime: fields 14 and 15 of the line, 11 and 12 after the name.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 1000 / TICKS)
}

/// Busy ticks of the whole machine, every core (/proc/stat).
fn machine_busy() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    ticks.iter().take(8).sum::<u64>() - ticks.get(3).unwrap_or(&0) - ticks.get(4).unwrap_or(&0)
}

/// CPU ticks of the PostgreSQL server: the postmaster, with the backends it
/// reaped, and its processes alive now.
fn postgres_ticks(cluster: &Cluster) -> u64 {
    let Some(postmaster) = cluster.postmaster_pid() else {
        return 0;
    };
    let own = stat_fields(&postmaster.to_string());
    // utime, stime, cutime, cstime: 11 to 14 after the name.
    let mut ticks: u64 = own.iter().skip(11).take(4).sum();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let fields = stat_fields(pid);
        // The parent's pid: field 4, 1 after the name.
        if fields.get(1) == Some(&u64::from(postmaster)) {
            ticks += fields.iter().skip(11).take(2).sum::<u64>();
        }
    }
    ticks
}
