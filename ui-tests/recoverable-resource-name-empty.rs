// A resource named with an empty string.
use tcc::Recoverable;

#[derive(Clone)]
struct Pool;

#[derive(Recoverable)]
struct Debit {
    #[recoverable(resource = "")]
    pool: Pool,
    account: String,
}

#[tcc::tcc_service]
impl Debit {
    #[try_phase]
    async fn freeze(&self) -> Result<(), String> {
        Ok(())
    }
    #[confirm]
    async fn take(&self) -> Result<(), String> {
        Ok(())
    }
    #[cancel]
    async fn unfreeze(&self) -> Result<(), String> {
        Ok(())
    }
}

fn main() {
    // The type is still recoverable: no further error here.
    let _ = <Debit as Recoverable>::KIND;
}
