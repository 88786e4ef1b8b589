// A generic impl block, a where clause, lifetimes on a phase method, and
// phase methods named like the trait's own methods.
use std::fmt::Display;

use tcc::tcc_service;

struct Ledger<T> {
    account: T,
}

#[tcc_service(name = "ledger")]
impl<T> Ledger<T>
where
    T: Display + Send + Sync + 'static,
{
    #[try_phase]
    async fn try_phase<'a>(&'a self) -> Result<(), String> {
        let _ = self.account.to_string();
        Ok(())
    }

    #[confirm]
    async fn confirm(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    #[cancel]
    async fn cancel(&self) -> Result<(), tcc::BoxError> {
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let service = tcc::Service::from(Ledger { account: 7_u64 });
    assert_eq!(service.name(), "ledger");
    let report = tcc::tcc! { Ledger { account: "alice" } }.await.unwrap();
    assert_eq!(report.services().next().map(|s| s.name()), Some("ledger"));
}
