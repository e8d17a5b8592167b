//! The receipt path: read receipts, button taps, replies and stickers from a provider become
//! delivery state changes and append-only event-log entries.
//!
//! Invariant: applying the same events twice, or in another order, leaves the same state; the
//! feed cursor is stored in the same transaction as the events it covers, so a restart resumes
//! exactly where the last applied batch ended.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info_span, warn, Instrument};

use crate::clock::SharedClock;
use crate::dispatch::{broadcast_key, DoneBroadcast};
use crate::metrics::Metrics;
use crate::providers::{ChatProvider, InboundEvent, ProviderError, RouteKind};
use crate::rollcall::RollCallState;
use crate::store::{ApplySummary, SharedStore, StoreError};
use crate::worker::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("provider event feed: {0}")]
    Provider(#[from] ProviderError),
}

/// Applies events that arrived by callback (push-based providers).
pub async fn apply(
    store: &SharedStore,
    clock: &SharedClock,
    provider: &str,
    events: &[InboundEvent],
) -> Result<ApplySummary, StoreError> {
    store
        .apply_events(provider, events, None, clock.now_millis())
        .await
}

/// Follows a pull-based provider's event feed.
#[derive(Debug)]
pub struct ReceiptWatcher {
    store: SharedStore,
    provider: Arc<dyn ChatProvider>,
    clock: SharedClock,
    /// How long one poll may wait for events to arrive.
    poll_wait: Duration,
    cursor: tokio::sync::Mutex<Option<Option<String>>>,
    metrics: Arc<Metrics>,
    /// When (clock millis) open roll calls' broadcasts were last handed to the provider.
    followed_at: std::sync::Mutex<Option<crate::clock::Millis>>,
}

/// How often a feed that keeps failing is logged at warning level.
const FEED_WARN_EVERY: Duration = Duration::from_secs(60);

/// How often the watcher looks for broadcasts made by other replicas or before a restart.
const FOLLOW_EVERY: Duration = Duration::from_secs(5);

impl ReceiptWatcher {
    pub fn new(
        store: SharedStore,
        provider: Arc<dyn ChatProvider>,
        clock: SharedClock,
        poll_wait: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            provider,
            clock,
            poll_wait,
            cursor: tokio::sync::Mutex::new(None),
            metrics,
            followed_at: std::sync::Mutex::new(None),
        }
    }

    /// Hands every open roll call's stored broadcast to the provider, so its reads are
    /// followed whichever replica posted it, and after a restart.
    async fn follow_broadcasts(&self) -> Result<(), StoreError> {
        let followed = self
            .provider
            .routes()
            .iter()
            .any(|r| r.kind == RouteKind::Broadcast && r.read_signal);
        if !followed {
            return Ok(());
        }
        {
            let now = self.clock.now_millis();
            let mut at = self.followed_at.lock().unwrap_or_else(|e| e.into_inner());
            if at.is_some_and(|t| now - t < FOLLOW_EVERY.as_millis() as i64) {
                return Ok(());
            }
            *at = Some(now);
        }
        let name = self.provider.name();
        for rc in self.store.roll_calls().await? {
            if rc.state != RollCallState::Open {
                continue;
            }
            let stored = self
                .store
                .provider_state(name, &broadcast_key(rc.id))
                .await?;
            if let Some(b) = stored.as_deref().and_then(DoneBroadcast::parse) {
                if let Some(post) = &b.post_id {
                    self.provider.follow_broadcast(rc.id, post, b.at);
                }
            }
        }
        Ok(())
    }

    /// Fetches one batch from the feed and applies it.
    pub async fn run_once(&self) -> Result<Outcome, ReceiptError> {
        let mut cursor = self.cursor.lock().await;
        if cursor.is_none() {
            *cursor = Some(self.store.cursor(self.provider.name()).await?);
        }
        let current = cursor.clone().flatten();
        // Not fatal: the feed still brings what this process already follows.
        if let Err(e) = self.follow_broadcasts().await {
            warn!(error = %e, "could not read open roll calls' broadcasts; following what is known");
            self.metrics.store_error();
        }
        let batch = self
            .provider
            .poll_events(current.as_deref(), self.poll_wait)
            .await?;
        if batch.events.is_empty() && (batch.cursor.is_none() || batch.cursor == current) {
            return Ok(Outcome::Idle);
        }
        let summary = self
            .store
            .apply_events(
                self.provider.name(),
                &batch.events,
                batch.cursor.as_deref(),
                self.clock.now_millis(),
            )
            .await?;
        self.metrics.events_applied(summary.logged);
        self.provider.events_stored();
        if batch.cursor.is_some() {
            *cursor = Some(batch.cursor);
        }
        Ok(Outcome::Worked(batch.events.len() as u64))
    }

    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        // Another replica may have followed the feed since this one last did: start from the
        // stored cursor, not the remembered one.
        *self.cursor.lock().await = None;
        let provider = self.provider.name().to_string();
        let mut failures = 0u32;
        // A feed that stays down (the platform unreachable) is said once, then once a
        // minute, not at every retry.
        let mut last_warned: Option<std::time::Instant> = None;
        while !cancel.is_cancelled() {
            let res = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.run_once().instrument(info_span!("receipts", %provider)) => r,
            };
            match res {
                Ok(_) => {
                    if failures > 0 && last_warned.is_some() {
                        tracing::info!(%provider, failures, "event feed is back");
                    }
                    failures = 0;
                    last_warned = None;
                }
                Err(e) => {
                    failures += 1;
                    if last_warned.is_none_or(|t| t.elapsed() >= FEED_WARN_EVERY) {
                        warn!(
                            %provider,
                            error = %e,
                            failures,
                            "event feed failed; retrying (said again each minute while it lasts)"
                        );
                        last_warned = Some(std::time::Instant::now());
                    } else {
                        tracing::debug!(%provider, error = %e, failures, "event feed failed; retrying");
                    }
                    if matches!(e, ReceiptError::Store(_)) {
                        self.metrics.store_error();
                    }
                    let wait = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}
