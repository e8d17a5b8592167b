//! Escalation: the deadline worker that puts everyone still unread at their deadline on the
//! phone-call list (HQ's action list; its renderings are in [`crate::calllist`]).
//!
//! Invariants: each person's deadline is stored (sent_at + the roll call's deadline), so a
//! restarted daemon honours it; the worker sleeps until the earliest stored deadline and wakes
//! early when new ones are written; escalation takes exactly the sent-and-unconfirmed, and
//! only once the receipt watcher has caught up with the platform past their deadline (after a
//! restart or an outage, receipts waiting at the platform are applied first), unless the feed
//! stays behind for `receipts.catch_up_grace`, when what is stored must do.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::clock::{from_millis, Millis, SharedClock};
use crate::metrics::Metrics;
use crate::receipts::FeedPosition;

use crate::store::{SharedStore, StoreError};
use crate::worker::Outcome;

/// How often the deadline worker re-reads the earliest deadline when nothing wakes it.
const REPLAN: Duration = Duration::from_secs(1);
/// How often, while a deadline waits for the receipt feed, the stored position is re-read
/// (wall time: another replica may be the one watching the feed).
const CATCH_UP_LOOK: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct DeadlineWorker {
    store: SharedStore,
    clock: SharedClock,
    /// The provider whose receipts must be applied before anyone is escalated.
    provider: String,
    /// How far its feed is complete (and how to ask the watcher to hurry).
    feed: Arc<FeedPosition>,
    /// How long past a deadline escalation waits for a feed that is behind.
    grace: Duration,
    /// Woken when deliveries are sent (new deadlines) so the sleep is re-planned.
    pub deadlines_changed: Arc<Notify>,
    /// Told after each escalation, for whoever waits on the call list (e-mail, the web page).
    pub escalated: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl DeadlineWorker {
    pub fn new(
        store: SharedStore,
        clock: SharedClock,
        deadlines_changed: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            clock,
            provider: String::new(),
            feed: Arc::default(),
            grace: Duration::ZERO,
            deadlines_changed,
            escalated: Arc::new(Notify::new()),
            metrics,
        }
    }

    /// Resolves when the earliest deadline should be read again: other replicas write
    /// deadlines without telling this process, so it looks every `REPLAN` (of the application's
    /// clock, or of the wall when that clock stands still).
    async fn replan(&self) {
        tokio::select! {
            _ = self.clock.sleep(REPLAN) => {}
            _ = tokio::time::sleep(REPLAN) => {}
        }
    }

    /// Escalates only once `provider`'s receipts are applied past each deadline (see
    /// [`FeedPosition`]), waiting at most `grace` past a deadline for a feed that is behind.
    pub fn with_feed(mut self, provider: &str, feed: Arc<FeedPosition>, grace: Duration) -> Self {
        self.provider = provider.to_string();
        self.feed = feed;
        self.grace = grace;
        self
    }

    /// Up to when escalating is safe now that `due` (a deadline) has passed: the time the
    /// receipts are applied up to, or `now` once the grace has run out (or with no feed to
    /// wait for). None while the feed is still behind `due`.
    async fn escalate_until(&self, due: Millis, now: Millis) -> Result<Option<Millis>, StoreError> {
        if self.provider.is_empty() {
            return Ok(Some(now));
        }
        match self.feed.known(&self.store, &self.provider).await? {
            Some(at) if at >= due => Ok(Some(at.min(now))),
            _ if now - due >= self.grace.as_millis() as i64 => {
                warn!(
                    provider = %self.provider,
                    "the receipt feed is behind past the grace; escalating with what is stored"
                );
                Ok(Some(now))
            }
            _ => Ok(None),
        }
    }

    /// Escalates everything due at `now`.
    pub async fn run_once(&self, now: Millis) -> Result<Outcome, StoreError> {
        let n = self.store.escalate_due(now).await?;
        if n == 0 {
            return Ok(Outcome::Idle);
        }
        info!(
            escalated = n,
            "deadline passed: people added to the call list"
        );
        self.escalated.notify_waiters();
        Ok(Outcome::Worked(n))
    }

    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut failures = 0u32;
        while !cancel.is_cancelled() {
            let notified = self.deadlines_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // The earliest deadline is a cheap read; the escalating write runs only when it
            // has passed (a busy dispatcher wakes this worker after every recorded group).
            let mut feed_moved = self.feed.subscribe();
            let mut behind = false;
            let step = async {
                let now = self.clock.now_millis();
                match self.store.next_deadline().await? {
                    Some(t) if t <= now => match self.escalate_until(t, now).await? {
                        Some(until) => {
                            self.run_once(until).await?;
                            self.store.next_deadline().await
                        }
                        None => {
                            // Receipts may be waiting at the platform: have them fetched now.
                            behind = true;
                            self.feed.catch_up.notify_one();
                            Ok(Some(t))
                        }
                    },
                    next => Ok(next),
                }
            }
            .instrument(info_span!("deadlines"))
            .await;
            let next = match step {
                Ok(next) => {
                    failures = 0;
                    next
                }
                Err(e) => {
                    failures += 1;
                    self.metrics.store_error();
                    warn!(error = %e, "deadline check failed; retrying");
                    let wait = crate::backoff::TIMER.wait(failures);
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            };
            if behind {
                // Until the feed moves (this process's watcher), or another replica's watcher
                // has stored its progress, or the grace runs out.
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = feed_moved.changed() => {}
                    _ = tokio::time::sleep(CATCH_UP_LOOK) => {}
                }
                continue;
            }
            match next {
                Some(t) => {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = &mut notified => {}
                        _ = self.clock.sleep_until(from_millis(t)) => {}
                        _ = self.replan() => {}
                    }
                }
                None => {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = &mut notified => {}
                        _ = self.replan() => {}
                    }
                }
            }
        }
    }
}

// The list's renderings live in `calllist`; kept reachable here for older callers.
pub use crate::calllist::{minutes_waiting, pad, render_csv, render_table, status, why, ListScope};
