//! The web handler example under load, over real HTTP on 127.0.0.1: a few
//! hundred concurrent bookings, more than the flight and the hotel can take,
//! some whose hotel Confirm is down, and some whose client hangs up while
//! the transaction runs. Once every transaction has ended, every seat and
//! room must be booked by a 201 (or by a transaction whose client hung up,
//! in both inventories or in neither), held for repair by a 500, or back in
//! stock.
//!
//! And `GET /metrics`: after a few requests of known outcome, the counters
//! moved by exactly what those requests did.

#[allow(dead_code)]
#[path = "../examples/http_handler.rs"]
mod http_handler;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use http_handler::{AppState, BookingRequest, Hold, Inventory, Reply, Simulate, Stock};
use tcc::TransactionId;

const SEATS: u32 = 250;
const ROOMS: u32 = 250;
const REQUESTS: usize = 300;

/// Held by each test for its whole run: the metrics' recorder is the
/// process's, so a test that counts what its requests did runs alone.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How a request ended, seen from its client.
#[derive(Debug)]
enum Outcome {
    Answered(StatusCode, Reply),
    HungUp,
}

/// The requests: every tenth with the hotel's Confirm down, every tenth
/// with a slow hotel and a client that hangs up (half of them asking for
/// more rooms than exist), a few asking for more than exists; the rest for
/// 1 or 2 seats and rooms, more seats than the flight has.
fn requests() -> Vec<BookingRequest> {
    (0..REQUESTS)
        .map(|i| {
            let units = |n| 1 + (i as u32 * n) % 2;
            let mut request = BookingRequest {
                reference: format!("ref-{i}"),
                seats: units(7),
                rooms: units(3 + i as u32 % 5),
                simulate: None,
            };
            match i % 10 {
                0 => request.simulate = Some(Simulate::HotelConfirmDown),
                1 => {
                    request.simulate = Some(Simulate::SlowHotel);
                    if i % 20 == 11 {
                        // Held a seat when its client hung up, then fails
                        // in the hotel: only the Cancel run after the
                        // hang-up gives the seat back.
                        request.rooms = ROOMS + 1;
                    }
                }
                2 if i % 20 == 2 => request.seats = SEATS + 1,
                2 => request.rooms = ROOMS + 1,
                _ => {}
            }
            request
        })
        .collect()
}

/// Sends `request`; a client asking for a slow hotel hangs up as soon as
/// its transaction holds a seat, so the handler is dropped mid-transaction.
async fn send(
    state: Arc<AppState>,
    server: std::net::SocketAddr,
    request: BookingRequest,
) -> Outcome {
    let answer = http_handler::post_booking(server, &request);
    if request.simulate != Some(Simulate::SlowHotel) {
        let (status, reply) = answer.await.expect("the server answers");
        return Outcome::Answered(status, reply);
    }
    let seat_held = async {
        while !state.flights.holds(&request.reference) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::select! {
        answer = answer => {
            let (status, reply) = answer.expect("the server answers");
            Outcome::Answered(status, reply)
        }
        () = seat_held => Outcome::HungUp,
    }
}

fn units(holds: &HashMap<TransactionId, Hold>) -> u32 {
    holds.values().map(|hold| hold.units).sum()
}

/// The transaction holding or having booked `reference`, if any.
fn find<'a>(
    holds: &'a HashMap<TransactionId, Hold>,
    reference: &str,
) -> Option<(&'a TransactionId, &'a Hold)> {
    holds.iter().find(|(_, hold)| hold.reference == reference)
}

/// Waits, boundedly, until `done` holds.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_bookings_conserve_seats_and_rooms() {
    let _alone = ALONE.lock().await;
    let state = AppState::new(SEATS, ROOMS);
    let server = http_handler::serve(state.clone()).await.unwrap();
    let requests = requests();
    let clients: Vec<_> = requests
        .iter()
        .cloned()
        .map(|request| tokio::spawn(send(state.clone(), server, request)))
        .collect();
    let mut outcomes = Vec::with_capacity(clients.len());
    for client in clients {
        outcomes.push(client.await.expect("no client panics"));
    }

    // Each 500 leaves its hotel room held for repair; every other
    // transaction, those of the clients that hung up included, ends.
    let repairs: BTreeSet<TransactionId> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::Answered(StatusCode::INTERNAL_SERVER_ERROR, reply) => {
                Some(reply.transaction_id.as_deref().unwrap().parse().unwrap())
            }
            _ => None,
        })
        .collect();
    let hung_up = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::HungUp))
        .count();
    wait_until("every transaction ended", || {
        let held =
            |inventory: &Inventory| inventory.stock().held.into_keys().collect::<BTreeSet<_>>();
        held(&state.flights).is_empty() && held(&state.hotel) == repairs
    })
    .await;
    wait_until("the server saw every hang-up", || {
        state.abandoned.load(Ordering::SeqCst) as usize == hung_up
    })
    .await;
    let (flights, hotel): (Stock, Stock) = (state.flights.stock(), state.hotel.stock());

    let mut seen = BTreeSet::new();
    let mut booked_by_201 = (0, 0);
    let mut booked_by_hung_up = (0, 0);
    let mut held_for_repair = (0, 0);
    let mut transactions = BTreeSet::new();
    for (request, outcome) in requests.iter().zip(&outcomes) {
        let reference = request.reference.as_str();
        let on_flight = find(&flights.booked, reference);
        let in_hotel = find(&hotel.booked, reference);
        let units = (request.seats, request.rooms);
        match outcome {
            Outcome::Answered(StatusCode::CREATED, reply) => {
                let id: TransactionId = reply.transaction_id.as_deref().unwrap().parse().unwrap();
                assert!(transactions.insert(id), "{id} answered twice");
                assert_eq!(
                    on_flight.map(|(id, h)| (*id, h.units)),
                    Some((id, request.seats)),
                    "{request:?}"
                );
                assert_eq!(
                    in_hotel.map(|(id, h)| (*id, h.units)),
                    Some((id, request.rooms)),
                    "{request:?}"
                );
                assert_eq!(request.simulate, None, "{request:?}");
                booked_by_201 = (booked_by_201.0 + units.0, booked_by_201.1 + units.1);
                seen.insert("201");
            }
            Outcome::Answered(StatusCode::CONFLICT, reply) => {
                let service = reply.service.as_deref().unwrap();
                assert!(service == "flight" || service == "hotel", "{reply:?}");
                if request.seats > SEATS {
                    assert_eq!(service, "flight", "{reply:?}");
                }
                assert_eq!(
                    (on_flight, in_hotel),
                    (None, None),
                    "{request:?} was refused"
                );
                seen.insert(if service == "flight" {
                    "409 flight"
                } else {
                    "409 hotel"
                });
            }
            Outcome::Answered(StatusCode::INTERNAL_SERVER_ERROR, reply) => {
                assert_eq!(request.simulate, Some(Simulate::HotelConfirmDown));
                assert_eq!(reply.service.as_deref(), Some("hotel"), "{reply:?}");
                let id: TransactionId = reply.transaction_id.as_deref().unwrap().parse().unwrap();
                assert_eq!(
                    on_flight.map(|(id, h)| (*id, h.units)),
                    Some((id, request.seats)),
                    "{request:?}"
                );
                let held = hotel
                    .held
                    .get(&id)
                    .map(|hold| (hold.reference.as_str(), hold.units));
                assert_eq!(held, Some((reference, request.rooms)), "{request:?}");
                assert_eq!(in_hotel, None, "{request:?}");
                held_for_repair = (held_for_repair.0 + units.0, held_for_repair.1 + units.1);
                seen.insert("500");
            }
            Outcome::Answered(status, reply) => panic!("unexpected {status}: {reply:?}"),
            Outcome::HungUp => {
                // The transaction ended without its client: in both
                // inventories, under one id, or in neither.
                match (on_flight, in_hotel) {
                    (Some((a, flight)), Some((b, room))) => {
                        assert_eq!(a, b, "{request:?}");
                        assert!(transactions.insert(*a), "{a} booked twice");
                        assert_eq!((flight.units, room.units), units, "{request:?}");
                        booked_by_hung_up =
                            (booked_by_hung_up.0 + units.0, booked_by_hung_up.1 + units.1);
                        seen.insert("hung up, then booked");
                    }
                    (None, None) => {
                        seen.insert("hung up, then released");
                    }
                    halfway => panic!("{request:?} booked halfway: {halfway:?}"),
                }
            }
        }
    }
    // No booking that no request explains.
    let booked: BTreeSet<_> = flights
        .booked
        .keys()
        .chain(hotel.booked.keys())
        .copied()
        .collect();
    let explained: BTreeSet<_> = transactions.iter().chain(&repairs).copied().collect();
    assert_eq!(booked, explained, "every booking belongs to a request");

    // Conservation: every unit is booked, held for repair, or back in stock.
    assert_eq!(
        flights.free + booked_by_201.0 + booked_by_hung_up.0 + held_for_repair.0,
        SEATS,
        "seats"
    );
    assert_eq!(
        units(&flights.booked),
        booked_by_201.0 + booked_by_hung_up.0 + held_for_repair.0
    );
    assert_eq!(
        hotel.free + booked_by_201.1 + booked_by_hung_up.1 + held_for_repair.1,
        ROOMS,
        "rooms"
    );
    assert_eq!(units(&hotel.booked), booked_by_201.1 + booked_by_hung_up.1);
    assert_eq!(units(&hotel.held), held_for_repair.1);

    assert!(hung_up > 0, "some clients hung up mid-transaction");
    let expected = [
        "201",
        "409 flight",
        "409 hotel",
        "500",
        "hung up, then booked",
        "hung up, then released",
    ];
    for outcome in expected {
        assert!(seen.contains(outcome), "no {outcome} among {seen:?}");
    }
}

/// Every `tcc_` counter and gauge of a `GET /metrics` text, by its name and
/// labels (sorted by name, so the order the exporter writes them in does
/// not matter), with its value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut series = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("a series and its value");
        let value: f64 = value.parse().expect("a number");
        let (name, labels) = match key.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').expect("labels end in }")),
            None => (key, ""),
        };
        let mut labels: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
        labels.sort_unstable();
        for label in &labels {
            let (_, value) = label.split_once('=').expect("a label is name=\"value\"");
            assert!(value.starts_with('"') && value.ends_with('"'), "{line}");
        }
        let key = match labels.is_empty() {
            true => name.to_owned(),
            false => format!("{name}{{{}}}", labels.join(",")),
        };
        assert!(series.insert(key, value).is_none(), "{line} twice");
    }
    series
}

/// What moved between two scrapes: the `tcc_` series whose value changed,
/// by how much. Histograms' buckets and sums are left out; their counts
/// stay in.
fn moved(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter(|(key, _)| key.starts_with("tcc_"))
        .filter(|(key, _)| !key.contains("_bucket") && !key.contains("_sum"))
        .map(|(key, value)| (key.clone(), value - before.get(key).copied().unwrap_or(0.0)))
        .filter(|(_, delta)| *delta != 0.0)
        .collect()
}

#[tokio::test]
async fn metrics_count_what_the_requests_did() {
    let _alone = ALONE.lock().await;
    let state = AppState::new(4, 3);
    let server = http_handler::serve(state.clone()).await.unwrap();
    let booking = |reference: &str, seats, rooms, simulate| BookingRequest {
        reference: reference.to_owned(),
        seats,
        rooms,
        simulate,
    };
    // A transaction of another test that outlived it (a client hung up)
    // ends first.
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        let before = parse(&http_handler::get_metrics(server).await.unwrap());
        if before
            .get("tcc_transactions_in_flight")
            .copied()
            .unwrap_or(0.0)
            == 0.0
        {
            break before;
        }
        assert!(Instant::now() < deadline, "a transaction never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Confirmed; cancelled in the hotel (the flight's seat goes back);
    // cancelled in the flight (fail-fast: the hotel's Try never starts);
    // its hotel Confirm down (four attempts, three retries): needs repair;
    // a bad request, refused before any transaction.
    let requests = [
        (booking("ada", 1, 1, None), StatusCode::CREATED),
        (booking("bob", 2, 5, None), StatusCode::CONFLICT),
        (booking("cy", 9, 1, None), StatusCode::CONFLICT),
        (
            booking("dee", 1, 1, Some(Simulate::HotelConfirmDown)),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
        (booking("eve", 0, 1, None), StatusCode::BAD_REQUEST),
    ];
    let mut ids = Vec::new();
    for (request, status) in &requests {
        let (answered, reply) = http_handler::post_booking(server, request).await.unwrap();
        assert_eq!(answered, *status, "{request:?}: {reply:?}");
        ids.extend(reply.transaction_id);
    }
    assert_eq!(ids.len(), 4, "four transactions ran");
    let text = http_handler::get_metrics(server).await.unwrap();
    let after = parse(&text);
    let attempts = |service: &str, phase: &str, result: &str| {
        format!(
            "tcc_phase_attempts_total{{phase=\"{phase}\",result=\"{result}\",service=\"{service}\"}}"
        )
    };
    let expected: BTreeMap<String, f64> = [
        (
            "tcc_transactions_total{outcome=\"confirmed\"}".to_owned(),
            1.0,
        ),
        (
            "tcc_transactions_total{outcome=\"cancelled\"}".to_owned(),
            2.0,
        ),
        (
            "tcc_transactions_total{outcome=\"needs_repair\"}".to_owned(),
            1.0,
        ),
        (attempts("flight", "try", "ok"), 3.0),
        (attempts("flight", "try", "error"), 1.0),
        (attempts("hotel", "try", "ok"), 2.0),
        (attempts("hotel", "try", "error"), 1.0),
        (attempts("flight", "confirm", "ok"), 2.0),
        (attempts("hotel", "confirm", "ok"), 1.0),
        (attempts("hotel", "confirm", "error"), 4.0),
        (attempts("flight", "cancel", "ok"), 2.0),
        (attempts("hotel", "cancel", "ok"), 1.0),
        (
            "tcc_phase_retries_total{phase=\"confirm\",service=\"hotel\"}".to_owned(),
            3.0,
        ),
        // Histograms: one sample a transaction, one a phase of a service.
        (
            "tcc_transaction_duration_seconds_count{outcome=\"confirmed\"}".to_owned(),
            1.0,
        ),
        (
            "tcc_transaction_duration_seconds_count{outcome=\"cancelled\"}".to_owned(),
            2.0,
        ),
        (
            "tcc_transaction_duration_seconds_count{outcome=\"needs_repair\"}".to_owned(),
            1.0,
        ),
        (
            "tcc_phase_duration_seconds_count{phase=\"try\",service=\"flight\"}".to_owned(),
            4.0,
        ),
        (
            "tcc_phase_duration_seconds_count{phase=\"try\",service=\"hotel\"}".to_owned(),
            3.0,
        ),
        (
            "tcc_phase_duration_seconds_count{phase=\"confirm\",service=\"flight\"}".to_owned(),
            2.0,
        ),
        (
            "tcc_phase_duration_seconds_count{phase=\"confirm\",service=\"hotel\"}".to_owned(),
            2.0,
        ),
        (
            "tcc_phase_duration_seconds_count{phase=\"cancel\",service=\"flight\"}".to_owned(),
            2.0,
        ),
        (
            "tcc_phase_duration_seconds_count{phase=\"cancel\",service=\"hotel\"}".to_owned(),
            1.0,
        ),
    ]
    .into_iter()
    .collect();
    let mut moved = moved(&before, &after);
    // The log's commits: as many batches as the writer made of the
    // requests' writes, each counted once in both histograms.
    let commits = moved
        .remove("tcc_log_commit_duration_seconds_count{log=\"redb\"}")
        .unwrap_or(0.0);
    let batches = moved
        .remove("tcc_log_batch_size_count{log=\"redb\"}")
        .unwrap_or(0.0);
    assert!(commits >= 1.0 && batches == commits, "{text}");
    // dee's booking needs repair: the gauge, read from this test's log,
    // says one. A gauge is a level, not a count: what it held before is
    // whatever the log of the test that ran before this one left there (the
    // recorder is the process's), so its change proves nothing.
    moved.remove("tcc_transactions_needing_repair");
    assert_eq!(
        after.get("tcc_transactions_needing_repair"),
        Some(&1.0),
        "{text}"
    );
    assert_eq!(moved, expected, "{text}");
    // Every transaction ended before its answer was sent.
    assert_eq!(after["tcc_transactions_in_flight"], 0.0, "{text}");
    // No label names a transaction.
    for id in &ids {
        assert!(!text.contains(id.as_str()), "{id} in {text}");
    }
}
