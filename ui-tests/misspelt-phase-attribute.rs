use tcc::tcc_service;

struct Seats;

#[tcc_service]
impl Seats {
    #[try_phase]
    async fn hold(&self) -> Result<(), String> {
        Ok(())
    }

    #[confrim]
    async fn book(&self) -> Result<(), String> {
        Ok(())
    }

    #[cancel]
    async fn release(&self) -> Result<(), String> {
        Ok(())
    }
}

fn main() {}
