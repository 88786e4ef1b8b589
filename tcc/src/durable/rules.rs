//! The rules every store applies, written once: [`Rules`] runs each call of
//! [`Log`](super::Log) against a store's [`Tables`], and keeps the set of
//! leases live in this process.
//!
//! A store only says how records are kept (in maps, in redb tables) and when
//! they reach the disk; what a call may change, and what it answers, lives
//! here, so [`MemoryLog`](super::MemoryLog) and the file stores cannot drift
//! apart.

use std::collections::HashMap;
use std::time::SystemTime;

use super::{
    Decision, End, Filter, Intent, Lease, LogError, LogErrorKind, LogSummary, PhaseProgress,
    Resolution, Status, StatusGroup, TransactionRecord,
};
use crate::{Phase, TransactionId};

/// A record as a store keeps it: the record and the epoch of its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) record: TransactionRecord,
    pub(crate) epoch: u64,
}

impl Stored {
    pub(crate) fn id(&self) -> TransactionId {
        self.record.intent.id
    }
}

/// What a store keeps of a finished transaction, for lookups: its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Finished {
    pub(crate) decision: Decision,
    pub(crate) started_at: SystemTime,
    pub(crate) decided_at: Option<SystemTime>,
    pub(crate) finished_at: SystemTime,
    /// Who resolved it by hand, and how, if an operator did.
    pub(crate) resolution: Option<Resolution>,
}

impl Finished {
    /// How [`Log::get`](super::Log::get) and [`Log::list`](super::Log::list)
    /// show the outcome of `id`.
    pub(crate) fn record(self, id: TransactionId) -> TransactionRecord {
        TransactionRecord {
            decided_at: self.decided_at,
            ended_at: Some(self.finished_at),
            resolution: self.resolution,
            ..TransactionRecord::bare(id, Status::Done(self.decision), self.started_at)
        }
    }
}

/// A record a store holds but cannot read (its checksum fails, it is cut
/// short): `reason` says why, naming the file and the transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unreadable {
    pub(crate) id: TransactionId,
    pub(crate) reason: String,
}

impl Unreadable {
    /// How [`Log::needs_repair`](super::Log::needs_repair) and
    /// [`Log::claim_unfinished`](super::Log::claim_unfinished) show it.
    pub(crate) fn record(self) -> TransactionRecord {
        TransactionRecord {
            damage: Some(self.reason),
            ..TransactionRecord::bare(self.id, Status::Unreadable, SystemTime::UNIX_EPOCH)
        }
    }
}

/// Where a store keeps a record: with the unfinished ones (undecided,
/// decided), or apart with those needing repair, so that a claim never walks
/// past the ones an operator must see to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    Unfinished,
    NeedsRepair,
}

impl Place {
    /// Where a record of `status` is kept.
    pub(crate) fn of(status: Status) -> Place {
        match status {
            Status::NeedsRepair(_) | Status::Unreadable => Place::NeedsRepair,
            _ => Place::Unfinished,
        }
    }

    /// The place a record of `status` just moved from: the other one.
    pub(crate) fn before_moving(status: Status) -> Place {
        match Place::of(status) {
            Place::Unfinished => Place::NeedsRepair,
            Place::NeedsRepair => Place::Unfinished,
        }
    }
}

/// A record as a listing found it.
pub(crate) type Found = Result<Stored, Unreadable>;

/// An outcome as a listing found it.
pub(crate) type FoundOutcome = Result<(TransactionId, Finished), Unreadable>;

/// How a store keeps records. Unfinished records (Undecided, Decided) and
/// records needing repair are kept apart, so that a claim never walks past
/// the ones an operator must see to.
pub(crate) trait Tables {
    /// The record of `id`, unfinished or needing repair. One that cannot be
    /// read is an error [`LogError::unreadable`] made.
    fn record(&mut self, id: TransactionId) -> Result<Option<Stored>, LogError>;
    /// The record of `id` as [`record`](Tables::record) reads it, but its
    /// progress may be left default: for a write that changes only its
    /// status or epoch, so that it costs the same whatever the number of
    /// notes. A store whose [`put_record`](Tables::put_record) writes the
    /// progress too must read it here (the default).
    fn record_without_progress(&mut self, id: TransactionId) -> Result<Option<Stored>, LogError> {
        self.record(id)
    }
    /// Writes `stored` where its status belongs ([`Place::of`]), new or
    /// replacing the record there. Its progress need not be written again:
    /// only [`put_progress`] changes it.
    ///
    /// [`put_progress`]: Tables::put_progress
    fn put_record(&mut self, stored: &Stored) -> Result<(), LogError>;
    /// Writes `stored`, whose status just moved between unfinished and
    /// needing repair, where it now belongs, and removes it from the other
    /// place (its progress stays, as [`put_record`](Tables::put_record)).
    fn move_record(&mut self, stored: &Stored) -> Result<(), LogError>;
    /// Writes the progress of one participant of the record of `id` (which
    /// exists) in one phase, at a cost that does not grow with the number
    /// of participants.
    fn put_progress(
        &mut self,
        id: TransactionId,
        participant: u32,
        phase: Phase,
        progress: &PhaseProgress,
    ) -> Result<(), LogError>;
    /// Removes the record of `id` from `place`, and its progress.
    fn remove_record(&mut self, id: TransactionId, place: Place) -> Result<(), LogError>;
    fn outcome(&mut self, id: TransactionId) -> Result<Option<Finished>, LogError>;
    /// Adds an outcome as the newest, then removes the oldest ones, at most
    /// `max_pruned` of them, while more than `retention` are kept.
    fn add_outcome(
        &mut self,
        id: TransactionId,
        outcome: Finished,
        retention: u64,
        max_pruned: usize,
    ) -> Result<(), LogError>;
    /// Up to `limit` unfinished records, in id order, whose id `skip` refuses;
    /// those that cannot be read among them, as such.
    fn unfinished(
        &mut self,
        limit: usize,
        skip: &dyn Fn(TransactionId) -> bool,
    ) -> Result<Vec<Found>, LogError>;
    /// Every record needing repair, readable or not.
    fn repair_records(&mut self) -> Result<Vec<Found>, LogError>;
    /// Moves the unfinished record of `id`, which cannot be read, as it is to
    /// the records needing repair.
    fn set_aside(&mut self, id: TransactionId) -> Result<(), LogError>;
    /// Removes the record of `id` needing repair, which cannot be read, and
    /// its progress; whether there was one.
    fn discard_unreadable(&mut self, id: TransactionId) -> Result<bool, LogError>;
    /// Unfinished and needing repair, together.
    fn count(&mut self) -> Result<u64, LogError>;
    /// Up to `limit` outcomes that `keep` takes, the most recently finished
    /// first; those that cannot be read among them, as such.
    fn outcomes_newest_first(
        &mut self,
        limit: usize,
        keep: &dyn Fn(&Finished) -> bool,
    ) -> Result<Vec<FoundOutcome>, LogError>;
    /// How many outcomes are kept.
    fn outcome_count(&mut self) -> Result<u64, LogError>;
    /// What the store takes on disk, in bytes; `None` in memory.
    fn bytes(&mut self) -> Result<Option<u64>, LogError>;
    /// Needing repair, readable or not.
    fn repair_count(&mut self) -> Result<u64, LogError>;
}

/// What a count of a log's transactions counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counted {
    /// Unfinished and needing repair, together ([`Log::unfinished_count`](super::Log::unfinished_count)).
    Unfinished,
    /// Needing repair ([`Log::needs_repair_count`](super::Log::needs_repair_count)).
    NeedsRepair,
}

/// How many old outcomes one `Done` may prune: more than one, so that a
/// lowered retention is caught up with, few enough to keep each write
/// transaction small.
const PRUNE_BATCH: usize = 8;

/// A lease this process holds, and what a note under it needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    epoch: u64,
    participants: usize,
}

impl Held {
    fn of(stored: &Stored) -> Self {
        Held {
            epoch: stored.epoch,
            participants: stored.record.intent.participants.len(),
        }
    }
}

/// The rules, and the leases live in this process.
pub(crate) struct Rules {
    /// Transaction -> the lease this process holds on it.
    live: HashMap<TransactionId, Held>,
    retention: u64,
}

impl Rules {
    pub(crate) fn new(retention: u64) -> Self {
        Rules {
            live: HashMap::new(),
            retention,
        }
    }

    /// The lease this process holds on `lease`'s transaction, if it is
    /// `lease` itself: a write under any other is fenced.
    fn live(&self, lease: &Lease) -> Option<Held> {
        self.live
            .get(&lease.id)
            .copied()
            .filter(|held| held.epoch == lease.epoch)
    }

    /// The record a write under `lease` may change, or why it may not; its
    /// progress is not read (the writes after it change the status only).
    fn held(&self, tables: &mut impl Tables, lease: &Lease) -> Result<Stored, LogError> {
        if self.live(lease).is_none() {
            return Err(LogError::fenced(lease));
        }
        let stored = tables
            .record_without_progress(lease.id)?
            .ok_or_else(|| LogError::not_found(lease.id))?;
        if stored.epoch != lease.epoch {
            return Err(LogError::fenced(lease));
        }
        Ok(stored)
    }

    pub(crate) fn begin(
        &mut self,
        tables: &mut impl Tables,
        intent: &Intent,
    ) -> Result<Lease, LogError> {
        let id = intent.id;
        if tables.record(id)?.is_some() || tables.outcome(id)?.is_some() {
            return Err(LogError::new(
                LogErrorKind::Duplicate,
                format!("transaction {id} is already in the log"),
            ));
        }
        let stored = Stored {
            record: TransactionRecord {
                intent: intent.clone(),
                progress: vec![Default::default(); intent.participants.len()],
                ..TransactionRecord::bare(id, Status::Undecided, SystemTime::now())
            },
            epoch: 1,
        };
        // The intent (durable). A crash before its commit: no Try ran, nothing
        // to undo. After: an undecided record, which recovery
        // (claim_unfinished) cancels everywhere, presumed abort.
        tables.put_record(&stored)?;
        self.live.insert(id, Held::of(&stored));
        Ok(Lease {
            id,
            epoch: stored.epoch,
        })
    }

    pub(crate) fn decide(
        &mut self,
        tables: &mut impl Tables,
        lease: &Lease,
        decision: Decision,
    ) -> Result<Decision, LogError> {
        let mut stored = self.held(tables, lease)?;
        match stored.record.status.decision() {
            Some(existing) => Ok(existing),
            None => {
                stored.record.status = Status::Decided(decision);
                stored.record.decided_at = Some(SystemTime::now());
                // The decision (durable). A crash before its commit: still
                // undecided, so recovery cancels; no phase 2 ran, as the
                // caller waits for this commit. After: recovery drives this
                // decision to its end, never the other one.
                tables.put_record(&stored)?;
                Ok(decision)
            }
        }
    }

    pub(crate) fn note(
        &mut self,
        tables: &mut impl Tables,
        lease: &Lease,
        participant: u32,
        phase: Phase,
        progress: PhaseProgress,
    ) -> Result<(), LogError> {
        // The lease is checked against those live in this process without
        // reading the record: a note must cost the same whatever the number
        // of participants (each note once rewrote the whole record, and a
        // transaction of 10,000 participants took 34 s). That is what the
        // store holds: every change of a record's epoch goes through these
        // rules, and a file has one writer. A store shared by several
        // processes (there is none yet) would check the epoch in the
        // statement that writes the note.
        let Some(held) = self.live(lease) else {
            return Err(LogError::fenced(lease));
        };
        if participant as usize >= held.participants {
            return Err(LogError::new(
                LogErrorKind::NotFound,
                format!("transaction {} has no participant {participant}", lease.id),
            ));
        }
        // Lazy: lost in a crash before the next durable commit, and then
        // recovery calls this participant's phase again (phases repeat
        // safely) with a lower attempt count.
        tables.put_progress(lease.id, participant, phase, &progress)
    }

    pub(crate) fn finish(
        &mut self,
        tables: &mut impl Tables,
        lease: &Lease,
        end: End,
    ) -> Result<(), LogError> {
        let mut stored = self.held(tables, lease)?;
        // Presumed abort: a transaction that never decided was cancelled.
        let decision = stored.record.status.decision().unwrap_or(Decision::Cancel);
        match end {
            End::Done => {
                // Lazy: a crash before the next durable commit brings the
                // decided record back, and recovery runs phase 2 again.
                tables.remove_record(lease.id, Place::Unfinished)?;
                self.add_outcome(tables, stored.record, decision, None)?;
            }
            End::NeedsRepair => {
                stored.record.status = Status::NeedsRepair(decision);
                stored.record.ended_at = Some(SystemTime::now());
                // Durable. A crash before its commit: still decided, and
                // recovery retries phase 2 (once more, then here again).
                // After: listed by needs_repair for an operator.
                tables.move_record(&stored)?;
            }
        }
        self.live.remove(&lease.id);
        Ok(())
    }

    fn add_outcome(
        &self,
        tables: &mut impl Tables,
        record: TransactionRecord,
        decision: Decision,
        resolution: Option<Resolution>,
    ) -> Result<(), LogError> {
        let outcome = Finished {
            decision,
            started_at: record.started_at,
            decided_at: record.decided_at,
            finished_at: SystemTime::now(),
            resolution,
        };
        tables.add_outcome(record.intent.id, outcome, self.retention, PRUNE_BATCH)
    }

    pub(crate) fn claim_unfinished(
        &mut self,
        tables: &mut impl Tables,
        limit: usize,
    ) -> Result<Vec<(Lease, TransactionRecord)>, LogError> {
        let live = &self.live;
        let found = tables.unfinished(limit, &|id| live.contains_key(&id))?;
        let mut claimed = Vec::with_capacity(found.len());
        for found in found {
            let mut stored = match found {
                Ok(stored) => stored,
                Err(unreadable) => {
                    tracing::error!(id = %unreadable.id, reason = %unreadable.reason,
                        "an unreadable record is set aside as needing repair");
                    // Lazy: a crash before the next durable commit leaves it
                    // unfinished, and the next claim sets it aside again.
                    // Never driven: its decision cannot be trusted.
                    tables.set_aside(unreadable.id)?;
                    // Epoch 0 is no record's: every write under it is fenced.
                    let lease = Lease {
                        id: unreadable.id,
                        epoch: 0,
                    };
                    claimed.push((lease, unreadable.record()));
                    continue;
                }
            };
            stored.epoch += 1;
            // Lazy: a claim lost in a crash is lost with every write made
            // under it (a durable commit of one of them would have carried
            // the claim too), and the next process claims it again.
            tables.put_record(&stored)?;
            let lease = Lease {
                id: stored.id(),
                epoch: stored.epoch,
            };
            self.live.insert(lease.id, Held::of(&stored));
            claimed.push((lease, stored.record));
        }
        Ok(claimed)
    }

    pub(crate) fn release(&mut self, lease: &Lease) {
        if self.live(lease).is_some() {
            self.live.remove(&lease.id);
        }
    }

    pub(crate) fn get(
        &self,
        tables: &mut impl Tables,
        id: TransactionId,
    ) -> Result<Option<TransactionRecord>, LogError> {
        if let Some(stored) = tables.record(id)? {
            return Ok(Some(stored.record));
        }
        Ok(tables.outcome(id)?.map(|outcome| outcome.record(id)))
    }

    pub(crate) fn needs_repair(
        &self,
        tables: &mut impl Tables,
        limit: usize,
    ) -> Result<Vec<TransactionRecord>, LogError> {
        let mut records: Vec<_> = tables
            .repair_records()?
            .into_iter()
            .map(|found| found.map_or_else(Unreadable::record, |s| s.record))
            .collect();
        records.sort_by_key(|r| (r.started_at, r.intent.id));
        records.truncate(limit);
        Ok(records)
    }

    pub(crate) fn reopen(
        &mut self,
        tables: &mut impl Tables,
        id: TransactionId,
    ) -> Result<Option<(Lease, TransactionRecord)>, LogError> {
        let Some(mut stored) = tables.record(id)? else {
            return Ok(None);
        };
        let Status::NeedsRepair(decision) = stored.record.status else {
            return Ok(None);
        };
        stored.record.status = Status::Decided(decision);
        stored.epoch += 1;
        // Durable. A crash before its commit: still needing repair, the
        // operator reopens it again. After: decided, so recovery drives it
        // if the operator's process dies.
        tables.move_record(&stored)?;
        let lease = Lease {
            id,
            epoch: stored.epoch,
        };
        self.live.insert(id, Held::of(&stored));
        Ok(Some((lease, stored.record)))
    }

    pub(crate) fn requeue(
        &mut self,
        tables: &mut impl Tables,
        id: TransactionId,
    ) -> Result<bool, LogError> {
        let Some(mut stored) = tables.record(id)? else {
            return Ok(false);
        };
        let Status::NeedsRepair(decision) = stored.record.status else {
            return Ok(false);
        };
        // A fresh retry budget, kept in the log itself: the pass that takes
        // it may be another process's. Whether each phase succeeded, and its
        // last error, stay for the operator.
        for (participant, phases) in stored.record.progress.iter_mut().enumerate() {
            for phase in [Phase::Confirm, Phase::Cancel] {
                let progress = &mut phases[phase as usize];
                if progress.attempts > 0 {
                    progress.attempts = 0;
                    tables.put_progress(id, participant as u32, phase, progress)?;
                }
            }
        }
        stored.record.status = Status::Decided(decision);
        // No lease of this process holds it (it was not live while it
        // needed repair), and the epoch moves past any lease taken before.
        stored.epoch += 1;
        // Durable. A crash before its commit: still needing repair, the
        // operator requeues it again. After: decided and held by no one,
        // so the next recovery pass claims it and drives it to its end (or
        // back here).
        tables.move_record(&stored)?;
        Ok(true)
    }

    pub(crate) fn resolve(
        &mut self,
        tables: &mut impl Tables,
        id: TransactionId,
        resolution: &Resolution,
    ) -> Result<bool, LogError> {
        let stored = match tables.record(id) {
            Ok(Some(stored)) => stored,
            Ok(None) => return Ok(false),
            // Durable. A crash before its commit: still set aside. After:
            // gone, with no outcome (its decision is unknown).
            Err(error) if error.unreadable_record() == Some(id) => {
                return tables.discard_unreadable(id);
            }
            Err(error) => return Err(error),
        };
        let Status::NeedsRepair(decision) = stored.record.status else {
            return Ok(false);
        };
        // Durable. A crash before its commit: still needing repair. After:
        // its outcome only, with the operator's account.
        tables.remove_record(id, Place::NeedsRepair)?;
        self.add_outcome(tables, stored.record, decision, Some(resolution.clone()))?;
        Ok(true)
    }

    pub(crate) fn count(
        &self,
        tables: &mut impl Tables,
        counted: Counted,
    ) -> Result<u64, LogError> {
        match counted {
            Counted::Unfinished => tables.count(),
            Counted::NeedsRepair => tables.repair_count(),
        }
    }

    pub(crate) fn list(
        &self,
        tables: &mut impl Tables,
        filter: &Filter,
    ) -> Result<Vec<TransactionRecord>, LogError> {
        let now = SystemTime::now();
        let limit = filter.limit();
        let mut listed = Vec::new();
        for group in StatusGroup::ALL {
            if !filter.includes(group) || listed.len() >= limit {
                continue;
            }
            let left = limit - listed.len();
            let mut found: Vec<TransactionRecord> = match group {
                StatusGroup::NeedsRepair => records(tables.repair_records()?),
                StatusGroup::Unfinished => records(tables.unfinished(usize::MAX, &|_| false)?),
                StatusGroup::Done if filter.service().is_some() => Vec::new(),
                StatusGroup::Done => {
                    let keep = |outcome: &Finished| {
                        filter.older_than().is_none_or(|age| {
                            now.duration_since(outcome.started_at)
                                .is_ok_and(|since| since > age)
                        })
                    };
                    let found = tables.outcomes_newest_first(left, &keep)?;
                    found
                        .into_iter()
                        .map(|found| match found {
                            Ok((id, outcome)) => outcome.record(id),
                            Err(unreadable) => unreadable.record(),
                        })
                        .collect()
                }
            };
            if group != StatusGroup::Done {
                found.retain(|record| filter.matches(record, now));
                // Unreadable ones first (their start is the Unix epoch),
                // then the oldest.
                found.sort_by_key(|record| (record.started_at, record.intent.id));
            }
            found.truncate(left);
            listed.extend(found);
        }
        Ok(listed)
    }

    pub(crate) fn summary(&self, tables: &mut impl Tables) -> Result<LogSummary, LogError> {
        let mut summary = LogSummary::default();
        let oldest = |slot: &mut Option<(TransactionId, SystemTime)>,
                      record: &TransactionRecord| {
            let candidate = (record.intent.id, record.started_at);
            if slot.is_none_or(|(id, at)| (candidate.1, candidate.0) < (at, id)) {
                *slot = Some(candidate);
            }
        };
        for found in tables.unfinished(usize::MAX, &|_| false)? {
            match found {
                Ok(stored) if stored.record.status == Status::Undecided => {
                    summary.undecided += 1;
                    oldest(&mut summary.oldest_unfinished, &stored.record);
                }
                Ok(stored) => {
                    summary.decided += 1;
                    oldest(&mut summary.oldest_unfinished, &stored.record);
                }
                Err(_) => summary.unreadable += 1,
            }
        }
        for found in tables.repair_records()? {
            match found {
                Ok(stored) => {
                    summary.needs_repair += 1;
                    oldest(&mut summary.oldest_needs_repair, &stored.record);
                }
                Err(_) => summary.unreadable += 1,
            }
        }
        summary.done = tables.outcome_count()?;
        summary.bytes = tables.bytes()?;
        Ok(summary)
    }
}

/// The records of a listing, those that cannot be read as such.
fn records(found: Vec<Found>) -> Vec<TransactionRecord> {
    found
        .into_iter()
        .map(|found| found.map_or_else(Unreadable::record, |stored| stored.record))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store holding one record, whose full read (with its progress) is
    /// not to be used by a write that changes only the status.
    struct OneRecord(Stored);

    impl Tables for OneRecord {
        fn record(&mut self, _: TransactionId) -> Result<Option<Stored>, LogError> {
            panic!("a decide or finish read the record's progress")
        }
        fn record_without_progress(
            &mut self,
            _: TransactionId,
        ) -> Result<Option<Stored>, LogError> {
            Ok(Some(self.0.clone()))
        }
        fn put_record(&mut self, stored: &Stored) -> Result<(), LogError> {
            self.0 = stored.clone();
            Ok(())
        }

        fn move_record(&mut self, stored: &Stored) -> Result<(), LogError> {
            self.put_record(stored)
        }
        fn put_progress(
            &mut self,
            _: TransactionId,
            _: u32,
            _: Phase,
            _: &PhaseProgress,
        ) -> Result<(), LogError> {
            Ok(())
        }
        fn remove_record(&mut self, _: TransactionId, _: Place) -> Result<(), LogError> {
            Ok(())
        }
        fn outcome(&mut self, _: TransactionId) -> Result<Option<Finished>, LogError> {
            Ok(None)
        }
        fn add_outcome(
            &mut self,
            _: TransactionId,
            _: Finished,
            _: u64,
            _: usize,
        ) -> Result<(), LogError> {
            Ok(())
        }
        fn unfinished(
            &mut self,
            _: usize,
            _: &dyn Fn(TransactionId) -> bool,
        ) -> Result<Vec<Found>, LogError> {
            Ok(Vec::new())
        }
        fn repair_records(&mut self) -> Result<Vec<Found>, LogError> {
            Ok(Vec::new())
        }
        fn set_aside(&mut self, _: TransactionId) -> Result<(), LogError> {
            Ok(())
        }
        fn discard_unreadable(&mut self, _: TransactionId) -> Result<bool, LogError> {
            Ok(false)
        }
        fn count(&mut self) -> Result<u64, LogError> {
            Ok(1)
        }
        fn repair_count(&mut self) -> Result<u64, LogError> {
            Ok(0)
        }
        fn outcomes_newest_first(
            &mut self,
            _: usize,
            _: &dyn Fn(&Finished) -> bool,
        ) -> Result<Vec<FoundOutcome>, LogError> {
            Ok(Vec::new())
        }
        fn outcome_count(&mut self) -> Result<u64, LogError> {
            Ok(0)
        }
        fn bytes(&mut self) -> Result<Option<u64>, LogError> {
            Ok(None)
        }
    }

    #[test]
    fn decide_and_finish_read_the_record_without_its_progress() {
        let id = TransactionId::generate();
        let stored = Stored {
            record: TransactionRecord::bare(id, Status::Undecided, SystemTime::now()),
            epoch: 1,
        };
        let mut rules = Rules::new(10);
        rules.live.insert(id, Held::of(&stored));
        let mut tables = OneRecord(stored);
        let lease = Lease { id, epoch: 1 };
        let decided = rules.decide(&mut tables, &lease, Decision::Confirm);
        assert_eq!(decided.unwrap(), Decision::Confirm);
        rules.finish(&mut tables, &lease, End::NeedsRepair).unwrap();
        assert_eq!(
            tables.0.record.status,
            Status::NeedsRepair(Decision::Confirm)
        );
    }
}
