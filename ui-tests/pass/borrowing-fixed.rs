// The fix of `inline-borrowing-future.rs`: `clone(wallet)` gives every
// attempt its own clone of the handle, which the phase may borrow.
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

#[tokio::main]
async fn main() {
    let wallet = Arc::new(AtomicU32::new(100));
    let _ = tcc::tcc! {
        "payment" => clone(wallet) {
            try_phase: async { wallet.fetch_sub(10, Ordering::SeqCst); Ok::<(), String>(()) },
            confirm: async { Ok::<(), String>(()) },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await
    .unwrap();
    assert_eq!(wallet.load(Ordering::SeqCst), 90);
}
