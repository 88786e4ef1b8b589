//! What happened in one orchestration: [`Report`].

use crate::service::Name;

use crate::context::TransactionId;
use crate::phase::Phase;

/// What one orchestration did: its id and, for each service in the order
/// given, how each phase went.
///
/// `orchestrate` returns it on success; [`Error::report`](crate::Error::report)
/// holds it when a transaction ran and failed.
#[derive(Clone, Debug)]
pub struct Report {
    transaction_id: TransactionId,
    services: Vec<ServiceReport>,
}

impl Report {
    pub(crate) fn new(transaction_id: TransactionId, services: Vec<ServiceReport>) -> Self {
        Report {
            transaction_id,
            services,
        }
    }

    /// The orchestration's id, as phases saw it in their
    /// [`Context`](crate::Context).
    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// Each service's record, in the order the services were given.
    pub fn services(&self) -> &[ServiceReport] {
        &self.services
    }

    /// The record of the service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceReport> {
        self.services.iter().find(|s| s.name() == name)
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

/// What happened to one service in one orchestration.
#[derive(Clone, Debug)]
pub struct ServiceReport {
    name: Name,
    phases: [PhaseRecord; 3],
}

impl ServiceReport {
    pub(crate) fn new(name: Name) -> Self {
        ServiceReport {
            name,
            phases: [PhaseRecord::default(); 3],
        }
    }

    pub(crate) fn record_mut(&mut self, phase: Phase) -> &mut PhaseRecord {
        &mut self.phases[phase as usize]
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn name_shared(&self) -> &Name {
        &self.name
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
