//! `tcc!` inside an axum handler: `POST /bookings` books a flight seat and a
//! hotel room in one TCC transaction.
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
//! A request may ask the server to `simulate` a slow hotel (its Try takes
//! [`SLOW_TRY`], time for a client to hang up) or a hotel whose Confirm is
//! down: demo knobs that a real API would not have.
//!
//! `GET /metrics` serves `tcc`'s metrics (transactions by outcome, phase
//! attempts, retries, durations: see `tcc::metrics`) in Prometheus' text
//! format, from `metrics-exporter-prometheus`'s recorder, installed once for
//! the process ([`prometheus`]).
//!
//! Run it with `cargo run --example http_handler`: it starts the server on
//! an ephemeral port of 127.0.0.1, sends it a few requests, prints the
//! answers and exits. `tests/http_handler.rs` sends it hundreds.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tcc::{BoxError, Context, ErrorKind, RetryPolicy, TransactionId, tcc};
use tokio::net::{TcpSocket, TcpStream};

/// How long a simulated slow hotel takes to answer its Try.
pub const SLOW_TRY: Duration = Duration::from_millis(300);

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
    /// The hotel's Confirm fails on every attempt.
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
    #[error("{0} is unavailable")]
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
        }
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

/// The server's state.
pub struct AppState {
    pub flights: Arc<Inventory>,
    pub hotel: Arc<Inventory>,
    /// Requests whose client hung up before their transaction ended.
    pub abandoned: AtomicU32,
    /// What `GET /metrics` renders.
    pub metrics: PrometheusHandle,
}

impl AppState {
    pub fn new(seats: u32, rooms: u32) -> Arc<Self> {
        Arc::new(AppState {
            flights: Arc::new(Inventory::new("flight", seats)),
            hotel: Arc::new(Inventory::new("hotel", rooms)),
            abandoned: AtomicU32::new(0),
            metrics: prometheus(),
        })
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

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/bookings", post(create_booking))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

/// `GET /metrics`: every metric recorded so far, in Prometheus' text format.
async fn render_metrics(State(state): State<Arc<AppState>>) -> impl axum::response::IntoResponse {
    let text = "text/plain; version=0.0.4; charset=utf-8";
    ([(header::CONTENT_TYPE, text)], state.metrics.render())
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
    let flights = state.flights.clone();
    let hotel = state.hotel.clone();
    let simulate = request.simulate;
    // If the client hangs up, hyper drops this future; the transaction
    // still runs to its end on a task of its own.
    let outcome = tcc! {
        retry = RetryPolicy::default()
            .with_max_retries(3)
            .with_initial_interval(Duration::from_millis(20));
        try_timeout = TRY_TIMEOUT;
        fail_fast = true;
        "flight" => clone(flights, request) {
            try_phase: flights.hold(&request.reference, request.seats),
            confirm: flights.book(),
            cancel: flights.release(),
        },
        "hotel" => clone(hotel, request) {
            try_phase: async {
                if simulate == Some(Simulate::SlowHotel) {
                    tokio::time::sleep(SLOW_TRY).await;
                }
                hotel.hold(&request.reference, request.rooms).await
            },
            confirm: async {
                if simulate == Some(Simulate::HotelConfirmDown) {
                    return Err(InventoryError::Unavailable("hotel"));
                }
                hotel.book().await
            },
            cancel: hotel.release(),
        },
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

/// Serves `state` on an ephemeral port of 127.0.0.1, on a task of its own.
pub async fn serve(state: Arc<AppState>) -> std::io::Result<SocketAddr> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((Ipv4Addr::LOCALHOST, 0).into())?;
    // The default backlog of 128 makes a burst of clients beyond it wait
    // for a SYN retransmit (a second or more).
    let listener = socket.listen(1024)?;
    let address = listener.local_addr()?;
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

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let state = AppState::new(4, 3);
    let server = serve(state.clone()).await?;
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
    Ok(())
}
