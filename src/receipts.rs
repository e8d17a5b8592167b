//! The receipt path: read receipts, button taps, replies and stickers from a provider become
//! delivery state changes and append-only event-log entries.
//!
//! Invariant: applying the same events twice, or in another order, leaves the same state; the
//! feed cursor is stored in the same transaction as the events it covers, so a restart resumes
//! exactly where the last applied batch ended. How far the feed is complete ("caught up to",
//! [`FeedPosition`] here and `Store::caught_up` for other replicas) is written only after the
//! events it covers are stored, and only moves forward: escalation and the deadline mail wait
//! for it, so nothing HQ sees is older than what the platform has already told anpi.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, warn, Instrument};

use crate::clock::{Millis, SharedClock};
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

/// How far this process knows a provider's feed to be complete, and a way to ask the watcher
/// to catch up now (a deadline has passed and the list waits for receipts).
#[derive(Debug)]
pub struct FeedPosition {
    at: tokio::sync::watch::Sender<Option<Millis>>,
    /// Told when someone needs the feed complete up to now: the watcher stops waiting on its
    /// long poll and asks again at once.
    pub catch_up: Notify,
}

impl Default for FeedPosition {
    fn default() -> Self {
        Self {
            at: tokio::sync::watch::channel(None).0,
            catch_up: Notify::new(),
        }
    }
}

impl FeedPosition {
    /// Known complete up to this time (clock millis), as far as this process has seen.
    pub fn get(&self) -> Option<Millis> {
        *self.at.borrow()
    }

    /// Moves the position forward (never back).
    pub fn advance(&self, to: Millis) {
        self.at.send_if_modified(|at| {
            if at.is_none_or(|a| to > a) {
                *at = Some(to);
                true
            } else {
                false
            }
        });
    }

    /// Resolves at the next advance.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Millis>> {
        self.at.subscribe()
    }

    /// How far the feed of `provider` is complete: what this process saw, or what the
    /// replica watching the feed stored, whichever is further.
    pub async fn known(
        &self,
        store: &SharedStore,
        provider: &str,
    ) -> Result<Option<Millis>, StoreError> {
        let stored = store.caught_up(provider).await?;
        Ok(self.get().max(stored))
    }
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
    /// How far the feed is complete; shared with the deadline worker and the mail.
    position: Arc<FeedPosition>,
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
            position: Arc::default(),
        }
    }

    /// Shares the feed position with the workers that wait for it.
    pub fn with_position(mut self, position: Arc<FeedPosition>) -> Self {
        self.position = position;
        self
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
            let stored = self.store.broadcast_done(rc.id, name, None).await?;
            if let Some(b) = stored {
                if let Some(post) = &b.post_id {
                    self.provider.follow_broadcast(rc.id, post, b.posted_at);
                }
            }
        }
        Ok(())
    }

    /// Fetches one batch from the feed and applies it.
    pub async fn run_once(&self) -> Result<Outcome, ReceiptError> {
        self.poll_once(self.poll_wait).await
    }

    /// Fetches one batch, waiting at most `wait` for one, applies it, and records how far the
    /// feed is complete.
    async fn poll_once(&self, wait: Duration) -> Result<Outcome, ReceiptError> {
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
        let asked_at = self.clock.now_millis();
        let batch = self.provider.poll_events(current.as_deref(), wait).await?;
        let answered_at = self.clock.now_millis();
        let complete_to = self
            .provider
            .feed_complete_to(batch.events.len(), asked_at, answered_at);
        if batch.events.is_empty() && (batch.cursor.is_none() || batch.cursor == current) {
            self.caught_up(complete_to).await?;
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
        self.caught_up(complete_to).await?;
        Ok(Outcome::Worked(batch.events.len() as u64))
    }

    /// Everything the platform held until `to` is stored: say so (stored for other replicas
    /// first, then to this process's waiters).
    async fn caught_up(&self, to: Option<Millis>) -> Result<(), StoreError> {
        let Some(to) = to else { return Ok(()) };
        if self.position.get().is_some_and(|at| at >= to) {
            return Ok(());
        }
        self.store
            .set_caught_up(self.provider.name(), to, self.clock.now_millis())
            .await?;
        self.position.advance(to);
        Ok(())
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
        // Asked to catch up now: poll without waiting until the feed has nothing more.
        let mut hurry = false;
        while !cancel.is_cancelled() {
            let wait = if hurry {
                Duration::ZERO
            } else {
                self.poll_wait
            };
            let res = tokio::select! {
                _ = cancel.cancelled() => break,
                // A poll waiting for events is abandoned (nothing of it was stored; the next
                // one asks from the same cursor) and asked again without waiting.
                _ = self.position.catch_up.notified(), if !hurry => {
                    hurry = true;
                    continue;
                }
                r = self.poll_once(wait).instrument(info_span!("receipts", %provider)) => r,
            };
            hurry &= matches!(res, Ok(Outcome::Worked(_)));
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
                    let wait = crate::backoff::POLLER.wait(failures);
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}
