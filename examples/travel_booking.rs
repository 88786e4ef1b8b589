//! The Go library's example, with the macros: a flight with 3 seats and a
//! hotel with 1 room. The first booking takes a seat and the room and is
//! confirmed; the second finds no room in the hotel's Try, so both services
//! are cancelled and its seat goes back to stock.
//!
//! The flight is a `#[tcc_service]` type; the hotel is an inline service of
//! `tcc!`, built on the spot from a shared `Stock`.
//!
//! Run it with `cargo run --example travel_booking`.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use tcc::{Context, TransactionId, tcc, tcc_service};

/// Units in stock, and the transactions holding one. Holds are keyed by
/// transaction id, so a Cancel after a failed Try releases nothing, and a
/// retried Confirm or Cancel is harmless.
struct Stock {
    name: &'static str,
    state: Mutex<(u32, HashSet<TransactionId>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("no {0} left")]
struct SoldOut(&'static str);

/// The transaction the running phase belongs to.
fn transaction() -> TransactionId {
    Context::current()
        .expect("runs inside a phase")
        .transaction_id()
}

impl Stock {
    fn new(name: &'static str, free: u32) -> Self {
        Stock {
            name,
            state: Mutex::new((free, HashSet::new())),
        }
    }

    fn free(&self) -> u32 {
        self.state.lock().unwrap().0
    }

    /// Try: hold one unit for this transaction.
    async fn hold(&self) -> Result<(), SoldOut> {
        let id = transaction();
        let mut state = self.state.lock().unwrap();
        let Some(left) = state.0.checked_sub(1) else {
            println!("  {}: nothing left to hold for {id}", self.name);
            return Err(SoldOut(self.name));
        };
        state.0 = left;
        state.1.insert(id);
        println!("  {}: held one for {id} ({left} left)", self.name);
        Ok(())
    }

    /// Confirm: the held unit is sold.
    async fn book(&self) -> Result<(), Infallible> {
        let id = transaction();
        if self.state.lock().unwrap().1.remove(&id) {
            println!("  {}: booked for {id}", self.name);
        }
        Ok(())
    }

    /// Cancel: give the held unit back, if this transaction holds one.
    async fn release(&self) -> Result<(), Infallible> {
        let id = transaction();
        let mut state = self.state.lock().unwrap();
        if state.1.remove(&id) {
            state.0 += 1;
            println!("  {}: released the unit held for {id}", self.name);
        } else {
            println!("  {}: nothing held for {id}, nothing to release", self.name);
        }
        Ok(())
    }
}

/// The airline's seats: a service type of its own.
struct FlightSeats {
    seats: Stock,
}

#[tcc_service(name = "flight")]
impl FlightSeats {
    #[try_phase]
    async fn hold(&self) -> Result<(), SoldOut> {
        self.seats.hold().await
    }

    #[confirm]
    async fn book(&self) -> Result<(), Infallible> {
        self.seats.book().await
    }

    #[cancel]
    async fn release(&self) -> Result<(), Infallible> {
        self.seats.release().await
    }
}

#[tokio::main]
async fn main() {
    let flight = Arc::new(FlightSeats {
        seats: Stock::new("flight", 3),
    });
    let rooms = Arc::new(Stock::new("hotel", 1));

    for booking in 1..=2 {
        println!("booking {booking}:");
        // Both Tries run at once; then both Confirms, or both Cancels.
        let outcome = tcc! {
            max_retries = 3;
            flight.clone(),
            "hotel" => clone(rooms) {
                try_phase: rooms.hold(),
                confirm: rooms.book(),
                cancel: rooms.release(),
            },
        }
        .await;
        match outcome {
            Ok(report) => println!("booking {booking} confirmed: {}", report.transaction_id()),
            Err(error) => println!("booking {booking} failed: {error}"),
        }
    }

    let (seats, free_rooms) = (flight.seats.free(), rooms.free());
    println!("stock: {seats} seats, {free_rooms} rooms");
    assert_eq!(
        (seats, free_rooms),
        (2, 0),
        "the second booking's seat returned"
    );
}
