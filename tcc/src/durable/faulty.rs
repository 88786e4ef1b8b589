//! [`FaultyLog`]: a log that fails on purpose, for tests of recovery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{
    Decision, End, Filter, Intent, Lease, Leases, Log, LogError, LogErrorKind, LogFuture,
    LogSummary, PhaseProgress, Resolution, TransactionRecord,
};
use crate::{Phase, TransactionId};

/// What a [`FaultyLog`] does at the chosen write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The write fails with [`LogErrorKind::Injected`] and is not applied;
    /// later writes go through (a passing failure, like a full disk freed).
    Fail,
    /// The write is applied to the inner log, then fails with
    /// [`LogErrorKind::Injected`] all the same (the caller cannot know whether
    /// it was written, as when a commit's reply is lost).
    FailAfterWrite,
    /// The process "crashes" before the write: it and every later call fail
    /// with [`LogErrorKind::Injected`] and reach nothing; the inner log keeps
    /// what was written before, and the leases this log held on it are
    /// released, as a dead process holds none.
    Crash,
    /// As [`Fault::Crash`], but the write itself reached the inner log first.
    CrashAfterWrite,
}

/// Wraps a [`Log`], counts its writes, and fails or "crashes" at the k-th
/// one, so that a test can check what recovery makes of every prefix of a
/// transaction's writes.
///
/// Writes are [`begin`](Log::begin), [`decide`](Log::decide),
/// [`note`](Log::note), [`finish`](Log::finish), [`reopen`](Log::reopen),
/// [`requeue`](Log::requeue) and [`resolve`](Log::resolve), counted from 1
/// in the order they are called.
/// Run a scenario once through `FaultyLog::new` to learn how many writes it
/// makes ([`writes`](FaultyLog::writes)), then once for each `k` and each
/// [`Fault`]; after a crash, build a fresh engine on [`inner`](FaultyLog::inner)
/// and run recovery.
///
/// By default the inner log keeps every write made before a crash. A real
/// crash of a file store also loses the lazy writes ([`note`](Log::note),
/// `finish(Done)`) that no durable commit carried yet;
/// [`lose_lazy_writes`](FaultyLog::lose_lazy_writes) makes the crash do that
/// too. The inner log is expected to take each call when it is made, not
/// when its future is first polled (as [`MemoryLog`](super::MemoryLog) and
/// `RedbLog` do), so that the order of calls is the order of writes.
///
/// ```
/// use std::sync::Arc;
/// use tcc::durable::{Decision, Fault, FaultyLog, Intent, Log, LogErrorKind, MemoryLog, Status};
/// use tcc::TransactionId;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let inner = Arc::new(MemoryLog::new());
/// let log = FaultyLog::new(inner.clone()).with_fault(2, Fault::Crash);
/// let id = TransactionId::generate();
/// let lease = log.begin(&Intent { id, participants: vec![] }).await.unwrap();
/// let error = log.decide(&lease, Decision::Confirm).await.unwrap_err();
/// assert_eq!(error.kind(), LogErrorKind::Injected);
/// // The intent was written, the decision never was: recovery cancels it.
/// let claimed = inner.claim_unfinished(10).await.unwrap();
/// assert_eq!(claimed[0].1.status, Status::Undecided);
/// # }
/// ```
pub struct FaultyLog<L: Log + ?Sized> {
    inner: Arc<L>,
    fault: Option<(u64, Fault)>,
    writes: AtomicU64,
    crashed: AtomicBool,
    /// Leases this log holds on the inner one, released at a crash.
    held: Mutex<HashMap<TransactionId, Lease>>,
    lose_lazy: bool,
    /// With `lose_lazy`: the lazy calls not passed on yet, in order. Passed
    /// to the inner log before its next other call (which would carry them
    /// in a durable commit, or let a read see them), dropped at a crash.
    lazy: Mutex<Vec<Lazy>>,
}

/// A call held back by [`FaultyLog::lose_lazy_writes`].
enum Lazy {
    Note(Lease, u32, Phase, PhaseProgress),
    Done(Lease),
    Release(Lease),
}

/// What to do with one write.
enum Verdict {
    Write,
    /// Write, then fail; crash too if set.
    WriteThenFail {
        crash: bool,
    },
    /// Do not write; fail; crash too if set.
    Refuse {
        crash: bool,
    },
}

impl<L: Log + ?Sized> FaultyLog<L> {
    /// A log that only counts the writes it passes to `inner`.
    pub fn new(inner: Arc<L>) -> Self {
        FaultyLog {
            inner,
            fault: None,
            writes: AtomicU64::new(0),
            crashed: AtomicBool::new(false),
            held: Mutex::new(HashMap::new()),
            lose_lazy: false,
            lazy: Mutex::new(Vec::new()),
        }
    }

    /// Makes a crash lose the lazy writes ([`note`](Log::note),
    /// `finish(Done)`, and [`release`](Log::release)s) made since the inner
    /// log last received another call, as a crash of a file store loses those
    /// no durable commit carried. They are held back until then, and a held
    /// `finish(Done)` resolves at once, as `RedbLog`'s does before its commit.
    /// With it, [`Fault::CrashAfterWrite`] at a lazy write loses that write
    /// too.
    pub fn lose_lazy_writes(mut self) -> Self {
        self.lose_lazy = true;
        self
    }

    /// Injects `fault` at write number `k`, counted from 1.
    pub fn with_fault(mut self, k: u64, fault: Fault) -> Self {
        self.fault = Some((k, fault));
        self
    }

    /// The log it wraps: what survives a crash.
    pub fn inner(&self) -> &Arc<L> {
        &self.inner
    }

    /// How many writes were called so far, including the failed one and those
    /// refused after a crash.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Whether the crash happened.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    fn verdict(&self) -> Verdict {
        let k = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.crashed() {
            return Verdict::Refuse { crash: false };
        }
        match self.fault {
            Some((at, fault)) if at == k => match fault {
                Fault::Fail => Verdict::Refuse { crash: false },
                Fault::FailAfterWrite => Verdict::WriteThenFail { crash: false },
                Fault::Crash => Verdict::Refuse { crash: true },
                Fault::CrashAfterWrite => Verdict::WriteThenFail { crash: true },
            },
            _ => Verdict::Write,
        }
    }

    fn crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
        self.lock_lazy().clear();
        let held: Vec<Lease> = self.lock_held().drain().map(|(_, lease)| lease).collect();
        for lease in held {
            self.inner.release(&lease);
        }
    }

    fn lock_lazy(&self) -> std::sync::MutexGuard<'_, Vec<Lazy>> {
        self.lazy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Passes the held-back lazy calls to the inner log, in order; returns
    /// the futures of the finishes, to be awaited before what follows.
    /// Passes on the lazy writes held back by
    /// [`lose_lazy_writes`](FaultyLog::lose_lazy_writes), unless the crash
    /// came: what a process that lives on does with its next durable write,
    /// or when it shuts down. Call it before "restarting" over the inner log.
    pub async fn settle(&self) {
        if self.crashed() {
            return;
        }
        await_passed(self.pass_lazy()).await;
    }

    fn pass_lazy(&self) -> Vec<LogFuture<'_, ()>> {
        let lazy = std::mem::take(&mut *self.lock_lazy());
        let mut finishes = Vec::new();
        for call in lazy {
            match call {
                Lazy::Note(lease, participant, phase, progress) => {
                    self.inner.note(&lease, participant, phase, progress);
                }
                Lazy::Done(lease) => {
                    finishes.push(self.inner.finish(&lease, End::Done));
                    self.drop_hold(&lease);
                }
                Lazy::Release(lease) => {
                    self.inner.release(&lease);
                    self.drop_hold(&lease);
                }
            }
        }
        finishes
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashMap<TransactionId, Lease>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn injected(&self, what: &str) -> LogError {
        let state = if self.crashed() {
            "after the injected crash"
        } else {
            "injected failure"
        };
        LogError::new(LogErrorKind::Injected, format!("{what}: {state}"))
    }

    /// Runs one awaited write under the verdict. The inner call is made at
    /// once, as the engine's call would be; a crash happens at once too, so a
    /// write the inner log received before it is ordered before the releases.
    /// `after` sees a successful result (to track the leases taken).
    fn write<'a, T: Leases + Send + 'a>(
        &'a self,
        what: &'static str,
        call: impl FnOnce() -> LogFuture<'a, T>,
        after: impl FnOnce(&Self, &T) + Send + 'a,
    ) -> LogFuture<'a, T> {
        let mut passed = Vec::new();
        let (future, fail) = match self.verdict() {
            Verdict::Write => {
                passed = self.pass_lazy();
                (Some(call()), false)
            }
            Verdict::WriteThenFail { crash } => {
                passed = self.pass_lazy();
                let future = call();
                if crash {
                    self.crash();
                }
                (Some(future), true)
            }
            Verdict::Refuse { crash } => {
                if crash {
                    self.crash();
                }
                (None, true)
            }
        };
        Box::pin(async move {
            await_passed(passed).await;
            let result = match future {
                Some(future) => future.await,
                None => Err(self.injected(what)),
            };
            match (result, fail) {
                (Ok(value), false) => {
                    after(self, &value);
                    Ok(value)
                }
                // Written, but the caller is told it failed: as a store
                // whose reply is lost, it holds no lease the caller does
                // not know of, so this process's recovery can take it.
                (Ok(value), true) => {
                    after(self, &value);
                    self.forget(&value);
                    Err(self.injected(what))
                }
                (Err(_), true) => Err(self.injected(what)),
                (Err(error), false) => Err(error),
            }
        })
    }

    /// A read: passed through until the crash, refused after it (a dead
    /// process reads nothing).
    fn read<'a, T: Send + 'a>(
        &'a self,
        call: impl FnOnce() -> LogFuture<'a, T>,
    ) -> LogFuture<'a, T> {
        if self.crashed() {
            let error = self.injected("read");
            return Box::pin(async move { Err(error) });
        }
        let passed = self.pass_lazy();
        let future = call();
        Box::pin(async move {
            await_passed(passed).await;
            future.await
        })
    }

    /// A lazy call under the verdict, held back or passed on at once.
    fn lazy_call(&self, call: Lazy) -> Result<(), LogError> {
        let (passes, fail, crash) = match self.verdict() {
            Verdict::Write => (true, false, false),
            Verdict::WriteThenFail { crash } => (true, true, crash),
            Verdict::Refuse { crash } => (false, true, crash),
        };
        if passes {
            if self.lose_lazy {
                self.lock_lazy().push(call);
            } else {
                match call {
                    Lazy::Note(lease, participant, phase, progress) => {
                        self.inner.note(&lease, participant, phase, progress);
                    }
                    // Without lose_lazy, finish and release do not come here.
                    Lazy::Done(_) | Lazy::Release(_) => unreachable!("held back only"),
                }
            }
        }
        if crash {
            self.crash();
        }
        match fail {
            true => Err(self.injected("write")),
            false => Ok(()),
        }
    }

    fn hold(&self, lease: &Lease) {
        self.lock_held().insert(lease.id, lease.clone());
        // A write in flight when the crash happened: its lease dies with the
        // process too.
        if self.crashed() {
            self.lock_held().remove(&lease.id);
            self.inner.release(lease);
        }
    }

    /// Gives back the leases in `value`, which the caller never received.
    fn forget<T: Leases>(&self, value: &T) {
        for lease in value.leases() {
            self.drop_hold(lease);
            self.inner.release(lease);
        }
    }

    fn drop_hold(&self, lease: &Lease) {
        let mut held = self.lock_held();
        if held.get(&lease.id) == Some(lease) {
            held.remove(&lease.id);
        }
    }
}

impl<L: Log + ?Sized> Log for FaultyLog<L> {
    fn begin(&self, intent: &Intent) -> LogFuture<'_, Lease> {
        self.write(
            "begin",
            || self.inner.begin(intent),
            |me, lease| me.hold(lease),
        )
    }

    fn decide(&self, lease: &Lease, decision: Decision) -> LogFuture<'_, Decision> {
        self.write("decide", || self.inner.decide(lease, decision), |_, _| {})
    }

    fn note(&self, lease: &Lease, participant: u32, phase: Phase, progress: PhaseProgress) {
        // A note's failure has no caller to tell: it is dropped.
        let _ = self.lazy_call(Lazy::Note(lease.clone(), participant, phase, progress));
    }

    fn finish(&self, lease: &Lease, end: End) -> LogFuture<'_, ()> {
        if self.lose_lazy && end == End::Done {
            let result = self.lazy_call(Lazy::Done(lease.clone()));
            return Box::pin(std::future::ready(result));
        }
        let held = lease.clone();
        self.write(
            "finish",
            || self.inner.finish(lease, end),
            move |me, ()| me.drop_hold(&held),
        )
    }

    fn claim_unfinished(&self, limit: usize) -> LogFuture<'_, Vec<(Lease, TransactionRecord)>> {
        self.read(|| {
            Box::pin(async move {
                let claimed = self.inner.claim_unfinished(limit).await?;
                for (lease, _) in &claimed {
                    self.hold(lease);
                }
                Ok(claimed)
            })
        })
    }

    fn release(&self, lease: &Lease) {
        if self.crashed() {
            return;
        }
        if self.lose_lazy {
            // After the lazy writes before it; the lease stays held, so a
            // crash still releases it.
            self.lock_lazy().push(Lazy::Release(lease.clone()));
        } else {
            self.drop_hold(lease);
            self.inner.release(lease);
        }
    }

    fn renew(&self, lease: &Lease) -> LogFuture<'_, ()> {
        self.read(|| self.inner.renew(lease))
    }

    fn lease_ttl(&self) -> Option<std::time::Duration> {
        self.inner.lease_ttl()
    }

    fn get(&self, id: TransactionId) -> LogFuture<'_, Option<TransactionRecord>> {
        self.read(|| self.inner.get(id))
    }

    fn needs_repair(&self, limit: usize) -> LogFuture<'_, Vec<TransactionRecord>> {
        self.read(|| self.inner.needs_repair(limit))
    }

    fn reopen(&self, id: TransactionId) -> LogFuture<'_, Option<(Lease, TransactionRecord)>> {
        self.write(
            "reopen",
            || self.inner.reopen(id),
            |me, reopened| {
                if let Some((lease, _)) = reopened {
                    me.hold(lease);
                }
            },
        )
    }

    fn requeue(&self, id: TransactionId) -> LogFuture<'_, bool> {
        self.write("requeue", || self.inner.requeue(id), |_, _| {})
    }

    fn resolve(&self, id: TransactionId, resolution: &Resolution) -> LogFuture<'_, bool> {
        self.write("resolve", || self.inner.resolve(id, resolution), |_, _| {})
    }

    fn unfinished_count(&self) -> LogFuture<'_, u64> {
        self.read(|| self.inner.unfinished_count())
    }

    fn needs_repair_count(&self) -> LogFuture<'_, u64> {
        self.read(|| self.inner.needs_repair_count())
    }

    fn list(&self, filter: &Filter) -> LogFuture<'_, Vec<TransactionRecord>> {
        self.read(|| self.inner.list(filter))
    }

    fn summary(&self) -> LogFuture<'_, LogSummary> {
        self.read(|| self.inner.summary())
    }
}

/// Awaits the finishes passed on late: their caller was answered already, so
/// a refusal now is only logged.
async fn await_passed(passed: Vec<LogFuture<'_, ()>>) {
    for finish in passed {
        if let Err(error) = finish.await {
            tracing::debug!(%error, "a held-back finish was refused");
        }
    }
}

impl<L: Log + ?Sized> std::fmt::Debug for FaultyLog<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyLog")
            .field("fault", &self.fault)
            .field("writes", &self.writes())
            .field("crashed", &self.crashed())
            .field("lose_lazy", &self.lose_lazy)
            .finish()
    }
}
