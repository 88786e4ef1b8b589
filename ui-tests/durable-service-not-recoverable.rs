// A #[tcc_service] type that does not implement Recoverable, listed in a
// durable block.
use tcc::tcc_service;

struct Seats;

#[tcc_service]
impl Seats {
    #[try_phase]
    async fn hold(&self) -> Result<(), String> {
        Ok(())
    }
    #[confirm]
    async fn book(&self) -> Result<(), String> {
        Ok(())
    }
    #[cancel]
    async fn release(&self) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let log = tcc::TransactionLog::new(tcc::durable::MemoryLog::new());
    let _ = tcc::tcc! {
        log = &log;
        Seats,
    }
    .await;
}
