//! Time as an injected part.
//!
//! The cell's functions take time as a [`Timestamp`] argument and never hold a clock. The
//! shells (master, compat, agent, CLI) are given a [`SharedClock`] at start and read time only
//! through it, so a simulation can drive the same code with a [`ManualClock`].
//!
//! [`SystemClock`] is the one place in Shoal that reads the operating system's clocks.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::model::Timestamp;

/// Wall time (what is stored and sent) and monotonic time (what timeouts are measured on).
pub trait Clock: Debug + Send + Sync + 'static {
    /// Milliseconds since the Unix epoch. May jump (NTP); never use it to measure a duration.
    fn wall_ms(&self) -> Timestamp;
    /// A point on a clock that never goes back, for deadlines and durations.
    fn monotonic(&self) -> Instant;
}

/// The clock every shell is given.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl SystemClock {
    /// A [`SharedClock`] on the operating system's clocks.
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn wall_ms(&self) -> Timestamp {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to: wall and monotonic time advance together.
#[derive(Debug)]
pub struct ManualClock {
    wall_start_ms: Timestamp,
    monotonic_start: Instant,
    elapsed_ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `wall_start_ms`; its monotonic origin is an arbitrary fixed instant.
    pub fn new(wall_start_ms: Timestamp) -> ManualClock {
        ManualClock {
            wall_start_ms,
            monotonic_start: Instant::now(),
            elapsed_ms: AtomicU64::new(0),
        }
    }
    /// Moves both clocks forward by `by` (whole milliseconds).
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.elapsed_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn wall_ms(&self) -> Timestamp {
        self.wall_start_ms
            .saturating_add(self.elapsed_ms.load(Ordering::SeqCst))
    }
    fn monotonic(&self) -> Instant {
        self.monotonic_start + Duration::from_millis(self.elapsed_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_both_times_together_and_only_when_told() {
        let c = ManualClock::new(1_000);
        let (w, m) = (c.wall_ms(), c.monotonic());
        assert_eq!((c.wall_ms(), c.monotonic()), (w, m));
        c.advance(Duration::from_millis(250));
        assert_eq!(c.wall_ms(), 1_250);
        assert_eq!(c.monotonic() - m, Duration::from_millis(250));
    }

    #[test]
    fn the_system_clock_reads_after_the_epoch_and_monotonic_never_goes_back() {
        let c = SystemClock;
        assert!(c.wall_ms() > 1_600_000_000_000);
        let a = c.monotonic();
        assert!(c.monotonic() >= a);
    }
}
