struct Seats;

impl Seats {
    #[tcc::confirm]
    async fn book(&self) -> Result<(), String> {
        Ok(())
    }
}

fn main() {
    let _ = Seats.book();
}
