//! Scripted services for the behaviour tests: each phase does what its
//! [`Step`]s say, and every call is counted.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tcc::{BoxError, Context, Permanent, Phase, Service};

/// What one call of a phase does.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    Ok,
    Fail,
    FailPermanently,
    Panic,
    /// Sleep, then succeed.
    Sleep(Duration),
    /// Sleep, then fail.
    SleepThenFail(Duration),
    Hang,
}

/// The steps of one phase: call `n` takes `steps[n]`, the last one repeats.
#[derive(Clone, Debug)]
pub struct Script(Vec<Step>);

impl Script {
    pub fn always(step: Step) -> Self {
        Script(vec![step])
    }
    /// Takes `steps` in order, then repeats the last.
    pub fn of(steps: &[Step]) -> Self {
        assert!(!steps.is_empty(), "a script needs a step");
        Script(steps.to_vec())
    }
    /// Fails `n` times, then succeeds.
    pub fn fail_times(n: usize) -> Self {
        let mut steps = vec![Step::Fail; n];
        steps.push(Step::Ok);
        Script(steps)
    }
    fn step(&self, call: u32) -> Step {
        let last = self.0.len() - 1;
        self.0[(call as usize).min(last)]
    }
}

impl From<Step> for Script {
    fn from(step: Step) -> Self {
        Script::always(step)
    }
}

/// Call `n` takes step `n`; the last one repeats.
impl<const N: usize> From<[Step; N]> for Script {
    fn from(steps: [Step; N]) -> Self {
        Script(steps.to_vec())
    }
}

/// What a scripted service saw.
#[derive(Default)]
pub struct Probe {
    calls: [AtomicU32; 3],
    finished: [AtomicU32; 3],
    pub contexts: Mutex<Vec<Context>>,
}

impl Probe {
    /// How many times `phase` was called.
    pub fn calls(&self, phase: Phase) -> u32 {
        self.calls[phase as usize].load(Ordering::SeqCst)
    }
    /// How many calls of `phase` ran to their end (not dropped).
    pub fn finished(&self, phase: Phase) -> u32 {
        self.finished[phase as usize].load(Ordering::SeqCst)
    }
}

/// A service named `name` whose phases follow the scripts.
pub fn scripted(
    name: &str,
    try_script: impl Into<Script>,
    confirm_script: impl Into<Script>,
    cancel_script: impl Into<Script>,
) -> (Service, Arc<Probe>) {
    let probe = Arc::new(Probe::default());
    let make = |phase: Phase, script: Script| {
        let probe = probe.clone();
        move || {
            let call = probe.calls[phase as usize].fetch_add(1, Ordering::SeqCst);
            probe
                .contexts
                .lock()
                .unwrap()
                .push(Context::current().expect("a phase runs with a context"));
            let step = script.step(call);
            let probe = probe.clone();
            async move {
                let result = perform(step).await;
                probe.finished[phase as usize].fetch_add(1, Ordering::SeqCst);
                result
            }
        }
    };
    let service = Service::new(
        name,
        make(Phase::Try, try_script.into()),
        make(Phase::Confirm, confirm_script.into()),
        make(Phase::Cancel, cancel_script.into()),
    );
    (service, probe)
}

/// A service whose every phase succeeds at once.
pub fn healthy(name: &str) -> (Service, Arc<Probe>) {
    scripted(name, Step::Ok, Step::Ok, Step::Ok)
}

async fn perform(step: Step) -> Result<(), BoxError> {
    match step {
        Step::Ok => Ok(()),
        Step::Fail => Err("transient failure".into()),
        Step::FailPermanently => Err(Permanent::new("permanent failure").into()),
        Step::Panic => panic!("scripted panic"),
        Step::Sleep(time) => {
            tokio::time::sleep(time).await;
            Ok(())
        }
        Step::SleepThenFail(time) => {
            tokio::time::sleep(time).await;
            Err("failure after a while".into())
        }
        Step::Hang => std::future::pending().await,
    }
}
