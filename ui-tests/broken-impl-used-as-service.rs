// The impl block has one mistake (no #[cancel]) and its type is used as a
// service: the mistake is the only error, no "not a TCC service" follows.
use tcc::{Service, tcc_service};

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
}

#[tokio::main]
async fn main() {
    let _ = tcc::tcc! { Seats }.await;
    let _ = Service::from(Seats);
}
