// The impl block has one mistake (no #[cancel]); it is still emitted, so the
// code that uses its methods compiles and the mistake is the only error.
use tcc::tcc_service;

struct Seats {
    free: u32,
}

#[tcc_service(name = "flight", max_retries = 3)]
impl Seats {
    fn new() -> Self {
        Seats { free: 3 }
    }

    #[try_phase]
    async fn hold(&self) -> Result<(), String> {
        Ok(())
    }

    #[confirm]
    async fn book(&self) -> Result<(), String> {
        Ok(())
    }

    async fn release(&self) -> Result<(), String> {
        Ok(())
    }

    fn free(&self) -> u32 {
        self.free
    }
}

fn main() {
    let seats = Seats::new();
    let _ = (seats.hold(), seats.book(), seats.release(), seats.free());
}
