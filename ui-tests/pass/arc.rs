// A service shared through an `Arc`: converted into `tcc::Service`, and
// listed in `tcc!`, while the caller keeps its own handle.
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tcc::tcc_service;

#[derive(Default)]
struct Seats {
    held: AtomicU32,
}

#[tcc_service]
impl Seats {
    #[try_phase]
    async fn hold(&self) -> Result<(), String> {
        self.held.fetch_add(1, Ordering::SeqCst);
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
    let seats = Arc::new(Seats::default());
    let service: tcc::Service = seats.clone().into();
    assert_eq!(service.name(), "Seats");
    tcc::tcc! { seats.clone() }.await.unwrap();
    tcc::Orchestrator::new([service])
        .orchestrate()
        .await
        .unwrap();
    assert_eq!(seats.held.load(Ordering::SeqCst), 2);
}
