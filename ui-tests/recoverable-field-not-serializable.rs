// A data field whose type cannot be saved, not marked as a resource.
use tcc::Recoverable;

struct Pool;

#[derive(Recoverable)]
struct Debit {
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

fn main() {}
