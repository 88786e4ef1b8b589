//! The `Service` handle: its own flag per getter, direct phase calls,
//! conversion from hand-written `TccService` types and the context.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{Script, Step, scripted};
use tcc::{BoxError, Context, Orchestrator, Panicked, Phase, Service, TccService, tcc};

/// The six flags, in getter order.
fn flags(s: &Service) -> [bool; 6] {
    [
        s.tried(),
        s.try_succeeded(),
        s.confirmed(),
        s.confirm_succeeded(),
        s.canceled(),
        s.cancel_succeeded(),
    ]
}

const CONFIRMED: [bool; 6] = [true, true, true, true, false, false];
const CANCELLED_AFTER_ITS_TRY_FAILED: [bool; 6] = [true, false, false, false, true, true];

#[tokio::test(start_paused = true)]
async fn each_getter_reports_its_own_flag() {
    // Confirmed, ConfirmSucceeded, Canceled and CancelSucceeded all returned
    // the "tried" flag in the Go library.
    let (flight, _) = scripted("flight", Step::Ok, Step::Ok, Step::Fail);
    let (hotel, _) = scripted("hotel", Step::Fail, Step::Ok, Step::Ok);
    Orchestrator::new([flight.clone(), hotel.clone()])
        .max_retries(0)
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(flags(&flight), [true, true, false, false, true, false]);
    assert_eq!(flags(&hotel), [true, false, false, false, true, true]);

    let (shop, _) = scripted("shop", Step::Ok, Step::Ok, Step::Ok);
    Orchestrator::new([shop.clone()])
        .orchestrate()
        .await
        .unwrap();
    assert_eq!(flags(&shop), CONFIRMED);
}

/// The flags tell the latest transaction's story, not a blend of every
/// transaction the service took part in: a new transaction starts from none.
#[tokio::test(start_paused = true)]
async fn the_flags_tell_the_latest_transaction_only() {
    let (service, _) = scripted(
        "ledger",
        Script::of(&[Step::Ok, Step::Fail, Step::Ok]),
        Step::Ok,
        Step::Ok,
    );
    let run = || async { Orchestrator::new([service.clone()]).orchestrate().await };

    run().await.unwrap();
    assert_eq!(flags(&service), CONFIRMED);
    run().await.unwrap_err();
    assert_eq!(flags(&service), CANCELLED_AFTER_ITS_TRY_FAILED);
    run().await.unwrap();
    assert_eq!(flags(&service), CONFIRMED);
}

/// As above, with the `Service` handle listed in `tcc!`.
#[tokio::test(start_paused = true)]
async fn the_flags_tell_the_latest_tcc_block_only() {
    let (service, _) = scripted(
        "ledger",
        Script::of(&[Step::Ok, Step::Fail, Step::Ok]),
        Step::Ok,
        Step::Ok,
    );

    tcc! { service.clone() }.await.unwrap();
    assert_eq!(flags(&service), CONFIRMED);
    tcc! { service.clone() }.await.unwrap_err();
    assert_eq!(flags(&service), CANCELLED_AFTER_ITS_TRY_FAILED);
    tcc! { service.clone() }.await.unwrap();
    assert_eq!(flags(&service), CONFIRMED);
}

/// A phase run directly after an orchestration sets its flags from its own
/// outcome, not on top of the orchestration's.
#[tokio::test(start_paused = true)]
async fn a_direct_phase_call_replaces_the_flags_of_its_phase() {
    let (service, _) = scripted(
        "ledger",
        Step::Ok,
        Script::of(&[Step::Ok, Step::Fail]),
        Script::of(&[Step::Ok, Step::Fail]),
    );
    let failing = scripted("hotel", Step::Fail, Step::Ok, Step::Ok).0;

    Orchestrator::new([service.clone()])
        .orchestrate()
        .await
        .unwrap();
    service.confirm().await.unwrap_err();
    assert!(service.confirmed() && !service.confirm_succeeded());

    Orchestrator::new([service.clone(), failing])
        .orchestrate()
        .await
        .unwrap_err();
    assert!(service.cancel_succeeded());
    service.cancel().await.unwrap_err();
    assert!(service.canceled() && !service.cancel_succeeded());
}

#[tokio::test(start_paused = true)]
async fn phases_run_directly_once_and_set_their_flags() {
    let (service, probe) = scripted("ledger", Step::Ok, Step::Fail, Step::Panic);
    service.try_phase().await.unwrap();
    assert!(service.tried() && service.try_succeeded());

    let failure = service.confirm().await.unwrap_err();
    assert_eq!(
        (failure.phase(), failure.attempts(), failure.service_name()),
        (Phase::Confirm, 1, "ledger")
    );
    assert!(service.confirmed() && !service.confirm_succeeded());
    assert_eq!(
        probe.calls(Phase::Confirm),
        1,
        "no retries when called directly"
    );

    let failure = service.cancel().await.unwrap_err();
    assert!(failure.cause().is::<Panicked>());
    assert!(service.canceled() && !service.cancel_succeeded());

    let contexts = probe.contexts.lock().unwrap();
    assert!(
        contexts
            .iter()
            .all(|c| c.attempt() == 1 && c.service_name() == "ledger")
    );
    assert_ne!(contexts[0].transaction_id(), contexts[1].transaction_id());
}

/// A participant written by hand, counting its calls.
#[derive(Default)]
struct Counter {
    calls: AtomicU32,
}

impl TccService for Counter {
    fn service_name(&self) -> &str {
        "counter"
    }
    async fn try_phase(&self) -> Result<(), BoxError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn confirm(&self) -> Result<(), BoxError> {
        let context = Context::current().unwrap();
        assert_eq!(
            (context.phase(), context.service_name()),
            (Phase::Confirm, "counter")
        );
        self.calls.fetch_add(10, Ordering::SeqCst);
        Ok(())
    }
    async fn cancel(&self) -> Result<(), BoxError> {
        self.calls.fetch_add(100, Ordering::SeqCst);
        Ok(())
    }
    fn max_retries(&self) -> Option<u32> {
        Some(2)
    }
}

#[tokio::test(start_paused = true)]
async fn a_tcc_service_converts_by_value_and_from_an_arc() {
    let counter = Arc::new(Counter::default());
    let service = Service::from(counter.clone());
    assert_eq!(service.name(), "counter");
    Orchestrator::new([service]).orchestrate().await.unwrap();
    assert_eq!(counter.calls.load(Ordering::SeqCst), 11);

    let owned: Service = Counter::default().into();
    assert!(format!("{owned:?}").contains("max_retries: Some(2)"));
}

#[test]
fn no_context_outside_a_phase() {
    assert!(Context::current().is_none());
}

#[test]
fn transaction_ids_are_unique_and_round_trip() {
    let ids: std::collections::HashSet<_> =
        (0..1000).map(|_| tcc::TransactionId::generate()).collect();
    assert_eq!(ids.len(), 1000);
    for id in ids.iter().take(10) {
        assert_eq!(id.to_string().parse::<tcc::TransactionId>().unwrap(), *id);
    }
    assert!("not-an-id".parse::<tcc::TransactionId>().is_err());
    assert!(
        "+0000000000000000000000000000000"
            .parse::<tcc::TransactionId>()
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn a_phase_running_another_phase_inline_gets_its_own_context_back() {
    let (inner, inner_probe) = scripted("inner", Step::Ok, Step::Ok, Step::Ok);
    // Its Try and its Confirm each run the inner service's Try inline, which
    // points the context at its own first service's Try meanwhile. The
    // outer service is the second, so a context not given back whole would
    // name the first, or the wrong phase.
    let inline = move |phase: Phase| {
        let inner = inner.clone();
        async move {
            let before = Context::current().unwrap();
            inner.try_phase().await.map_err(|e| e.to_string())?;
            let after = Context::current().unwrap();
            assert_eq!(after.service_name(), "outer");
            assert_eq!(after.phase(), phase);
            assert_eq!(after.attempt(), 1);
            assert_eq!(after.transaction_id(), before.transaction_id());
            Ok::<(), String>(())
        }
    };
    let (try_inline, confirm_inline) = (inline.clone(), inline);
    let outer = Service::new(
        "outer",
        move || try_inline(Phase::Try),
        move || confirm_inline(Phase::Confirm),
        || async { Ok::<(), String>(()) },
    );
    let ok = || async { Ok::<(), String>(()) };
    let first = Service::new("first", ok, ok, ok);
    let report = Orchestrator::new([first, outer])
        .orchestrate()
        .await
        .unwrap();
    let contexts = inner_probe.contexts.lock().unwrap().clone();
    assert_eq!(contexts.len(), 2);
    for inner_context in contexts {
        assert_eq!(inner_context.service_name(), "inner");
        assert_eq!(inner_context.phase(), Phase::Try);
        assert_ne!(inner_context.transaction_id(), report.transaction_id());
    }
    assert!(Context::current().is_none());
}
