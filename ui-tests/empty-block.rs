#[tokio::main]
async fn main() {
    let _ = tcc::tcc! {}.await;
}
