// #[tcc_service] on a trait impl, and the type used as a service: the
// misplaced attribute is the only error.
use tcc::tcc_service;

struct Seats;

#[tcc_service]
impl Default for Seats {
    fn default() -> Self {
        Seats
    }
}

#[tokio::main]
async fn main() {
    let _ = tcc::tcc! { Seats::default() }.await;
}
