//! How long a worker waits before it tries again after a failure of the store (or, for the
//! event feed, of the platform): the wait doubles with each failure in a row, from a first
//! wait up to a ceiling, and starts over after a success. The rule is written once, here;
//! each kind of caller names its [`Backoff`] below.
//!
//! Invariant: the wait never exceeds the ceiling, however many failures in a row, so a
//! worker is back within that long of the database's return.

use std::time::Duration;

/// A doubling wait between a first wait and a ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    ceiling: Duration,
}

impl Backoff {
    pub const fn doubling(first: Duration, ceiling: Duration) -> Self {
        Self { first, ceiling }
    }

    /// The wait after `failures` failures in a row (the first failure is 1).
    pub fn wait(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.first.saturating_mul(1 << doublings).min(self.ceiling)
    }
}

/// Writing work already done (sent messages, a mail's outcome): 100 ms doubling up to 1.6 s,
/// since the work waits in memory until it is stored.
pub const HOLDING_WORK: Backoff =
    Backoff::doubling(Duration::from_millis(100), Duration::from_millis(1_600));

/// A timer's step (deadlines, re-sends): 200 ms doubling up to 3.2 s, so escalation resumes
/// within seconds of the database's return.
pub const TIMER: Backoff =
    Backoff::doubling(Duration::from_millis(200), Duration::from_millis(3_200));

/// Polling for work (dispatch claims, the event feed): 200 ms doubling up to 6.4 s; a
/// platform that is failing is not asked more than that.
pub const POLLER: Backoff =
    Backoff::doubling(Duration::from_millis(200), Duration::from_millis(6_400));

/// Opening the store at start while the database is down or restarting: 1 s doubling up to
/// 30 s.
pub const OPENING: Backoff = Backoff::doubling(Duration::from_secs(1), Duration::from_secs(30));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_from_the_first_up_to_the_ceiling() {
        let waits: Vec<u64> = (1..=7).map(|f| TIMER.wait(f).as_millis() as u64).collect();
        assert_eq!(waits, [200, 400, 800, 1_600, 3_200, 3_200, 3_200]);
        assert_eq!(HOLDING_WORK.wait(1), Duration::from_millis(100));
        assert_eq!(HOLDING_WORK.wait(30), Duration::from_millis(1_600));
        assert_eq!(POLLER.wait(u32::MAX), Duration::from_millis(6_400));
        assert_eq!(OPENING.wait(5), Duration::from_secs(16));
        assert_eq!(OPENING.wait(6), Duration::from_secs(30));
    }
}
