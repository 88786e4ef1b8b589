// A phase whose future is not `Send`: it holds an `Rc` across an await.
use std::rc::Rc;

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
        let count = Rc::new(1);
        tokio::task::yield_now().await;
        drop(count);
        Ok(())
    }

    #[cancel]
    async fn release(&self) -> Result<(), String> {
        Ok(())
    }
}

fn main() {}
