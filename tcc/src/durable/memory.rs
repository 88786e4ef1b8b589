//! [`MemoryLog`]: the log's rules, kept in memory.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use super::rules::{Counted, Finished, Found, FoundOutcome, Place, Rules, Stored, Tables};
use super::{
    Decision, End, Filter, Intent, Lease, Leases, Log, LogError, LogFuture, LogSummary,
    PhaseProgress, Resolution, TransactionRecord,
};
use crate::{Phase, TransactionId};

/// How many finished transactions a [`MemoryLog`] keeps for lookups unless
/// told otherwise.
const DEFAULT_RETENTION: u64 = 100_000;

/// A [`Log`] in memory: the same rules as the file stores, and no durability
/// at all: everything it holds is gone when the process ends.
///
/// For tests, and for programs that want transactions looked up by id, or
/// the repair API, without a file. A crash of the process loses every
/// transaction it was running, exactly as without a log.
///
/// ```
/// use tcc::durable::{Decision, Intent, Log, MemoryLog, Status};
/// use tcc::TransactionId;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let log = MemoryLog::new();
/// let id = TransactionId::generate();
/// let lease = log.begin(&Intent { id, participants: vec![] }).await.unwrap();
/// assert_eq!(log.decide(&lease, Decision::Confirm).await.unwrap(), Decision::Confirm);
/// // A second decision never replaces the first.
/// assert_eq!(log.decide(&lease, Decision::Cancel).await.unwrap(), Decision::Confirm);
/// let record = log.get(id).await.unwrap().unwrap();
/// assert_eq!(record.status, Status::Decided(Decision::Confirm));
/// # }
/// ```
pub struct MemoryLog {
    state: Mutex<(Rules, Maps)>,
}

impl MemoryLog {
    /// An empty log keeping the outcomes of the last 100,000 finished
    /// transactions.
    pub fn new() -> Self {
        MemoryLog::with_retention(DEFAULT_RETENTION)
    }

    /// An empty log keeping the outcomes of the last `retention` finished
    /// transactions for [`Log::get`].
    pub fn with_retention(retention: u64) -> Self {
        MemoryLog {
            state: Mutex::new((Rules::new(retention), Maps::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (Rules, Maps)> {
        // The rules check before they change anything, so a panic (which none
        // of them should raise) cannot leave a half-applied call behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one call of the rules under the lock, as a ready future.
    fn run<T: Leases + Send + Unpin + 'static>(
        &self,
        call: impl FnOnce(&mut Rules, &mut Maps) -> Result<T, LogError>,
    ) -> LogFuture<'_, T> {
        let result = {
            let mut state = self.lock();
            let (rules, maps) = &mut *state;
            call(rules, maps)
        };
        Box::pin(Answer {
            log: self,
            result: Some(result),
        })
    }
}

/// The answer of one call, applied when the call was made. Dropped unread
/// (its caller went away), it gives back the leases it carries, which no
/// one in this process would hold otherwise.
struct Answer<'a, T: Leases> {
    log: &'a MemoryLog,
    result: Option<Result<T, LogError>>,
}

impl<T: Leases + Unpin> Future for Answer<'_, T> {
    type Output = Result<T, LogError>;

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(self.result.take().expect("an answer is read once"))
    }
}

impl<T: Leases> Drop for Answer<'_, T> {
    fn drop(&mut self) {
        if let Some(Ok(answer)) = &self.result {
            for lease in answer.leases() {
                self.log.release(lease);
            }
        }
    }
}

impl Default for MemoryLog {
    fn default() -> Self {
        MemoryLog::new()
    }
}

impl std::fmt::Debug for MemoryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryLog")
            .field("unfinished", &state.1.unfinished.len())
            .field("needs_repair", &state.1.repair.len())
            .field("outcomes", &state.1.outcomes.len())
            .finish()
    }
}

impl Log for MemoryLog {
    fn begin(&self, intent: &Intent) -> LogFuture<'_, Lease> {
        self.run(|rules, maps| rules.begin(maps, intent))
    }

    fn decide(&self, lease: &Lease, decision: Decision) -> LogFuture<'_, Decision> {
        self.run(|rules, maps| rules.decide(maps, lease, decision))
    }

    fn note(&self, lease: &Lease, participant: u32, phase: Phase, progress: PhaseProgress) {
        let mut state = self.lock();
        let (rules, maps) = &mut *state;
        if let Err(error) = rules.note(maps, lease, participant, phase, progress) {
            tracing::debug!(%error, "note dropped");
        }
    }

    fn finish(&self, lease: &Lease, end: End) -> LogFuture<'_, ()> {
        self.run(|rules, maps| rules.finish(maps, lease, end))
    }

    fn claim_unfinished(&self, limit: usize) -> LogFuture<'_, Vec<(Lease, TransactionRecord)>> {
        self.run(|rules, maps| rules.claim_unfinished(maps, limit))
    }

    fn release(&self, lease: &Lease) {
        self.lock().0.release(lease);
    }

    fn get(&self, id: TransactionId) -> LogFuture<'_, Option<TransactionRecord>> {
        self.run(|rules, maps| rules.get(maps, id))
    }

    fn needs_repair(&self, limit: usize) -> LogFuture<'_, Vec<TransactionRecord>> {
        self.run(|rules, maps| rules.needs_repair(maps, limit))
    }

    fn reopen(&self, id: TransactionId) -> LogFuture<'_, Option<(Lease, TransactionRecord)>> {
        self.run(|rules, maps| rules.reopen(maps, id))
    }

    fn requeue(&self, id: TransactionId) -> LogFuture<'_, bool> {
        self.run(|rules, maps| rules.requeue(maps, id))
    }

    fn resolve(&self, id: TransactionId, resolution: &Resolution) -> LogFuture<'_, bool> {
        self.run(|rules, maps| rules.resolve(maps, id, resolution))
    }

    fn unfinished_count(&self) -> LogFuture<'_, u64> {
        self.run(|rules, maps| rules.count(maps, Counted::Unfinished))
    }

    fn needs_repair_count(&self) -> LogFuture<'_, u64> {
        self.run(|rules, maps| rules.count(maps, Counted::NeedsRepair))
    }

    fn list(&self, filter: &Filter) -> LogFuture<'_, Vec<TransactionRecord>> {
        self.run(|rules, maps| rules.list(maps, filter))
    }

    fn summary(&self) -> LogFuture<'_, LogSummary> {
        self.run(|rules, maps| rules.summary(maps))
    }
}

/// The records, as maps.
#[derive(Default)]
struct Maps {
    unfinished: BTreeMap<TransactionId, Stored>,
    repair: BTreeMap<TransactionId, Stored>,
    outcomes: HashMap<TransactionId, Finished>,
    /// Finished transactions, oldest first, by the order they finished in.
    order: BTreeMap<u64, TransactionId>,
    next_order: u64,
}

impl Maps {
    /// The map of `place`.
    fn place(&mut self, place: Place) -> &mut BTreeMap<TransactionId, Stored> {
        match place {
            Place::Unfinished => &mut self.unfinished,
            Place::NeedsRepair => &mut self.repair,
        }
    }
}

impl Tables for Maps {
    fn record(&mut self, id: TransactionId) -> Result<Option<Stored>, LogError> {
        Ok(self
            .unfinished
            .get(&id)
            .or_else(|| self.repair.get(&id))
            .cloned())
    }

    fn put_record(&mut self, stored: &Stored) -> Result<(), LogError> {
        self.place(Place::of(stored.record.status))
            .insert(stored.id(), stored.clone());
        Ok(())
    }

    fn move_record(&mut self, stored: &Stored) -> Result<(), LogError> {
        let other = Place::before_moving(stored.record.status);
        self.place(other).remove(&stored.id());
        self.put_record(stored)
    }

    fn put_progress(
        &mut self,
        id: TransactionId,
        participant: u32,
        phase: Phase,
        progress: &PhaseProgress,
    ) -> Result<(), LogError> {
        let stored = match self.unfinished.get_mut(&id) {
            Some(stored) => Some(stored),
            None => self.repair.get_mut(&id),
        };
        let entry = stored.and_then(|s| s.record.progress.get_mut(participant as usize));
        let entry = entry.ok_or_else(|| LogError::not_found(id))?;
        entry[phase as usize] = progress.clone();
        Ok(())
    }

    fn remove_record(&mut self, id: TransactionId, place: Place) -> Result<(), LogError> {
        self.place(place).remove(&id);
        Ok(())
    }

    fn outcome(&mut self, id: TransactionId) -> Result<Option<Finished>, LogError> {
        Ok(self.outcomes.get(&id).cloned())
    }

    fn add_outcome(
        &mut self,
        id: TransactionId,
        outcome: Finished,
        retention: u64,
        max_pruned: usize,
    ) -> Result<(), LogError> {
        self.outcomes.insert(id, outcome);
        self.order.insert(self.next_order, id);
        self.next_order += 1;
        for _ in 0..max_pruned {
            if self.order.len() as u64 <= retention {
                break;
            }
            if let Some((_, oldest)) = self.order.pop_first() {
                self.outcomes.remove(&oldest);
            }
        }
        Ok(())
    }

    fn unfinished(
        &mut self,
        limit: usize,
        skip: &dyn Fn(TransactionId) -> bool,
    ) -> Result<Vec<Found>, LogError> {
        Ok(self
            .unfinished
            .values()
            .filter(|s| !skip(s.id()))
            .take(limit)
            .cloned()
            .map(Ok)
            .collect())
    }

    fn repair_records(&mut self) -> Result<Vec<Found>, LogError> {
        Ok(self.repair.values().cloned().map(Ok).collect())
    }

    // Records in memory are never damaged: nothing to set aside or discard.
    fn set_aside(&mut self, _: TransactionId) -> Result<(), LogError> {
        Ok(())
    }

    fn discard_unreadable(&mut self, _: TransactionId) -> Result<bool, LogError> {
        Ok(false)
    }

    fn count(&mut self) -> Result<u64, LogError> {
        Ok((self.unfinished.len() + self.repair.len()) as u64)
    }

    fn repair_count(&mut self) -> Result<u64, LogError> {
        Ok(self.repair.len() as u64)
    }

    fn outcomes_newest_first(
        &mut self,
        limit: usize,
        keep: &dyn Fn(&Finished) -> bool,
    ) -> Result<Vec<FoundOutcome>, LogError> {
        Ok(self
            .order
            .values()
            .rev()
            .filter_map(|id| Some((*id, self.outcomes.get(id)?)))
            .filter(|(_, outcome)| keep(outcome))
            .take(limit)
            .map(|(id, outcome)| Ok((id, outcome.clone())))
            .collect())
    }

    fn outcome_count(&mut self) -> Result<u64, LogError> {
        Ok(self.outcomes.len() as u64)
    }

    fn bytes(&mut self) -> Result<Option<u64>, LogError> {
        Ok(None)
    }
}
