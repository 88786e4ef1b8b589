use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

#[tokio::main]
async fn main() {
    let wallet = Arc::new(AtomicU32::new(100));
    let _ = tcc::tcc! {
        "payment" => borrow(wallet) {
            try_phase: async { wallet.fetch_sub(10, Ordering::SeqCst); Ok::<(), String>(()) },
            confirm: async { Ok::<(), String>(()) },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await;
}
