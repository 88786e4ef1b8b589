// An inline service cannot be rebuilt after a crash, so a durable block
// refuses it.
#[tokio::main]
async fn main() {
    let log = tcc::TransactionLog::new(tcc::durable::MemoryLog::new());
    let _ = tcc::tcc! {
        log = &log;
        "audit" => {
            try_phase: async { Ok::<(), String>(()) },
            confirm: async { Ok::<(), String>(()) },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await;
}
