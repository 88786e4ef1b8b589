//! TCC over HTTP (issue 20), on localhost.
//!
//! ```sh
//! cargo bench --bench http
//! ```
//!
//! 1. One remote phase against a bare HTTP request of the same size: one
//!    client, one request at a time, medians of several runs, alternating.
//!    - *bare*: `POST` of the same JSON body with the same three headers to
//!      an axum route that answers at once, through the same
//!      `reqwest::Client`;
//!    - *remote phase*: a `tcc!` transaction of one [`tcc::http::Remote`]
//!      (its Try and its Confirm: two phases, so the time per phase is half
//!      a transaction's), served by [`tcc::http::participant`] with no-op
//!      handlers: each phase is the barrier's transaction on SQLite (WAL),
//!      its row written and committed. Twice: with `synchronous=NORMAL` (a
//!      commit is not flushed to disk: what the protocol and the barrier
//!      cost) and with `synchronous=FULL` (each commit flushed: what a
//!      durable participant costs on this disk).
//! 2. `examples/http_services.rs` under load: its coordinator and two
//!    participants, each a process of its own (this bench's binary, started
//!    again with `TCC_BENCH_HTTP_ROLE`), 64 callers sending orders for a few
//!    seconds: orders/s, and how many were confirmed. Stock and money are
//!    raised so that nothing runs out.
//!
//! `cargo test --benches` (CI) passes no `--bench`: a tiny run of each, in
//! seconds, that only proves the bench works.

#[path = "../examples/http_services.rs"]
#[allow(dead_code)]
mod http_services;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tcc::http::{Call, Remote, participant};
use tcc::tcc;

const ROLE: &str = "TCC_BENCH_HTTP_ROLE";
const DIR: &str = "TCC_BENCH_HTTP_DIR";

struct Sizes {
    /// Requests of one run of (1).
    requests: usize,
    runs: usize,
    /// How long (2) runs.
    load_for: Duration,
}

const FULL: Sizes = Sizes {
    requests: 2_000,
    runs: 5,
    load_for: Duration::from_secs(5),
};

const TINY: Sizes = Sizes {
    requests: 20,
    runs: 1,
    load_for: Duration::from_millis(300),
};

const CALLERS: usize = 64;

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        child(&role);
        return;
    }
    let full = std::env::args().any(|arg| arg == "--bench");
    let sizes = if full { FULL } else { TINY };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    runtime.block_on(one_phase(&sizes, dir.path()));
    runtime.block_on(example(&sizes, dir.path()));
}

/// (1)
async fn one_phase(sizes: &Sizes, dir: &std::path::Path) {
    let bare = serve(Router::new().route(
        "/bare",
        post(|| async {
            (
                [("content-type", "application/json")],
                r#"{"outcome":"ran"}"#,
            )
        }),
    ))
    .await;
    // The protocol alone: the same routes, the `Branch` extractor and the
    // body read, no database.
    let protocol = |branch: tcc::http::Branch, body: axum::body::Bytes| async move {
        let _: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let _ = branch;
        (
            [("content-type", "application/json")],
            r#"{"outcome":"ran"}"#,
        )
    };
    let no_database = serve(
        Router::new().nest(
            "/p",
            Router::new()
                .route("/try", post(protocol))
                .route("/confirm", post(protocol)),
        ),
    )
    .await;
    let mut participants = vec![(
        "no database (the protocol alone)",
        format!("http://{no_database}/p"),
    )];
    for (name, synchronous) in [
        (
            "barrier on SQLite, synchronous=NORMAL",
            SqliteSynchronous::Normal,
        ),
        (
            "barrier on SQLite, synchronous=FULL",
            SqliteSynchronous::Full,
        ),
    ] {
        let options = SqliteConnectOptions::from_str(&format!(
            "sqlite://{}",
            dir.join(format!("{synchronous:?}.db")).display()
        ))
        .unwrap()
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous);
        let pool = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .unwrap();
        tcc::barrier::sqlx::sqlite::migrate(&pool).await.unwrap();
        // Phases that do nothing but pass the barrier.
        let router = participant(
            pool,
            |_, _: Call<serde_json::Value>| Box::pin(async { Ok(()) }),
            |_, _: Call<serde_json::Value>| Box::pin(async { Ok(()) }),
            |_, _: Call<serde_json::Value>| Box::pin(async { Ok(()) }),
        );
        let at = serve(Router::new().nest("/p", router)).await;
        participants.push((name, format!("http://{at}/p")));
    }
    let client = reqwest::Client::new();
    let body = json!({ "quantity": 1 });
    let id = tcc::TransactionId::generate().to_string();

    let mut bare_us = Vec::new();
    let mut remote_us: Vec<Vec<f64>> = vec![Vec::new(); participants.len()];
    for _ in 0..sizes.runs {
        let started = Instant::now();
        for _ in 0..sizes.requests {
            let answer = client
                .post(format!("http://{bare}/bare"))
                .header(tcc::http::TRANSACTION_ID, &id)
                .header(tcc::http::SERVICE, "p")
                .header(tcc::http::PHASE, "confirm")
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert!(answer.status().is_success());
            answer.bytes().await.unwrap();
        }
        bare_us.push(started.elapsed().as_secs_f64() * 1e6 / sizes.requests as f64);
        for ((_, url), times) in participants.iter().zip(&mut remote_us) {
            let started = Instant::now();
            for _ in 0..sizes.requests / 2 {
                tcc! { Remote::new("p", url.as_str(), body.clone(), &client) }
                    .await
                    .unwrap();
            }
            // Two phases a transaction.
            times.push(started.elapsed().as_secs_f64() * 1e6 / (sizes.requests / 2 * 2) as f64);
        }
    }
    let bare = median(bare_us.clone());
    println!("| (1) one request at a time | runs, µs | median, µs | against bare |");
    println!("|---|---|---|---|");
    println!(
        "| bare HTTP request | {} | {bare:.0} | 1.00 |",
        list(&bare_us)
    );
    for ((name, _), times) in participants.iter().zip(remote_us) {
        let phase = median(times.clone());
        println!(
            "| remote phase, {name} | {} | {phase:.0} | {:.2} |",
            list(&times),
            phase / bare
        );
    }
    println!();
}

/// (2)
async fn example(sizes: &Sizes, dir: &std::path::Path) {
    let stock = spawn("stock", dir);
    let payments = spawn("payments", dir);
    let coordinator = spawn_with(
        "coordinator",
        dir,
        &[
            ("TCC_BENCH_HTTP_STOCK", format!("http://{}/stock", stock.1)),
            (
                "TCC_BENCH_HTTP_PAYMENTS",
                format!("http://{}/payments", payments.1),
            ),
        ],
    );
    let at = coordinator.1.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (confirmed, answered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = reqwest::Client::new();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (stop, confirmed, answered) = (stop.clone(), confirmed.clone(), answered.clone());
            let (client, at) = (client.clone(), at.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let answer = client
                        .post(format!("http://{at}/orders"))
                        .json(&json!({ "customer": "ada", "quantity": 1 }))
                        .send()
                        .await
                        .unwrap();
                    if answer.status().as_u16() == 201 {
                        confirmed.fetch_add(1, Ordering::Relaxed);
                    }
                    answer.bytes().await.unwrap();
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // A second to warm up (connections, tables), then the measure.
    tokio::time::sleep(sizes.load_for / 5).await;
    let (before, confirmed_before) = (
        answered.load(Ordering::Relaxed),
        confirmed.load(Ordering::Relaxed),
    );
    let started = Instant::now();
    tokio::time::sleep(sizes.load_for).await;
    let (after, confirmed_after) = (
        answered.load(Ordering::Relaxed),
        confirmed.load(Ordering::Relaxed),
    );
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    for (mut child, _) in [stock, payments, coordinator] {
        let _ = child.kill();
        let _ = child.wait();
    }
    println!(
        "| (2) examples/http_services.rs, {CALLERS} callers | {:.0} orders/s | {:.0} confirmed/s |",
        (after - before) as f64 / elapsed,
        (confirmed_after - confirmed_before) as f64 / elapsed
    );
}

/// Serves `router` on an ephemeral port of this process.
async fn serve(router: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    at
}

fn spawn(role: &str, dir: &std::path::Path) -> (Child, String) {
    spawn_with(role, dir, &[])
}

/// One of the example's services, as a process of its own; and where it
/// listens.
fn spawn_with(role: &str, dir: &std::path::Path, env: &[(&str, String)]) -> (Child, String) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env(ROLE, role)
        .env(DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let at = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{role} said {line:?}"))
        .to_owned();
    (child, at)
}

/// A child: one of the example's services, with stock and money raised.
fn child(role: &str) {
    let dir = std::path::PathBuf::from(std::env::var(DIR).unwrap());
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let router = match role {
            "stock" => {
                let db = http_services::open(&file("stock.db")).await.unwrap();
                let router = http_services::stock(db.clone()).await.unwrap();
                sqlx::query("UPDATE stock SET free = 1000000000, initial = 1000000000")
                    .execute(&db)
                    .await
                    .unwrap();
                router
            }
            "payments" => {
                let db = http_services::open(&file("payments.db")).await.unwrap();
                let router = http_services::payments(db.clone()).await.unwrap();
                sqlx::query("UPDATE wallets SET balance = 1000000000000, initial = 1000000000000")
                    .execute(&db)
                    .await
                    .unwrap();
                router
            }
            "coordinator" => http_services::coordinator(
                &file("orders.log"),
                std::env::var("TCC_BENCH_HTTP_STOCK").unwrap(),
                std::env::var("TCC_BENCH_HTTP_PAYMENTS").unwrap(),
            )
            .await
            .unwrap(),
            other => panic!("unknown role {other}"),
        };
        http_services::serve("127.0.0.1:0", router).await.unwrap();
    });
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect::<Vec<_>>()
        .join(" / ")
}
