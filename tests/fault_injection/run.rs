//! Running a case: on the `Orchestrator` or through `tcc!`, on paused or real time.

use super::*;

/// How the caller's side of the orchestration went.
pub(crate) enum Caller {
    Returned {
        result: Result<Report, Error>,
        at: Duration,
    },
    Dropped {
        at: Duration,
    },
}

/// How a case starts its orchestration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    Orchestrator,
    Macro,
}

pub(crate) type Run = Pin<Box<dyn Future<Output = Result<Report, Error>> + Send>>;

/// The runtime a case runs on, and how its phases tell time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Clock {
    /// A current-thread runtime with paused time: instants are exact.
    Paused,
    /// A multi-thread runtime in real time, for cases where every phase
    /// ends at once and retries wait a few milliseconds: instants are read
    /// from the real clock, so only what real time cannot blur is checked
    /// exactly (a retry never starts before its backoff's lower bound);
    /// every upper bound gets [`REAL_SLACK`], and the instants the model
    /// predicts to the tick (a Try's end, the start of phase 2) are not
    /// compared.
    Real,
}

/// How late a real-clock instant may be past the model's bound: a loaded
/// two-core machine may not schedule a woken task for a while.
pub(crate) const REAL_SLACK: Duration = Duration::from_secs(2);

pub(crate) fn run_case(case: &Case, api: Api, clock: Clock) -> Result<(), TestCaseError> {
    let runtime = match clock {
        Clock::Paused => tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build(),
        Clock::Real => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build(),
    }
    .expect("a runtime");
    let elapsed = |origin: Instant| origin.elapsed();
    runtime.block_on(async {
        let origin = Instant::now();
        let second_round = Arc::new(AtomicBool::new(false));
        let probes: Vec<Arc<Probe>> = case
            .services
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                Arc::new(Probe {
                    name: format!("s{i}"),
                    behaviours: spec.behaviours,
                    origin,
                    second_round: second_round.clone(),
                    log: Mutex::new(ServiceLog::default()),
                    handle: Mutex::new(None),
                })
            })
            .collect();
        let _unlink = Unlink(&probes);
        let names: Vec<String> = probes.iter().map(|p| p.name.clone()).collect();
        // Handles to read the getters from; `tcc!` keeps its inline services.
        let (services, run) = match api {
            Api::Orchestrator => {
                let (services, run) = orchestrator_run(case, &probes);
                (Some(services), run)
            }
            Api::Macro => (None, macro_run(case, &probes)),
        };

        let model = Model::new(case);
        // A caller that does not drop the future still gives up a little
        // after the bound, so that a hung orchestration fails the case.
        let patience = match case.drop_at_permille {
            Some(permille) => model.bound * permille / 1000,
            None => model.bound + Duration::from_secs(1),
        };
        let caller = match tokio::time::timeout(patience, run).await {
            Ok(result) => Caller::Returned {
                result,
                at: elapsed(origin),
            },
            Err(_) if case.drop_at_permille.is_some() => Caller::Dropped {
                at: elapsed(origin),
            },
            Err(_) => {
                return Err(TestCaseError::fail(format!(
                    "inv 6: the orchestration had not returned after {patience:?}, \
                     past its bound {:?}",
                    model.bound
                )));
            }
        };
        // Whatever the caller did, the transaction must reach its end by the
        // bound; wait well past it.
        if clock == Clock::Paused {
            tokio::time::sleep_until(origin + model.bound + Duration::from_secs(1)).await;
        }
        let logs: Vec<ServiceLog> = probes.iter().map(|p| p.log().clone()).collect();
        let checked = check(
            case,
            &model,
            &logs,
            &names,
            services.as_deref(),
            &caller,
            clock,
        );
        checked.map_err(|problem| {
            let when = match &caller {
                Caller::Returned { at, .. } => format!("returned at {at:?}"),
                Caller::Dropped { at } => format!("dropped by the caller at {at:?}"),
            };
            TestCaseError::fail(format!(
                "{problem}\n  orchestration {when}; time bound {:?}; logs: {logs:#?}",
                model.bound
            ))
        })?;
        // A service's own invalid policy would refuse the second one too.
        let refuses = case
            .services
            .iter()
            .any(|s| s.retry.policy.is_some_and(PolicySpec::is_invalid));
        match services.filter(|_| !refuses) {
            Some(services) => second_orchestration(&services, &probes, &second_round)
                .await
                .map_err(TestCaseError::fail),
            None => Ok(()),
        }
    })
}

/// Clears the probes' service handles as the case ends, however it ends, so
/// that no service and probe keep each other alive.
pub(crate) struct Unlink<'a>(pub(crate) &'a [Arc<Probe>]);

impl Drop for Unlink<'_> {
    fn drop(&mut self) {
        for probe in self.0 {
            probe
                .handle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        }
    }
}

/// The case's services, built with the `Service` API, and the future of
/// their orchestration.
pub(crate) fn orchestrator_run(case: &Case, probes: &[Arc<Probe>]) -> (Vec<Service>, Run) {
    let services: Vec<Service> = probes
        .iter()
        .zip(&case.services)
        .map(|(probe, spec)| {
            let service = spec.retry.apply(probe.service());
            match spec.try_timeout {
                Some(limit) => service.try_timeout(limit),
                None => service,
            }
        })
        .collect();
    for (probe, service) in probes.iter().zip(&services) {
        *probe.handle.lock().expect("not poisoned") = Some(service.clone());
    }
    let spec = &case.orchestrator;
    let mut orchestrator = spec
        .retry
        .apply(Orchestrator::new(services.clone()))
        .fail_fast(spec.fail_fast);
    if let Some(limit) = spec.try_timeout {
        orchestrator = orchestrator.try_timeout(limit);
    }
    (
        services,
        Box::pin(async move { orchestrator.orchestrate().await }),
    )
}

/// The orchestration of `probes` as a `tcc!` block of inline services.
pub(crate) fn macro_run(case: &Case, probes: &[Arc<Probe>]) -> Run {
    let spec = &case.orchestrator;
    let (Some(max_retries), Some(policy)) = spec.retry.resolved() else {
        unreachable!("a macro case sets every setting");
    };
    let policy = policy.build();
    let try_timeout = spec.try_timeout.unwrap_or(Duration::MAX);
    let fail_fast = spec.fail_fast;
    // A `tcc!` block lists a fixed number of services: one block per count.
    macro_rules! blocks {
        ([$($done:ident $done_name:literal)*]) => {
            unreachable!("a case has at most 20 services")
        };
        ([$($done:ident $done_name:literal)*] $next:ident $next_name:literal $($rest:tt)*) => {
            if probes.len() == [$($done_name,)* $next_name].len() {
                let mut each = probes.iter().cloned();
                $(let $done = each.next().expect("counted");)*
                let $next = each.next().expect("counted");
                let run: Run = Box::pin(tcc::tcc! {
                    retry = policy;
                    max_retries = max_retries;
                    try_timeout = try_timeout;
                    fail_fast = fail_fast;
                    $(
                        $done_name => clone($done) {
                            try_phase: $done.start(Phase::Try),
                            confirm: $done.start(Phase::Confirm),
                            cancel: $done.start(Phase::Cancel),
                        },
                    )*
                    $next_name => clone($next) {
                        try_phase: $next.start(Phase::Try),
                        confirm: $next.start(Phase::Confirm),
                        cancel: $next.start(Phase::Cancel),
                    },
                });
                run
            } else {
                blocks!([$($done $done_name)* $next $next_name] $($rest)*)
            }
        };
    }
    blocks!([] p0 "s0" p1 "s1" p2 "s2" p3 "s3" p4 "s4" p5 "s5" p6 "s6" p7 "s7" p8 "s8" p9 "s9"
        p10 "s10" p11 "s11" p12 "s12" p13 "s13" p14 "s14" p15 "s15" p16 "s16" p17 "s17"
        p18 "s18" p19 "s19")
}

/// The services are free again and their flags start afresh: an
/// orchestration where every phase succeeds confirms them all.
pub(crate) async fn second_orchestration(
    services: &[Service],
    probes: &[Arc<Probe>],
    second_round: &AtomicBool,
) -> Result<(), String> {
    second_round.store(true, Ordering::SeqCst);
    let second = Orchestrator::new(services.iter().cloned()).max_retries(0);
    match tokio::time::timeout(Duration::from_secs(1), second.orchestrate()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            return Err(format!(
                "a second orchestration of the same services failed: {error}"
            ));
        }
        Err(_) => return Err("a second orchestration of the same services hung".into()),
    }
    for (service, probe) in services.iter().zip(probes) {
        let flags = flags(service);
        if flags != [true, true, true, true, false, false] {
            return Err(format!(
                "`{}` after a second orchestration that confirmed: getters {flags:?}",
                service.name()
            ));
        }
        let log = probe.log();
        if log.second_round != [1, 1, 0] || !log.problems.is_empty() {
            return Err(format!(
                "`{}` in a second orchestration: attempts {:?}, problems {:?}",
                service.name(),
                log.second_round,
                log.problems
            ));
        }
    }
    Ok(())
}

pub(crate) fn flags(service: &Service) -> [bool; 6] {
    [
        service.tried(),
        service.try_succeeded(),
        service.confirmed(),
        service.confirm_succeeded(),
        service.canceled(),
        service.cancel_succeeded(),
    ]
}
