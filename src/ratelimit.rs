//! A token bucket per provider, on anpi's clock, so that a platform's request budget is never
//! exceeded and its 429 / Retry-After pauses every sender at once — also when no limit is
//! configured (then the bucket only pauses and paces what it has learned).
//!
//! Invariants: in any window of the platform's length, at most the platform's limit is spent.
//! The bucket refills at 90% of the limit and holds at most 10% of it, so even a full bucket
//! spent at once plus a window's refill stays within the limit. A 429 pauses every sender
//! until the platform's reset, with or without a configured limit. Without one, the platform's
//! observed pace (one request per the longest wait it asked for) then holds, one request at a
//! time, until no 429 has come for [`FORGET_AFTER`].

use std::sync::Mutex;
use std::time::Duration;

use crate::clock::{Millis, SharedClock};
use crate::providers::RateLimit;

/// How long without a 429 before a learned pace is dropped and the configured one (or none)
/// applies again: the platform may have lifted its limit.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);

/// The share of a platform's limit anpi spends once its first burst is gone: the rest is
/// headroom for the platform counting its window differently from anpi's clock.
pub const SHARE: f64 = 0.9;

/// The requests anpi may spend at once under `limit` (a tenth of it, at least one): the
/// bucket's capacity.
pub fn burst(limit: RateLimit) -> f64 {
    (limit.requests as f64 * 0.1).floor().max(1.0)
}

/// Requests per second anpi sends at under `limit` after the burst ([`SHARE`] of it).
pub fn sustained_per_second(limit: RateLimit) -> f64 {
    limit.per_second() * SHARE
}

/// Where the platform's observed pace is kept (provider state), for estimates made by any
/// process: `{"interval_ms": .., "at": ..}`.
pub const OBSERVED_PACE_KEY: &str = "observed_pace";

/// How long a stored observed pace is believed by estimates.
const OBSERVED_PACE_HOLDS: Duration = Duration::from_secs(24 * 3600);

/// The pace `provider` was last observed at (see [`TokenBucket::observed`]), if that was in
/// the last day.
pub async fn observed_pace(
    store: &crate::store::SharedStore,
    provider: &str,
    now: Millis,
) -> Option<RateLimit> {
    let raw = store
        .provider_state(provider, OBSERVED_PACE_KEY)
        .await
        .ok()??;
    let v: serde_json::Value = serde_json::from_str(&raw).ok()?;
    let at = v["at"].as_i64()?;
    let interval = v["interval_ms"].as_u64().filter(|i| *i > 0)?;
    (now - at <= OBSERVED_PACE_HOLDS.as_millis() as i64).then(|| RateLimit {
        requests: 1,
        per: Duration::from_millis(interval),
    })
}

/// The slower of a configured limit (if any) and an observed pace.
pub fn slower(configured: Option<RateLimit>, observed: RateLimit) -> RateLimit {
    match configured {
        Some(c) if c.per_second() <= observed.per_second() => c,
        _ => observed,
    }
}

#[derive(Debug)]
pub struct TokenBucket {
    clock: SharedClock,
    /// Tokens per millisecond; `None`: no configured limit.
    rate: Option<f64>,
    capacity: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Millis,
    paused_until: Millis,
    learned: Option<Learned>,
}

/// The platform's pace as its 429s showed it.
#[derive(Debug, Clone, Copy)]
struct Learned {
    /// The longest wait a 429 asked for: about one request per this long gets through.
    interval_ms: i64,
    last_429: Millis,
}

impl TokenBucket {
    pub fn new(limit: RateLimit, clock: SharedClock) -> Self {
        let capacity = burst(limit);
        let now = clock.now_millis();
        Self {
            clock,
            rate: Some(sustained_per_second(limit) / 1000.0),
            capacity,
            state: Mutex::new(BucketState {
                tokens: capacity,
                last: now,
                paused_until: 0,
                learned: None,
            }),
        }
    }

    /// A bucket for a platform with no configured limit: every request may go at once until
    /// the platform answers 429; then it pauses everyone and paces to what it observed.
    pub fn unlimited(clock: SharedClock) -> Self {
        let now = clock.now_millis();
        Self {
            clock,
            rate: None,
            capacity: 1.0,
            state: Mutex::new(BucketState {
                tokens: 1.0,
                last: now,
                paused_until: 0,
                learned: None,
            }),
        }
    }

    /// The rate (tokens per ms) and capacity now: the learned pace caps the configured one.
    fn pace(&self, s: &BucketState) -> Option<(f64, f64)> {
        match (self.rate, s.learned) {
            (rate, Some(l)) => {
                let learned = SHARE / l.interval_ms.max(1) as f64;
                Some((rate.map_or(learned, |r| r.min(learned)), 1.0))
            }
            (Some(r), None) => Some((r, self.capacity)),
            (None, None) => None,
        }
    }

    /// The platform's pace as observed from its 429s (one request per the longest wait it
    /// asked for), while it holds: what an estimate should use.
    pub fn observed(&self) -> Option<RateLimit> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.learned.map(|l| RateLimit {
            requests: 1,
            per: Duration::from_millis(l.interval_ms.max(1) as u64),
        })
    }

    /// Waits until at least one request may be made, then takes as many as are available, up
    /// to `n`. The dispatcher claims only that many deliveries, so what it claims is sent
    /// soon rather than waiting on the bucket while its lease runs.
    pub async fn take_up_to(&self, n: usize) -> usize {
        loop {
            let wait_ms = {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = self.refill(&mut s);
                if now < s.paused_until {
                    s.paused_until - now
                } else if let Some((rate, _)) = self.pace(&s) {
                    if s.tokens >= 1.0 {
                        let k = (s.tokens.floor() as usize).min(n.max(1));
                        s.tokens -= k as f64;
                        return k;
                    }
                    ((1.0 - s.tokens) / rate).ceil().max(1.0) as i64
                } else {
                    return n.max(1);
                }
            };
            self.clock
                .sleep(Duration::from_millis(wait_ms.max(1) as u64))
                .await;
        }
    }

    /// Returns tokens taken but not spent.
    pub fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, capacity)) = self.pace(&s) {
            s.tokens = (s.tokens + n as f64).min(capacity);
        }
    }

    /// How long the platform asked everyone to wait, if it did and that is not over.
    pub fn paused_for(&self) -> Option<Duration> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now_millis();
        (s.paused_until > now).then(|| Duration::from_millis((s.paused_until - now) as u64))
    }

    fn refill(&self, s: &mut BucketState) -> Millis {
        let now = self.clock.now_millis();
        if s.learned
            .is_some_and(|l| now - l.last_429 > FORGET_AFTER.as_millis() as i64)
        {
            s.learned = None;
            if self.rate.is_some() {
                s.tokens = s.tokens.min(self.capacity);
            }
        }
        if now > s.last {
            if let Some((rate, capacity)) = self.pace(s) {
                s.tokens = (s.tokens + (now - s.last) as f64 * rate).min(capacity);
            }
            s.last = now;
        }
        now
    }

    /// Waits until one request may be made, then takes it.
    pub async fn acquire(&self) {
        self.take_up_to(1).await;
    }

    /// The platform said "no more until `reset`": nobody sends until then, one request may go
    /// then, and after it (without a configured limit) the observed pace holds (see the module). Returns whether
    /// this started a pause (rather than joined one already running), for one log line a pause.
    pub fn pause_for(&self, reset: Duration) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now_millis();
        let wait = reset.as_millis() as i64;
        let until = now + wait;
        // A configured limit is the operator's word on the platform's pace (a fixed window's
        // reset says little about it); only a bucket without one learns.
        if self.rate.is_none() {
            let interval = s.learned.map_or(wait, |l| l.interval_ms.max(wait)).max(1);
            s.learned = Some(Learned {
                interval_ms: interval,
                last_429: now,
            });
        }
        let started = s.paused_until <= now;
        if until > s.paused_until {
            s.paused_until = until;
            s.tokens = 1.0;
            s.last = until;
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use chrono::TimeZone;
    use std::sync::Arc;

    fn clock() -> ManualClock {
        ManualClock::new(chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap())
    }

    #[tokio::test]
    async fn burst_is_a_tenth_of_the_limit_then_waits_for_refill() {
        let c = clock();
        let bucket = Arc::new(TokenBucket::new(
            RateLimit {
                requests: 240,
                per: Duration::from_secs(60),
            },
            Arc::new(c.clone()),
        ));
        for _ in 0..24 {
            bucket.acquire().await;
        }
        let b2 = bucket.clone();
        let next = tokio::spawn(async move { b2.acquire().await });
        tokio::task::yield_now().await;
        assert!(!next.is_finished(), "25th request must wait");
        // 0.9 * 4/s = 3.6/s: one token takes about 278 ms.
        c.advance(Duration::from_millis(300));
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("woke after refill")
            .unwrap();
    }

    #[tokio::test]
    async fn no_window_ever_exceeds_the_limit() {
        // Spend greedily over 5 simulated minutes, stepping the clock 50 ms at a time, and
        // count the spend in every 60 s window.
        let c = clock();
        let limit = RateLimit {
            requests: 240,
            per: Duration::from_secs(60),
        };
        let bucket = TokenBucket::new(limit, Arc::new(c.clone()));
        let mut stamps = Vec::new();
        for _ in 0..6_000 {
            loop {
                let got = tokio::time::timeout(Duration::from_millis(0), bucket.acquire()).await;
                if got.is_ok() {
                    stamps.push(c.now_millis());
                } else {
                    break;
                }
            }
            c.advance(Duration::from_millis(50));
        }
        let mut j = 0;
        for i in 0..stamps.len() {
            while stamps[i] - stamps[j] >= 60_000 {
                j += 1;
            }
            assert!(i - j < 240, "{} sends in one window", i - j + 1);
        }
        assert!(stamps.len() > 900, "bucket too stingy: {}", stamps.len());
    }

    #[tokio::test]
    async fn take_up_to_grants_what_is_there_and_give_back_returns_it() {
        let c = clock();
        let bucket = TokenBucket::new(
            RateLimit {
                requests: 240,
                per: Duration::from_secs(60),
            },
            Arc::new(c.clone()),
        );
        assert_eq!(bucket.take_up_to(500).await, 24);
        bucket.give_back(4);
        assert_eq!(bucket.take_up_to(3).await, 3);
        assert_eq!(bucket.take_up_to(500).await, 1);
        c.advance(Duration::from_secs(10));
        // 36 tokens accrued in 10 s, but the bucket holds 24.
        assert_eq!(bucket.take_up_to(500).await, 24);
    }

    #[tokio::test]
    async fn without_a_limit_a_429_pauses_everyone_then_paces_to_the_observed_wait() {
        let c = clock();
        let bucket = Arc::new(TokenBucket::unlimited(Arc::new(c.clone())));
        assert_eq!(bucket.take_up_to(50).await, 50, "no limit: all at once");
        assert_eq!(bucket.observed(), None);
        assert!(bucket.pause_for(Duration::from_secs(5)), "a pause starts");
        assert!(
            !bucket.pause_for(Duration::from_secs(4)),
            "joins the running pause"
        );
        assert_eq!(
            bucket.observed(),
            Some(RateLimit {
                requests: 1,
                per: Duration::from_secs(5)
            })
        );
        let b2 = bucket.clone();
        let waiter = tokio::spawn(async move { b2.take_up_to(50).await });
        c.advance(Duration::from_secs(4));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "paused");
        c.advance(Duration::from_millis(1100));
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woke after the pause")
            .unwrap();
        assert_eq!(got, 1, "one request at a time at the observed pace");
        let b3 = bucket.clone();
        let next = tokio::spawn(async move { b3.take_up_to(50).await });
        c.advance(Duration::from_secs(5));
        tokio::task::yield_now().await;
        assert!(
            !next.is_finished(),
            "the next waits one observed interval (at 90%)"
        );
        c.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("paced")
            .unwrap();
        // A minute with no 429: the pace is forgotten.
        c.advance(FORGET_AFTER + Duration::from_secs(1));
        assert_eq!(bucket.take_up_to(50).await, 50);
        assert_eq!(bucket.observed(), None);
    }

    #[tokio::test]
    async fn pause_blocks_until_reset() {
        let c = clock();
        let bucket = Arc::new(TokenBucket::new(
            RateLimit {
                requests: 1000,
                per: Duration::from_secs(1),
            },
            Arc::new(c.clone()),
        ));
        bucket.pause_for(Duration::from_secs(5));
        assert_eq!(
            bucket.observed(),
            None,
            "a configured limit is not replaced"
        );
        let b2 = bucket.clone();
        let waiter = tokio::spawn(async move { b2.acquire().await });
        c.advance(Duration::from_secs(4));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        c.advance(Duration::from_millis(1100));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woke after reset")
            .unwrap();
    }
}
