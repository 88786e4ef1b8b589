use tcc::tcc_service;

struct Seats;

#[tcc_service]
impl Seats {
    #[try_phase]
    async fn hold(&self) -> Result<(), String> {
        Ok(())
    }

    #[confirm]
    async fn book(&self) -> Result<(), u32> {
        Err(3)
    }

    #[cancel]
    async fn release(&self) -> Result<(), String> {
        Ok(())
    }
}

fn main() {}
