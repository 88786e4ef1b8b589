//! What the participant barrier costs a phase: one phase's transaction with
//! one business `UPDATE`, without the barrier (`plain`), through
//! `run_branch` for a new branch (`first`, the common case: one barrier
//! statement), and for a branch whose phase already ran (`duplicate`: the
//! business statement is skipped).
//!
//! `cargo bench --bench barrier`; SQLite only with `-- sqlite`. The
//! PostgreSQL cases run against the tests' throwaway cluster and are left
//! out when PostgreSQL is not installed.

use std::sync::atomic::{AtomicU32, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use rusqlite::{Connection, TransactionBehavior};
use tcc::barrier::{BarrierError, Branch, postgres, sqlite};
use tcc::{Phase, TransactionId};

#[path = "../tests/barrier/cluster.rs"]
#[allow(dead_code)]
mod cluster;

/// A SQLite file in WAL mode, as a service would run it.
fn sqlite_db() -> (Connection, std::path::PathBuf) {
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "tcc-barrier-bench-{}-{}.db",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE accounts (id INTEGER PRIMARY KEY, frozen INTEGER);
         INSERT INTO accounts VALUES (1, 0);",
    )
    .unwrap();
    sqlite::migrate(&conn).unwrap();
    (conn, path)
}

const FREEZE: &str = "UPDATE accounts SET frozen = frozen + 1 WHERE id = 1";

fn sqlite_cases(c: &mut Criterion) {
    let mut group = c.benchmark_group("sqlite");
    let (mut conn, path) = sqlite_db();
    group.bench_function("plain", |b| {
        b.iter(|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .unwrap();
            tx.execute(FREEZE, []).unwrap();
            tx.commit().unwrap();
        })
    });
    group.bench_function("first", |b| {
        b.iter(|| {
            let branch = Branch::new(TransactionId::generate(), "wallet", Phase::Try);
            sqlite::run_branch(&mut conn, &branch, |tx| {
                tx.execute(FREEZE, []).map_err(BarrierError::from)
            })
            .unwrap()
        })
    });
    let done = Branch::new(TransactionId::generate(), "wallet", Phase::Try);
    sqlite::run_branch(&mut conn, &done, |tx| {
        tx.execute(FREEZE, []).map_err(BarrierError::from)
    })
    .unwrap();
    group.bench_function("duplicate", |b| {
        b.iter(|| {
            sqlite::run_branch(&mut conn, &done, |tx| {
                tx.execute(FREEZE, []).map_err(BarrierError::from)
            })
            .unwrap()
        })
    });
    group.finish();
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn postgres_cases(c: &mut Criterion) {
    let Some(cluster) = cluster::Cluster::get() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut client = runtime.block_on(async {
        let client = cluster.connect("bench").await;
        client
            .batch_execute(
                "DROP TABLE IF EXISTS accounts; DROP TABLE IF EXISTS tcc_barrier;
                 CREATE TABLE accounts (id integer PRIMARY KEY, frozen integer);
                 INSERT INTO accounts VALUES (1, 0);",
            )
            .await
            .unwrap();
        postgres::migrate(&client).await.unwrap();
        client
    });
    let mut group = c.benchmark_group("postgres");
    group.bench_function("plain", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let tx = client.transaction().await.unwrap();
                tx.execute(FREEZE, &[]).await.unwrap();
                tx.commit().await.unwrap();
            })
        })
    });
    group.bench_function("first", |b| {
        b.iter(|| {
            let branch = Branch::new(TransactionId::generate(), "wallet", Phase::Try);
            runtime
                .block_on(postgres::run_branch(&mut client, &branch, |tx| {
                    Box::pin(
                        async move { tx.execute(FREEZE, &[]).await.map_err(BarrierError::from) },
                    )
                }))
                .unwrap()
        })
    });
    let done = Branch::new(TransactionId::generate(), "wallet", Phase::Try);
    let run = |client: &mut tokio_postgres::Client| {
        runtime.block_on(postgres::run_branch(client, &done, |tx| {
            Box::pin(async move { tx.execute(FREEZE, &[]).await.map_err(BarrierError::from) })
        }))
    };
    run(&mut client).unwrap();
    group.bench_function("duplicate", |b| b.iter(|| run(&mut client).unwrap()));
    group.finish();
}

criterion_group!(benches, sqlite_cases, postgres_cases);
criterion_main!(benches);
