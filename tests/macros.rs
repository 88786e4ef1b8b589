//! The macro paths give the runtime's semantics: `#[tcc_service]` types and
//! `tcc!` blocks succeed, cancel, retry, stop on permanent errors and finish
//! after their future is dropped, exactly as `Service` and `Orchestrator` do.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tcc::{ErrorKind, Permanent, Phase, tcc, tcc_service};

/// How many times each phase of one service ran.
#[derive(Default)]
struct Counts {
    tries: AtomicU32,
    confirms: AtomicU32,
    cancels: AtomicU32,
}

impl Counts {
    fn add(&self, phase: Phase) {
        let counter = match phase {
            Phase::Try => &self.tries,
            Phase::Confirm => &self.confirms,
            Phase::Cancel => &self.cancels,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }

    /// Tries, confirms and cancels.
    fn get(&self) -> (u32, u32, u32) {
        (
            self.tries.load(Ordering::SeqCst),
            self.confirms.load(Ordering::SeqCst),
            self.cancels.load(Ordering::SeqCst),
        )
    }
}

/// An inline phase: counts, then succeeds. The future owns its handle, so
/// it is `'static` as `tcc!` requires.
fn count(counts: &Arc<Counts>, phase: Phase) -> impl Future<Output = Result<(), String>> + use<> {
    let counts = counts.clone();
    async move {
        counts.add(phase);
        Ok(())
    }
}

/// A typed service whose Try fails when told to and whose Confirm fails its
/// first `confirm_failures` attempts.
struct Flight {
    counts: Arc<Counts>,
    fail_try: bool,
    confirm_failures: AtomicU32,
}

impl Flight {
    fn new(counts: &Arc<Counts>) -> Self {
        Flight::confirm_failing(counts, 0)
    }

    /// A flight whose Confirm fails its first `failures` attempts.
    fn confirm_failing(counts: &Arc<Counts>, failures: u32) -> Self {
        Flight {
            counts: counts.clone(),
            fail_try: false,
            confirm_failures: AtomicU32::new(failures),
        }
    }
}

#[tcc_service(name = "flight", max_retries = 2)]
impl Flight {
    #[try_phase]
    async fn hold(&self) -> Result<(), String> {
        self.counts.add(Phase::Try);
        if self.fail_try {
            return Err("sold out".to_owned());
        }
        Ok(())
    }

    #[confirm]
    async fn book(&self) -> Result<(), String> {
        self.counts.add(Phase::Confirm);
        let failures_left = self.confirm_failures.load(Ordering::SeqCst);
        if failures_left > 0 {
            self.confirm_failures
                .store(failures_left - 1, Ordering::SeqCst);
            return Err("booking system busy".to_owned());
        }
        Ok(())
    }

    #[cancel]
    async fn release(&self) -> Result<(), String> {
        self.counts.add(Phase::Cancel);
        Ok(())
    }
}

/// A typed service with the default name, whose Confirm fails for good.
struct Ledger {
    counts: Arc<Counts>,
}

#[tcc_service]
impl Ledger {
    #[try_phase]
    async fn check(&self) -> Result<(), Permanent> {
        self.counts.add(Phase::Try);
        Ok(())
    }

    #[confirm]
    async fn post(&self) -> Result<(), Permanent> {
        self.counts.add(Phase::Confirm);
        Err(Permanent::new("account closed"))
    }

    #[cancel]
    async fn void(&self) -> Result<(), Permanent> {
        self.counts.add(Phase::Cancel);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn all_tries_succeed_so_every_service_confirms() {
    let (flight, payment) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
    // The inline service's closure takes what it names, as `move` does: give
    // it a handle of its own.
    let counts = payment.clone();
    let report = tcc! {
        Flight::new(&flight),
        "payment" => {
            try_phase: count(&counts, Phase::Try),
            confirm: count(&counts, Phase::Confirm),
            cancel: count(&counts, Phase::Cancel),
        },
    }
    .await
    .unwrap();

    assert_eq!(flight.get(), (1, 1, 0));
    assert_eq!(payment.get(), (1, 1, 0));
    let names: Vec<&str> = report.services().map(|s| s.name()).collect();
    assert_eq!(names, ["flight", "payment"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_try_cancels_every_service() {
    let (flight, payment) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
    // The inline service's closure takes what it names, as `move` does: give
    // it a handle of its own.
    let counts = payment.clone();
    let error = tcc! {
        Flight { fail_try: true, ..Flight::new(&flight) },
        "payment" => {
            try_phase: count(&counts, Phase::Try),
            confirm: count(&counts, Phase::Confirm),
            cancel: count(&counts, Phase::Cancel),
        },
    }
    .await
    .unwrap_err();

    assert_eq!(error.kind(), ErrorKind::TryFailed);
    assert_eq!(
        (error.phase(), error.service_name()),
        (Phase::Try, "flight")
    );
    assert_eq!(flight.get(), (1, 0, 1));
    assert_eq!(payment.get(), (1, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn an_inline_try_failure_cancels_the_typed_services_too() {
    let flight = Arc::new(Counts::default());
    let error = tcc! {
        Flight::new(&flight),
        "payment" => {
            try_phase: async { Err::<(), _>("insufficient funds") },
            confirm: async { Ok::<(), String>(()) },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await
    .unwrap_err();

    assert_eq!(error.service_name(), "payment");
    assert_eq!(flight.get(), (1, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn the_max_retries_argument_limits_confirm_retries() {
    // max_retries = 2: three attempts, enough for two failures ...
    let counts = Arc::new(Counts::default());
    let flight = Flight::confirm_failing(&counts, 2);
    let report = tcc! { flight }.await.unwrap();
    assert_eq!(
        report.service("flight").unwrap().attempts(Phase::Confirm),
        3
    );
    assert_eq!(counts.get(), (1, 3, 0));

    // ... but not for three.
    let counts = Arc::new(Counts::default());
    let flight = Flight::confirm_failing(&counts, 3);
    let error = tcc! { flight }.await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConfirmFailed);
    assert_eq!(error.failures()[0].attempts(), 3);
    assert_eq!(counts.get(), (1, 3, 0));
}

#[tokio::test(start_paused = true)]
async fn the_max_retries_setting_wins_over_the_argument() {
    let counts = Arc::new(Counts::default());
    let flight = Flight::confirm_failing(&counts, 4);
    let report = tcc! {
        max_retries = 5;
        flight,
    }
    .await
    .unwrap();
    assert_eq!(
        report.service("flight").unwrap().attempts(Phase::Confirm),
        5
    );

    let counts = Arc::new(Counts::default());
    let flight = Flight::confirm_failing(&counts, 1);
    let error = tcc! {
        retry = tcc::RetryPolicy::immediate(0);
        flight,
    }
    .await
    .unwrap_err();
    assert_eq!(error.failures()[0].attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_stops_the_retries() {
    let counts = Arc::new(Counts::default());
    let error = tcc! {
        max_retries = 10;
        Ledger { counts: counts.clone() },
    }
    .await
    .unwrap_err();

    assert_eq!(error.kind(), ErrorKind::ConfirmFailed);
    assert_eq!(error.service_name(), "Ledger");
    assert_eq!(error.failures()[0].attempts(), 1);
    assert!(error.failures()[0].is_permanent());
    assert_eq!(counts.get(), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn inline_phases_are_evaluated_anew_for_every_attempt() {
    let attempts = Arc::new(AtomicU32::new(0));
    let report = tcc! {
        max_retries = 3;
        "payment" => {
            try_phase: async { Ok::<(), String>(()) },
            // Each attempt builds a new future, which sees the count so far.
            confirm: {
                let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if attempt < 3 { Err(format!("attempt {attempt} failed")) } else { Ok(()) }
                }
            },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await
    .unwrap();
    assert_eq!(
        report.service("payment").unwrap().attempts(Phase::Confirm),
        3
    );
}

/// A Try that sleeps a second before it succeeds or fails.
fn slow_try(counts: &Arc<Counts>, fails: bool) -> impl Future<Output = Result<(), String>> + use<> {
    let counts = counts.clone();
    async move {
        counts.add(Phase::Try);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if fails {
            Err("sold out".to_owned())
        } else {
            Ok(())
        }
    }
}

/// Starts a booking whose hotel Try is slow (and fails when `hotel_fails`),
/// gives up on it while that Try runs, then lets virtual time run out.
/// Returns what the flight and the hotel saw.
async fn abandoned_booking(hotel_fails: bool) -> (Arc<Counts>, Arc<Counts>) {
    let (flight, hotel) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
    let counts = hotel.clone();
    let booking = tcc! {
        Flight::new(&flight),
        "hotel" => {
            try_phase: slow_try(&counts, hotel_fails),
            confirm: count(&counts, Phase::Confirm),
            cancel: count(&counts, Phase::Cancel),
        },
    };
    // The caller gives up while the hotel's Try is running.
    let gave_up = tokio::time::timeout(Duration::from_millis(10), booking).await;
    assert!(gave_up.is_err());
    assert_eq!(hotel.get(), (1, 0, 0));

    tokio::time::sleep(Duration::from_secs(5)).await;
    (flight, hotel)
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_mid_try_still_cancels() {
    let (flight, hotel) = abandoned_booking(true).await;
    assert_eq!(flight.get(), (1, 0, 1));
    assert_eq!(hotel.get(), (1, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_mid_try_still_confirms() {
    let (flight, hotel) = abandoned_booking(false).await;
    assert_eq!(flight.get(), (1, 1, 0));
    assert_eq!(hotel.get(), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn services_from_arcs_and_conversions_share_the_value() {
    let counts = Arc::new(Counts::default());
    let flight = Arc::new(Flight::new(&counts));
    tcc! { flight.clone() }.await.unwrap();
    let service: tcc::Service = flight.into();
    assert_eq!(service.name(), "flight");
    tcc::Orchestrator::new([service])
        .orchestrate()
        .await
        .unwrap();
    assert_eq!(counts.get(), (2, 2, 0));
}

/// The `max_retries = 2` argument of `#[tcc_service]` holds when the
/// service is shared through an `Arc`: listed in `tcc!`, and made into a
/// `Service`. (The default would be 10 retries.)
#[tokio::test(start_paused = true)]
async fn the_max_retries_argument_holds_through_an_arc() {
    let counts = Arc::new(Counts::default());
    let flight = Arc::new(Flight::confirm_failing(&counts, u32::MAX));
    let error = tcc! { flight.clone() }.await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConfirmFailed);
    assert_eq!(error.failures()[0].attempts(), 3);
    assert_eq!(counts.get(), (1, 3, 0));

    let counts = Arc::new(Counts::default());
    let flight = Arc::new(Flight::confirm_failing(&counts, u32::MAX));
    let error = tcc::Orchestrator::new([tcc::Service::from(flight)])
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(error.failures()[0].attempts(), 3);
    assert_eq!(counts.get(), (1, 3, 0));
}

/// The services of a block that fail together retry each on its own beat,
/// and differently in each transaction: jitter is seeded by the service's
/// name and the transaction id, as with an `Orchestrator`.
#[tokio::test(start_paused = true)]
async fn services_of_a_block_failing_together_retry_at_different_instants() {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    type Instants = Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>;
    let first_wait = |instants: &Instants| {
        let instants = instants.lock().unwrap();
        assert_eq!(instants.len(), 2, "one retry");
        instants[1] - instants[0]
    };
    let mut waits = std::collections::HashSet::new();
    for _ in 0..4 {
        let (east, west) = (Instants::default(), Instants::default());
        tcc! {
            // Ten days ± 50 %: a band of 10^9 ms, the timer's unit, so that
            // two waits coincide by chance about once in ten million runs.
            retry = tcc::RetryPolicy::default()
                .with_max_retries(1)
                .with_initial_interval(10 * DAY)
                .with_multiplier(1.0)
                .with_max_interval(30 * DAY)
                .with_jitter(0.5);
            "east" => clone(east) {
                try_phase: async { Ok::<(), String>(()) },
                confirm: {
                    east.lock().unwrap().push(tokio::time::Instant::now());
                    async { Err::<(), _>("region down".to_owned()) }
                },
                cancel: async { Ok::<(), String>(()) },
            },
            "west" => clone(west) {
                try_phase: async { Ok::<(), String>(()) },
                confirm: {
                    west.lock().unwrap().push(tokio::time::Instant::now());
                    async { Err::<(), _>("region down".to_owned()) }
                },
                cancel: async { Ok::<(), String>(()) },
            },
        }
        .await
        .unwrap_err();
        for wait in [first_wait(&east), first_wait(&west)] {
            assert!(
                (5 * DAY..=15 * DAY).contains(&wait),
                "{wait:?} is outside 10 days ± 50 %"
            );
            waits.insert(wait);
        }
    }
    assert_eq!(waits.len(), 8, "retries in lockstep: {waits:?}");
}

#[tokio::test(start_paused = true)]
async fn the_tcc_future_is_send() {
    let counts = Arc::new(Counts::default());
    let booking = tcc! { Flight::new(&counts) };
    tokio::spawn(booking).await.unwrap().unwrap();
    assert_eq!(counts.get(), (1, 1, 0));
}

/// A wallet whose phases borrow it: `async fn` on `&self`.
#[derive(Default)]
struct Wallet {
    frozen: AtomicU32,
    debited: AtomicU32,
}

impl Wallet {
    async fn freeze(&self, amount: u32) -> Result<(), String> {
        self.frozen.fetch_add(amount, Ordering::SeqCst);
        Ok(())
    }
    async fn debit(&self, amount: u32) -> Result<(), String> {
        self.frozen.fetch_sub(amount, Ordering::SeqCst);
        self.debited.fetch_add(amount, Ordering::SeqCst);
        Ok(())
    }
    async fn unfreeze(&self, amount: u32) -> Result<(), String> {
        self.frozen.fetch_sub(amount, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn cloned_handles_let_phases_borrow_and_stay_with_the_caller() {
    let wallet = Arc::new(Wallet::default());
    let amount = 30;
    tcc! {
        "payment" => clone(wallet) {
            try_phase: wallet.freeze(amount),
            confirm: wallet.debit(amount),
            cancel: wallet.unfreeze(amount),
        },
    }
    .await
    .unwrap();
    // `wallet` was cloned in, not moved.
    assert_eq!(wallet.debited.load(Ordering::SeqCst), 30);
    assert_eq!(wallet.frozen.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn services_built_by_hand_mix_with_typed_and_inline_ones() {
    let (flight, hotel, payment) = (
        Arc::new(Counts::default()),
        Arc::new(Counts::default()),
        Arc::new(Counts::default()),
    );
    let (h1, h2, h3) = (hotel.clone(), hotel.clone(), hotel.clone());
    let by_hand = tcc::Service::new(
        "hotel",
        move || count(&h1, Phase::Try),
        move || count(&h2, Phase::Confirm),
        move || count(&h3, Phase::Cancel),
    );
    let counts = payment.clone();
    tcc! {
        Flight::new(&flight),
        by_hand.clone(),
        "payment" => {
            try_phase: count(&counts, Phase::Try),
            confirm: count(&counts, Phase::Confirm),
            cancel: count(&counts, Phase::Cancel),
        },
    }
    .await
    .unwrap();
    assert!(by_hand.confirm_succeeded());
    assert_eq!(
        (flight.get(), hotel.get(), payment.get()),
        ((1, 1, 0), (1, 1, 0), (1, 1, 0))
    );
}

#[tokio::test(start_paused = true)]
async fn two_typed_services_with_one_name_are_refused_before_any_phase() {
    let (first, second) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
    let error = tcc! { Flight::new(&first), Flight::new(&second) }
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DuplicateService);
    assert_eq!(error.service_name(), "flight");
    assert_eq!((first.get(), second.get()), ((0, 0, 0), (0, 0, 0)));
}

#[tokio::test(start_paused = true)]
async fn a_service_handle_in_another_orchestration_runs_in_both() {
    let counts = Arc::new(Counts::default());
    let (c1, c2, c3) = (counts.clone(), counts.clone(), counts.clone());
    let slow = tcc::Service::new(
        "slow",
        move || slow_try(&c1, false),
        move || count(&c2, Phase::Confirm),
        move || count(&c3, Phase::Cancel),
    );
    let orchestrator = tcc::Orchestrator::new([slow.clone()]);
    let running = tokio::spawn(async move { orchestrator.orchestrate().await });
    tokio::task::yield_now().await;

    let report = tcc! { slow.clone() }.await.unwrap();
    assert!(report.service("slow").unwrap().succeeded(Phase::Confirm));
    running.await.unwrap().unwrap();
    assert_eq!(counts.get(), (2, 2, 0));
    assert!(slow.try_succeeded() && slow.confirm_succeeded() && !slow.canceled());
}

#[tokio::test(start_paused = true)]
async fn a_service_handle_keeps_its_own_retry_limit() {
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    let ok = || async { Ok::<(), String>(()) };
    let ledger = tcc::Service::new(
        "ledger",
        ok,
        move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>("ledger down".to_owned()) }
        },
        ok,
    )
    .max_retries(1);
    let error = tcc! { ledger.clone() }.await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConfirmFailed);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(error.failures()[0].attempts(), 2);
    assert!(ledger.confirmed() && !ledger.confirm_succeeded());
}

#[tokio::test(start_paused = true)]
async fn phases_of_a_block_see_their_transaction_service_and_attempt() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let report = tcc! {
        Flight::new(&Arc::new(Counts::default())),
        "audit" => clone(log) {
            try_phase: async {
                let context = tcc::Context::current().expect("inside a phase");
                log.lock().unwrap().push(context);
                Ok::<(), String>(())
            },
            confirm: async {
                let context = tcc::Context::current().expect("inside a phase");
                log.lock().unwrap().push(context);
                Ok::<(), String>(())
            },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await
    .unwrap();
    let seen: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c.transaction_id(),
                c.service_name().to_owned(),
                c.phase(),
                c.attempt(),
            )
        })
        .collect();
    let id = report.transaction_id();
    assert_eq!(
        seen,
        [
            (id, "audit".to_owned(), Phase::Try, 1),
            (id, "audit".to_owned(), Phase::Confirm, 1),
        ]
    );
    assert!(tcc::Context::current().is_none());
}

#[tokio::test(start_paused = true)]
async fn the_attempt_timeout_setting_limits_each_confirm_attempt() {
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    let start = tokio::time::Instant::now();
    let report = tcc! {
        attempt_timeout = Duration::from_secs(3);
        retry = tcc::RetryPolicy::immediate(1);
        "stuck-once" => clone(seen) {
            try_phase: async { Ok::<(), String>(()) },
            confirm: async {
                if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    std::future::pending::<()>().await;
                }
                Ok::<(), String>(())
            },
            cancel: async { Ok::<(), String>(()) },
        },
    }
    .await
    .expect("the second attempt confirms");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(
        report.services().next().unwrap().attempts(Phase::Confirm),
        2
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
}
