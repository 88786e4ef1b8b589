// Every setting, each an orchestrator builder method.
use std::time::Duration;

use tcc::RetryPolicy;

#[tokio::main]
async fn main() {
    let ok = || async { Ok::<(), String>(()) };
    let report = tcc::tcc! {
        retry = RetryPolicy::immediate(5);
        max_retries = 3;
        try_timeout = Duration::from_secs(2);
        attempt_timeout = Duration::from_millis(500);
        fail_fast = true;
        "flight" => {
            try_phase: ok(),
            confirm: ok(),
            cancel: ok(),
        },
    }
    .await
    .unwrap();
    assert_eq!(report.services().next().map(|s| s.name()), Some("flight"));
}
