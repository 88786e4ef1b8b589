//! The PostgreSQL log's test setup, shared by `tests/durable_store.rs` and
//! `tests/durable_postgres.rs`: the throwaway cluster of the barrier's tests
//! (one per test binary), a fresh schema per log, and pools on it.
//!
//! Without PostgreSQL server binaries [`cluster::Cluster::get`] prints one
//! line and returns `None` (the tests then pass), unless
//! `TCC_REQUIRE_POSTGRES=1`.

#![allow(dead_code)]

#[path = "../barrier/cluster.rs"]
pub mod cluster;

use std::sync::atomic::{AtomicU32, Ordering};

use cluster::Cluster;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tcc::durable::{PostgresLog, PostgresOptions};

/// A schema name no other log of this test binary has.
pub fn fresh_schema(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A pool of up to `size` connections whose `search_path` is `schema`,
/// named `tcc-log` in `pg_stat_activity`. They commit with
/// `synchronous_commit` on, which the log requires (the test cluster has
/// it off for the barrier's tests, and fsync off, so it costs nothing).
pub fn pool(cluster: &Cluster, schema: &str, size: usize) -> Pool {
    pool_with(cluster, schema, size, "tcc-log", "")
}

/// A pool as [`pool`]'s, its connections named `name` in
/// `pg_stat_activity` (so that no other test's helper that looks for
/// `tcc-log` picks them), with the server settings `settings` added
/// (`-c name=value ...`).
pub fn pool_with(cluster: &Cluster, schema: &str, size: usize, name: &str, settings: &str) -> Pool {
    let mut config = cluster.config(schema);
    config.options(format!(
        "-c search_path={schema} -c synchronous_commit=on {settings}"
    ));
    config.application_name(name);
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .expect("a pool on the test cluster")
}

/// A migrated, empty schema and a pool on it.
pub async fn migrated(cluster: &Cluster, prefix: &str) -> (String, Pool) {
    let schema = fresh_schema(prefix);
    // Creates the schema.
    cluster.connect(&schema).await;
    let pool = pool(cluster, &schema, 4);
    PostgresLog::migrate(&pool).await.expect("migrate");
    (schema, pool)
}

/// A log on a fresh schema.
pub async fn open(cluster: &Cluster, options: PostgresOptions) -> PostgresLog {
    let (_, pool) = migrated(cluster, "log").await;
    options.open(pool).await.expect("open the log")
}
