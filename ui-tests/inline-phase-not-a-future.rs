// An inline phase that is not a future: the closure is named, not called.
#[tokio::main]
async fn main() {
    let ok = || async { Ok::<(), String>(()) };
    let _ = tcc::tcc! {
        "payment" => {
            try_phase: ok(),
            confirm: ok,
            cancel: ok(),
        },
    }
    .await;
}
