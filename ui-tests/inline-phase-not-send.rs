// An inline phase whose future is not `Send`: it holds an `Rc` across an
// await.
use std::rc::Rc;

#[tokio::main]
async fn main() {
    let _ = tcc::tcc! {
        "payment" => {
            try_phase: async {
                let count = Rc::new(1);
                tokio::task::yield_now().await;
                drop(count);
                Ok::<(), String>(())
            },
            confirm: async { Ok::<(), String>(()) },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await;
}
