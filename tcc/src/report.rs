//! What happened in one orchestration: [`Report`].

use std::fmt;
use std::sync::Arc;

use crate::id::TransactionId;
use crate::name::Names;
use crate::phase::Phase;

/// What one orchestration did: its id and, for each service in the order
/// given, how each phase went.
///
/// `orchestrate` returns it on success; [`Error::report`](crate::Error::report)
/// holds it when a transaction ran and failed. Cloning it is cheap.
///
/// ```
/// use tcc::{Orchestrator, Phase, Service};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ok = || async { Ok::<(), std::io::Error>(()) };
/// let report = Orchestrator::new([Service::new("flight", ok, ok, ok)])
///     .orchestrate()
///     .await
///     .unwrap();
/// let flight = report.service("flight").unwrap();
/// assert!(flight.succeeded(Phase::Try) && flight.succeeded(Phase::Confirm));
/// assert_eq!(flight.attempts(Phase::Cancel), 0);
/// assert_eq!(report.services().map(|s| s.name()).collect::<Vec<_>>(), ["flight"]);
/// # }
/// ```
#[derive(Clone)]
pub struct Report {
    transaction_id: TransactionId,
    names: Names,
    /// Each service's records.
    records: Arc<[Records]>,
}

impl Report {
    /// The report of a transaction over the services named `names`, whose
    /// records are `records`.
    pub(crate) fn new(
        transaction_id: TransactionId,
        names: Names,
        records: Arc<[Records]>,
    ) -> Self {
        Report {
            transaction_id,
            names,
            records,
        }
    }

    /// The orchestration's id, as phases saw it in their
    /// [`Context`](crate::Context).
    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// Each service's record, in the order the services were given.
    pub fn services(&self) -> ServiceReports<'_> {
        ServiceReports {
            report: self,
            range: 0..self.records.len(),
        }
    }

    /// The record of the service named `name`.
    pub fn service(&self, name: &str) -> Option<ServiceReport<'_>> {
        self.services().find(|s| s.name() == name)
    }

    fn entry(&self, index: usize) -> ServiceReport<'_> {
        ServiceReport {
            name: self.names.text(index),
            phases: self.records[index].unpack(),
        }
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Report")
            .field("transaction_id", &self.transaction_id)
            .field("services", &self.services().collect::<Vec<_>>())
            .finish()
    }
}

/// How one phase of one service went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseRecord {
    /// Attempts made; 0 when the phase never started.
    pub attempts: u32,
    /// Whether the last attempt succeeded.
    pub succeeded: bool,
}

/// One service's records, packed: for each phase, its attempts, with the
/// top bit set when the last attempt succeeded.
///
/// 12 bytes a service where three `PhaseRecord`s take 24: 1.1 MiB of an
/// orchestration of 100,000 services (BENCHMARKS.md, "Peak RSS"). Attempts
/// past 2^31 - 1, which no retry policy reaches in a lifetime, are counted
/// as that many.
#[derive(Clone, Copy, Default)]
pub(crate) struct Records([u32; 3]);

impl Records {
    const SUCCEEDED: u32 = 1 << 31;

    /// Sets the record of `phase`.
    pub(crate) fn set(&mut self, phase: Phase, record: PhaseRecord) {
        let attempts = record.attempts.min(!Self::SUCCEEDED);
        self.0[phase as usize] = attempts | if record.succeeded { Self::SUCCEEDED } else { 0 };
    }

    /// The record of each phase, indexed by [`Phase`].
    fn unpack(self) -> [PhaseRecord; 3] {
        self.0.map(|packed| PhaseRecord {
            attempts: packed & !Self::SUCCEEDED,
            succeeded: packed & Self::SUCCEEDED != 0,
        })
    }
}

/// What happened to one service in one orchestration: a view into a
/// [`Report`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ServiceReport<'a> {
    name: &'a str,
    phases: [PhaseRecord; 3],
}

impl<'a> ServiceReport<'a> {
    /// The service's name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// How `phase` went.
    pub fn phase(&self, phase: Phase) -> PhaseRecord {
        self.phases[phase as usize]
    }

    /// Attempts made at `phase`; 0 when it never started.
    pub fn attempts(&self, phase: Phase) -> u32 {
        self.phase(phase).attempts
    }

    /// Whether `phase` ran and its last attempt succeeded.
    pub fn succeeded(&self, phase: Phase) -> bool {
        self.phase(phase).succeeded
    }
}

/// Names each phase: `ServiceReport { name: "hotel", try: .., confirm: .., cancel: .. }`.
impl fmt::Debug for ServiceReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceReport")
            .field("name", &self.name)
            .field("try", &self.phase(Phase::Try))
            .field("confirm", &self.phase(Phase::Confirm))
            .field("cancel", &self.phase(Phase::Cancel))
            .finish()
    }
}

/// The records of a [`Report`], in service order: what
/// [`Report::services`] returns.
#[derive(Clone, Debug)]
pub struct ServiceReports<'a> {
    report: &'a Report,
    range: std::ops::Range<usize>,
}

impl<'a> Iterator for ServiceReports<'a> {
    type Item = ServiceReport<'a>;

    fn next(&mut self) -> Option<ServiceReport<'a>> {
        self.range.next().map(|index| self.report.entry(index))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.range.size_hint()
    }
}

impl DoubleEndedIterator for ServiceReports<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.range.next_back().map(|index| self.report.entry(index))
    }
}

impl ExactSizeIterator for ServiceReports<'_> {}
