use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

#[tokio::main]
async fn main() {
    let wallet = Arc::new(AtomicU32::new(100));
    let _ = tcc::tcc! {
        max_retry = 3;
        "payment" => {
            try_phase: { let w = wallet.clone(); async move { w.fetch_sub(10, Ordering::SeqCst); Ok::<(), String>(()) } },
            confirm: async { Ok::<(), String>(()) },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await;
}
