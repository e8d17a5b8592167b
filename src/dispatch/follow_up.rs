//! The answer buttons after a broadcast that carries none. A must-read board post notifies
//! everyone at once and counts reads, but shows no buttons; so once it is out, the roll
//! call's buttons go to everyone by the fastest route the plan names ([`ButtonsPlan`]): one
//! message per department room it lists, then 1:1 talk to everyone else, shelter phones
//! first, then by call priority ([`ChatRecipient::follow_up_order`]). These messages go
//! through the same token bucket and in-flight window as every other send, so the platform's
//! limits hold for all of them together.
//!
//! Invariants: a wave is worked by one worker at a time (store lease `buttons-lease/<id>`);
//! its progress is stored (the roll call's `button_wave`) after every batch, so a restart
//! resends at most one batch; a person who has answered, or whose message failed for good, is not sent the
//! buttons; a room that cannot be reached for good hands its members to 1:1; a closed roll
//! call's wave stops.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Dispatcher;
use crate::clock::Millis;
use crate::ids::RollCallId;
use crate::planner::{self, ButtonsPlan};
use crate::providers::{BroadcastRequest, OutboundMessage, ProviderError, RouteKind};
use crate::rollcall::{DeliveryState, RollCall, RollCallState};
use crate::store::{ChatRecipient, StoreError};

/// 1:1 button messages sent per stored step.
const STEP: usize = 50;
/// How often the open roll calls are scanned for waves another worker started.
const SCAN_EVERY: Duration = Duration::from_secs(2);
/// How long a loaded recipient list is trusted before answers are re-read.
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// Wait before sending again to people whose button message failed for now.
const RETRY_AFTER: Duration = Duration::from_secs(10);

fn lease_key(id: RollCallId) -> String {
    format!("buttons-lease/{id}")
}

/// A wave's stored progress. A field a record lacks (one written by an older anpi) is its
/// default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WaveState {
    /// Rooms whose message went out.
    pub rooms_done: Vec<String>,
    /// Rooms the platform refused for good: their members get 1:1 instead.
    pub rooms_failed: Vec<String>,
    /// Position in the roll call's recipients (follow-up order) reached by 1:1 messages.
    pub next: usize,
    /// Delivery ids whose button message failed for now, to send again.
    pub again: Vec<i64>,
    /// Not before this clock time are `again` sent.
    pub again_at: Millis,
    /// Messages that went out (rooms count one each).
    pub sent: u64,
    /// 1:1 messages refused for good (unknown user).
    pub refused: u64,
    pub done: bool,
}

/// What a worker keeps about the waves it works.
#[derive(Debug, Default)]
pub(super) struct Waves {
    active: HashSet<RollCallId>,
    /// Recipients per roll call and when they were read.
    recipients: HashMap<RollCallId, (Instant, Arc<Vec<ChatRecipient>>)>,
    last_scan: Option<Instant>,
}

impl Dispatcher {
    /// Works the button waves until `cancel` fires: wakes when a broadcast goes out, and
    /// every few seconds to look for waves another worker started.
    pub(super) async fn follow_up_loop(self: Arc<Self>, cancel: CancellationToken) {
        if !self.provider.capabilities().buttons
            || !self.routes.iter().any(|r| r.kind == RouteKind::Broadcast)
        {
            return;
        }
        while !cancel.is_cancelled() {
            let notified = self.wave_wakeup.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let worked = match self.follow_up_once(&cancel).await {
                Ok(n) => n,
                Err(e) => {
                    warn!(error = %e, "answer buttons after a broadcast: store error; retrying");
                    self.metrics.store_error();
                    0
                }
            };
            if worked > 0 {
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = &mut notified => {}
                _ = self.clock.sleep(SCAN_EVERY) => {}
                // A safety net against a clock that is not moving (a paused test clock).
                _ = tokio::time::sleep(SCAN_EVERY) => {}
            }
        }
    }

    /// One step of every wave this worker holds. Returns the messages sent.
    pub(super) async fn follow_up_once(
        &self,
        cancel: &CancellationToken,
    ) -> Result<usize, StoreError> {
        self.scan_waves().await?;
        let active: Vec<RollCallId> = {
            let w = self.lock_waves();
            w.active.iter().copied().collect()
        };
        let mut worked = 0;
        for id in active {
            if cancel.is_cancelled() {
                break;
            }
            worked += self.wave_step(id).await?;
        }
        Ok(worked)
    }

    fn lock_waves(&self) -> std::sync::MutexGuard<'_, Waves> {
        self.waves.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finds open roll calls of this provider whose board post is out and whose buttons are
    /// not yet all sent. Runs at most every [`SCAN_EVERY`], or at once after a wake-up.
    async fn scan_waves(&self) -> Result<(), StoreError> {
        {
            let w = self.lock_waves();
            if w.last_scan.is_some_and(|t| t.elapsed() < SCAN_EVERY) {
                return Ok(());
            }
        }
        let name = self.provider.name();
        let mut found = HashSet::new();
        for rc in self.store.roll_calls().await? {
            if rc.state != RollCallState::Open || rc.provider != name {
                continue;
            }
            let posted = self
                .store
                .broadcast_done(rc.id, name, None)
                .await?
                .is_some();
            if !posted {
                continue;
            }
            let state = match self.wave_state(rc.id).await {
                Ok(state) => state,
                Err(StoreError::Corrupt(error)) => {
                    // That wave stops; every other roll call's goes on.
                    warn!(roll_call = %rc.id, %error, "button wave record unreadable: its buttons are not sent");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !state.done {
                found.insert(rc.id);
            }
        }
        let mut w = self.lock_waves();
        w.active = found;
        w.last_scan = Some(Instant::now());
        Ok(())
    }

    /// Wakes the loop at once: a broadcast just went out.
    pub(super) fn wave_started(&self) {
        self.lock_waves().last_scan = None;
        self.wave_wakeup.notify_one();
    }

    /// The wave's stored progress (none yet: at its start). A record that cannot be read is
    /// an error, never a fresh start that would send everyone their buttons again.
    async fn wave_state(&self, id: RollCallId) -> Result<WaveState, StoreError> {
        match self.store.button_wave(id).await? {
            None => Ok(WaveState::default()),
            Some(s) => serde_json::from_str(&s).map_err(|e| {
                StoreError::Corrupt(format!("roll call {id}: button wave record: {e}"))
            }),
        }
    }

    async fn save_wave(&self, id: RollCallId, state: &WaveState) -> Result<(), StoreError> {
        let json = serde_json::to_string(state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.store.set_button_wave(id, &json).await
    }

    async fn recipients(&self, id: RollCallId) -> Result<Arc<Vec<ChatRecipient>>, StoreError> {
        if let Some((at, list)) = self.lock_waves().recipients.get(&id) {
            if at.elapsed() < RELOAD_EVERY {
                return Ok(list.clone());
            }
        }
        let list = Arc::new(self.store.chat_recipients(id).await?);
        self.lock_waves()
            .recipients
            .insert(id, (Instant::now(), list.clone()));
        Ok(list)
    }

    fn finish(&self, id: RollCallId) {
        let mut w = self.lock_waves();
        w.active.remove(&id);
        w.recipients.remove(&id);
    }

    /// Sends the next rooms and up to [`STEP`] 1:1 messages of one wave, if this worker holds
    /// it, and stores how far it got. Returns the messages sent.
    async fn wave_step(&self, id: RollCallId) -> Result<usize, StoreError> {
        let now = self.clock.now_millis();
        if !self
            .store
            .try_lease(&lease_key(id), &self.holder, now, self.settings.lease)
            .await?
        {
            return Ok(0);
        }
        let Some(rc) = self.store.roll_call(id).await? else {
            self.finish(id);
            return Ok(0);
        };
        let mut state = self.wave_state(id).await?;
        if state.done {
            self.finish(id);
            return Ok(0);
        }
        let plan = self.plan_for(id).await?.plan.clone();
        let buttons = match (&plan.buttons, rc.state) {
            (Some(b), RollCallState::Open) if !rc.buttons.is_empty() => b.clone(),
            _ => {
                // Closed, or nothing to follow with: the wave is over.
                state.done = true;
                self.save_wave(id, &state).await?;
                self.finish(id);
                return Ok(0);
            }
        };
        let mut sent = self.wave_rooms(&rc, &buttons, &mut state).await?;
        let rooms_pending = buttons
            .groups
            .iter()
            .any(|g| !state.rooms_done.contains(g) && !state.rooms_failed.contains(g));
        if !rooms_pending {
            sent += self.wave_talk(&rc, &buttons, &mut state).await?;
        }
        let list = self.recipients(id).await?;
        if !rooms_pending && state.next >= list.len() && state.again.is_empty() {
            state.done = true;
            info!(roll_call = %id, sent = state.sent, refused = state.refused,
                "answer buttons have reached everyone after the board post");
            self.finish(id);
        }
        self.save_wave(id, &state).await?;
        Ok(sent)
    }

    /// One message per room the plan names, each paced by the shared bucket.
    async fn wave_rooms(
        &self,
        rc: &RollCall,
        buttons: &ButtonsPlan,
        state: &mut WaveState,
    ) -> Result<usize, StoreError> {
        let mut sent = 0;
        for group in &buttons.groups {
            if state.rooms_done.contains(group) || state.rooms_failed.contains(group) {
                continue;
            }
            if let Some(l) = &self.limiter {
                if l.paused_for().is_some() {
                    break;
                }
                l.acquire().await;
            }
            let req = BroadcastRequest {
                roll_call_id: rc.id,
                kind: RouteKind::Rooms,
                group: Some(group.clone()),
                title: rc.title.clone(),
                text: rc.message.clone(),
                buttons: crate::answers::buttons(&rc.buttons),
                asks: rc.asks.clone(),
                until: self.clock.now() + chrono::Duration::days(1),
            };
            let _place = self.window.acquire().await;
            let started = std::time::Instant::now();
            let res = self.provider.broadcast(&req).await;
            self.metrics.observe_send(
                self.provider.name(),
                &res.clone().map(|b| crate::providers::Sent {
                    message_id: b.post_id,
                }),
                started.elapsed(),
            );
            match res {
                Ok(_) => {
                    state.rooms_done.push(group.clone());
                    state.sent += 1;
                    sent += 1;
                }
                Err(ProviderError::RateLimited { reset }) => {
                    if let Some(l) = &self.limiter {
                        l.pause_for(reset);
                    }
                    break;
                }
                Err(
                    ProviderError::Retryable { reason, .. }
                    | ProviderError::Unauthorized { reason, .. },
                ) => {
                    debug!(roll_call = %rc.id, %group, %reason, "room button message failed for now");
                    break;
                }
                Err(ProviderError::Permanent(reason)) => {
                    warn!(roll_call = %rc.id, %group, %reason,
                        "room refused the answer buttons; its members get them 1:1");
                    state.rooms_failed.push(group.clone());
                }
            }
        }
        Ok(sent)
    }

    /// The next 1:1 messages in follow-up order: first those to send again (once due), then
    /// from where the wave got to, skipping people a room covered and people who answered.
    async fn wave_talk(
        &self,
        rc: &RollCall,
        buttons: &ButtonsPlan,
        state: &mut WaveState,
    ) -> Result<usize, StoreError> {
        let list = self.recipients(rc.id).await?;
        let covered = |r: &ChatRecipient| {
            let g = planner::group_key_of(r.kind, r.department.as_deref(), r.shelter.as_deref());
            buttons.groups.contains(&g) && !state.rooms_failed.contains(&g)
        };
        let now = self.clock.now_millis();
        let mut batch: Vec<ChatRecipient> = Vec::new();
        if !state.again.is_empty() && now >= state.again_at {
            let again: HashSet<i64> = std::mem::take(&mut state.again).into_iter().collect();
            batch.extend(
                list.iter()
                    .filter(|r| again.contains(&r.delivery_id))
                    .take(STEP)
                    .cloned(),
            );
            // What did not fit waits for the next step.
            let taken: HashSet<i64> = batch.iter().map(|r| r.delivery_id).collect();
            state.again = again.difference(&taken).copied().collect();
        }
        while batch.len() < STEP && state.next < list.len() {
            let r = &list[state.next];
            state.next += 1;
            if covered(r) || matches!(r.state, DeliveryState::Answered | DeliveryState::Failed) {
                continue;
            }
            batch.push(r.clone());
        }
        if batch.is_empty() {
            return Ok(0);
        }
        // Tokens first, as the claimer does: none is taken for a message that is not sent.
        let mut results = Vec::with_capacity(batch.len());
        let mut queue = batch.into_iter();
        'send: loop {
            let want = queue.len();
            if want == 0 {
                break;
            }
            let granted = match &self.limiter {
                Some(l) => {
                    if l.paused_for().is_some() {
                        state.again.extend(queue.map(|r| r.delivery_id));
                        break 'send;
                    }
                    l.take_up_to(want).await
                }
                None => want,
            };
            let chunk: Vec<ChatRecipient> = queue.by_ref().take(granted).collect();
            let sends = chunk.into_iter().map(|r| async move {
                let _place = self.window.acquire().await;
                let msg = OutboundMessage {
                    delivery_id: r.delivery_id,
                    roll_call_id: rc.id,
                    to: r.chat_handle.clone(),
                    text: rc.message.clone(),
                    buttons: rc.buttons_for(r.kind),
                    asks: rc.asks.clone(),
                    resend: false,
                };
                let started = std::time::Instant::now();
                let res = self.provider.send(&msg).await;
                self.metrics
                    .observe_send(self.provider.name(), &res, started.elapsed());
                (r.delivery_id, res)
            });
            results.extend(futures::future::join_all(sends).await);
        }
        let mut sent = 0;
        for (delivery, res) in results {
            match res {
                Ok(_) => {
                    state.sent += 1;
                    sent += 1;
                }
                Err(ProviderError::Permanent(reason)) => {
                    // The board post reached them, or they are on the call list already.
                    debug!(roll_call = %rc.id, delivery, %reason, "answer buttons refused for good");
                    state.refused += 1;
                }
                Err(ProviderError::RateLimited { reset }) => {
                    if let Some(l) = &self.limiter {
                        l.pause_for(reset);
                    }
                    state.again.push(delivery);
                    state.again_at = self.clock.now_millis() + reset.as_millis() as i64;
                }
                Err(ProviderError::Unauthorized { after, .. }) => {
                    state.again.push(delivery);
                    let wait = after.max(RETRY_AFTER);
                    state.again_at = self.clock.now_millis() + wait.as_millis() as i64;
                }
                Err(ProviderError::Retryable { after, .. }) => {
                    state.again.push(delivery);
                    let wait = after.unwrap_or(RETRY_AFTER).max(RETRY_AFTER);
                    state.again_at = self.clock.now_millis() + wait.as_millis() as i64;
                }
            }
        }
        Ok(sent)
    }
}
