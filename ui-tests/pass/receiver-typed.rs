// `self: &Self` is `&self` written out.
use tcc::tcc_service;

struct Seats;

#[tcc_service]
impl Seats {
    #[try_phase]
    async fn hold(self: &Self) -> Result<(), String> {
        Ok(())
    }

    #[confirm]
    async fn book<'a>(self: &'a Self) -> Result<(), String> {
        Ok(())
    }

    #[cancel]
    async fn release(&self) -> Result<(), String> {
        Ok(())
    }
}

fn main() {
    let _ = tcc::Service::from(Seats);
}
