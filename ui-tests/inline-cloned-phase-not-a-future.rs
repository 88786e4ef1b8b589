// An inline phase over cloned handles that is not a future: a plain call
// where an `async` one was meant.
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

#[tokio::main]
async fn main() {
    let wallet = Arc::new(AtomicU32::new(100));
    let _ = tcc::tcc! {
        "payment" => clone(wallet) {
            try_phase: wallet.fetch_sub(10, Ordering::SeqCst),
            confirm: async { Ok::<(), String>(()) },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await;
}
