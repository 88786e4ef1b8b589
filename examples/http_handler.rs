//! `tcc!` inside an axum handler: `POST /bookings` books a flight seat and a
//! hotel room in one durable TCC transaction, and the server mounts the
//! transaction log's admin router under `/tcc`.
//!
//! The flight and the hotel are in-memory inventories whose holds are keyed
//! by transaction id. The handler answers
//!
//! - `201 Created` with the transaction id when both are booked;
//! - `409 Conflict` with the service whose Try failed (sold out): whatever
//!   the other one held is back in stock;
//! - `500 Internal Server Error` when a Confirm or Cancel failed after all
//!   its retries: the transaction is partly applied and needs repair.
//!
//! If the client hangs up mid-transaction, hyper drops the handler's future;
//! the transaction then goes on in a task of its own and still ends with
//! every Confirm or every Cancel, so no seat or room stays held.
//!
//! Every booking is written to a transaction log in a file ([`Seats`] and
//! [`Rooms`] are recoverable services), which the server holds while it
//! runs. So the `tcc` tool reaches the log through the server: the
//! application mounts [`tcc::admin::router`] under `/tcc`, and a booking
//! that needs repair is found, shown and re-driven with
//! `tcc --url http://HOST:PORT/tcc list`, `show ID` and `retry ID`; the
//! server's recovery task (every [`RECOVERY_EVERY`]) then finishes it.
//!
//! A request may ask the server to `simulate` a slow hotel (its Try takes
//! [`SLOW_TRY`], time for a client to hang up) or an outage of the hotel's
//! bookings (its Confirm of this booking fails for [`OUTAGE`]): demo knobs
//! that a real API would not have.
//!
//! `GET /metrics` serves `tcc`'s metrics (transactions by outcome, phase
//! attempts, retries, durations: see `tcc::metrics`) in Prometheus' text
//! format, from `metrics-exporter-prometheus`'s recorder, installed once for
//! the process ([`prometheus`]).
//!
//! Run it with `cargo run --example http_handler`: it starts the server on
//! an ephemeral port of 127.0.0.1, sends it a few requests, prints the
//! answers and exits. With `-- --serve 127.0.0.1:3000` it keeps serving
//! there afterwards, until Ctrl-C, for the `tcc` tool to look at (the
//! README shows a session). `tests/http_handler.rs` sends it hundreds of
//! requests; the tcc crate's `tests/cli.rs` drives `tcc --url` against it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tcc::{
    BoxError, Context, ErrorKind, Recoverable, RetryPolicy, TransactionId, TransactionLog, tcc,
    tcc_service,
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How long a simulated slow hotel takes to answer its Try.
pub const SLOW_TRY: Duration = Duration::from_millis(300);

/// How long a simulated outage of the hotel's bookings lasts: its Confirm
/// of the booking that asked for it fails until then, long after the
/// transaction's retries gave up.
pub const OUTAGE: Duration = Duration::from_secs(3);

/// How often the server's recovery task finishes what the log holds
/// unfinished: a transaction an operator re-drives (`tcc retry`) is taken
/// by the next pass.
pub const RECOVERY_EVERY: Duration = Duration::from_secs(1);

/// How long a Try may take before the transaction gives up on it.
const TRY_TIMEOUT: Duration = Duration::from_secs(2);

/// The body of `POST /bookings`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingRequest {
    /// The client's own reference for the booking.
    pub reference: String,
    pub seats: u32,
    pub rooms: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulate: Option<Simulate>,
}

/// A fault the server simulates for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Simulate {
    /// The hotel's Try takes [`SLOW_TRY`].
    SlowHotel,
    /// The hotel's Confirm of this booking fails on every attempt for
    /// [`OUTAGE`]: the transaction needs repair, and an operator can re-drive
    /// it once the outage is over.
    HotelConfirmDown,
}

/// The body of every answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// The service that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{inventory}: {wanted} wanted, {free} free")]
    SoldOut {
        inventory: &'static str,
        wanted: u32,
        free: u32,
    },
    #[error("{0} is unavailable (an outage of its bookings)")]
    Unavailable(&'static str),
    #[error("{0} holds nothing for this transaction")]
    NothingHeld(&'static str),
}

/// Units held or booked by one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub reference: String,
    pub units: u32,
}

/// What an inventory has: units free, held by running transactions, booked.
#[derive(Clone, Debug, Default)]
pub struct Stock {
    pub free: u32,
    pub held: HashMap<TransactionId, Hold>,
    pub booked: HashMap<TransactionId, Hold>,
}

/// Seats or rooms. Try holds units for the running transaction, Confirm
/// books them, Cancel puts them back; keyed by transaction id, so a retried
/// Confirm or Cancel is harmless and a Cancel after a failed Try releases
/// nothing.
pub struct Inventory {
    name: &'static str,
    stock: Mutex<Stock>,
    /// Bookings (by reference) whose Confirm fails until then.
    outages: Mutex<HashMap<String, Instant>>,
}

/// The transaction the running phase belongs to.
fn transaction() -> TransactionId {
    Context::current()
        .expect("runs inside a phase")
        .transaction_id()
}

impl Inventory {
    pub fn new(name: &'static str, units: u32) -> Self {
        let stock = Stock {
            free: units,
            ..Stock::default()
        };
        Inventory {
            name,
            stock: Mutex::new(stock),
            outages: Mutex::default(),
        }
    }

    /// Makes the Confirm of the booking `reference` fail for `outage`.
    pub fn fail_confirms(&self, reference: &str, outage: Duration) {
        let until = Instant::now() + outage;
        self.outages
            .lock()
            .unwrap()
            .insert(reference.to_owned(), until);
    }

    pub fn stock(&self) -> Stock {
        self.stock.lock().unwrap().clone()
    }

    /// Whether a running transaction holds units for `reference`.
    pub fn holds(&self, reference: &str) -> bool {
        let stock = self.stock.lock().unwrap();
        stock.held.values().any(|hold| hold.reference == reference)
    }

    /// Try: hold `units` for this transaction.
    async fn hold(&self, reference: &str, units: u32) -> Result<(), InventoryError> {
        let mut stock = self.stock.lock().unwrap();
        let free = stock.free;
        let Some(left) = free.checked_sub(units) else {
            return Err(InventoryError::SoldOut {
                inventory: self.name,
                wanted: units,
                free,
            });
        };
        stock.free = left;
        let reference = reference.to_owned();
        stock.held.insert(transaction(), Hold { reference, units });
        Ok(())
    }

    /// Confirm: the held units are sold.
    async fn book(&self) -> Result<(), InventoryError> {
        let id = transaction();
        let mut stock = self.stock.lock().unwrap();
        if let Some(hold) = stock.held.get(&id) {
            let outages = self.outages.lock().unwrap();
            if outages
                .get(&hold.reference)
                .is_some_and(|until| Instant::now() < *until)
            {
                return Err(InventoryError::Unavailable(self.name));
            }
        }
        match stock.held.remove(&id) {
            Some(hold) => {
                stock.booked.insert(id, hold);
                Ok(())
            }
            None if stock.booked.contains_key(&id) => Ok(()), // a retry
            None => Err(InventoryError::NothingHeld(self.name)),
        }
    }

    /// Cancel: give back what this transaction holds, if anything.
    async fn release(&self) -> Result<(), InventoryError> {
        let mut stock = self.stock.lock().unwrap();
        if let Some(hold) = stock.held.remove(&transaction()) {
            stock.free += hold.units;
        }
        Ok(())
    }
}

/// The flight's part of a booking. `reference` and `units` are saved in the
/// transaction log before its Try runs; the inventory, a resource, is
/// provided again by the process that recovers it.
#[derive(Recoverable)]
#[recoverable(kind = "seats")]
pub struct Seats {
    #[recoverable(resource = "flight")]
    inventory: Arc<Inventory>,
    reference: String,
    units: u32,
}

#[tcc_service(name = "flight")]
impl Seats {
    #[try_phase]
    async fn hold(&self) -> Result<(), InventoryError> {
        self.inventory.hold(&self.reference, self.units).await
    }

    #[confirm]
    async fn book(&self) -> Result<(), InventoryError> {
        self.inventory.book().await
    }

    #[cancel]
    async fn release(&self) -> Result<(), InventoryError> {
        self.inventory.release().await
    }
}

/// The hotel's part of a booking.
#[derive(Recoverable)]
#[recoverable(kind = "rooms")]
pub struct Rooms {
    #[recoverable(resource = "hotel")]
    inventory: Arc<Inventory>,
    reference: String,
    units: u32,
    /// The demo's slow hotel: its Try takes [`SLOW_TRY`].
    slow: bool,
}

#[tcc_service(name = "hotel")]
impl Rooms {
    #[try_phase]
    async fn hold(&self) -> Result<(), InventoryError> {
        if self.slow {
            tokio::time::sleep(SLOW_TRY).await;
        }
        self.inventory.hold(&self.reference, self.units).await
    }

    #[confirm]
    async fn book(&self) -> Result<(), InventoryError> {
        self.inventory.book().await
    }

    #[cancel]
    async fn release(&self) -> Result<(), InventoryError> {
        self.inventory.release().await
    }
}

/// How Confirm and Cancel are retried, by the handler and by recovery.
fn retry_policy() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(3)
        .with_initial_interval(Duration::from_millis(20))
}

/// The server's state.
/// The process's Prometheus recorder, installed on first use (a process
/// has one recorder): what `GET /metrics` renders. Durations get histogram
/// buckets from half a millisecond to ten seconds, batch sizes powers of
/// two; without buckets the exporter renders summaries.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            let sizes: Vec<f64> = (0..11).map(|n| f64::from(1 << n)).collect();
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &seconds)
                .and_then(|builder| {
                    let batch = Matcher::Full(tcc::metrics::LOG_BATCH_SIZE.to_owned());
                    builder.set_buckets_for_metric(batch, &sizes)
                })
                .and_then(PrometheusBuilder::install_recorder)
                .expect("the buckets are not empty, and no other recorder is installed");
            // The `# HELP` lines.
            tcc::metrics::describe();
            handle
        })
        .clone()
}

pub struct AppState {
    pub flights: Arc<Inventory>,
    pub hotel: Arc<Inventory>,
    /// The transaction log: a file the server holds while it runs.
    pub log: TransactionLog,
    /// Requests whose client hung up before their transaction ended.
    pub abandoned: AtomicU32,
    /// The log's directory, removed when the state is dropped.
    directory: tempfile::TempDir,
    /// What `GET /metrics` renders.
    pub metrics: PrometheusHandle,
}

impl AppState {
    /// Inventories of `seats` and `rooms`, and a new transaction log in a
    /// directory of its own, wired to rebuild bookings after a crash.
    pub fn new(seats: u32, rooms: u32) -> Arc<Self> {
        let flights = Arc::new(Inventory::new("flight", seats));
        let hotel = Arc::new(Inventory::new("hotel", rooms));
        let directory = tempfile::tempdir().expect("a temporary directory");
        let log = TransactionLog::create(directory.path().join("bookings.redb"))
            .expect("a new log in a new directory");
        log.provide_named("flight", flights.clone())
            .and_then(|log| log.provide_named("hotel", hotel.clone()))
            .and_then(|log| log.register::<Seats>())
            .and_then(|log| log.register::<Rooms>())
            .expect("two resources and two kinds, each once");
        log.retry(retry_policy());
        Arc::new(AppState {
            flights,
            hotel,
            log,
            abandoned: AtomicU32::new(0),
            directory,
            metrics: prometheus(),
        })
    }

    /// The file of the transaction log.
    pub fn log_path(&self) -> std::path::PathBuf {
        self.directory.path().join("bookings.redb")
    }
}

/// Counts the handler as abandoned if it is dropped before [`Watch::done`].
struct Watch<'a> {
    abandoned: Option<&'a AtomicU32>,
}

impl Watch<'_> {
    fn done(mut self) {
        self.abandoned = None;
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if let Some(abandoned) = self.abandoned {
            abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The application's routes, and the transaction log's admin router under
/// `/tcc` (which an operator's `tcc --url http://HOST:PORT/tcc` reaches:
/// the server holds the log's file, so nothing else can open it). A real
/// application mounts it where only operators reach it: it has no
/// authentication of its own.
pub fn router(state: Arc<AppState>) -> Router {
    let admin = tcc::admin::router(state.log.clone());
    Router::new()
        .route("/bookings", post(create_booking))
        .route("/metrics", get(render_metrics))
        .with_state(state)
        .nest("/tcc", admin)
}

/// `POST /bookings`: a seat and a room, or neither.
async fn create_booking(
    State(state): State<Arc<AppState>>,
    Json(request): Json<BookingRequest>,
) -> (StatusCode, Json<Reply>) {
    if request.seats == 0 || request.rooms == 0 {
        let error = Some("a booking takes at least one seat and one room".to_owned());
        return (
            StatusCode::BAD_REQUEST,
            Json(Reply {
                error,
                ..Reply::default()
            }),
        );
    }
    let watch = Watch {
        abandoned: Some(&state.abandoned),
    };
    if request.simulate == Some(Simulate::HotelConfirmDown) {
        state.hotel.fail_confirms(&request.reference, OUTAGE);
    }
    let seats = Seats {
        inventory: state.flights.clone(),
        reference: request.reference.clone(),
        units: request.seats,
    };
    let rooms = Rooms {
        inventory: state.hotel.clone(),
        reference: request.reference.clone(),
        units: request.rooms,
        slow: request.simulate == Some(Simulate::SlowHotel),
    };
    // Durable: the intent (both services and their data) is written before
    // the first Try, the decision before the first Confirm or Cancel. If the
    // client hangs up, hyper drops this future; the transaction still runs
    // to its end on a task of its own.
    let outcome = tcc! {
        log = &state.log;
        retry = retry_policy();
        try_timeout = TRY_TIMEOUT;
        fail_fast = true;
        seats,
        rooms,
    }
    .await;
    watch.done();
    match outcome {
        Ok(report) => {
            let reply = Reply {
                transaction_id: Some(report.transaction_id().to_string()),
                ..Reply::default()
            };
            (StatusCode::CREATED, Json(reply))
        }
        Err(error) => {
            let status = match error.kind() {
                ErrorKind::TryFailed => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let reply = Reply {
                transaction_id: error.report().map(|r| r.transaction_id().to_string()),
                service: Some(error.service_name().to_owned()),
                error: Some(error.to_string()),
            };
            (status, Json(reply))
        }
    }
}

/// `GET /metrics`: every metric recorded so far, in Prometheus' text format.
async fn render_metrics(State(state): State<Arc<AppState>>) -> impl axum::response::IntoResponse {
    let text = "text/plain; version=0.0.4; charset=utf-8";
    ([(header::CONTENT_TYPE, text)], state.metrics.render())
}

/// Serves `state` on an ephemeral port of 127.0.0.1, on a task of its own,
/// with a task of recovery passes beside it.
pub async fn serve(state: Arc<AppState>) -> std::io::Result<SocketAddr> {
    serve_on(state, (Ipv4Addr::LOCALHOST, 0).into()).await
}

/// Serves `state` at `address`, as [`serve`] does.
pub async fn serve_on(state: Arc<AppState>, address: SocketAddr) -> std::io::Result<SocketAddr> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    // The default backlog of 128 makes a burst of clients beyond it wait
    // for a SYN retransmit (a second or more).
    let listener: TcpListener = socket.listen(1024)?;
    let address = listener.local_addr()?;
    // Finishes what the log holds unfinished: a transaction whose end could
    // not be written, and one an operator re-drove (`tcc retry`).
    state.log.spawn_recovery(RECOVERY_EVERY);
    // The recorder drains its histograms when it renders, and here every
    // few seconds as well, so that they do not grow between scrapes (a
    // recorder installed without the exporter's own listener leaves that
    // to the application).
    let metrics = state.metrics.clone();
    tokio::spawn(async move {
        let mut upkeep = tokio::time::interval(Duration::from_secs(5));
        loop {
            upkeep.tick().await;
            metrics.run_upkeep();
        }
    });
    tokio::spawn(async move {
        axum::serve(listener, router(state))
            .await
            .expect("the server runs until the runtime stops");
    });
    Ok(address)
}

/// Sends `POST /bookings` over a connection of its own. The connection is
/// driven by this future, not by a task of its own, so dropping the future
/// hangs up.
pub async fn post_booking(
    server: SocketAddr,
    booking: &BookingRequest,
) -> Result<(StatusCode, Reply), BoxError> {
    let stream = TcpStream::connect(server).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let request = Request::post("/bookings")
        .header(header::HOST, server.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(booking)?)))?;
    let exchange = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, serde_json::from_slice(&body)?))
    };
    tokio::select! {
        answer = exchange => answer,
        closed = connection => Err(match closed {
            Ok(()) => "the server closed the connection".into(),
            Err(error) => error.into(),
        }),
    }
}

fn print_stock(state: &AppState) {
    for inventory in [&state.flights, &state.hotel] {
        let stock = inventory.stock();
        let count =
            |holds: &HashMap<TransactionId, Hold>| holds.values().map(|h| h.units).sum::<u32>();
        println!(
            "  {:<6}: {} free, {} held, {} booked",
            inventory.name,
            stock.free,
            count(&stock.held),
            count(&stock.booked)
        );
    }
}

/// `--serve ADDRESS`: where to keep serving after the demo, if anywhere.
fn serve_at() -> Result<Option<SocketAddr>, BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(None),
        [flag, address] if flag == "--serve" => Ok(Some(address.parse().map_err(|_| {
            format!("--serve takes an address such as 127.0.0.1:3000, not `{address}`")
        })?)),
        _ => Err("usage: http_handler [--serve ADDRESS]".into()),
    }
}

/// Sends `GET /metrics` and returns the text.
pub async fn get_metrics(server: SocketAddr) -> Result<String, BoxError> {
    let stream = TcpStream::connect(server).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let request = Request::get("/metrics")
        .header(header::HOST, server.to_string())
        .body(Empty::<Bytes>::new())?;
    let exchange = async {
        let response = sender.send_request(request).await?;
        if response.status() != StatusCode::OK {
            return Err(format!("GET /metrics answered {}", response.status()).into());
        }
        let body = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8(body.to_vec())?)
    };
    tokio::select! {
        answer = exchange => answer,
        closed = connection => Err(match closed {
            Ok(()) => "the server closed the connection".into(),
            Err(error) => error.into(),
        }),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let serve_at = serve_at()?;
    let state = AppState::new(4, 3);
    let server = match serve_at {
        Some(address) => serve_on(state.clone(), address).await?,
        None => serve(state.clone()).await?,
    };
    println!("serving on http://{server}");
    print_stock(&state);

    let booking = |reference: &str, seats, rooms, simulate| BookingRequest {
        reference: reference.to_owned(),
        seats,
        rooms,
        simulate,
    };
    let requests = [
        booking("ada", 1, 1, None),
        booking("bob", 2, 5, None),
        booking("cy", 9, 1, None),
        booking("dee", 1, 1, Some(Simulate::HotelConfirmDown)),
    ];
    for request in &requests {
        println!("\nPOST /bookings {}", serde_json::to_string(request)?);
        let (status, reply) = post_booking(server, request).await?;
        println!("  {status} {}", serde_json::to_string(&reply)?);
    }

    let request = booking("eve", 1, 1, Some(Simulate::SlowHotel));
    println!("\nPOST /bookings {}", serde_json::to_string(&request)?);
    let hang_up = tokio::time::sleep(SLOW_TRY / 3);
    tokio::select! {
        answer = post_booking(server, &request) => println!("  answered before the hang-up: {:?}", answer?),
        () = hang_up => println!("  the client hung up while the hotel's Try ran"),
    }
    print_stock(&state);
    // The transaction goes on without its client; wait for its end.
    while state.flights.holds("eve") || state.hotel.holds("eve") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let booked = state
        .hotel
        .stock()
        .booked
        .values()
        .any(|h| h.reference == "eve");
    println!(
        "  eve's transaction ended on its own: {}",
        if booked { "booked" } else { "released" }
    );
    println!(
        "  handlers abandoned by their client: {}",
        state.abandoned.load(Ordering::SeqCst)
    );

    println!("\nfinally (dee's room stays held for repair):");
    print_stock(&state);

    println!("\nGET /metrics (the transactions and retries):");
    for line in get_metrics(server).await?.lines() {
        if line.starts_with("tcc_transactions_total") || line.starts_with("tcc_phase_retries_total")
        {
            println!("  {line}");
        }
    }

    if serve_at.is_some() {
        println!(
            "\nstill serving on http://{server}, the transaction log in {}, its admin router at http://{server}/tcc:",
            state.log_path().display()
        );
        println!("  tcc --url http://{server}/tcc list");
        println!(
            "dee's booking needs repair; the hotel's outage ends {OUTAGE:?} after it was asked. Ctrl-C stops the server."
        );
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}
