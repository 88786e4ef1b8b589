// An inline phase whose error type cannot be inferred: `Ok(())` alone does
// not say what the phase fails with.
#[tokio::main]
async fn main() {
    let _ = tcc::tcc! {
        "payment" => {
            try_phase: async { Ok(()) },
            confirm: async { Ok::<(), String>(()) },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await;
}
