// Typed and inline services in one `tcc!`, inline phases that capture
// cloned handles, and a trailing block without a comma.
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tcc::tcc_service;

struct Hotel;

#[tcc_service(name = "hotel", max_retries = 2)]
impl Hotel {
    #[try_phase]
    async fn hold(&self) -> Result<(), String> {
        Ok(())
    }

    #[confirm]
    async fn book(&self) -> Result<(), String> {
        Ok(())
    }

    #[cancel]
    async fn release(&self) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let wallet = Arc::new(AtomicU32::new(100));
    let frozen = wallet.clone();
    let report = tcc::tcc! {
        Hotel,
        "payment" => {
            try_phase: {
                let frozen = frozen.clone();
                async move {
                    frozen.fetch_sub(30, Ordering::SeqCst);
                    Ok::<(), String>(())
                }
            },
            confirm: async { Ok::<(), String>(()) },
            cancel: async { Ok::<(), &str>(()) },
        }
        "audit" => {
            try_phase: async { Ok::<(), String>(()) },
            confirm: async { Ok::<(), String>(()) },
            cancel: async { Ok::<(), String>(()) },
        }
    }
    .await
    .unwrap();
    assert_eq!(report.services().len(), 3);
    assert_eq!(wallet.load(Ordering::SeqCst), 70);
}
