//! The id of a transaction: [`TransactionId`].

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The unique id of one orchestration.
///
/// The high 64 bits are drawn at random once per process, the low 64 bits
/// count orchestrations within it, so ids are unique within a process and,
/// with overwhelming probability, across the coordinators of a system. It
/// prints as 32 lowercase hex digits and parses back with [`str::parse`], so
/// it can key idempotency records and, later, the durable transaction log.
///
/// ```
/// let id = tcc::TransactionId::generate();
/// let text = id.to_string();
/// assert_eq!(text.len(), 32);
/// assert_eq!(text.parse::<tcc::TransactionId>().unwrap(), id);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId(u128);

impl TransactionId {
    /// A new id, different from every other id this process generated.
    pub fn generate() -> Self {
        static PREFIX: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // RandomState is seeded from the OS's randomness: no extra crate needed.
        let prefix = *PREFIX.get_or_init(|| {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            hasher.finish()
        });
        let sequence = COUNTER.fetch_add(1, Ordering::Relaxed);
        TransactionId((u128::from(prefix) << 64) | u128::from(sequence))
    }

    /// The id as a number.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// An id from a number, such as one read back from a log.
    pub const fn from_u128(value: u128) -> Self {
        TransactionId(value)
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The same 32 hex digits as `Display`, so logs, `{:?}` and the log's keys
/// read alike.
impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text was not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transaction id {0:?}: expected 32 hex digits")]
pub struct ParseTransactionIdError(String);

impl FromStr for TransactionId {
    type Err = ParseTransactionIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let valid = text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit());
        match u128::from_str_radix(text, 16) {
            Ok(value) if valid => Ok(TransactionId(value)),
            _ => Err(ParseTransactionIdError(text.to_owned())),
        }
    }
}
