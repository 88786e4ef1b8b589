struct Seats;

#[tokio::main]
async fn main() {
    let _ = tcc::tcc! {
        Seats,
    }
    .await;
}
