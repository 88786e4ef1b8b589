// `recover()?` alone drops the summary, and with it the transactions
// recovery left unfinished.
#![deny(unused_must_use)]

async fn start(log: &tcc::TransactionLog) -> Result<(), tcc::durable::LogError> {
    log.recover().await?;
    Ok(())
}

fn main() {
    let _ = start;
}
