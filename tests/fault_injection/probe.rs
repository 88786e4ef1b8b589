//! Probes: phase functions that do what the case says and record what they saw.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    Ok,
    Err,
    Permanent,
    Panic,
    /// The future was dropped before it ended (timeout, or `fail_fast`).
    Dropped,
}

impl End {
    pub(crate) fn failed(self) -> bool {
        matches!(self, End::Err | End::Permanent | End::Panic)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct AttemptLog {
    pub(crate) started: Duration,
    pub(crate) ended: Option<(End, Duration)>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct ServiceLog {
    pub(crate) attempts: [Vec<AttemptLog>; 3],
    pub(crate) transaction_ids: HashSet<TransactionId>,
    /// Anything a phase saw that breaks a rule on the spot.
    pub(crate) problems: Vec<String>,
    /// Attempts in the second orchestration (every phase succeeds at once).
    pub(crate) second_round: [u32; 3],
}

impl ServiceLog {
    pub(crate) fn attempts(&self, phase: Phase) -> &[AttemptLog] {
        &self.attempts[phase as usize]
    }

    pub(crate) fn last_end(&self, phase: Phase) -> Option<End> {
        let last = self.attempts(phase).last()?;
        Some(last.ended.map_or(End::Dropped, |(end, _)| end))
    }

    pub(crate) fn succeeded(&self, phase: Phase) -> bool {
        self.last_end(phase) == Some(End::Ok)
    }

    pub(crate) fn failed(&self, phase: Phase) -> bool {
        self.last_end(phase).is_some_and(End::failed)
    }
}

/// The error an injected failure returns, naming its attempt so the checks
/// can tell that a failure carries the cause of the final attempt.
#[derive(Debug)]
pub(crate) struct Injected {
    pub(crate) service: String,
    pub(crate) phase: Phase,
    pub(crate) attempt: u32,
    pub(crate) unprintable: bool,
    pub(crate) cyclic: bool,
}

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unprintable {
            panic!("{INJECTED} in the Display of an error");
        }
        write!(
            f,
            "injected failure: {} of `{}`, attempt {}",
            self.phase, self.service, self.attempt
        )
    }
}

impl std::error::Error for Injected {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cyclic
            .then_some(self as &(dyn std::error::Error + 'static))
    }
}

pub(crate) struct Probe {
    pub(crate) name: String,
    pub(crate) behaviours: [Behaviour; 3],
    pub(crate) origin: Instant,
    pub(crate) second_round: Arc<AtomicBool>,
    pub(crate) log: Mutex<ServiceLog>,
    /// The service built over this probe, when the test can reach it, to
    /// read its getters while a phase runs. Cleared at the end of the case
    /// (the service holds the probe).
    pub(crate) handle: Mutex<Option<Service>>,
}

impl Probe {
    pub(crate) fn log(&self) -> MutexGuard<'_, ServiceLog> {
        // An injected panic never happens while the lock is held, but a
        // poisoned lock must not hide the real failure.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    pub(crate) fn service(self: &Arc<Self>) -> Service {
        let phase_fn = |phase: Phase| {
            let probe = self.clone();
            move || probe.start(phase)
        };
        Service::new(
            self.name.clone(),
            phase_fn(Phase::Try),
            phase_fn(Phase::Confirm),
            phase_fn(Phase::Cancel),
        )
    }

    /// The phase function: records the attempt and checks its context, then
    /// returns the future that plays the behaviour.
    pub(crate) fn start(
        self: &Arc<Self>,
        phase: Phase,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + use<> {
        let second_round = self.second_round.load(Ordering::SeqCst);
        let attempt = {
            let mut log = self.log();
            let attempt = if second_round {
                log.second_round[phase as usize] += 1;
                log.second_round[phase as usize]
            } else {
                let started = self.now();
                let attempts = &mut log.attempts[phase as usize];
                attempts.push(AttemptLog {
                    started,
                    ended: None,
                });
                attempts.len() as u32
            };
            if !second_round {
                let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(service) = handle.as_ref() {
                    live_getters(service, phase, &mut log);
                }
            }
            match Context::current() {
                None => log
                    .problems
                    .push(format!("{phase}: no Context inside a phase")),
                Some(context) => {
                    let seen = (context.service_name(), context.phase(), context.attempt());
                    if seen != (self.name.as_str(), phase, attempt) {
                        log.problems
                            .push(format!("{phase} attempt {attempt}: Context says {seen:?}"));
                    }
                    if !second_round {
                        log.transaction_ids.insert(context.transaction_id());
                    }
                }
            }
            attempt
        };
        let behaviour = self.behaviours[phase as usize];
        let act = if second_round {
            Act::Ok
        } else {
            behaviour.outcome.act(attempt)
        };
        if act == Act::EagerPanic {
            self.end(phase, attempt, End::Panic);
            panic!("{INJECTED} in the {phase} function of `{}`", self.name);
        }
        let mut guard = DropGuard {
            probe: self.clone(),
            phase,
            attempt,
            armed: !second_round,
        };
        let armed = guard.armed;
        let future = async move {
            if guard.armed && behaviour.nested {
                guard.probe.clone().nested(phase, attempt).await;
            }
            for _ in 0..behaviour.yields * u32::from(guard.armed) {
                tokio::task::yield_now().await;
            }
            if guard.armed && !behaviour.latency.is_zero() {
                tokio::time::sleep(behaviour.latency).await;
            }
            let error = |attempt| Injected {
                service: guard.probe.name.clone(),
                phase,
                attempt,
                unprintable: behaviour.unprintable,
                cyclic: behaviour.cyclic,
            };
            let (end, result): (End, Result<(), BoxError>) = match act {
                Act::Ok => (End::Ok, Ok(())),
                Act::Err => (End::Err, Err(error(attempt).into())),
                Act::Permanent => (End::Permanent, Err(Permanent::new(error(attempt)).into())),
                Act::Panic => {
                    guard.finish(End::Panic);
                    panic!("{INJECTED} in the {phase} future of `{}`", guard.probe.name);
                }
                Act::Hang => std::future::pending().await,
                Act::EagerPanic => unreachable!("handled above"),
            };
            guard.finish(end);
            result
        };
        Bomb {
            inner: Some(Box::pin(future)),
            armed: armed && behaviour.panic_on_drop,
            what: format!("the {phase} future of `{}`", self.name),
        }
    }

    /// Runs an orchestration of another service inside this phase. The
    /// phase's own context must come out of it unchanged.
    pub(crate) async fn nested(self: Arc<Self>, phase: Phase, attempt: u32) {
        let outer = Context::current().map(|c| c.transaction_id());
        let ok = || async { Ok::<(), String>(()) };
        let inner = Service::new(
            "nested",
            || async {
                let seen = Context::current().map(|c| (c.service_name().to_owned(), c.phase()));
                match seen {
                    Some((name, Phase::Try)) if name == "nested" => Ok(()),
                    seen => Err(format!("the nested Try's context says {seen:?}")),
                }
            },
            ok,
            ok,
        );
        let mut problems = Vec::new();
        if let Err(error) = Orchestrator::new([inner]).orchestrate().await {
            problems.push(format!("a nested orchestration failed: {error}"));
        }
        let seen = Context::current().map(|c| {
            (
                c.transaction_id(),
                c.service_name().to_owned(),
                c.phase(),
                c.attempt(),
            )
        });
        let expected = outer.map(|id| (id, self.name.clone(), phase, attempt));
        if seen != expected {
            problems.push(format!(
                "after nested orchestrations the context says {seen:?}, expected {expected:?}"
            ));
        }
        self.log().problems.extend(problems);
    }

    pub(crate) fn end(&self, phase: Phase, attempt: u32, end: End) {
        let now = self.now();
        let mut log = self.log();
        let record = &mut log.attempts[phase as usize][attempt as usize - 1];
        if let Some(earlier) = record.ended {
            let problem = format!("{phase} attempt {attempt} ended twice: {earlier:?}, {end:?}");
            log.problems.push(problem);
        } else {
            record.ended = Some((end, now));
        }
    }
}

/// The getters update live: while a phase runs, they already say that it
/// started and how the earlier phases ended.
pub(crate) fn live_getters(service: &Service, phase: Phase, log: &mut ServiceLog) {
    // The flags show the phases of this transaction that have ended: Try
    // once a later phase runs, and earlier attempts of the running phase.
    let retried = log.attempts(phase).len() > 1;
    let expected = [
        phase != Phase::Try,
        phase != Phase::Try && log.succeeded(Phase::Try),
        phase == Phase::Confirm && retried,
        false,
        phase == Phase::Cancel && retried,
        false,
    ];
    let seen = flags(service);
    if seen != expected {
        let attempt = log.attempts(phase).len();
        log.problems.push(format!(
            "inv 5: during {phase} attempt {attempt} the getters say {seen:?}, expected \
             {expected:?}"
        ));
    }
}

/// Records an attempt whose future is dropped before it ends.
pub(crate) struct DropGuard {
    pub(crate) probe: Arc<Probe>,
    pub(crate) phase: Phase,
    pub(crate) attempt: u32,
    pub(crate) armed: bool,
}

impl DropGuard {
    pub(crate) fn finish(&mut self, end: End) {
        if self.armed {
            self.armed = false;
            self.probe.end(self.phase, self.attempt, end);
        }
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.finish(End::Dropped);
    }
}

/// A phase's future that panics in its destructor, once the future it wraps
/// is dropped, if it had not ended. The runtime must take it in its stride:
/// the attempt has failed (timed out) or was given up on (`fail_fast`)
/// already.
pub(crate) struct Bomb<F> {
    pub(crate) inner: Option<Pin<Box<F>>>,
    pub(crate) armed: bool,
    pub(crate) what: String,
}

impl<F: Future> Future for Bomb<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let inner = this.inner.as_mut().expect("not dropped");
        let poll = inner.as_mut().poll(cx);
        this.armed &= poll.is_pending();
        poll
    }
}

impl<F> Drop for Bomb<F> {
    fn drop(&mut self) {
        drop(self.inner.take());
        if self.armed && !std::thread::panicking() {
            panic!("{INJECTED} while dropping {}", self.what);
        }
    }
}
