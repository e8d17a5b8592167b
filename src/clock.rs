//! The one source of time. Logic never calls `Utc::now()`: it asks a [`Clock`], so tests can
//! move time by hand and the demo can run a 5-minute deadline in seconds.
//!
//! Invariant: a clock never goes backwards, and every clock agrees with itself across a restart
//! when built from the same settings (the scaled clock is anchored to a fixed epoch), so a
//! deadline stored by one process is honoured by the next.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::watch;

/// Milliseconds since the Unix epoch, UTC: the form every timestamp takes in storage.
pub type Millis = i64;

/// Converts a stored timestamp into a `DateTime<Utc>`.
pub fn from_millis(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A source of "now" and a way to wait for a moment.
#[async_trait]
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Waits until `at` (clock time). Returns at once if `at` has passed.
    async fn sleep_until(&self, at: DateTime<Utc>);

    /// The current time in stored form.
    fn now_millis(&self) -> Millis {
        self.now().timestamp_millis()
    }

    /// Waits for `d` of clock time.
    async fn sleep(&self, d: Duration) {
        let at = self.now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        self.sleep_until(at).await
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// Wall-clock time.
#[derive(Debug, Default, Clone)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    async fn sleep_until(&self, at: DateTime<Utc>) {
        let d = (at - Utc::now()).to_std().unwrap_or_default();
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

/// Time that runs `speed` times faster than the wall, anchored at `epoch`: clock time is
/// `epoch + (wall - epoch) * speed`. Two processes with the same epoch and speed agree on the
/// time, so a daemon restarted mid-demo honours deadlines stored before it died.
#[derive(Debug, Clone)]
pub struct ScaledClock {
    epoch: DateTime<Utc>,
    speed: f64,
}

impl ScaledClock {
    pub fn new(epoch: DateTime<Utc>, speed: f64) -> Self {
        let speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            1.0
        };
        Self { epoch, speed }
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }

    pub fn epoch(&self) -> DateTime<Utc> {
        self.epoch
    }
}

#[async_trait]
impl Clock for ScaledClock {
    fn now(&self) -> DateTime<Utc> {
        let wall_ms = (Utc::now() - self.epoch).num_milliseconds() as f64;
        self.epoch + chrono::Duration::milliseconds((wall_ms * self.speed) as i64)
    }
    async fn sleep_until(&self, at: DateTime<Utc>) {
        let clock_ms = (at - self.now()).num_milliseconds();
        if clock_ms > 0 {
            let wall = Duration::from_secs_f64(clock_ms as f64 / 1000.0 / self.speed);
            tokio::time::sleep(wall).await;
        }
    }
}

/// A clock that moves only when told to. Sleepers wake when [`ManualClock::advance`] or
/// [`ManualClock::set`] carries the time past their moment.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<Mutex<DateTime<Utc>>>,
    tick: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        let (tick, _) = watch::channel(start);
        Self {
            inner: Arc::new(Mutex::new(start)),
            tick,
        }
    }

    /// Moves the clock forward by `d` and wakes every sleeper whose moment has come.
    pub fn advance(&self, d: Duration) {
        let mut now = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *now += chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
        self.tick.send_replace(*now);
    }

    /// Sets the clock to `at` if that is later than now (the clock never goes back).
    pub fn set(&self, at: DateTime<Utc>) {
        let mut now = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if at > *now {
            *now = at;
            self.tick.send_replace(at);
        }
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    async fn sleep_until(&self, at: DateTime<Utc>) {
        let mut rx = self.tick.subscribe();
        loop {
            if *rx.borrow_and_update() >= at {
                return;
            }
            if rx.changed().await.is_err() {
                // The clock is gone: nothing will ever move time again.
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleeper_only_when_advanced_past_its_moment() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        let c2 = clock.clone();
        let sleeper = tokio::spawn(async move {
            c2.sleep_until(start + chrono::Duration::seconds(300)).await;
        });
        clock.advance(Duration::from_secs(299));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("sleeper woke")
            .unwrap();
    }

    #[test]
    fn manual_clock_never_goes_back() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        clock.set(start - chrono::Duration::seconds(10));
        assert_eq!(clock.now(), start);
    }

    #[test]
    fn scaled_clocks_with_the_same_epoch_agree() {
        let epoch = Utc::now() - chrono::Duration::seconds(10);
        let a = ScaledClock::new(epoch, 60.0);
        let b = ScaledClock::new(epoch, 60.0);
        let diff = (a.now() - b.now()).num_milliseconds().abs();
        assert!(diff < 1_000, "two clocks differ by {diff} ms");
        // Ten wall seconds at 60x are ten clock minutes.
        let ahead = (a.now() - epoch).num_seconds();
        assert!((590..=620).contains(&ahead), "{ahead}");
    }
}
