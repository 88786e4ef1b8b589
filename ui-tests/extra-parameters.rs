use tcc::tcc_service;

struct Seats;

#[tcc_service]
impl Seats {
    #[try_phase]
    async fn hold(&self, seats: u32, passenger: &str) -> Result<(), String> {
        let _ = (seats, passenger);
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

fn main() {}
