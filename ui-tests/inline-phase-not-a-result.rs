// An inline phase whose future does not resolve to `Result<(), E>`.
#[tokio::main]
async fn main() {
    let _ = tcc::tcc! {
        "payment" => {
            try_phase: async { 42 },
            confirm: async { Ok::<(), String>(()) },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await;
}
