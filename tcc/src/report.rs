//! What happened in one orchestration: [`Report`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::context::TransactionId;
use crate::phase::Phase;
use crate::service::Name;

/// What one orchestration did: its id and, for each service in the order
/// given, how each phase went.
///
/// `orchestrate` returns it on success; [`Error::report`](crate::Error::report)
/// holds it when a transaction ran and failed. Cloning it is cheap.
#[derive(Clone, Debug)]
pub struct Report {
    transaction_id: TransactionId,
    services: Arc<[ServiceReport]>,
}

impl Report {
    /// The report of a transaction whose records are `services`; nothing
    /// changes them any more.
    pub(crate) fn new(transaction_id: TransactionId, services: Arc<[ServiceReport]>) -> Self {
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

impl PhaseRecord {
    const SUCCEEDED: u64 = 1 << 32;

    fn pack(self) -> u64 {
        u64::from(self.attempts) | if self.succeeded { Self::SUCCEEDED } else { 0 }
    }

    fn unpack(packed: u64) -> Self {
        PhaseRecord {
            attempts: packed as u32,
            succeeded: packed & Self::SUCCEEDED != 0,
        }
    }
}

/// What happened to one service in one orchestration.
///
/// While the transaction runs, its records are shared with the phases'
/// [`Context`](crate::Context) (which reads only the names), so that one
/// allocation serves the transaction, its context and its report.
pub struct ServiceReport {
    name: Name,
    /// Each phase's [`PhaseRecord`], packed; written only by the
    /// transaction, before it hands the report over.
    phases: [AtomicU64; 3],
}

impl ServiceReport {
    pub(crate) fn new(name: Name) -> Self {
        ServiceReport {
            name,
            phases: Default::default(),
        }
    }

    pub(crate) fn set(&self, phase: Phase, record: PhaseRecord) {
        self.phases[phase as usize].store(record.pack(), Ordering::Relaxed);
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
        PhaseRecord::unpack(self.phases[phase as usize].load(Ordering::Relaxed))
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

impl Clone for ServiceReport {
    fn clone(&self) -> Self {
        let copy = ServiceReport::new(self.name.clone());
        for phase in [Phase::Try, Phase::Confirm, Phase::Cancel] {
            copy.set(phase, self.phase(phase));
        }
        copy
    }
}

impl fmt::Debug for ServiceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceReport")
            .field("name", &self.name())
            .field("try", &self.phase(Phase::Try))
            .field("confirm", &self.phase(Phase::Confirm))
            .field("cancel", &self.phase(Phase::Cancel))
            .finish()
    }
}
