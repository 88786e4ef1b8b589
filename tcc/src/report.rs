//! What happened in one orchestration: [`Report`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::id::TransactionId;
use crate::name::{Name, name};
use crate::phase::Phase;
use crate::service::Service;

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
    /// The report of a transaction over `entries`.
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
            report: self,
            range: 0..self.entries.len(),
        }
    }

    /// The record of the service named `name`.
    pub fn service(&self, name: &str) -> Option<ServiceReport<'_>> {
        self.services().find(|s| s.name() == name)
    }

    fn entry(&self, index: usize) -> ServiceReport<'_> {
        ServiceReport {
            name: self.entries.text(index),
            phases: self.entries.records(index).unpack(),
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
/// as that many. Atomic, so that the ledger writes them where the context
/// and the report read the names beside them: one writer, relaxed loads and
/// stores, which cost what plain ones do.
#[derive(Default)]
pub(crate) struct Records([AtomicU32; 3]);

impl Records {
    const SUCCEEDED: u32 = 1 << 31;

    /// Sets the record of `phase`.
    pub(crate) fn set(&self, phase: Phase, record: PhaseRecord) {
        let attempts = record.attempts.min(!Self::SUCCEEDED);
        let packed = attempts | if record.succeeded { Self::SUCCEEDED } else { 0 };
        self.0[phase as usize].store(packed, Ordering::Relaxed);
    }

    /// The record of each phase, indexed by [`Phase`].
    fn unpack(&self) -> [PhaseRecord; 3] {
        std::array::from_fn(|phase| {
            let packed = self.0[phase].load(Ordering::Relaxed);
            PhaseRecord {
                attempts: packed & !Self::SUCCEEDED,
                succeeded: packed & Self::SUCCEEDED != 0,
            }
        })
    }
}

/// A transaction's services, by name, and their records: shared by its
/// context (which reads the names), its ledger (which writes the records)
/// and its report.
#[derive(Clone)]
pub(crate) enum Entries {
    /// An `Orchestrator`'s: the names are its services' own, so neither it
    /// nor a run of it keeps a copy of each (24 bytes a service: 2.3 MiB of
    /// an orchestration of 100,000 services).
    Services {
        services: Arc<[Service]>,
        records: Arc<[Records]>,
    },
    /// A `tcc!` block's, or an intent's from the log: each name beside its
    /// records, in one allocation a run.
    Listed(Arc<[(Name, Records)]>),
}

impl Entries {
    /// Fresh records for `services`.
    pub(crate) fn services(services: Arc<[Service]>) -> Self {
        let records = services.iter().map(|_| Records::default()).collect();
        Entries::Services { services, records }
    }

    /// Fresh records for the services named `names`.
    pub(crate) fn listed<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let entries = names
            .into_iter()
            .map(|text| (name(text), Records::default()));
        Entries::Listed(entries.collect())
    }

    /// How many services there are.
    pub(crate) fn len(&self) -> usize {
        match self {
            Entries::Services { services, .. } => services.len(),
            Entries::Listed(entries) => entries.len(),
        }
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The name of service number `index`, if there is one.
    pub(crate) fn name(&self, index: usize) -> Option<&Name> {
        match self {
            Entries::Services { services, .. } => {
                services.get(index).map(|service| &service.shared.name)
            }
            Entries::Listed(entries) => entries.get(index).map(|(name, _)| name),
        }
    }

    /// The name of service number `index`, or "" past the last.
    pub(crate) fn text(&self, index: usize) -> &str {
        self.name(index).map_or("", Name::as_str)
    }

    /// Each name, in order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &Name> {
        (0..self.len()).filter_map(|index| self.name(index))
    }

    /// The records of service number `index`.
    ///
    /// # Panics
    /// Past the last service.
    pub(crate) fn records(&self, index: usize) -> &Records {
        match self {
            Entries::Services { records, .. } => &records[index],
            Entries::Listed(entries) => &entries[index].1,
        }
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
