//! How Confirm and Cancel are retried: [`RetryPolicy`].

use std::time::Duration;

/// Exponential backoff with jitter and a retry limit, for Confirm and Cancel.
///
/// The delay before retry `k` (from 1) is `initial_interval × multiplier^(k-1)`,
/// spread by `± jitter` and capped at `max_interval`: the cap is hard, jitter
/// never exceeds it. Jitter is a pure function of the transaction id, the
/// service name and the attempt, so a run can be replayed exactly.
///
/// The default is the Go library's: 10 retries, 500 ms, ×1.5, ±50 %, 60 s cap.
///
/// ```
/// use std::time::Duration;
/// use tcc::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .with_max_retries(5)
///     .with_initial_interval(Duration::from_millis(100))
///     .with_multiplier(2.0)
///     .with_max_interval(Duration::from_secs(1))
///     .with_jitter(0.0);
/// assert_eq!(policy.max_retries(), 5);
/// assert_eq!(policy.delay(1, 0), Duration::from_millis(100));
/// assert_eq!(policy.delay(3, 0), Duration::from_millis(400));
/// assert_eq!(policy.delay(9, 0), Duration::from_secs(1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    pub(crate) max_retries: u32,
    initial_interval: Duration,
    multiplier: f64,
    max_interval: Duration,
    jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 10,
            initial_interval: Duration::from_millis(500),
            multiplier: 1.5,
            max_interval: Duration::from_secs(60),
            jitter: 0.5,
        }
    }
}

/// A [`RetryPolicy`] value out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRetryPolicy {
    /// The multiplier is below 1 or not a finite number.
    #[error("retry multiplier must be a finite number of at least 1, got {0}")]
    Multiplier(f64),
    /// The jitter is outside `0.0..=1.0`.
    #[error("retry jitter must be between 0 and 1, got {0}")]
    Jitter(f64),
}

impl RetryPolicy {
    /// A policy that retries `n` times with no delay: handy in tests.
    pub const fn immediate(n: u32) -> Self {
        RetryPolicy {
            max_retries: n,
            initial_interval: Duration::ZERO,
            multiplier: 1.0,
            max_interval: Duration::ZERO,
            jitter: 0.0,
        }
    }

    /// At most `n` retries, so at most `n + 1` attempts.
    #[must_use]
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// The delay before the first retry.
    #[must_use]
    pub fn with_initial_interval(mut self, interval: Duration) -> Self {
        self.initial_interval = interval;
        self
    }

    /// How much each delay grows over the one before; at least 1. A value
    /// out of range makes the orchestration fail with
    /// [`ErrorKind::InvalidRetryPolicy`](crate::ErrorKind::InvalidRetryPolicy)
    /// before any phase runs.
    #[must_use]
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The longest delay, jitter included.
    #[must_use]
    pub fn with_max_interval(mut self, interval: Duration) -> Self {
        self.max_interval = interval;
        self
    }

    /// How far each delay is spread at random, as a fraction of it: `0.5`
    /// means ±50 %. Between 0 and 1; see [`with_multiplier`](Self::with_multiplier)
    /// for values out of range.
    #[must_use]
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The retry limit.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Checks that every value is in range.
    pub fn validate(&self) -> Result<(), InvalidRetryPolicy> {
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(InvalidRetryPolicy::Multiplier(self.multiplier));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(InvalidRetryPolicy::Jitter(self.jitter));
        }
        Ok(())
    }

    /// The delay before retry `retry` (from 1), for a given jitter `seed`.
    /// The same inputs always give the same delay.
    pub fn delay(&self, retry: u32, seed: u64) -> Duration {
        let cap = self.max_interval.as_secs_f64();
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = (self.initial_interval.as_secs_f64() * self.multiplier.powi(exponent)).min(cap);
        // A uniform draw in [-1, 1] from the seed mixed with the retry number.
        let unit = (mix(seed ^ u64::from(retry)) >> 11) as f64 / (1u64 << 53) as f64;
        let spread = base * self.jitter.clamp(0.0, 1.0) * (2.0 * unit - 1.0);
        let secs = (base + spread).clamp(0.0, cap);
        // `secs` is finite and at most the cap, which came from a Duration.
        Duration::try_from_secs_f64(secs).unwrap_or(self.max_interval)
    }
}

/// splitmix64's finaliser: spreads every input bit over the output.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a's starting value.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Continues an FNV-1a hash over `bytes`: fast and stable across processes.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A stable hash of a service name, for jitter seeds that are the same in
/// every process.
pub(crate) fn name_hash(name: &str) -> u64 {
    fnv1a(FNV_OFFSET, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_never_exceed_the_cap() {
        let policy = RetryPolicy::default().with_max_interval(Duration::from_secs(2));
        for seed in 0..200 {
            for retry in 1..40 {
                assert!(policy.delay(retry, seed) <= Duration::from_secs(2));
            }
        }
        let plain = policy.with_jitter(0.0);
        assert_eq!(plain.delay(1, 7), Duration::from_millis(500));
        assert_eq!(plain.delay(2, 7), Duration::from_millis(750));
        assert_eq!(plain.delay(30, 7), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_in_its_band_and_is_deterministic() {
        let policy = RetryPolicy::default();
        let mut distinct = std::collections::HashSet::new();
        for seed in 0..500 {
            let delay = policy.delay(1, seed);
            assert!(delay >= Duration::from_millis(250) && delay <= Duration::from_millis(750));
            assert_eq!(delay, policy.delay(1, seed));
            distinct.insert(delay);
        }
        assert!(distinct.len() > 100, "jitter should spread delays");
    }

    #[test]
    fn out_of_range_values_are_reported() {
        let nan = RetryPolicy::default().with_multiplier(f64::NAN);
        assert!(matches!(
            nan.validate(),
            Err(InvalidRetryPolicy::Multiplier(_))
        ));
        let shrink = RetryPolicy::default().with_multiplier(0.5);
        assert!(shrink.validate().is_err());
        let jitter = RetryPolicy::default().with_jitter(1.5);
        assert_eq!(jitter.validate(), Err(InvalidRetryPolicy::Jitter(1.5)));
        assert!(RetryPolicy::default().validate().is_ok());
        // An invalid policy still yields finite, capped delays.
        assert!(nan.delay(3, 1) <= Duration::from_secs(60));
    }
}
