//! The re-send (`escalation.resend_after` of a scenario): the chat message goes once more to
//! whoever has not read it that long after their first send, through the provider's 1:1
//! send and its rate limit.
//!
//! Invariants: each person is re-sent at most once per roll call (the store claims a due
//! re-send with a lease and marks it done); their deadline still counts from the first send;
//! the re-send shares the provider's token bucket with the dispatcher, so the platform's limit
//! holds for both together; a permanent refusal ends the re-send, the first send still stands.
//! The re-send goes to the person's own talk even when the roll call went out by a board post
//! or a room: re-posting there would notify everyone who has already read it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::clock::{from_millis, Millis, SharedClock};
use crate::metrics::Metrics;
use crate::providers::{ChatProvider, OutboundMessage, ProviderError};
use crate::ratelimit::TokenBucket;
use crate::rollcall::RollCall;
use crate::store::{ResendResult, SharedStore, StoreError};
use crate::worker::Outcome;

/// Re-sends claimed per round.
const CHUNK: usize = 100;
/// How long a claimed re-send is held before another worker may take it.
const LEASE: Duration = Duration::from_secs(60);
/// How often the next due time is read again when nothing wakes the worker (other replicas
/// write send times without telling this process).
const REPLAN: Duration = Duration::from_secs(1);
/// Wait before trying a re-send again when the platform gave no time.
const RETRY: Duration = Duration::from_secs(30);

/// The first words of a re-sent message.
pub const PREFIX_JA: &str = "【再送】";

#[derive(Debug)]
pub struct ResendWorker {
    store: SharedStore,
    provider: Arc<dyn ChatProvider>,
    clock: SharedClock,
    limiter: Option<Arc<TokenBucket>>,
    metrics: Arc<Metrics>,
    /// Woken when messages go out (new re-send times).
    pub wake: Arc<Notify>,
}

impl ResendWorker {
    pub fn new(
        store: SharedStore,
        provider: Arc<dyn ChatProvider>,
        clock: SharedClock,
        limiter: Option<Arc<TokenBucket>>,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            provider,
            clock,
            limiter,
            metrics,
            wake,
        }
    }

    /// Re-sends what is due at `now` (up to one chunk).
    pub async fn run_once(&self, now: Millis) -> Result<Outcome, StoreError> {
        // Claim only what the bucket lets out now, so the claim is sent well within its lease
        // whatever the platform's limit.
        let want = match &self.limiter {
            Some(l) => l.take_up_to(CHUNK).await,
            None => CHUNK,
        };
        let claimed = self
            .store
            .claim_due_resends(self.provider.name(), now, LEASE, want)
            .await;
        let unused = want - claimed.as_ref().map_or(0, Vec::len);
        if let (Some(l), true) = (&self.limiter, unused > 0) {
            l.give_back(unused);
        }
        let claimed = claimed?;
        if claimed.is_empty() {
            return Ok(Outcome::Idle);
        }
        // Once the platform says 429, the rest of the claim waits for its reset.
        let mut paused_until: Option<Millis> = None;
        let mut roll_calls: std::collections::HashMap<_, Arc<RollCall>> = Default::default();
        let mut results = Vec::with_capacity(claimed.len());
        for d in &claimed {
            let rc = match roll_calls.get(&d.roll_call_id) {
                Some(rc) => rc.clone(),
                None => {
                    let Some(rc) = self.store.roll_call(d.roll_call_id).await? else {
                        continue;
                    };
                    let rc = Arc::new(rc);
                    roll_calls.insert(d.roll_call_id, rc.clone());
                    rc
                }
            };
            if let Some(next) = paused_until {
                if let Some(l) = &self.limiter {
                    l.give_back(1);
                }
                results.push(ResendResult::Retry {
                    id: d.id,
                    next,
                    error: "rate limited".into(),
                });
                continue;
            }
            let msg = OutboundMessage {
                delivery_id: d.id,
                roll_call_id: d.roll_call_id,
                to: d.chat_handle.clone(),
                text: format!("{PREFIX_JA}{}", rc.message),
                buttons: rc.buttons_for(d.kind),
                asks: rc.asks.clone(),
                resend: true,
            };
            let started = std::time::Instant::now();
            let res = self.provider.send(&msg).await;
            self.metrics
                .observe_send(self.provider.name(), &res, started.elapsed());
            let at = self.clock.now_millis();
            let result = match res {
                Ok(_) => ResendResult::Sent { id: d.id, at },
                Err(ProviderError::RateLimited { reset }) => {
                    if let Some(l) = &self.limiter {
                        l.pause_for(reset);
                    }
                    let next = at + reset.as_millis() as i64;
                    paused_until = Some(next);
                    ResendResult::Retry {
                        id: d.id,
                        next,
                        error: "rate limited".into(),
                    }
                }
                Err(ProviderError::Retryable { after, reason }) => ResendResult::Retry {
                    id: d.id,
                    next: at + after.unwrap_or(RETRY).as_millis() as i64,
                    error: reason,
                },
                Err(ProviderError::Unauthorized { after, reason }) => ResendResult::Retry {
                    id: d.id,
                    next: at + after.max(RETRY).as_millis() as i64,
                    error: reason,
                },
                Err(ProviderError::Permanent(reason)) => ResendResult::Failed {
                    id: d.id,
                    error: reason,
                },
            };
            self.metrics.resend(match &result {
                ResendResult::Sent { .. } => "sent",
                ResendResult::Retry { .. } => "retry",
                ResendResult::Failed { .. } => "failed",
            });
            results.push(result);
        }
        self.store.record_resends(&results).await?;
        let sent = results
            .iter()
            .filter(|r| matches!(r, ResendResult::Sent { .. }))
            .count();
        info!(
            sent,
            claimed = claimed.len(),
            "message sent again to the unread"
        );
        Ok(Outcome::Worked(claimed.len() as u64))
    }

    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut failures = 0u32;
        while !cancel.is_cancelled() {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let step = async {
                let now = self.clock.now_millis();
                match self.store.next_resend(self.provider.name()).await? {
                    Some(t) if t <= now => {
                        self.run_once(now).await?;
                        self.store.next_resend(self.provider.name()).await
                    }
                    next => Ok(next),
                }
            }
            .instrument(info_span!("resend"))
            .await;
            let next = match step {
                Ok(n) => {
                    failures = 0;
                    n
                }
                Err(e) => {
                    failures += 1;
                    self.metrics.store_error();
                    warn!(error = %e, "re-send check failed; retrying");
                    let wait = crate::backoff::TIMER.wait(failures);
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            };
            let now = self.clock.now_millis();
            if next.is_some_and(|t| t <= now) {
                // More due than one chunk: go on at once.
                continue;
            }
            let until = next.map(from_millis);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = &mut notified => {}
                _ = async {
                    match until {
                        Some(t) => self.clock.sleep_until(t).await,
                        None => std::future::pending::<()>().await,
                    }
                } => {}
                _ = self.clock.sleep(REPLAN) => {}
                _ = tokio::time::sleep(REPLAN) => {}
            }
        }
    }
}
