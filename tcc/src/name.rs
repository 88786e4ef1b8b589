//! Service names: [`Name`], and a transaction's list of them, [`Names`].

use std::sync::Arc;

use crate::service::Service;

/// A service's name: up to 23 bytes are stored inline, so naming a service
/// costs no allocation of its own, and copies are cheap.
pub(crate) type Name = smol_str::SmolStr;

/// A [`Name`] holding `text`.
pub(crate) fn name(text: &str) -> Name {
    Name::new(text)
}

/// The names of a transaction's services, in order, shared by its context,
/// its ledger and its report.
///
/// An `Orchestrator`'s are its services' own, so neither it nor a run of it
/// keeps a copy of each name (24 bytes a service: 2.3 MiB of an
/// orchestration of 100,000 services, see BENCHMARKS.md "Peak RSS").
#[derive(Clone)]
pub(crate) enum Names {
    /// An `Orchestrator`'s services, named by their own names.
    Services(Arc<[Service]>),
    /// Names listed once: a `tcc!` block's, or an intent's in the log.
    Listed(Arc<[Name]>),
}

impl Names {
    /// Names listed in `names`, copied once.
    pub(crate) fn listed<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Names::Listed(names.into_iter().map(name).collect())
    }

    /// How many services there are.
    pub(crate) fn len(&self) -> usize {
        match self {
            Names::Services(services) => services.len(),
            Names::Listed(names) => names.len(),
        }
    }

    /// The name of service number `index`, if there is one.
    pub(crate) fn get(&self, index: usize) -> Option<&Name> {
        match self {
            Names::Services(services) => services.get(index).map(|service| &service.shared.name),
            Names::Listed(names) => names.get(index),
        }
    }

    /// The name of service number `index`, or "" past the last.
    pub(crate) fn text(&self, index: usize) -> &str {
        self.get(index).map_or("", Name::as_str)
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each name, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Name> {
        (0..self.len()).filter_map(|index| self.get(index))
    }
}
