//! What happened in one orchestration: [`Report`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::context::TransactionId;
use crate::phase::Phase;
use crate::service::{Name, Service};

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
    entries: Entries,
}

impl Report {
    /// The report of a transaction whose records are `entries`; nothing
    /// changes them any more.
    pub(crate) fn new(transaction_id: TransactionId, entries: Entries) -> Self {
        Report {
            transaction_id,
            entries,
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
            entries: &self.entries,
            range: 0..self.entries.len(),
        }
    }

    /// The record of the service named `name`.
    pub fn service(&self, name: &str) -> Option<ServiceReport<'_>> {
        self.services().find(|s| s.name() == name)
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

/// What happened to one service in one orchestration: a view into a
/// [`Report`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// The records of a [`Report`], in service order: what
/// [`Report::services`] returns.
#[derive(Clone, Debug)]
pub struct ServiceReports<'a> {
    entries: &'a Entries,
    range: std::ops::Range<usize>,
}

impl<'a> Iterator for ServiceReports<'a> {
    type Item = ServiceReport<'a>;

    fn next(&mut self) -> Option<ServiceReport<'a>> {
        self.range.next().map(|index| self.entries.report(index))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.range.size_hint()
    }
}

impl DoubleEndedIterator for ServiceReports<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.range
            .next_back()
            .map(|index| self.entries.report(index))
    }
}

impl ExactSizeIterator for ServiceReports<'_> {}

/// One service's phase records while its transaction runs: written only by
/// the transaction, read by its report once it has ended.
#[derive(Default)]
pub(crate) struct Records([AtomicU32; 3]);

impl Records {
    /// The top bit of a phase's word: its last attempt succeeded. The other
    /// 31 count attempts, saturating at 2^31 - 1, more than any real retry
    /// loop reaches.
    const SUCCEEDED: u32 = 1 << 31;

    pub(crate) fn set(&self, phase: Phase, record: PhaseRecord) {
        let attempts = record.attempts.min(!Self::SUCCEEDED);
        let word = attempts | if record.succeeded { Self::SUCCEEDED } else { 0 };
        self.0[phase as usize].store(word, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, phase: Phase) -> PhaseRecord {
        let word = self.0[phase as usize].load(Ordering::Relaxed);
        PhaseRecord {
            attempts: word & !Self::SUCCEEDED,
            succeeded: word & Self::SUCCEEDED != 0,
        }
    }
}

/// The names and records of a transaction's services, shared by the
/// transaction, its phases' [`Context`](crate::Context) and its report.
#[derive(Clone)]
pub(crate) enum Entries {
    /// An `Orchestrator`'s: the names are its services' own, so a run
    /// copies none.
    Services {
        services: Arc<[Service]>,
        records: Arc<[Records]>,
    },
    /// A `tcc!` block's: each name beside its records, in one allocation.
    Listed(Arc<[(Name, Records)]>),
}

impl Entries {
    /// Fresh records for `services`.
    pub(crate) fn services(services: Arc<[Service]>) -> Self {
        let records = (0..services.len()).map(|_| Records::default()).collect();
        Entries::Services { services, records }
    }

    /// Fresh records for the services named `names`.
    pub(crate) fn listed<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> Self {
        let entries = names.map(|name| (crate::service::name(name), Records::default()));
        Entries::Listed(entries.collect())
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Entries::Services { records, .. } => records.len(),
            Entries::Listed(entries) => entries.len(),
        }
    }

    /// The name of service `index`; `""` past the end.
    pub(crate) fn name(&self, index: usize) -> &str {
        match self {
            Entries::Services { services, .. } => services.get(index).map_or("", Service::name),
            Entries::Listed(entries) => entries.get(index).map_or("", |(name, _)| name.as_str()),
        }
    }

    /// The names alone, for the transaction's context.
    pub(crate) fn names(&self) -> Names {
        match self {
            Entries::Services { services, .. } => Names::Services(services.clone()),
            Entries::Listed(entries) => Names::Listed(entries.clone()),
        }
    }

    /// The shared name of service `index`, for a failure.
    pub(crate) fn shared_name(&self, index: usize) -> Name {
        match self {
            Entries::Services { services, .. } => services[index].shared.name.clone(),
            Entries::Listed(entries) => entries[index].0.clone(),
        }
    }

    pub(crate) fn records(&self, index: usize) -> &Records {
        match self {
            Entries::Services { records, .. } => &records[index],
            Entries::Listed(entries) => &entries[index].1,
        }
    }

    fn report(&self, index: usize) -> ServiceReport<'_> {
        let records = self.records(index);
        ServiceReport {
            name: self.name(index),
            phases: [Phase::Try, Phase::Confirm, Phase::Cancel].map(|phase| records.get(phase)),
        }
    }
}

/// The names of a transaction's services, as its context shares them.
#[derive(Clone)]
pub(crate) enum Names {
    Services(Arc<[Service]>),
    Listed(Arc<[(Name, Records)]>),
}

impl Names {
    /// The name of service `index`; `""` past the end.
    pub(crate) fn name(&self, index: usize) -> &str {
        match self {
            Names::Services(services) => services.get(index).map_or("", Service::name),
            Names::Listed(entries) => entries.get(index).map_or("", |(name, _)| name.as_str()),
        }
    }
}

impl fmt::Debug for Entries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries((0..self.len()).map(|index| self.report(index)))
            .finish()
    }
}
