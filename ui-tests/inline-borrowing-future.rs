// An inline phase that borrows a local: the transaction may outlive the
// function (it finishes on a task of its own if the caller goes away), so a
// phase must own what it uses. rustc's borrow error is the only error; the
// fix, `clone(wallet)` before the block, is `pass/borrowing-fixed.rs` and is
// shown next to this message in the `tcc!` docs.
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

#[tokio::main]
async fn main() {
    let wallet = Arc::new(AtomicU32::new(100));
    let _ = tcc::tcc! {
        "payment" => {
            try_phase: async { wallet.fetch_sub(10, Ordering::SeqCst); Ok::<(), String>(()) },
            confirm: async { Ok::<(), String>(()) },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await;
}
