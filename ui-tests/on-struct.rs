use tcc::tcc_service;

#[tcc_service]
struct Seats;

fn main() {}
