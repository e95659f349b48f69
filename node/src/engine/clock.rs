//! The engine's clock: every decision the engine takes by time (holds, retries and their
//! backoff, waits for earlier messages, rotation, expiry, resend intervals) reads it here,
//! never the system directly, so a test can set the time and move it on.
//!
//! Two readings: the wall clock in milliseconds since the Unix epoch (stored with messages
//! and rows, compared with what other devices wrote) and a monotonic [`Instant`] (waits that
//! live only in memory). A manual clock moves both together.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use std::time::{Duration, Instant};

/// Where the engine reads the time. Cheap to clone; clones read the same time.
#[derive(Debug, Clone)]
pub(crate) struct Clock(Source);

#[derive(Debug, Clone)]
enum Source {
    /// The system's clocks.
    System,
    /// Time that moves only when a test moves it.
    #[cfg_attr(not(test), allow(dead_code))]
    Manual(Arc<Manual>),
}

/// A manual clock's state: where it started, and how far it has moved since.
#[derive(Debug)]
struct Manual {
    start_ms: i64,
    start: Instant,
    moved_ms: AtomicU64,
}

impl Clock {
    /// The system's clocks.
    pub(crate) fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that starts at `start_ms` (wall clock) and moves only by [`Clock::advance`].
    #[cfg(test)]
    pub(crate) fn manual(start_ms: i64) -> Clock {
        Clock(Source::Manual(Arc::new(Manual {
            start_ms,
            start: Instant::now(),
            moved_ms: AtomicU64::new(0),
        })))
    }

    /// Moves a manual clock on by `by` (both readings). A system clock cannot be moved.
    #[cfg(test)]
    pub(crate) fn advance(&self, by: Duration) {
        match &self.0 {
            Source::System => panic!("the system clock cannot be moved"),
            Source::Manual(m) => {
                let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
                m.moved_ms.fetch_add(by, Ordering::SeqCst);
            }
        }
    }

    /// The wall clock: milliseconds since the Unix epoch.
    pub(crate) fn now_ms(&self) -> i64 {
        match &self.0 {
            Source::System => crate::home::now_ms(),
            Source::Manual(m) => m.start_ms.saturating_add(
                i64::try_from(m.moved_ms.load(Ordering::SeqCst)).unwrap_or(i64::MAX),
            ),
        }
    }

    /// The wall clock in whole seconds since the Unix epoch (certificates, device lists).
    pub(crate) fn now_secs(&self) -> u64 {
        u64::try_from(self.now_ms() / 1000).unwrap_or(0)
    }

    /// The monotonic clock.
    pub(crate) fn now(&self) -> Instant {
        match &self.0 {
            Source::System => Instant::now(),
            Source::Manual(m) => m.start + Duration::from_millis(m.moved_ms.load(Ordering::SeqCst)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_both_readings_only_when_told() {
        let clock = Clock::manual(1_000_000);
        let copy = clock.clone();
        let (t0, ms0) = (clock.now(), clock.now_ms());
        assert_eq!(ms0, 1_000_000);
        assert_eq!(clock.now(), t0, "it does not move by itself");
        copy.advance(Duration::from_millis(1_500));
        assert_eq!(clock.now_ms(), 1_001_500);
        assert_eq!(clock.now_secs(), 1_001);
        assert_eq!(clock.now() - t0, Duration::from_millis(1_500));
    }
}
