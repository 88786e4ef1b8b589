//! The three phases of a TCC transaction, and the decision between the
//! second two.

use std::fmt;

/// One of the three phases of a TCC transaction.
///
/// Phases are ordered by how bad a failure in them is: a failed Try leaves
/// nothing behind once Cancel has run; a failed Confirm or Cancel leaves state
/// that needs repair. [`Error::phase`](crate::Error::phase) reports the worst
/// one reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Reserve resources or check preconditions. Never retried.
    Try,
    /// Make every reservation final, once every Try succeeded. Retried.
    Confirm,
    /// Release the reservations, once some Try failed. Retried.
    Cancel,
}

impl Phase {
    /// Every phase, in order: as an index (`phase as usize`) counts them.
    pub(crate) const ALL: [Phase; 3] = [Phase::Try, Phase::Confirm, Phase::Cancel];

    /// The phase's name in lowercase, as in messages: `"try"`, `"confirm"`,
    /// `"cancel"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Try => "try",
            Phase::Confirm => "confirm",
            Phase::Cancel => "cancel",
        }
    }

    /// How bad a failure in this phase is: Try < Confirm < Cancel.
    pub(crate) const fn severity(self) -> u8 {
        match self {
            Phase::Try => 0,
            Phase::Confirm => 1,
            Phase::Cancel => 2,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a transaction decided once its Tries ended: every participant is
/// confirmed, or every participant is cancelled. A durable transaction
/// writes it to its log before the first Confirm or Cancel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "admin",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Decision {
    /// Every Try succeeded: confirm everywhere.
    Confirm,
    /// Some Try failed, or none was decided before a crash: cancel everywhere.
    Cancel,
}

impl Decision {
    /// The phase that carries the decision out.
    pub(crate) fn phase(self) -> Phase {
        match self {
            Decision::Confirm => Phase::Confirm,
            Decision::Cancel => Phase::Cancel,
        }
    }
}
