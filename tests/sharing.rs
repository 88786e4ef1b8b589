//! One `Orchestrator` and one set of typed services, built once and shared
//! by many concurrent transactions, as a web service keeps them in its
//! application state: each transaction is confirmed or cancelled on its
//! own, and its report tells its own story.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tcc::{
    Context, ErrorKind, Orchestrator, Phase, Report, Service, TransactionId, tcc, tcc_service,
};

/// What a shared service saw, transaction by transaction.
#[derive(Default)]
struct Seen {
    phases: Mutex<HashMap<TransactionId, Vec<Phase>>>,
}

impl Seen {
    /// Records the running phase under its transaction, then sleeps a time
    /// drawn from the transaction id, so transactions interleave.
    async fn enter(&self) {
        let context = Context::current().expect("inside a phase");
        let id = context.transaction_id();
        self.phases
            .lock()
            .unwrap()
            .entry(id)
            .or_default()
            .push(context.phase());
        let millis = (id.as_u128() % 7) as u64 * 3 + context.phase() as u64;
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }

    fn of(&self, id: TransactionId) -> Vec<Phase> {
        self.phases
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }
}

/// A typed service shared by every request.
struct Stock {
    seen: Seen,
}

#[tcc_service(name = "stock")]
impl Stock {
    #[try_phase]
    async fn reserve(&self) -> Result<(), String> {
        self.seen.enter().await;
        Ok(())
    }

    #[confirm]
    async fn take(&self) -> Result<(), String> {
        self.seen.enter().await;
        Ok(())
    }

    #[cancel]
    async fn put_back(&self) -> Result<(), String> {
        self.seen.enter().await;
        Ok(())
    }
}

/// A `Service` handle over `seen`, whose Try fails when `fail` is set.
fn handle(name: &str, seen: &Arc<Seen>, fail: bool) -> Service {
    let phase = |fail: bool| {
        let seen = seen.clone();
        move || {
            let seen = seen.clone();
            async move {
                seen.enter().await;
                if fail { Err("refused") } else { Ok(()) }
            }
        }
    };
    Service::new(name, phase(fail), phase(false), phase(false))
}

/// Checks one request's outcome against what the shared services saw of its
/// transaction, and returns whether it confirmed.
fn check(outcome: Result<Report, tcc::Error>, services: &[(&str, &Seen)], failing: bool) -> bool {
    let (report, confirmed) = match outcome {
        Ok(report) => (report, true),
        Err(error) => {
            assert_eq!(error.kind(), ErrorKind::TryFailed, "{error}");
            (error.report().expect("it ran").clone(), false)
        }
    };
    assert_eq!(confirmed, !failing, "request confirmed iff nothing refused");
    let id = report.transaction_id();
    let second = if confirmed {
        Phase::Confirm
    } else {
        Phase::Cancel
    };
    for (name, seen) in services {
        assert_eq!(seen.of(id), [Phase::Try, second], "{name} in {id}");
        let record = report.service(name).expect("reported");
        assert!(record.succeeded(second), "{name} in {id}");
        assert_eq!(record.attempts(Phase::Try), 1);
        let other = if confirmed {
            Phase::Cancel
        } else {
            Phase::Confirm
        };
        assert_eq!(record.attempts(other), 0, "{name} in {id}");
    }
    confirmed
}

#[tokio::test(start_paused = true)]
async fn sixty_four_concurrent_requests_share_one_orchestrator_and_typed_services() {
    let flights = Arc::new(Seen::default());
    let stock = Arc::new(Stock {
        seen: Seen::default(),
    });
    let hotels = Arc::new(Seen::default());
    // Built once, as application state is.
    let booking = Arc::new(Orchestrator::new([
        handle("flight", &flights, false),
        handle("hotel", &hotels, false),
    ]));
    let failing_booking = Arc::new(Orchestrator::new([
        handle("flight", &flights, false),
        handle("hotel", &hotels, true),
    ]));

    let mut requests = tokio::task::JoinSet::new();
    for request in 0..64_u32 {
        let failing = request % 4 == 3;
        let (booking, failing_booking) = (booking.clone(), failing_booking.clone());
        let (stock, hotels) = (stock.clone(), hotels.clone());
        requests.spawn(async move {
            tokio::time::sleep(Duration::from_millis(u64::from(request % 5))).await;
            let outcome = if request % 2 == 0 {
                let orchestrator = if failing { failing_booking } else { booking };
                orchestrator.orchestrate().await
            } else {
                let hotel = handle("hotel", &hotels, failing);
                tcc! { stock.clone(), hotel }.await
            };
            (request, failing, outcome)
        });
    }

    let mut ids = HashSet::new();
    let mut confirmed = 0;
    while let Some(joined) = requests.join_next().await {
        let (request, failing, outcome) = joined.unwrap();
        let id = match &outcome {
            Ok(report) => report.transaction_id(),
            Err(error) => error.report().unwrap().transaction_id(),
        };
        assert!(ids.insert(id), "each request has its own transaction");
        let services: Vec<(&str, &Seen)> = if request % 2 == 0 {
            vec![("flight", &flights), ("hotel", &hotels)]
        } else {
            vec![("stock", &stock.seen), ("hotel", &hotels)]
        };
        confirmed += u32::from(check(outcome, &services, failing));
    }
    assert_eq!(ids.len(), 64);
    assert_eq!(confirmed, 48);
    // Every transaction the shared services saw is one of the 64, and no
    // other phase ran in any of them.
    let seen_ids: HashSet<TransactionId> = [&flights, &hotels]
        .iter()
        .flat_map(|seen| {
            seen.phases
                .lock()
                .unwrap()
                .keys()
                .copied()
                .collect::<Vec<_>>()
        })
        .chain(stock.seen.phases.lock().unwrap().keys().copied())
        .collect();
    assert_eq!(seen_ids, ids);
}
