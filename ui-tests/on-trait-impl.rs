use tcc::tcc_service;

struct Seats;

#[tcc_service]
impl Default for Seats {
    fn default() -> Self {
        Seats
    }
}

fn main() {}
