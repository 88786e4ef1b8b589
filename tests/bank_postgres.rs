//! The bank example (`examples/bank_transfer.rs`) with its transaction log
//! in PostgreSQL (`--log postgres://...`), run by several coordinator
//! processes at once over one log and one `bank.sqlite`: killed with
//! SIGKILL, stopped with SIGSTOP past their leases, run with clocks
//! minutes apart, and with PostgreSQL restarted under them.
//!
//! Beside the bank's invariants (tests/common/bank.rs: the money adds up,
//! nothing frozen, every acknowledged transfer journalled on both sides),
//! each test records every write to the log's rows with a trigger of its
//! own ([`Fencing`]): who owned the row, at which epoch. No transaction may
//! be written by two owners in one epoch, and an owner that lost its lease
//! writes nothing after.
//!
//! The cluster is the barrier tests' throwaway one (tests/barrier/cluster.rs);
//! without PostgreSQL server binaries these tests print one line and pass,
//! unless `TCC_REQUIRE_POSTGRES=1`. Rounds: 6 kills by default,
//! `TCC_CRASH_ROUNDS=N` for N.

use std::collections::BTreeSet;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

#[path = "common/bank.rs"]
mod bank;
mod pglog;

use bank::{Bank, Random, Running, Snapshot, confirmed, recover_and_check};
use pglog::cluster::Cluster;

/// The lease of every coordinator here, in seconds: short, so that a dead
/// one's transfers are claimed soon.
const LEASE: &str = "2";

fn rounds() -> usize {
    std::env::var("TCC_CRASH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(6)
}

/// A runtime for the test's own SQL.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The log's schema, migrated, with a trigger that records every row
/// written: `(seq, id, epoch, owner)` in `lease_history`.
struct Fencing<'a> {
    schema: String,
    cluster: &'a Cluster,
}

impl<'a> Fencing<'a> {
    fn new(cluster: &'a Cluster) -> Self {
        let schema = runtime().block_on(async {
            let (schema, pool) = pglog::migrated(cluster, "bank").await;
            let client = pool.get().await.expect("a connection");
            client
                .batch_execute(
                    "CREATE TABLE lease_history (
                         seq   bigserial PRIMARY KEY,
                         id    text   NOT NULL,
                         epoch bigint NOT NULL,
                         owner text
                     );
                     CREATE FUNCTION record_lease() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN
                         INSERT INTO lease_history (id, epoch, owner)
                         VALUES (NEW.id, NEW.epoch, NEW.owner);
                         RETURN NEW;
                     END $$;
                     CREATE TRIGGER record_lease AFTER INSERT OR UPDATE ON tcc_log_transactions
                         FOR EACH ROW EXECUTE FUNCTION record_lease();",
                )
                .await
                .expect("the history trigger");
            schema
        });
        Fencing { schema, cluster }
    }

    fn url(&self) -> String {
        self.cluster.url(&self.schema)
    }

    fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        runtime().block_on(async {
            let client = self.cluster.connect(&self.schema).await;
            client.query(sql, &[]).await.expect(sql)
        })
    }

    /// No transaction was written by two owners in one epoch.
    fn check_one_owner_per_epoch(&self) {
        let shared = self.query(
            "SELECT id, epoch, string_agg(DISTINCT owner, ', ') FROM lease_history
             WHERE owner IS NOT NULL GROUP BY id, epoch HAVING count(DISTINCT owner) > 1",
        );
        let shared: Vec<(String, i64, String)> = shared
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        assert!(
            shared.is_empty(),
            "{} transactions written by two owners in one epoch, among them: {:?}",
            shared.len(),
            &shared[..shared.len().min(5)]
        );
    }

    /// How many transactions more than one owner held, one after another.
    fn taken_over(&self) -> i64 {
        self.query(
            "SELECT count(*) FROM (SELECT id FROM lease_history WHERE owner IS NOT NULL
                                   GROUP BY id HAVING count(DISTINCT owner) > 1) t",
        )[0]
        .get(0)
    }

    /// The last history row so far.
    fn last_seq(&self) -> i64 {
        self.query("SELECT coalesce(max(seq), 0) FROM lease_history")[0].get(0)
    }

    /// The owners that wrote `id`'s row, in order, with their epochs.
    fn owners_of(&self, id: &str) -> Vec<(i64, String, i64)> {
        self.query(&format!(
            "SELECT seq, coalesce(owner, ''), epoch FROM lease_history WHERE id = '{id}' ORDER BY seq"
        ))
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
    }

    /// The decision kept for finished `id`: 0 confirm, 1 cancel.
    fn outcome_of(&self, id: &str) -> Option<i16> {
        self.query(&format!(
            "SELECT decision FROM tcc_log_outcomes WHERE id = '{id}'"
        ))
        .first()
        .map(|row| row.get(0))
    }
}

/// A bank of `accounts` accounts whose log is `fencing`'s, made by one
/// `run` of no transfers (so that the coordinators started next do not race
/// to make it).
fn new_bank(fencing: &Fencing, accounts: &str) -> Bank {
    let mut bank = Bank::new().with_log(&fencing.url(), LEASE);
    let mut made = bank.start("run", &["--accounts", accounts, "--transfers", "0"], &[]);
    let status = made.wait(bank::PATIENCE);
    assert!(status.success(), "making the bank: {}", made.stderr_text());
    bank
}

/// Kills every coordinator, which must all be running still, and returns
/// the transfers they acknowledged.
fn kill_all(running: &mut [Running]) -> BTreeSet<String> {
    let mut acknowledged = BTreeSet::new();
    for coordinator in running {
        if let Some(status) = coordinator.kill() {
            panic!(
                "run ended by itself ({status}): {}",
                coordinator.stderr_text()
            );
        }
        acknowledged.extend(confirmed(&coordinator.collect()));
    }
    acknowledged
}

/// Sends `signal` (`-STOP`, `-CONT`) to a child.
fn signal(running: &Running, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &running.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal}");
}

/// Three coordinators over one log and one bank; one of them, picked at
/// random, is killed with SIGKILL at a random instant and started again,
/// round after round. Then all are killed, `recover` waits for their leases
/// and finishes what they left: the bank adds up, every acknowledged
/// transfer is journalled, no transaction was written by two owners in one
/// epoch, and some were taken over from the dead.
#[test]
fn three_coordinators_killed_at_random_lose_nothing_and_never_share_an_epoch() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let fencing = Fencing::new(cluster);
    let mut bank = new_bank(&fencing, "6");
    let mut random = Random::new();
    let start = |bank: &mut Bank, random: &mut Random| {
        let seed = random.below(1_000_000).to_string();
        bank.start("run", &["--workers", "8", "--seed", &seed], &[])
    };
    let mut running: Vec<Running> = (0..3).map(|_| start(&mut bank, &mut random)).collect();
    let mut acknowledged = BTreeSet::new();
    for coordinator in &mut running {
        coordinator.wait_for("confirmed ");
    }
    for round in 0..rounds() {
        thread::sleep(Duration::from_millis(200 + random.below(1200)));
        let victim = random.below(3) as usize;
        if let Some(status) = running[victim].kill() {
            panic!(
                "round {round}: run ended by itself ({status}): {}",
                running[victim].stderr_text()
            );
        }
        acknowledged.extend(confirmed(&running[victim].collect()));
        Snapshot::read(&bank).check_any_instant(&acknowledged);
        running[victim] = start(&mut bank, &mut random);
    }
    // Long enough for the live ones to take over the last victim's leases.
    thread::sleep(Duration::from_secs(3));
    acknowledged.extend(kill_all(&mut running));
    recover_and_check(&mut bank, &acknowledged);
    fencing.check_one_owner_per_epoch();
    let taken_over = fencing.taken_over();
    println!(
        "{} transfers confirmed, {taken_over} taken over from another owner",
        acknowledged.len()
    );
    assert!(!acknowledged.is_empty(), "some transfer was confirmed");
    assert!(taken_over > 0, "some transaction changed owner");
}

/// A coordinator stopped (SIGSTOP) while a transfer's Try is on its way to
/// the bank (handed to the bank's thread, not yet run: as a request to a
/// remote participant in flight), until its lease has expired; meanwhile
/// `recover` claims the transfer and cancels it. Resumed, the Try reaches
/// the bank and the barrier refuses it (it froze nothing); the coordinator
/// stops the transfer, saying its lease was lost, and writes nothing more
/// to the log: the transfer stays cancelled.
#[test]
fn an_owner_stopped_past_its_lease_writes_nothing_and_its_late_try_is_refused() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let fencing = Fencing::new(cluster);
    let mut bank = new_bank(&fencing, "4");
    // Two transfers, one after the other; the first one's Try waits on the
    // bank's thread (a few seconds: the test stops the process before it
    // ends, even on a loaded machine). The second one's jobs queue behind
    // it, so the process lives until the late Try has reached the bank.
    let mut late = bank.start(
        "run",
        &["--workers", "1", "--transfers", "2", "--seed", "5"],
        &[
            ("TCC_BANK_PAUSE_AT", "try-in-bank"),
            ("TCC_BANK_PAUSE_FOR", "4000"),
        ],
    );
    let marker = late.wait_for("paused at try-in-bank ");
    signal(&late, "-STOP");
    let stopped = Instant::now();
    let tx = marker
        .strip_prefix("paused at try-in-bank ")
        .expect("a transaction id")
        .to_owned();
    let owner = {
        let owners = fencing.owners_of(&tx);
        assert!(!owners.is_empty(), "{tx} was begun: {owners:?}");
        owners[0].1.clone()
    };

    // Its lease expires while it is stopped: `recover` waits for that,
    // claims the transfer and cancels it.
    bank.recover();
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "recover finished {tx} before its lease expired"
    );
    let before = Snapshot::read(&bank);
    let sides = before.branches(&tx);
    // The Try had not reached the bank when the process stopped.
    assert_eq!(
        sides.get("debit"),
        Some(&"cancelled_before_try"),
        "{tx}: {sides:?}"
    );
    assert_eq!(sides.len(), 2, "both sides of {tx} cancelled: {sides:?}");
    assert!(sides.values().all(|state| state.starts_with("cancelled")));
    assert_eq!(fencing.outcome_of(&tx), Some(1), "{tx} cancelled");
    let history = fencing.last_seq();

    signal(&late, "-CONT");
    let status = late.wait(bank::PATIENCE);
    let stderr = late.stderr_text();
    assert!(status.success(), "the late run ends: {stderr}");
    assert!(
        stderr.contains(&format!("late try refused by the barrier: {tx}")),
        "the late Try reached the barrier and was refused: {stderr}"
    );
    assert!(
        stderr.contains(&format!("transaction {tx} was stopped before its next"))
            && stderr.contains("lease"),
        "the late run says it lost its lease: {stderr}"
    );
    let acknowledged: BTreeSet<String> = confirmed(&late.collect()).collect();
    assert!(!acknowledged.contains(&tx), "{tx} acknowledged");
    // Its second transfer is its own; of the first, nothing more.
    let written = fencing.query(&format!(
        "SELECT seq FROM lease_history WHERE seq > {history} AND id = '{tx}'"
    ));
    assert!(
        written.is_empty(),
        "{owner} wrote {tx} after losing it: {} rows",
        written.len()
    );
    assert_eq!(fencing.outcome_of(&tx), Some(1), "{tx} still cancelled");
    let after = recover_and_check(&mut bank, &acknowledged);
    assert_eq!(after.branches(&tx), sides, "{tx}'s sides unchanged");
    assert!(!after.journal.contains_key(&tx), "{tx} moved no money");
    fencing.check_one_owner_per_epoch();
}

/// libfaketime, which shifts the clocks of a process it is preloaded into
/// (`FAKETIME=-10m`), or `None` (after one line) if it is not installed and
/// PostgreSQL is not required. Checked to work on `date`.
fn faketime() -> Option<String> {
    let found = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ]
    .iter()
    .map(|dir| format!("{dir}/faketime/libfaketimeMT.so.1"))
    .find(|path| std::path::Path::new(path).exists());
    let Some(library) = found else {
        assert!(
            std::env::var("TCC_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "TCC_REQUIRE_POSTGRES=1 but libfaketime is not installed (apt-get install faketime)"
        );
        eprintln!("clock skew test skipped: no libfaketime (apt-get install faketime)");
        return None;
    };
    let now = |shift: Option<&str>| -> i64 {
        let mut date = Command::new("date");
        date.arg("+%s");
        if let Some(shift) = shift {
            date.env("LD_PRELOAD", &library).env("FAKETIME", shift);
        }
        let output = date.output().expect("run date");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("seconds")
    };
    let skew = now(None) - now(Some("-10m"));
    assert!(
        (590..=610).contains(&skew),
        "libfaketime shifts `date` by {skew} s, not 600"
    );
    Some(library)
}

/// Coordinators whose clocks are 10 minutes apart, both ways: one holds a
/// transfer (paused inside its Try, renewing its lease) with its clock 10
/// minutes behind; a `recover` with its clock 10 minutes ahead does not
/// take it, however long it waits. Once the holder is killed, its lease
/// expires on the database's clock and a `recover` 10 minutes ahead
/// finishes the transfer within a few leases: none lasts forever.
#[test]
fn clocks_minutes_apart_neither_steal_a_lease_early_nor_keep_one_forever() {
    let Some(cluster) = Cluster::get() else {
        return;
    };
    let Some(library) = faketime() else {
        return;
    };
    let behind = [("LD_PRELOAD", library.as_str()), ("FAKETIME", "-10m")];
    let ahead = [("LD_PRELOAD", library.as_str()), ("FAKETIME", "+10m")];
    let fencing = Fencing::new(cluster);
    let mut bank = new_bank(&fencing, "4");
    let mut holder = bank.start(
        "run",
        &["--workers", "1", "--transfers", "1", "--seed", "5"],
        &[behind[0], behind[1], ("TCC_BANK_PAUSE_AT", "before-try")],
    );
    let marker = holder.wait_for("paused at before-try ");
    let tx = marker
        .strip_prefix("paused at before-try ")
        .expect("a transaction id")
        .to_owned();

    // `recover` waits up to twice the lease and 5 s, then says the transfer
    // is still unfinished: it never claimed it.
    let mut recover = bank.start("recover", &[], &ahead);
    let status = recover.wait(bank::PATIENCE);
    let stderr = recover.stderr_text();
    assert!(
        !status.success() && stderr.contains("1 transactions are still unfinished"),
        "recover ten minutes ahead left the held transfer alone ({status}): {stderr}"
    );
    let owners = fencing.owners_of(&tx);
    let first = &owners[0].1;
    assert!(
        owners.iter().all(|(_, owner, _)| owner == first),
        "{tx} stayed its first owner's: {owners:?}"
    );
    assert!(
        owners.len() > 2,
        "the holder renewed its lease meanwhile: {owners:?}"
    );

    assert!(holder.kill().is_none(), "the holder was still running");
    let killed = Instant::now();
    let mut recover = bank.start("recover", &[], &ahead);
    let status = recover.wait(bank::PATIENCE);
    assert!(status.success(), "recover: {}", recover.stderr_text());
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "recover took {took:?} after the kill, with leases of {LEASE} s"
    );
    assert_eq!(fencing.outcome_of(&tx), Some(1), "{tx} cancelled");
    recover_and_check(&mut bank, &BTreeSet::new());
    fencing.check_one_owner_per_epoch();
}

/// Two coordinators under load while PostgreSQL is restarted with `pg_ctl
/// restart -m immediate` (a crash of the server; on a cluster of the test's
/// own): the transfers in flight fail and are left to recovery, the
/// coordinators reconnect by themselves and confirm transfers again, and
/// once they are killed and `recover` has run, every acknowledged transfer
/// stands and the bank adds up.
#[test]
fn postgres_restarted_under_two_coordinators_costs_retries_never_an_outcome() {
    let Some(cluster) = Cluster::private() else {
        return;
    };
    let fencing = Fencing::new(&cluster);
    let mut bank = new_bank(&fencing, "6");
    let mut running: Vec<Running> = (0..2)
        .map(|seed| bank.start("run", &["--workers", "8", "--seed", &seed.to_string()], &[]))
        .collect();
    for coordinator in &mut running {
        coordinator.wait_for("confirmed ");
    }
    cluster.restart_immediate();
    for coordinator in &mut running {
        // What was printed before the restart; then some confirmed after.
        let before: Vec<String> = coordinator.lines.try_iter().collect();
        coordinator.seen.extend(before);
        for _ in 0..3 {
            coordinator.wait_for("confirmed ");
        }
    }
    let mut acknowledged = BTreeSet::new();
    acknowledged.extend(kill_all(&mut running));
    recover_and_check(&mut bank, &acknowledged);
    fencing.check_one_owner_per_epoch();
    println!(
        "{} transfers confirmed across the restart",
        acknowledged.len()
    );
}
