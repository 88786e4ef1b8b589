// `clone(..)` hands each attempt its own clones, so the phase expressions
// may call `async fn`s that borrow them, and the caller keeps its handles.
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Default)]
struct Wallet {
    frozen: AtomicU32,
}

impl Wallet {
    async fn freeze(&self, amount: u32) -> Result<(), String> {
        self.frozen.fetch_add(amount, Ordering::SeqCst);
        Ok(())
    }

    async fn unfreeze(&self, amount: u32) -> Result<(), String> {
        self.frozen.fetch_sub(amount, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let wallet = Arc::new(Wallet::default());
    let note = String::from("order 7");
    tcc::tcc! {
        "payment" => clone(wallet, note) {
            try_phase: wallet.freeze(30),
            confirm: async move { Ok::<(), String>(drop(note)) },
            cancel: wallet.unfreeze(30),
        },
    }
    .await
    .unwrap();
    assert_eq!(wallet.frozen.load(Ordering::SeqCst), 30);
    assert_eq!(note, "order 7");
}
