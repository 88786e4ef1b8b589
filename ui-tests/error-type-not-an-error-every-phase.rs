// Every phase returns `Result<(), i32>`: one error a phase, each on its `i32`
// (there were two a phase, each naming the macros' support code).
use tcc::tcc_service;

struct Seats;

#[tcc_service]
impl Seats {
    #[try_phase]
    async fn hold(&self) -> Result<(), i32> {
        Err(1)
    }

    #[confirm]
    async fn book(&self) -> Result<(), i32> {
        Err(2)
    }

    #[cancel]
    async fn release(&self) -> Result<(), i32> {
        Err(3)
    }
}

fn main() {}
