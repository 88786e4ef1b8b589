// An inline phase whose error type is not an error.
#[tokio::main]
async fn main() {
    let _ = tcc::tcc! {
        "payment" => {
            try_phase: async { Err::<(), i32>(1) },
            confirm: async { Ok::<(), String>(()) },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await;
}
