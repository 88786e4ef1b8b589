//! TCC over HTTP: an order coordinator and two participant services, each a
//! process of its own on localhost.
//!
//! - `stock` holds books (SQLite through sqlx): Try holds the quantity,
//!   Confirm sells it, Cancel puts it back.
//! - `payments` holds the customers' money (SQLite through sqlx): Try
//!   freezes the price, Confirm takes it, Cancel unfreezes it.
//! - `coordinator` takes `POST /orders` (`{"customer", "quantity"}`) and runs
//!   one durable TCC transaction over the two, each a [`tcc::http::Remote`];
//!   its log is an embedded file, and recovery finishes what a crash left.
//!
//! Each participant is [`tcc::http::participant`]: three handlers, each run
//! in the service's own database transaction through the barrier, so a
//! repeated phase, a Cancel with no Try and a Try after its Cancel are
//! answered without the handler running.
//!
//! `cargo run --example http_services` runs a demo: it starts the three
//! services as child processes of this binary, sends a few orders (two
//! confirmed, one cancelled for want of stock, one for want of money),
//! prints the answers, audits the two databases and stops. The commands,
//! used by `tests/http_services.rs`:
//!
//! ```text
//! http_services stock       --listen ADDR --db FILE
//! http_services payments    --listen ADDR --db FILE
//! http_services coordinator --listen ADDR --log FILE --stock URL --payments URL
//! http_services audit       --stock FILE --payments FILE
//! ```
//!
//! A service prints `listening on ADDR` once it serves (`--listen
//! 127.0.0.1:0` picks a port). `audit` checks, once every transaction has
//! ended: nothing held or frozen; every book sold was paid for, at the
//! price, in the same transaction, and the other way round; and no book or
//! cent appeared or vanished. It prints what it found and exits non-zero
//! on a violation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tcc::barrier::sqlx::sqlite as barrier;
use tcc::durable::LogErrorKind;
use tcc::http::{Call, PhaseError, Remote, participant};
use tcc::{BoxError, ErrorKind, RetryPolicy, TransactionLog, tcc};

/// The price of a book, in cents.
pub const PRICE: i64 = 300;
/// Books in stock when the stock database is made.
pub const BOOKS: i64 = 1_000;
/// The customers, and the cents each has when the payments database is
/// made.
pub const CUSTOMERS: [(&str, i64); 2] = [("ada", 1_000_000), ("bob", 1_000)];

// ---------------------------------------------------------------------------
// The participants.

/// Opens (making it if missing) a SQLite database: WAL, and a busy timeout
/// long enough for a coordinator's burst.
pub async fn open(file: &str) -> Result<SqlitePool, BoxError> {
    let options = SqliteConnectOptions::from_str(file)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    barrier::migrate(&pool).await?;
    Ok(pool)
}

/// What the coordinator sends the stock service.
#[derive(Clone, Debug, Deserialize)]
struct Books {
    quantity: i64,
}

pub async fn stock(db: SqlitePool) -> Result<Router, BoxError> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS stock (free INTEGER NOT NULL, held INTEGER NOT NULL,
                                           initial INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS sales (transaction_id TEXT PRIMARY KEY,
                                           quantity INTEGER NOT NULL);",
    )
    .execute(&db)
    .await?;
    sqlx::query("INSERT INTO stock SELECT ?1, 0, ?1 WHERE NOT EXISTS (SELECT 1 FROM stock)")
        .bind(BOOKS)
        .execute(&db)
        .await?;
    let router = participant(
        db,
        |tx, call: Call<Books>| {
            Box::pin(async move {
                let held = sqlx::query("UPDATE stock SET held = held + ?1 WHERE free - held >= ?1")
                    .bind(call.body.quantity)
                    .execute(&mut **tx)
                    .await?;
                if held.rows_affected() == 0 {
                    let why = format!("{} books wanted, fewer left", call.body.quantity);
                    return Err(PhaseError::refused(why));
                }
                Ok(())
            })
        },
        |tx, call: Call<Books>| {
            Box::pin(async move {
                sqlx::query("UPDATE stock SET held = held - ?1, free = free - ?1")
                    .bind(call.body.quantity)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query("INSERT INTO sales VALUES (?1, ?2)")
                    .bind(call.branch.transaction_id().to_string())
                    .bind(call.body.quantity)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            })
        },
        |tx, call: Call<Books>| {
            Box::pin(async move {
                sqlx::query("UPDATE stock SET held = held - ?1")
                    .bind(call.body.quantity)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            })
        },
    );
    Ok(Router::new().nest("/stock", router))
}

/// What the coordinator sends the payments service.
#[derive(Clone, Debug, Deserialize)]
struct Payment {
    customer: String,
    amount: i64,
}

pub async fn payments(db: SqlitePool) -> Result<Router, BoxError> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS wallets (customer TEXT PRIMARY KEY, balance INTEGER NOT NULL,
                                             frozen INTEGER NOT NULL, initial INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS paid (transaction_id TEXT PRIMARY KEY,
                                          customer TEXT NOT NULL, amount INTEGER NOT NULL);",
    )
    .execute(&db)
    .await?;
    for (customer, cents) in CUSTOMERS {
        sqlx::query("INSERT OR IGNORE INTO wallets VALUES (?1, ?2, 0, ?2)")
            .bind(customer)
            .bind(cents)
            .execute(&db)
            .await?;
    }
    let router = participant(
        db,
        |tx, call: Call<Payment>| {
            Box::pin(async move {
                let Payment { customer, amount } = &call.body;
                let frozen = sqlx::query(
                    "UPDATE wallets SET frozen = frozen + ?2
                     WHERE customer = ?1 AND balance - frozen >= ?2",
                )
                .bind(customer)
                .bind(amount)
                .execute(&mut **tx)
                .await?;
                if frozen.rows_affected() == 0 {
                    let why = format!("{customer} cannot pay {amount} cents");
                    return Err(PhaseError::refused(why));
                }
                Ok(())
            })
        },
        |tx, call: Call<Payment>| {
            Box::pin(async move {
                let Payment { customer, amount } = &call.body;
                sqlx::query(
                    "UPDATE wallets SET balance = balance - ?2, frozen = frozen - ?2
                     WHERE customer = ?1",
                )
                .bind(customer)
                .bind(amount)
                .execute(&mut **tx)
                .await?;
                sqlx::query("INSERT INTO paid VALUES (?1, ?2, ?3)")
                    .bind(call.branch.transaction_id().to_string())
                    .bind(customer)
                    .bind(amount)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            })
        },
        |tx, call: Call<Payment>| {
            Box::pin(async move {
                let Payment { customer, amount } = &call.body;
                sqlx::query("UPDATE wallets SET frozen = frozen - ?2 WHERE customer = ?1")
                    .bind(customer)
                    .bind(amount)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            })
        },
    );
    Ok(Router::new().nest("/payments", router))
}

// ---------------------------------------------------------------------------
// The coordinator.

/// The body of `POST /orders`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Order {
    pub customer: String,
    pub quantity: i64,
}

/// The body of every answer of `POST /orders`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    /// `confirmed`, `cancelled` or `failed`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Coordinator {
    log: TransactionLog,
    client: reqwest::Client,
    stock: String,
    payments: String,
}

async fn order(
    State(coordinator): State<Arc<Coordinator>>,
    Json(order): Json<Order>,
) -> (StatusCode, Json<Answer>) {
    let Coordinator {
        log,
        client,
        stock,
        payments,
    } = &*coordinator;
    let books = json!({ "quantity": order.quantity });
    let payment = json!({ "customer": order.customer, "amount": order.quantity * PRICE });
    let result = tcc! {
        log = log;
        Remote::new("stock", stock.as_str(), books, client),
        Remote::new("payments", payments.as_str(), payment, client),
    }
    .await;
    match result {
        Ok(report) => (
            StatusCode::CREATED,
            Json(Answer {
                outcome: "confirmed".into(),
                transaction_id: Some(report.transaction_id().to_string()),
                error: None,
            }),
        ),
        Err(error) => {
            let (status, outcome) = match error.kind() {
                ErrorKind::TryFailed => (StatusCode::CONFLICT, "cancelled"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "failed"),
            };
            let answer = Answer {
                outcome: outcome.into(),
                transaction_id: error.report().map(|r| r.transaction_id().to_string()),
                error: Some(error.to_string()),
            };
            (status, Json(answer))
        }
    }
}

pub async fn coordinator(
    log_file: &str,
    stock: String,
    payments: String,
) -> Result<Router, BoxError> {
    let log = match TransactionLog::create(log_file) {
        Err(error) if error.kind() == LogErrorKind::Exists => TransactionLog::open(log_file)?,
        other => other?,
    };
    // A participant down is waited for, not given up on: retries every
    // 100 ms to 1 s for about two minutes, each attempt bounded.
    log.retry(
        RetryPolicy::default()
            .with_max_retries(150)
            .with_initial_interval(Duration::from_millis(100))
            .with_max_interval(Duration::from_secs(1)),
    )
    .attempt_timeout(Duration::from_secs(2));
    let client = reqwest::Client::new();
    log.provide(client.clone())?.register::<Remote>()?;
    // What a crash left: finished before the first order is taken, then
    // looked for again every second.
    let recovered = log.recover().await?;
    if recovered.finished > 0 {
        eprintln!("recovered {} transactions", recovered.finished);
    }
    log.spawn_recovery(Duration::from_secs(1));
    let state = Arc::new(Coordinator {
        log,
        client,
        stock,
        payments,
    });
    Ok(Router::new()
        .route("/orders", post(order))
        .with_state(state))
}

// ---------------------------------------------------------------------------
// The audit.

/// What the audit found wrong, one line each; empty when all is well.
pub async fn audit(stock_file: &str, payments_file: &str) -> Result<Vec<String>, BoxError> {
    let (stock, payments) = (open(stock_file).await?, open(payments_file).await?);
    let mut wrong = Vec::new();
    let (free, held, initial): (i64, i64, i64) =
        sqlx::query_as("SELECT free, held, initial FROM stock")
            .fetch_one(&stock)
            .await?;
    let sales: BTreeMap<String, i64> = sqlx::query_as("SELECT transaction_id, quantity FROM sales")
        .fetch_all(&stock)
        .await?
        .into_iter()
        .collect();
    let sold: i64 = sales.values().sum();
    if held != 0 {
        wrong.push(format!("{held} books still held"));
    }
    if free + sold != initial {
        wrong.push(format!(
            "{initial} books at the start, {free} left and {sold} sold"
        ));
    }
    let paid: BTreeMap<String, (String, i64)> = sqlx::query_as::<_, (String, String, i64)>(
        "SELECT transaction_id, customer, amount FROM paid",
    )
    .fetch_all(&payments)
    .await?
    .into_iter()
    .map(|(id, customer, amount)| (id, (customer, amount)))
    .collect();
    let wallets: Vec<(String, i64, i64, i64)> =
        sqlx::query_as("SELECT customer, balance, frozen, initial FROM wallets")
            .fetch_all(&payments)
            .await?;
    for (customer, balance, frozen, initial) in wallets {
        let spent: i64 = paid
            .values()
            .filter(|(who, _)| *who == customer)
            .map(|(_, amount)| amount)
            .sum();
        if frozen != 0 {
            wrong.push(format!("{customer} has {frozen} cents still frozen"));
        }
        if balance + spent != initial {
            wrong.push(format!(
                "{customer} had {initial} cents, has {balance} and paid {spent}"
            ));
        }
    }
    for (id, quantity) in &sales {
        match paid.get(id) {
            Some((_, amount)) if *amount == quantity * PRICE => {}
            Some((_, amount)) => wrong.push(format!(
                "transaction {id} sold {quantity} books for {amount} cents"
            )),
            None => wrong.push(format!("transaction {id} sold {quantity} books unpaid")),
        }
    }
    for id in paid.keys().filter(|id| !sales.contains_key(*id)) {
        wrong.push(format!("transaction {id} was paid for but sold nothing"));
    }
    println!(
        "audit: {} sales, {sold} books sold, {free} left, {} problems",
        sales.len(),
        wrong.len()
    );
    Ok(wrong)
}

// ---------------------------------------------------------------------------
// The commands.

/// Serves `router` on `listen`, printing where once it does.
pub async fn serve(listen: &str, router: Router) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}

/// The value of `--name` in `args`.
fn arg(args: &[String], name: &str) -> Result<String, BoxError> {
    args.iter()
        .position(|arg| arg == name)
        .and_then(|at| args.get(at + 1))
        .cloned()
        .ok_or_else(|| format!("{name} is missing").into())
}

/// A child process running `command` of this binary, and the address it
/// listens on.
fn start(command: &[&str]) -> Result<(Child, SocketAddr), BoxError> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(command)
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("{command:?} said {line:?}"))?
        .parse()?;
    Ok((child, address))
}

/// The demo's child processes, killed when it ends, however it ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn demo() -> Result<(), BoxError> {
    let dir = std::env::temp_dir().join(format!("tcc-http-services-{}", std::process::id()));
    // A directory of the same name is an earlier demo's that crashed.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut children = Children(Vec::new());
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (stock_db, payments_db, log) = (path("stock.db"), path("payments.db"), path("orders.log"));
    let listen = "127.0.0.1:0";
    let (stock, stock_at) = start(&["stock", "--listen", listen, "--db", &stock_db])?;
    children.0.push(stock);
    let (payments, payments_at) = start(&["payments", "--listen", listen, "--db", &payments_db])?;
    children.0.push(payments);
    let (stock_url, payments_url) = (
        format!("http://{stock_at}/stock"),
        format!("http://{payments_at}/payments"),
    );
    let (coordinator, at) = start(&[
        "coordinator",
        "--listen",
        listen,
        "--log",
        &log,
        "--stock",
        &stock_url,
        "--payments",
        &payments_url,
    ])?;
    children.0.push(coordinator);
    let client = reqwest::Client::new();
    let orders = [("ada", 2), ("bob", 3), ("ada", 2_000), ("bob", 4)];
    for (customer, quantity) in orders {
        let answer = client
            .post(format!("http://{at}/orders"))
            .json(&json!({ "customer": customer, "quantity": quantity }))
            .send()
            .await?;
        let status = answer.status();
        let answer: Answer = answer.json().await?;
        println!(
            "{customer} orders {quantity}: {status} {}{}",
            answer.outcome,
            answer.error.map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    drop(children);
    let wrong = audit(&stock_db, &payments_db).await?;
    let _ = std::fs::remove_dir_all(&dir);
    for problem in &wrong {
        println!("  {problem}");
    }
    match wrong.is_empty() {
        true => Ok(()),
        false => Err("the audit failed".into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("demo") => demo().await,
        Some("stock") => {
            let router = stock(open(&arg(&args, "--db")?).await?).await?;
            serve(&arg(&args, "--listen")?, router).await
        }
        Some("payments") => {
            let router = payments(open(&arg(&args, "--db")?).await?).await?;
            serve(&arg(&args, "--listen")?, router).await
        }
        Some("coordinator") => {
            let router = coordinator(
                &arg(&args, "--log")?,
                arg(&args, "--stock")?,
                arg(&args, "--payments")?,
            )
            .await?;
            serve(&arg(&args, "--listen")?, router).await
        }
        Some("audit") => {
            let wrong = audit(&arg(&args, "--stock")?, &arg(&args, "--payments")?).await?;
            for problem in &wrong {
                println!("  {problem}");
            }
            match wrong.is_empty() {
                true => Ok(()),
                false => Err("the audit failed".into()),
            }
        }
        Some(other) => Err(format!(
            "unknown command {other:?}: demo, stock, payments, coordinator or audit"
        )
        .into()),
    }
}
