// A durable block of derived recoverable services compiles and runs.
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tcc::{BoxError, Recoverable, TransactionLog, tcc, tcc_service};

#[derive(Clone, Default)]
struct Counter(Arc<AtomicU32>);

#[derive(Recoverable)]
struct Booking {
    #[recoverable(resource)]
    confirmed: Counter,
    seat: u32,
}

#[tcc_service(name = "booking")]
impl Booking {
    #[try_phase]
    async fn hold(&self) -> Result<(), BoxError> {
        Ok(())
    }
    #[confirm]
    async fn book(&self) -> Result<(), BoxError> {
        self.confirmed.0.fetch_add(self.seat, Ordering::SeqCst);
        Ok(())
    }
    #[cancel]
    async fn release(&self) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let counter = Counter::default();
    let log = TransactionLog::new(tcc::durable::MemoryLog::new());
    log.provide(counter.clone())
        .and_then(|log| log.register::<Booking>())
        .unwrap();
    let id = tcc::TransactionId::generate();
    let report = tcc! {
        log = &log;
        id = id;
        Booking { confirmed: counter.clone(), seat: 7 },
    }
    .await
    .unwrap();
    assert_eq!(report.transaction_id(), id);
    assert_eq!(counter.0.load(Ordering::SeqCst), 7);
    assert_eq!(log.unfinished_count().await.unwrap(), 0);
}
