// An inline phase over cloned handles whose future is not `Send`.
use std::rc::Rc;
use std::sync::Arc;

async fn hold(_: &Arc<u32>) -> Result<(), String> {
    let count = Rc::new(1);
    tokio::task::yield_now().await;
    drop(count);
    Ok(())
}

#[tokio::main]
async fn main() {
    let seats = Arc::new(3);
    let _ = tcc::tcc! {
        "flight" => clone(seats) {
            try_phase: hold(&seats),
            confirm: async { Ok::<(), String>(()) },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await;
}
