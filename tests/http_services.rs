//! `examples/http_services.rs` run as it is meant to be: an order
//! coordinator and two participant services, each a child process on
//! localhost, under load from concurrent clients, while
//!
//! - the coordinator is killed with SIGKILL at random instants and started
//!   again: the recovery it runs at start finishes every transaction;
//! - a participant is killed with SIGKILL at random instants and started
//!   again after a pause: the coordinator retries its phases until it
//!   answers;
//! - a proxy between the coordinator and a participant hangs up
//!   connections mid-request, before or after the participant saw the
//!   request: the coordinator retries, and the barrier answers repeats.
//!
//! Each ends with the example's audit (nothing held or frozen, every book
//! sold paid for in the same transaction and the other way round, nothing
//! created or lost) and with every order the coordinator answered: a
//! confirmed one sold and paid, a cancelled one neither.
//!
//! The example's binary is built by `cargo test`; `cargo test --test
//! http_services` alone does not build it (`cargo build --example
//! http_services` first).

#[path = "common/bank.rs"]
mod bank;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bank::{Random, example_named};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A free port on 127.0.0.1: bound, read, and let go (a service of the
/// example binds it again at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The three services, their files and ports.
struct Services {
    dir: tempfile::TempDir,
    binary: PathBuf,
    stock: Option<Child>,
    payments: Option<Child>,
    coordinator: Option<Child>,
    stock_port: u16,
    payments_port: u16,
    /// Where the coordinator sends the payments service's phases: its own
    /// port, or a proxy's.
    payments_via: u16,
    coordinator_port: u16,
    /// Numbers the children's stderr files.
    started: usize,
}

impl Services {
    fn new() -> Services {
        let payments_port = free_port();
        Services {
            dir: tempfile::tempdir().unwrap(),
            binary: example_named("http_services"),
            stock: None,
            payments: None,
            coordinator: None,
            stock_port: free_port(),
            payments_port,
            payments_via: payments_port,
            coordinator_port: free_port(),
            started: 0,
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// Starts `args` and waits until it listens.
    fn start(&mut self, args: &[String]) -> Child {
        self.started += 1;
        let stderr = std::fs::File::create(self.file(&format!("stderr-{}", self.started))).unwrap();
        let mut child = Command::new(&self.binary)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("the example runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("listening on"),
            "{args:?} said {line:?}; its stderr is in {}",
            self.dir.path().display()
        );
        child
    }

    fn start_stock(&mut self) {
        let args = [
            "stock".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.stock_port),
            "--db".into(),
            self.file("stock.db"),
        ];
        self.stock = Some(self.start(&args));
    }

    fn start_payments(&mut self) {
        let args = [
            "payments".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.payments_port),
            "--db".into(),
            self.file("payments.db"),
        ];
        self.payments = Some(self.start(&args));
    }

    /// Starts the coordinator: it listens once its recovery finished
    /// whatever the log held unfinished.
    fn start_coordinator(&mut self) {
        let args = [
            "coordinator".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.coordinator_port),
            "--log".into(),
            self.file("orders.log"),
            "--stock".into(),
            format!("http://127.0.0.1:{}/stock", self.stock_port),
            "--payments".into(),
            format!("http://127.0.0.1:{}/payments", self.payments_via),
        ];
        self.coordinator = Some(self.start(&args));
    }

    fn start_all(&mut self) {
        self.start_stock();
        self.start_payments();
        self.start_coordinator();
    }

    /// How many times a coordinator said it recovered transactions.
    fn recoveries(&self) -> usize {
        (1..=self.started)
            .filter(|n| {
                std::fs::read_to_string(self.file(&format!("stderr-{n}")))
                    .unwrap_or_default()
                    .contains("recovered")
            })
            .count()
    }

    fn stop_all(&mut self) {
        for child in [&mut self.stock, &mut self.payments, &mut self.coordinator] {
            if let Some(mut child) = child.take() {
                kill(&mut child);
            }
        }
    }

    /// The audit's problems; panics if it cannot run.
    fn audit(&self) -> (bool, String) {
        let output = Command::new(&self.binary)
            .args(["audit", "--stock"])
            .arg(self.file("stock.db"))
            .arg("--payments")
            .arg(self.file("payments.db"))
            .output()
            .expect("the audit runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    }

    /// Every sold and every paid transaction id.
    fn sold_and_paid(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let ids = |file: &str, table: &str| -> BTreeSet<String> {
            let db = rusqlite::Connection::open(self.file(file)).unwrap();
            let mut statement = db
                .prepare(&format!("SELECT transaction_id FROM {table}"))
                .unwrap();
            statement
                .query_map([], |row| row.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        (ids("stock.db", "sales"), ids("payments.db", "paid"))
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

/// The answers the coordinator gave: confirmed and cancelled transaction
/// ids (an order whose answer never came, its coordinator killed, is in
/// neither).
#[derive(Default)]
struct Answers {
    confirmed: BTreeSet<String>,
    cancelled: BTreeSet<String>,
}

/// Clients sending orders to the coordinator until `stop`: random
/// customers and quantities, so some are refused for want of stock or
/// money.
fn load(port: u16, clients: usize, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Answers>> {
    (0..clients)
        .map(|client_number| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                let mut answers = Answers::default();
                let mut n = client_number as u64;
                while !stop.load(Ordering::Relaxed) {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let customer = if n >> 62 == 0 { "bob" } else { "ada" };
                    let quantity = 1 + (n >> 33) % 3;
                    let sent = client
                        .post(format!("http://127.0.0.1:{port}/orders"))
                        .json(&json!({ "customer": customer, "quantity": quantity }))
                        .send()
                        .await;
                    let Ok(response) = sent else {
                        // The coordinator is down: try again shortly.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let status = response.status().as_u16();
                    let Ok(answer) = response.json::<serde_json::Value>().await else {
                        continue;
                    };
                    let id = answer["transaction_id"].as_str().unwrap_or("").to_owned();
                    match status {
                        201 => answers.confirmed.insert(id),
                        409 => answers.cancelled.insert(id),
                        other => panic!("the coordinator answered {other}: {answer}"),
                    };
                }
                answers
            })
        })
        .collect()
}

/// Stops the load and gathers its answers.
async fn answers(stop: &AtomicBool, clients: Vec<tokio::task::JoinHandle<Answers>>) -> Answers {
    stop.store(true, Ordering::Relaxed);
    let mut all = Answers::default();
    for client in clients {
        let answers = client.await.expect("a client panicked");
        all.confirmed.extend(answers.confirmed);
        all.cancelled.extend(answers.cancelled);
    }
    all
}

/// The end of every test: every transaction finished (the coordinator
/// started again recovers what is left before it listens), the audit, and
/// each answer given stands.
fn check(services: &mut Services, answers: &Answers) {
    if let Some(mut coordinator) = services.coordinator.take() {
        kill(&mut coordinator);
    }
    services.start_coordinator();
    services.stop_all();
    let (passed, audit) = services.audit();
    assert!(passed, "the audit failed:\n{audit}");
    let (sold, paid) = services.sold_and_paid();
    assert_eq!(sold, paid, "{audit}");
    assert!(
        !answers.confirmed.is_empty() && !answers.cancelled.is_empty(),
        "the load saw {} confirmed and {} cancelled orders",
        answers.confirmed.len(),
        answers.cancelled.len()
    );
    let lost: Vec<_> = answers.confirmed.difference(&sold).collect();
    assert!(lost.is_empty(), "confirmed orders not sold: {lost:?}");
    let applied: Vec<_> = answers.cancelled.intersection(&sold).collect();
    assert!(applied.is_empty(), "cancelled orders sold: {applied:?}");
    println!(
        "{} confirmed, {} cancelled answered; {} sold in all",
        answers.confirmed.len(),
        answers.cancelled.len(),
        sold.len()
    );
}

#[test]
fn the_demo_runs_and_its_audit_passes() {
    let output = Command::new(example_named("http_services"))
        .output()
        .expect("the example runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(text.matches("201 Created confirmed").count(), 2, "{text}");
    assert_eq!(text.matches("409 Conflict cancelled").count(), 2, "{text}");
    assert!(text.contains("0 problems"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_at_random_instants_finishes_every_transaction_on_recovery() {
    let mut random = Random::new();
    let mut services = Services::new();
    services.start_all();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(services.coordinator_port, 8, stop.clone());
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100 + random.below(400))).await;
        let mut coordinator = services.coordinator.take().unwrap();
        kill(&mut coordinator);
        services.start_coordinator();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answers = answers(&stop, clients).await;
    check(&mut services, &answers);
    assert!(
        services.recoveries() > 0,
        "no kill left a transaction for recovery: the test proved nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_killed_and_started_again_is_retried_until_it_answers() {
    let mut random = Random::new();
    let mut services = Services::new();
    services.start_all();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(services.coordinator_port, 8, stop.clone());
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(100 + random.below(300))).await;
        let down = Duration::from_millis(100 + random.below(600));
        if round % 2 == 0 {
            kill(services.stock.as_mut().unwrap());
            tokio::time::sleep(down).await;
            services.start_stock();
        } else {
            kill(services.payments.as_mut().unwrap());
            tokio::time::sleep(down).await;
            services.start_payments();
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answers = answers(&stop, clients).await;
    check(&mut services, &answers);
}

/// Copies `from` to `to` until `from` ends, or, with a `budget`, until
/// that many bytes went through: then it stops, mid-message as likely as
/// not. Says whether it was cut short.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut budget: Option<usize>,
) -> bool {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return false;
        };
        if read == 0 {
            return false;
        }
        let through = budget.map_or(read, |left| read.min(left));
        if to.write_all(&buffer[..through]).await.is_err() {
            return false;
        }
        if let Some(left) = &mut budget {
            *left -= through;
            if *left == 0 {
                return true;
            }
        }
    }
}

/// A proxy on `listen` to `to` that hangs up seven connections in eight,
/// each after a random number of bytes of requests (the participant never
/// sees the last one whole) or of answers (it may have committed, and the
/// coordinator sees the connection lost). Connections are kept alive
/// between requests, so a cut can come at any request on one. Returns how
/// many it hung up.
async fn hanging_up_proxy(listen: tokio::net::TcpListener, to: u16) -> Arc<Mutex<u64>> {
    let hung_up = Arc::new(Mutex::new(0));
    let count = hung_up.clone();
    tokio::spawn(async move {
        let mut n: u64 = 1;
        loop {
            let Ok((inbound, _)) = listen.accept().await else {
                continue;
            };
            let mut next = || {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                n >> 33
            };
            let cut = next() % 8 != 0;
            let requests = cut.then(|| 100 + next() as usize % 1500);
            let answers = cut.then(|| 50 + next() as usize % 800);
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", to)).await else {
                    return;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                // Whichever way ends first ends the connection: both
                // sockets are dropped, and each side sees it closed.
                let cut = tokio::select! {
                    cut = relay(in_read, out_write, requests) => cut,
                    cut = relay(out_read, in_write, answers) => cut,
                };
                if cut {
                    *count.lock().unwrap() += 1;
                }
            });
        }
    });
    hung_up
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_hung_up_mid_request_are_retried_and_repeats_answered_by_the_barrier() {
    let mut services = Services::new();
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    services.payments_via = proxy.local_addr().unwrap().port();
    // The proxy runs to the end of the test: the last restart's recovery
    // reaches the participant through it too.
    let hung_up = hanging_up_proxy(proxy, services.payments_port).await;
    services.start_all();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(services.coordinator_port, 8, stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let answers = answers(&stop, clients).await;
    check(&mut services, &answers);
    let hung_up = *hung_up.lock().unwrap();
    assert!(hung_up > 0, "the proxy hung up no connection");
    println!("{hung_up} connections hung up");
}
