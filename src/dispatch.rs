//! The dispatcher: the outbox worker that turns pending deliveries into sent messages.
//!
//! It claims due deliveries in batches with a lease, sends them with bounded concurrency
//! through the provider's token bucket, and records the whole batch's results with a few
//! set-based statements. Invariants: a delivery is only sent while this worker holds its
//! lease; a retryable failure is retried on a jittered schedule (never before the platform's
//! Retry-After); a permanent failure, or retries running out, escalates the person at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

use crate::clock::{Millis, SharedClock};
use crate::ids::RollCallId;
use crate::metrics::Metrics;
use crate::providers::{ChatProvider, OutboundMessage, ProviderError};
use crate::ratelimit::TokenBucket;
use crate::rollcall::{ClaimedDelivery, RollCall, SendResult};
use crate::store::{SharedStore, StoreError};
use crate::worker::Outcome;

/// How the dispatcher paces itself; from the `[dispatch]` config table.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// Deliveries claimed per batch.
    pub batch_size: usize,
    /// How long a claim is held before another worker may take it over.
    pub lease: Duration,
    /// Send attempts before a person is escalated as "send failed".
    pub max_attempts: u32,
    /// Wait before attempt n+1 (the last entry repeats), each with ±20% jitter.
    pub retry_schedule: Vec<Duration>,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            lease: Duration::from_secs(60),
            max_attempts: 8,
            retry_schedule: [1, 2, 5, 10, 30, 60, 120, 300]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        }
    }
}

impl DispatchSettings {
    /// The wait before the next attempt after `attempts` failed ones, jittered ±20%, and
    /// never shorter than what the platform asked for.
    pub fn backoff(
        &self,
        attempts: i64,
        at_least: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let idx = (attempts.max(1) as usize - 1).min(self.retry_schedule.len().saturating_sub(1));
        let base = self
            .retry_schedule
            .get(idx)
            .copied()
            .unwrap_or(Duration::from_secs(1));
        let jittered = base.mul_f64(rng.gen_range(0.8..=1.2));
        jittered.max(at_least.unwrap_or_default())
    }
}

/// Sends one provider's deliveries.
#[derive(Debug)]
pub struct Dispatcher {
    store: SharedStore,
    provider: Arc<dyn ChatProvider>,
    clock: SharedClock,
    limiter: Option<Arc<TokenBucket>>,
    settings: DispatchSettings,
    roll_calls: Mutex<HashMap<RollCallId, Arc<RollCall>>>,
    /// Woken when new deliveries are written.
    pub new_work: Arc<Notify>,
    /// Told when new deadlines exist, so the deadline worker re-reads the earliest.
    deadlines_changed: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    pub fn new(
        store: SharedStore,
        provider: Arc<dyn ChatProvider>,
        clock: SharedClock,
        limiter: Option<Arc<TokenBucket>>,
        settings: DispatchSettings,
        new_work: Arc<Notify>,
        deadlines_changed: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            provider,
            clock,
            limiter,
            settings,
            roll_calls: Mutex::new(HashMap::new()),
            new_work,
            deadlines_changed,
            metrics,
        }
    }

    async fn roll_call(&self, id: RollCallId) -> Result<Arc<RollCall>, StoreError> {
        if let Some(rc) = self
            .roll_calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(rc.clone());
        }
        let rc = Arc::new(
            self.store
                .roll_call(id)
                .await?
                .ok_or(StoreError::NoSuchRollCall(id))?,
        );
        self.roll_calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, rc.clone());
        Ok(rc)
    }

    /// Claims one batch, sends it, records the results.
    pub async fn run_once(&self) -> Result<Outcome, StoreError> {
        let now_inst = std::time::Instant::now();
        // With a rate limit, take the tokens first and claim only as many deliveries: a claimed
        // delivery never waits on the bucket while its lease runs.
        let want = self.settings.batch_size.max(1);
        let granted = match &self.limiter {
            Some(l) => l.take_up_to(want).await,
            None => want,
        };
        let now = self.clock.now_millis();
        let claimed = match self
            .store
            .claim_due_deliveries(self.provider.name(), now, self.settings.lease, granted)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                if let Some(l) = &self.limiter {
                    l.give_back(granted);
                }
                return Err(e);
            }
        };
        if let Some(l) = &self.limiter {
            l.give_back(granted - claimed.len());
        }
        if claimed.is_empty() {
            return Ok(Outcome::Idle);
        }
        let mut jobs = Vec::with_capacity(claimed.len());
        for d in claimed {
            let rc = self.roll_call(d.roll_call_id).await?;
            jobs.push((d, rc));
        }
        let n = jobs.len() as u64;
        let claimed_in = now_inst.elapsed();
        let concurrency = self.provider.capabilities().max_in_flight.max(1);
        let results: Vec<SendResult> = futures::stream::iter(jobs)
            .map(|(d, rc)| self.send_one(d, rc))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let sent_in = now_inst.elapsed();
        self.record(&results, now).await?;
        debug!(n, claim = ?claimed_in, send = ?(sent_in - claimed_in), record = ?(now_inst.elapsed() - sent_in), "batch");
        self.deadlines_changed.notify_one();
        Ok(Outcome::Worked(n))
    }

    /// Records a sent batch. The messages are out: when the database is briefly unreachable,
    /// keep trying while the lease still holds (nobody else sends these rows meanwhile) rather
    /// than drop the results and have the whole batch sent again.
    async fn record(&self, results: &[SendResult], claimed_at: Millis) -> Result<(), StoreError> {
        let give_up_at = claimed_at + self.settings.lease.mul_f64(0.9).as_millis() as i64;
        let mut failures = 0u32;
        loop {
            match self
                .store
                .record_send_results(results, self.clock.now_millis())
                .await
            {
                Ok(()) => return Ok(()),
                Err(e)
                    if matches!(e, StoreError::Database(_))
                        && failures < 30
                        && self.clock.now_millis() < give_up_at =>
                {
                    failures += 1;
                    self.metrics.store_error();
                    warn!(error = %e, n = results.len(), "recording sent batch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * 2u64.pow(failures.min(5)))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn send_one(&self, d: ClaimedDelivery, rc: Arc<RollCall>) -> SendResult {
        // The platform said stop while this batch was under way: hand the delivery back for
        // after the pause instead of holding it (and its lease) until then.
        if let Some(reset) = self.limiter.as_ref().and_then(|l| l.paused_for()) {
            return SendResult::Retry {
                id: d.id,
                next_attempt_at: self.clock.now_millis() + reset.as_millis() as i64,
                error: format!("platform asked to wait {reset:?}"),
                refund_attempt: true,
            };
        }
        let msg = OutboundMessage {
            delivery_id: d.id,
            roll_call_id: d.roll_call_id,
            to: d.chat_handle.clone(),
            text: rc.message.clone(),
            buttons: rc.buttons.clone(),
        };
        let started = std::time::Instant::now();
        let span = info_span!("send", roll_call = %d.roll_call_id, delivery = d.id, provider = self.provider.name());
        let res = self.provider.send(&msg).instrument(span).await;
        let at: Millis = self.clock.now_millis();
        self.metrics
            .observe_send(self.provider.name(), &res, started.elapsed());
        match res {
            Ok(sent) => SendResult::Sent {
                id: d.id,
                at,
                deadline_at: at + rc.deadline_ms,
                message_id: sent.message_id,
            },
            Err(ProviderError::Permanent(reason)) => {
                debug!(delivery = d.id, %reason, "permanent send failure");
                SendResult::Failed {
                    id: d.id,
                    error: reason,
                }
            }
            Err(ProviderError::RateLimited { reset }) => {
                if let Some(l) = &self.limiter {
                    l.pause_for(reset);
                }
                SendResult::Retry {
                    id: d.id,
                    next_attempt_at: at + reset.as_millis() as i64,
                    error: format!("rate limited by the platform for {reset:?}"),
                    refund_attempt: true,
                }
            }
            Err(ProviderError::Retryable { after, reason }) => {
                if d.attempts >= self.settings.max_attempts as i64 {
                    SendResult::Failed {
                        id: d.id,
                        error: format!("gave up after {} attempts: {reason}", d.attempts),
                    }
                } else {
                    let wait = self
                        .settings
                        .backoff(d.attempts, after, &mut rand::thread_rng());
                    SendResult::Retry {
                        id: d.id,
                        next_attempt_at: at + wait.as_millis() as i64,
                        error: reason,
                        refund_attempt: false,
                    }
                }
            }
        }
    }

    /// Runs until `cancel` fires, sleeping until the next due attempt when idle.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let provider = self.provider.name().to_string();
        let mut failures = 0u32;
        while !cancel.is_cancelled() {
            let notified = self.new_work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self
                .run_once()
                .instrument(info_span!("dispatch", %provider))
                .await
            {
                Ok(Outcome::Worked(_)) => {
                    failures = 0;
                    continue;
                }
                Ok(Outcome::Idle) => failures = 0,
                Err(e) => {
                    failures += 1;
                    warn!(%provider, error = %e, "dispatch failed; retrying");
                    self.metrics.store_error();
                }
            }
            let wait = if failures > 0 {
                Duration::from_millis(200 * 2u64.pow(failures.min(5)))
            } else {
                match self.store.next_due_attempt(&provider).await {
                    Ok(Some(t)) => {
                        let d = t - self.clock.now_millis();
                        Duration::from_millis(d.clamp(1, 30_000) as u64)
                    }
                    Ok(None) => Duration::from_secs(30),
                    Err(_) => Duration::from_secs(1),
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = &mut notified => {}
                _ = self.clock.sleep(wait) => {}
                // A safety net against a clock that is not moving (a paused test clock).
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_follows_the_schedule_with_jitter_and_respects_retry_after() {
        let s = DispatchSettings::default();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for _ in 0..100 {
            let d = s.backoff(1, None, &mut rng);
            assert!(
                d >= Duration::from_millis(800) && d <= Duration::from_millis(1200),
                "{d:?}"
            );
            let d = s.backoff(3, None, &mut rng);
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(6),
                "{d:?}"
            );
            let d = s.backoff(99, None, &mut rng);
            assert!(
                d >= Duration::from_secs(240) && d <= Duration::from_secs(360),
                "{d:?}"
            );
        }
        let d = s.backoff(1, Some(Duration::from_secs(30)), &mut rng);
        assert_eq!(d, Duration::from_secs(30));
    }
}
