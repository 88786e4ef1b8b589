//! The Go library's example, on the plain API: a flight with 3 seats and a
//! hotel with 1 room. The first booking takes a seat and the room and is
//! confirmed; the second finds no room, so both services are cancelled and
//! its seat goes back to stock.
//!
//! Run it with `cargo run --example travel_booking`.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use tcc::{Context, Orchestrator, Service, TransactionId};

/// Units in stock, and the transactions holding one.
struct Stock {
    name: &'static str,
    free: Mutex<(u32, HashSet<TransactionId>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("no {0} left")]
struct SoldOut(&'static str);

impl Stock {
    fn new(name: &'static str, free: u32) -> Arc<Self> {
        Arc::new(Stock {
            name,
            free: Mutex::new((free, HashSet::new())),
        })
    }

    fn free(&self) -> u32 {
        self.free.lock().unwrap().0
    }

    /// Try: hold one unit for this transaction.
    fn hold(&self, id: TransactionId) -> Result<(), SoldOut> {
        let mut free = self.free.lock().unwrap();
        let left = free.0.checked_sub(1).ok_or(SoldOut(self.name))?;
        free.0 = left;
        free.1.insert(id);
        println!("  {}: held one for {id} ({left} left)", self.name);
        Ok(())
    }

    /// Confirm: the held unit is sold.
    fn book(&self, id: TransactionId) -> Result<(), Infallible> {
        if self.free.lock().unwrap().1.remove(&id) {
            println!("  {}: booked for {id}", self.name);
        }
        Ok(())
    }

    /// Cancel: give the held unit back. A Try that failed held nothing, so
    /// there is nothing to give back.
    fn release(&self, id: TransactionId) -> Result<(), Infallible> {
        let mut free = self.free.lock().unwrap();
        if free.1.remove(&id) {
            free.0 += 1;
            println!("  {}: released the unit held for {id}", self.name);
        } else {
            println!("  {}: nothing held for {id}, nothing to release", self.name);
        }
        Ok(())
    }

    fn service(self: &Arc<Self>) -> Service {
        let id = || {
            Context::current()
                .expect("runs inside a phase")
                .transaction_id()
        };
        let (hold, book, release) = (self.clone(), self.clone(), self.clone());
        Service::new(
            self.name,
            move || std::future::ready(hold.hold(id())),
            move || std::future::ready(book.book(id())),
            move || std::future::ready(release.release(id())),
        )
    }
}

#[tokio::main]
async fn main() {
    let flight = Stock::new("flight", 3);
    let hotel = Stock::new("hotel", 1);
    let booking = Orchestrator::new([flight.service(), hotel.service()]).max_retries(3);

    for attempt in 1..=2 {
        println!("booking {attempt}:");
        match booking.orchestrate().await {
            Ok(report) => println!("booking {attempt} confirmed: {}", report.transaction_id()),
            Err(error) => println!("booking {attempt} failed: {error}"),
        }
    }
    println!("stock: {} seats, {} rooms", flight.free(), hotel.free());
}
