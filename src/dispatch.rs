//! The dispatcher: the outbox worker that turns pending deliveries into sent messages.
//!
//! It is a pipeline of three stages joined by channels, so the send window never drains
//! while the database is busy:
//! - the claimer takes due deliveries in chunks with a lease (through the provider's token
//!   bucket), as long as this dispatcher has fewer than `batch_size` deliveries claimed and
//!   not yet recorded;
//! - the feeder starts one send per delivery as soon as a place in the provider's in-flight
//!   window is free (the window is shared by every dispatcher of the provider in a process);
//! - the recorder writes finished sends with a few set-based statements, taking whatever has
//!   finished since its last write (group commit) and freeing their places.
//!
//! While a delivery is claimed and not yet recorded, a heartbeat renews its lease every third
//! of it, so the lease can be seconds: a worker that dies leaves its batch to another within
//! one lease, and a live one keeps its batch however slow the platform is.
//!
//! Invariants: a delivery is only sent while this worker holds its lease (one with less than
//! half a lease left when a place frees up is handed back instead), and its result is put back
//! for a retry only while that lease (as last renewed) still holds; a rate-limit token is spent within moments of
//! being taken (a delivery that waited longer takes a fresh one); a retryable failure is
//! retried on a
//! jittered schedule (never before the platform's Retry-After); a permanent failure, or
//! retries running out, escalates the person at once; at most `batch_size` deliveries per
//! dispatcher are ever sent and not yet recorded, which bounds the duplicates a crash can
//! cause. On shutdown nothing new is sent: queued deliveries are handed back and in-flight
//! sends are recorded.
//!
//! A roll call whose plan ([`crate::planner`]) is a broadcast (one board post for everyone) or
//! department rooms goes out through [`broadcast`] instead, within the same limits; the
//! answer buttons that follow a board post through [`follow_up`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, debug_span, error, info_span, warn, Instrument};

use crate::clock::{Millis, SharedClock};
use crate::health::{Component, Health};
use crate::ids::RollCallId;
use crate::metrics::Metrics;
use crate::planner;
use crate::providers::{ChatProvider, OutboundMessage, ProviderError, Route, RouteKind};
use crate::ratelimit::{slower, TokenBucket, OBSERVED_PACE_KEY};
use crate::rollcall::{ClaimedDelivery, RollCall, SendResult};
use crate::store::{SharedStore, StoreError};

pub mod broadcast;
pub mod follow_up;
pub use follow_up::WaveState;

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

/// How workers tell each other that something changed in the store.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// New deliveries were written: the dispatcher should look now.
    pub new_work: Arc<Notify>,
    /// New deadlines exist: the deadline worker should re-read the earliest.
    pub deadlines_changed: Arc<Notify>,
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
    /// The provider's routes beyond 1:1, read once.
    routes: Vec<Route>,
    /// Each roll call's plan, and for a rooms plan which group each chat id is in.
    plans: Mutex<HashMap<RollCallId, Arc<broadcast::PlanCtx>>>,
    /// This worker's name for store leases: one worker makes a given broadcast.
    holder: String,
    /// Woken when new deliveries are written.
    pub new_work: Arc<Notify>,
    /// Told when new deadlines exist, so the deadline worker re-reads the earliest.
    deadlines_changed: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// Places in the provider's in-flight window (shared by its dispatchers).
    window: Arc<Semaphore>,
    /// Places for deliveries this dispatcher has claimed and not yet recorded.
    outstanding: Arc<Semaphore>,
    /// Deliveries claimed for 1:1 sends and not yet recorded, with their lease's end as last
    /// renewed (the claim's identity in the store). Held across a renewal; a recording takes
    /// its rows out first, so the two never see different ends.
    held: Arc<tokio::sync::Mutex<HashMap<i64, Millis>>>,
    /// The button waves this worker follows ([`follow_up`]).
    waves: Mutex<follow_up::Waves>,
    /// Woken when a board post went out, so its buttons follow at once.
    wave_wakeup: Arc<Notify>,
    /// Where a roll call that cannot start is reported ([`crate::health`]).
    health: Option<Arc<Health>>,
    /// Roll calls with a message out, and those with none out after a failure.
    starts: Mutex<Starts>,
}

/// Which roll calls have got a first message out ([`Dispatcher::went_out`]).
#[derive(Debug, Default)]
struct Starts {
    out: std::collections::HashSet<RollCallId>,
    stuck: std::collections::HashSet<RollCallId>,
}

/// The reason recorded for someone whose message could not go out by their deadline.
fn not_sent_by_deadline(reason: &str) -> String {
    format!("締切までに送信できませんでした / not sent by the deadline: {reason}")
}

/// A claimed delivery on its way to the feeder.
struct Job {
    delivery: ClaimedDelivery,
    roll_call: Arc<RollCall>,
    claimed_at: Millis,
    slot: OwnedSemaphorePermit,
}

/// A finished send on its way to the recorder; its place is freed once it is recorded.
struct Done {
    result: SendResult,
    slot: OwnedSemaphorePermit,
}

/// What one claim did.
enum Claim {
    /// Deliveries to send one by one.
    Jobs(Vec<Job>),
    /// A broadcast or rooms batch, sent and recorded already.
    Planned,
    Idle,
}

/// A rate-limit token taken at a claim is good for a send that starts within this long.
const STALE_TOKEN: Duration = Duration::from_secs(2);

/// How long the recorder waits for more finished sends before writing a small group.
const RECORD_LINGER: Duration = Duration::from_millis(5);

/// How fast a provider may be sent to, shared by all its dispatchers in a process: the token
/// bucket of its rate limit (if it has one) and its in-flight window of `max_in_flight`.
#[derive(Debug, Clone)]
pub struct Pacing {
    pub limiter: Option<Arc<TokenBucket>>,
    pub window: Arc<Semaphore>,
}

impl Pacing {
    /// Every provider gets a bucket: without a configured limit it only pauses on a 429 and
    /// paces to what the platform showed (see [`crate::ratelimit`]).
    pub fn for_provider(provider: &dyn ChatProvider, clock: &SharedClock) -> Self {
        let caps = provider.capabilities();
        let bucket = match caps.rate_limit {
            Some(l) => TokenBucket::new(l, clock.clone()),
            None => TokenBucket::unlimited(clock.clone()),
        };
        Self {
            limiter: Some(Arc::new(bucket)),
            window: Arc::new(Semaphore::new(caps.max_in_flight.max(1))),
        }
    }
}

impl Dispatcher {
    pub fn new(
        store: SharedStore,
        provider: Arc<dyn ChatProvider>,
        clock: SharedClock,
        pacing: Pacing,
        settings: DispatchSettings,
        signals: Signals,
        metrics: Arc<Metrics>,
    ) -> Self {
        let Pacing { limiter, window } = pacing;
        let routes = provider.routes();
        let outstanding = Arc::new(Semaphore::new(settings.batch_size.max(1)));
        Self {
            store,
            provider,
            clock,
            limiter,
            settings,
            roll_calls: Mutex::new(HashMap::new()),
            routes,
            plans: Mutex::new(HashMap::new()),
            holder: format!("dispatch-{:016x}", rand::random::<u64>()),
            new_work: signals.new_work,
            deadlines_changed: signals.deadlines_changed,
            metrics,
            window,
            outstanding,
            held: Arc::default(),
            waves: Mutex::new(follow_up::Waves::default()),
            wave_wakeup: Arc::new(Notify::new()),
            health: None,
            starts: Mutex::new(Starts::default()),
        }
    }

    /// Reports a roll call whose first messages cannot go out to `health`, at once.
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = Some(health);
        self
    }

    /// A message of roll call `id` went out.
    fn went_out(&self, id: RollCallId) {
        let mut s = self.starts.lock().unwrap_or_else(|e| e.into_inner());
        if s.out.insert(id) && s.stuck.remove(&id) && s.stuck.is_empty() {
            if let Some(h) = &self.health {
                h.ok(Component::RollCallStart);
            }
        }
    }

    /// A message of roll call `id` could not go out for now: if none has, HQ is told at once.
    fn not_out(&self, id: RollCallId, reason: &str) {
        let mut s = self.starts.lock().unwrap_or_else(|e| e.into_inner());
        if s.out.contains(&id) {
            return;
        }
        s.stuck.insert(id);
        if let Some(h) = &self.health {
            h.failing_now(
                Component::RollCallStart,
                format!("roll call #{id}: {reason}"),
            );
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

    /// Claims up to `room`'s places worth of due deliveries. Broadcast and rooms batches are
    /// sent and recorded here; 1:1 deliveries come back as jobs, each holding one place.
    async fn claim(&self, mut room: OwnedSemaphorePermit) -> Result<Claim, StoreError> {
        let started = std::time::Instant::now();
        // With a rate limit, take the tokens first and claim only as many deliveries, so what
        // is claimed can be sent at once (see `STALE_TOKEN` for what waited anyway).
        let want = room.num_permits();
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
            return Ok(Claim::Idle);
        }
        if !self.routes.is_empty() {
            let mut planned = false;
            for d in &claimed {
                planned |= self.plan_for(d.roll_call_id).await?.plan.route != RouteKind::Direct;
            }
            if planned {
                self.run_planned(claimed).await?;
                return Ok(Claim::Planned);
            }
        }
        let mut jobs = Vec::with_capacity(claimed.len());
        for delivery in claimed {
            let roll_call = self.roll_call(delivery.roll_call_id).await?;
            // The store never returns more than asked, and `room` holds that many places.
            let Some(slot) = room.split(1) else {
                return Err(StoreError::Corrupt(
                    "the store returned more deliveries than were asked for".into(),
                ));
            };
            jobs.push(Job {
                delivery,
                roll_call,
                claimed_at: now,
                slot,
            });
        }
        {
            let mut held = self.held.lock().await;
            for j in &jobs {
                held.insert(j.delivery.id, j.delivery.lease_until);
            }
        }
        debug!(n = jobs.len(), took = ?started.elapsed(), "claimed");
        Ok(Claim::Jobs(jobs))
    }

    /// Records a sent batch. The messages are out: when the database is briefly unreachable,
    /// keep trying while the lease still holds (nobody else sends these rows meanwhile) rather
    /// than drop the results and have the whole batch sent again.
    async fn record(&self, results: &[SendResult], lease_ends: Millis) -> Result<(), StoreError> {
        let give_up_at =
            lease_ends.saturating_sub(self.settings.lease.mul_f64(0.1).as_millis() as i64);
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
                    tokio::time::sleep(crate::backoff::HOLDING_WORK.wait(failures)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The platform answered 429: every send to it waits (the shared bucket), one warning line
    /// a pause; the pace it showed is kept for estimates, and HQ is warned when that pace makes
    /// this roll call's estimate more than twice too short.
    async fn rate_limited(&self, rc: &RollCall, reset: Duration) {
        let Some(l) = &self.limiter else {
            return;
        };
        if !l.pause_for(reset) {
            return;
        }
        let name = self.provider.name();
        let observed = l.observed();
        warn!(
            provider = name,
            roll_call = %rc.id,
            retry_after_ms = reset.as_millis() as u64,
            observed_interval_ms = observed.map(|o| o.per.as_millis() as u64),
            "the platform refused a send (429): every send to it waits until it allows again"
        );
        // With a configured limit the estimate already uses it.
        let Some(observed) = observed else {
            return;
        };
        let now = self.clock.now_millis();
        let pace = serde_json::json!({"interval_ms": observed.per.as_millis() as u64, "at": now});
        if let Err(e) = self
            .store
            .set_provider_state(name, OBSERVED_PACE_KEY, &pace.to_string(), now)
            .await
        {
            warn!(error = %e, "could not keep the observed pace for estimates");
        }
        let caps = self.provider.capabilities();
        let n = rc.recipients.max(0) as usize;
        let estimated = planner::seconds_for(n, caps.rate_limit);
        let now_estimated = planner::seconds_for(n, Some(slower(caps.rate_limit, observed)));
        if now_estimated > 2.0 * estimated && now_estimated >= 1.0 {
            if let Some(h) = &self.health {
                h.failing_now(
                    Component::Pace,
                    format!(
                        "roll call #{}: {n} 件の送信に約 {now_estimated:.0} 秒（見積もり {estimated:.0} 秒）\
                         / sending {n} messages takes about {now_estimated:.0} s, not the \
                         {estimated:.0} s estimated: the platform allows about one request per \
                         {:.1} s",
                        rc.id,
                        observed.per.as_secs_f64()
                    ),
                );
            }
        }
    }

    async fn send_one(&self, d: ClaimedDelivery, rc: Arc<RollCall>) -> SendResult {
        // The platform said stop while this batch was under way: hand the delivery back for
        // after the pause instead of holding it (and its lease) until then.
        if let Some(reset) = self.limiter.as_ref().and_then(|l| l.paused_for()) {
            return SendResult::Retry {
                id: d.id,
                lease_until: d.lease_until,
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
            buttons: rc.buttons_for(d.kind),
            resend: false,
            asks: rc.asks.clone(),
        };
        let started = std::time::Instant::now();
        let span = debug_span!("send", roll_call = %d.roll_call_id, delivery = d.id, provider = self.provider.name());
        let res = self.provider.send(&msg).instrument(span).await;
        let at: Millis = self.clock.now_millis();
        self.metrics
            .observe_send(self.provider.name(), &res, started.elapsed());
        match res {
            Ok(sent) => {
                self.went_out(rc.id);
                SendResult::Sent {
                    id: d.id,
                    at,
                    deadline_at: at + rc.deadline_ms,
                    message_id: sent.message_id,
                }
            }
            Err(ProviderError::Permanent(reason)) => {
                debug!(delivery = d.id, %reason, "permanent send failure");
                SendResult::Failed {
                    id: d.id,
                    error: reason,
                }
            }
            Err(ProviderError::RateLimited { reset }) => {
                self.rate_limited(&rc, reset).await;
                SendResult::Retry {
                    id: d.id,
                    lease_until: d.lease_until,
                    next_attempt_at: at + reset.as_millis() as i64,
                    error: format!("rate limited by the platform for {reset:?}"),
                    refund_attempt: true,
                }
            }
            Err(ProviderError::Unauthorized { after, reason }) => {
                // Anpi's credentials, not the person: no attempt is used up, and the send
                // waits for a fix until the person's deadline.
                self.not_yet(&rc, &d, at, at + after.as_millis() as i64, reason, true)
            }
            Err(ProviderError::Retryable { after, reason }) => {
                let deadline = rc.created_at + rc.deadline_ms;
                if at < deadline && d.attempts >= self.settings.max_attempts as i64 {
                    self.not_out(rc.id, &reason);
                    SendResult::Failed {
                        id: d.id,
                        error: format!("gave up after {} attempts: {reason}", d.attempts),
                    }
                } else {
                    let wait = self
                        .settings
                        .backoff(d.attempts, after, &mut rand::thread_rng());
                    self.not_yet(&rc, &d, at, at + wait.as_millis() as i64, reason, false)
                }
            }
        }
    }

    /// A send that did not go out but may later: tried again at `next`, no later than the
    /// person's deadline (counted from the start, since nothing went out); once that has
    /// passed, the person goes on the call list as send failed, with the reason.
    fn not_yet(
        &self,
        rc: &RollCall,
        d: &ClaimedDelivery,
        at: Millis,
        next: Millis,
        reason: String,
        refund_attempt: bool,
    ) -> SendResult {
        self.not_out(rc.id, &reason);
        let deadline = rc.created_at + rc.deadline_ms;
        if at >= deadline {
            return SendResult::Failed {
                id: d.id,
                error: not_sent_by_deadline(&reason),
            };
        }
        SendResult::Retry {
            id: d.id,
            lease_until: d.lease_until,
            next_attempt_at: next.min(deadline),
            error: reason,
            refund_attempt,
        }
    }

    /// Runs the claimer, the feeder and the recorder until `cancel` fires; then hands back
    /// what was claimed and not sent, and records what was in flight.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        // The answer buttons that follow a board post run beside the send pipeline.
        let follow_up = tokio::spawn(self.clone().follow_up_loop(cancel.clone()));
        // Only a bug stops the pipeline before `cancel` (every error is retried inside it);
        // sending must go on regardless, so it is started again.
        while !self.clone().pipeline(cancel.clone()).await && !cancel.is_cancelled() {
            error!(
                provider = self.provider.name(),
                "the send pipeline stopped unexpectedly; restarting it"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let _ = follow_up.await;
    }

    /// One run of the pipeline; false when a stage panicked.
    async fn pipeline(self: Arc<Self>, cancel: CancellationToken) -> bool {
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Done>();
        let (job_tx, mut job_rx) = mpsc::channel::<Job>(self.settings.batch_size.max(1));
        let recorder = tokio::spawn(self.clone().record_loop(done_rx));
        let beating = CancellationToken::new();
        let heartbeat = tokio::spawn(self.clone().heartbeat(beating.clone()));
        let claimer = tokio::spawn(self.clone().claim_loop(job_tx, cancel.clone()));
        // A send may take a while (a slow platform, a token refresh, a retry inside the
        // client): one that has not started by half its lease is handed back instead.
        let keep_at_least = self.settings.lease.mul_f64(0.5).as_millis() as i64;
        while let Some(job) = job_rx.recv().await {
            if done_tx.is_closed() {
                // The recorder is gone: sending more would only send it again later.
                break;
            }
            let place = self.place_to_send(job.claimed_at, &cancel).await;
            let lease_left = self
                .held
                .lock()
                .await
                .get(&job.delivery.id)
                .map_or(0, |until| until.saturating_sub(self.clock.now_millis()));
            let place = place.filter(|_| lease_left >= keep_at_least);
            let now = self.clock.now_millis();
            let Some(place) = place else {
                // Stopping, or the lease is running out while this waited: give it back
                // rather than risk another worker sending it too.
                let _ = done_tx.send(Done {
                    result: SendResult::Retry {
                        id: job.delivery.id,
                        lease_until: job.delivery.lease_until,
                        next_attempt_at: now,
                        error: "handed back unsent".into(),
                        refund_attempt: true,
                    },
                    slot: job.slot,
                });
                continue;
            };
            let this = self.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                let result = this.send_one(job.delivery, job.roll_call).await;
                drop(place);
                let _ = done.send(Done {
                    result,
                    slot: job.slot,
                });
            });
        }
        // The claimer has stopped (or stops at its next claim, the queue being gone) and
        // every job is sent or handed back; the recorder ends once the last send in flight
        // has reported.
        drop(job_rx);
        drop(done_tx);
        let claimed = claimer.await;
        let recorded = recorder.await;
        beating.cancel();
        let _ = heartbeat.await;
        claimed.is_ok() && recorded.is_ok()
    }

    /// A place in the in-flight window for a delivery claimed at `claimed_at`; None once
    /// stopping. A delivery that waited past [`STALE_TOKEN`] for it takes a fresh token: the
    /// one taken at the claim is forfeited, so sends held up by a slow platform do not all go
    /// out at once when it recovers.
    async fn place_to_send(
        &self,
        claimed_at: Millis,
        cancel: &CancellationToken,
    ) -> Option<OwnedSemaphorePermit> {
        let place = tokio::select! {
            biased;
            _ = cancel.cancelled() => return None,
            p = self.window.clone().acquire_owned() => p.ok()?,
        };
        if let Some(l) = &self.limiter {
            if self.clock.now_millis() - claimed_at > STALE_TOKEN.as_millis() as i64 {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return None,
                    _ = l.acquire() => {}
                }
            }
        }
        Some(place)
    }

    /// Claims while there is room, sleeping until the next due attempt when idle.
    async fn claim_loop(self: Arc<Self>, jobs: mpsc::Sender<Job>, cancel: CancellationToken) {
        let provider = self.provider.name().to_string();
        // Half the budget at a time: one chunk is sent while the next is claimed.
        let chunk = (self.settings.batch_size / 2).max(1) as u32;
        let mut failures = 0u32;
        while !cancel.is_cancelled() {
            let notified = self.new_work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let room = tokio::select! {
                r = self.outstanding.clone().acquire_many_owned(chunk) => match r {
                    Ok(r) => r,
                    Err(_) => break,
                },
                _ = cancel.cancelled() => break,
            };
            match self
                .claim(room)
                .instrument(info_span!("dispatch", %provider))
                .await
            {
                Ok(Claim::Jobs(batch)) => {
                    failures = 0;
                    for job in batch {
                        if jobs.send(job).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Ok(Claim::Planned) => {
                    failures = 0;
                    continue;
                }
                Ok(Claim::Idle) => failures = 0,
                Err(e) => {
                    failures += 1;
                    warn!(%provider, error = %e, "dispatch failed; retrying");
                    self.metrics.store_error();
                }
            }
            let wait = if failures > 0 {
                crate::backoff::POLLER.wait(failures)
            } else {
                match self.store.next_due_attempt(&provider).await {
                    // Due already, yet nothing was claimed: a row another anpi holds on an
                    // older lease rule, or one claimed a moment ago. Look again shortly.
                    Ok(Some(t)) if t <= self.clock.now_millis() => Duration::from_millis(100),
                    Ok(Some(t)) => {
                        let d = t - self.clock.now_millis();
                        Duration::from_millis(d.clamp(1, 30_000) as u64)
                    }
                    Ok(None) => {
                        // Nothing left to send: a slow pace delays no one any more.
                        if let Some(h) = &self.health {
                            h.ok(Component::Pace);
                        }
                        Duration::from_secs(30)
                    }
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

    /// Renews the lease of every delivery claimed and not yet recorded, every third of the
    /// lease, until `stop`. A row another worker took over meanwhile (this one's renewal came
    /// too late) is no longer this claim's: it is dropped from `held`, so it is not sent here.
    async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let every = (self.settings.lease / 3).max(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.clock.sleep(every) => {}
                // Keeps renewing on a clock that stands still (a test's manual clock).
                _ = tokio::time::sleep(every) => {}
            }
            let mut held = self.held.lock().await;
            if held.is_empty() {
                continue;
            }
            let claims: Vec<(i64, Millis)> = held.iter().map(|(id, l)| (*id, *l)).collect();
            let until = self.clock.now_millis() + self.settings.lease.as_millis() as i64;
            match self.store.renew_claims(&claims, until).await {
                Ok(renewed) => {
                    let renewed: std::collections::HashSet<i64> = renewed.into_iter().collect();
                    for (id, lease) in held.iter_mut() {
                        if renewed.contains(id) {
                            *lease = until;
                        } else {
                            // Lost: its lease ran out and another worker has it, or it was
                            // recorded a moment ago. Either way it is not to be sent here.
                            *lease = Millis::MIN;
                        }
                    }
                    debug!(n = renewed.len(), "claims renewed");
                }
                Err(e) => {
                    self.metrics.store_error();
                    warn!(error = %e, n = claims.len(), "could not renew claims; retrying");
                }
            }
        }
    }

    /// Records finished sends in groups: whatever has finished since the last write, waiting
    /// up to [`RECORD_LINGER`] for a small group to grow. Ends when every sender is gone.
    async fn record_loop(self: Arc<Self>, mut done: mpsc::UnboundedReceiver<Done>) {
        let most = self.settings.batch_size.max(1);
        let enough = (most / 4).max(1);
        let mut group: Vec<Done> = Vec::with_capacity(most);
        while let Some(first) = done.recv().await {
            group.push(first);
            let linger_until = tokio::time::Instant::now() + RECORD_LINGER;
            loop {
                while group.len() < most {
                    match done.try_recv() {
                        Ok(d) => group.push(d),
                        Err(_) => break,
                    }
                }
                if group.len() >= enough {
                    break;
                }
                match tokio::time::timeout_at(linger_until, done.recv()).await {
                    Ok(Some(d)) => group.push(d),
                    _ => break,
                }
            }
            let started = std::time::Instant::now();
            let (mut results, places): (Vec<SendResult>, Vec<OwnedSemaphorePermit>) =
                group.drain(..).map(|d| (d.result, d.slot)).unzip();
            // The claims as last renewed: a retry is written only under the lease it holds.
            // They leave `held` before the write, so no renewal moves a lease under it, and
            // the sends, claims and renewals of other rows go on while it is written.
            let mut lease_ends = Millis::MAX;
            {
                let mut held = self.held.lock().await;
                for r in &mut results {
                    let (SendResult::Sent { id, .. }
                    | SendResult::Failed { id, .. }
                    | SendResult::Retry { id, .. }) = r;
                    let current = held.remove(id);
                    if let (SendResult::Retry { lease_until, .. }, Some(c)) = (&mut *r, current) {
                        *lease_until = c;
                    }
                    lease_ends = lease_ends.min(current.unwrap_or(self.clock.now_millis()));
                }
            }
            let recorded = self.record(&results, lease_ends).await;
            if let Err(e) = recorded {
                // The rows stay claimed until their lease runs out and are sent again then.
                self.metrics.store_error();
                warn!(error = %e, n = results.len(), "could not record sent messages");
            }
            drop(places);
            debug!(n = results.len(), took = ?started.elapsed(), "recorded");
            self.deadlines_changed.notify_one();
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
