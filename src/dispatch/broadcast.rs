//! The broadcast path of the dispatcher: a roll call whose plan ([`crate::planner`]) is a
//! broadcast (one board post for everyone) or department rooms. The dispatcher claims all of
//! its due deliveries, groups them by the post or room that covers them, makes the one request
//! per post or room, and records every delivery that request covered as sent at the moment it
//! went out, with one set-based store call. A board post carries no buttons: [`super::follow_up`]
//! then sends the roll call's buttons to everyone through rooms and 1:1 talk.
//!
//! Invariants: a broadcast is made by one worker at a time (store lease `broadcast/<id>` or
//! `room/<id>/<group>`) and recorded in the store ([`Store::record_broadcast`]) before the
//! deliveries it covers, so a crash in between records them again without posting twice; a
//! broadcast that fails for good, or keeps failing, hands the roll call to 1:1 sends.
//!
//! [`Store::record_broadcast`]: crate::store::Store::record_broadcast

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use tracing::{info_span, warn, Instrument};

use super::{not_sent_by_deadline, Dispatcher};
use crate::clock::Millis;
use crate::ids::RollCallId;
use crate::planner::{self, Plan, Reach};
use crate::providers::{BroadcastRequest, ProviderError, RouteKind};
use crate::rollcall::{ClaimedDelivery, RollCall, SendResult};
use crate::store::{Broadcast, StoreError};
use crate::worker::Outcome;

/// Deliveries claimed per statement when a broadcast covers them.
const BROADCAST_CLAIM: usize = 5_000;
/// At most this many deliveries in one planned batch (the rest follow in the next).
const MAX_BROADCAST_BATCH: usize = 200_000;

/// A plan and what executing it needs.
#[derive(Debug)]
pub(super) struct PlanCtx {
    pub(super) plan: Plan,
    /// Rooms plan: chat id -> group (department).
    group_of: HashMap<String, String>,
}

/// The lease under which one worker makes a roll call's board post (`group` `None`) or its
/// message to one room.
fn lease_name(id: RollCallId, group: Option<&str>) -> String {
    match group {
        None => format!("broadcast/{id}"),
        Some(g) => format!("room/{id}/{g}"),
    }
}

impl Dispatcher {
    /// A roll call's plan: stored with the roll call by HQ at start, or worked out here from
    /// the roll call's progress and stored, for a roll call written without one.
    pub(super) async fn plan_for(&self, id: RollCallId) -> Result<Arc<PlanCtx>, StoreError> {
        if let Some(p) = self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(p.clone());
        }
        let name = self.provider.name();
        let stored = match self
            .store
            .roll_call(id)
            .await?
            .and_then(|rc| rc.dispatch_plan)
        {
            Some(text) => match serde_json::from_str::<Plan>(&text) {
                Ok(p) => Some(p),
                Err(e) => {
                    warn!(roll_call = %id, error = %e, "the stored plan cannot be read; planning again");
                    None
                }
            },
            None => None,
        };
        // Who is on the platform: needed to plan here, and to know who each room covers.
        let needs_contacts = stored
            .as_ref()
            .is_none_or(|p: &Plan| p.route == RouteKind::Rooms);
        let contacts = if needs_contacts {
            self.store.contacts().await?
        } else {
            Vec::new()
        };
        let plan = match stored {
            Some(p) => p,
            None => {
                let progress = self.store.progress(id).await?;
                let audience = Reach::from_progress(&progress, &contacts, name);
                let p = planner::plan(&audience, &self.provider.capabilities(), &self.routes);
                if let Ok(json) = serde_json::to_string(&p) {
                    self.store.set_dispatch_plan(id, &json).await?;
                }
                p
            }
        };
        let mut group_of = HashMap::new();
        if plan.route == RouteKind::Rooms {
            for c in &contacts {
                if let Some(h) = c.chat.get(name) {
                    group_of.insert(h.as_str().to_string(), planner::group_key(c));
                }
            }
        }
        let ctx = Arc::new(PlanCtx { plan, group_of });
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, ctx.clone());
        Ok(ctx)
    }

    /// Gives up on a roll call's broadcast route: from now on everyone left gets 1:1.
    async fn fall_back_to_direct(&self, id: RollCallId, why: &str) -> Result<(), StoreError> {
        warn!(roll_call = %id, reason = why, "broadcast route failed; falling back to 1:1 sends");
        let caps = self.provider.capabilities();
        let plan = Plan::direct(&caps, 0);
        if let Ok(json) = serde_json::to_string(&plan) {
            self.store.set_dispatch_plan(id, &json).await?;
        }
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Arc::new(PlanCtx {
                plan,
                group_of: HashMap::new(),
            }),
        );
        Ok(())
    }

    /// Executes broadcast and room plans for everything due, a chunk at a time: the first
    /// chunk is `claimed` (its 1:1 deliveries hold rate-limit tokens), and each chunk's board
    /// post or room messages go out before the next chunk is claimed, so a board post notifies
    /// everyone as soon as the first deliveries are claimed; later chunks are recorded against
    /// the post already made, or, when it did not go out, put back with its retry time. 1:1 deliveries without a token are handed back at the end (holding them
    /// until then keeps them out of the next chunk).
    pub(super) async fn run_planned(
        &self,
        claimed: Vec<ClaimedDelivery>,
    ) -> Result<Outcome, StoreError> {
        let granted_ids: std::collections::HashSet<i64> = claimed.iter().map(|d| d.id).collect();
        let mut chunk = claimed;
        let mut first = true;
        let mut total = 0usize;
        let mut direct = Vec::new();
        let mut results = Vec::new();
        let mut unused_tokens = 0usize;
        // Posts that did not go out in this run, and when to try again: later chunks they
        // cover go back with the same answer instead of asking the platform again.
        let mut not_out: HashMap<(RollCallId, Option<String>), (Millis, String, bool)> =
            HashMap::new();
        loop {
            let n = chunk.len();
            total += n;
            let mut groups: std::collections::BTreeMap<
                (RollCallId, Option<String>),
                Vec<ClaimedDelivery>,
            > = Default::default();
            for d in chunk {
                let ctx = self.plan_for(d.roll_call_id).await?;
                let covered = match ctx.plan.route {
                    RouteKind::Broadcast => Some(None),
                    RouteKind::Rooms => ctx
                        .group_of
                        .get(d.chat_handle.as_str())
                        .filter(|g| ctx.plan.groups.contains(g))
                        .map(|g| Some(g.clone())),
                    RouteKind::Direct => None,
                };
                let from_bucket = granted_ids.contains(&d.id);
                match covered {
                    Some(group) => {
                        unused_tokens += usize::from(from_bucket);
                        groups.entry((d.roll_call_id, group)).or_default().push(d);
                    }
                    None if from_bucket => direct.push(d),
                    None => results.push(SendResult::Retry {
                        id: d.id,
                        lease_until: d.lease_until,
                        next_attempt_at: self.clock.now_millis(),
                        error: "waiting for the rate limit".into(),
                        refund_attempt: true,
                    }),
                }
            }
            // Tokens of 1:1 deliveries a post or room covers are free for room messages.
            if let Some(l) = &self.limiter {
                l.give_back(std::mem::take(&mut unused_tokens));
            }
            for (key, ds) in groups {
                if let Some((next, error, refund)) = not_out.get(&key) {
                    results.extend(ds.iter().map(|d| SendResult::Retry {
                        id: d.id,
                        lease_until: d.lease_until,
                        next_attempt_at: *next,
                        error: error.clone(),
                        refund_attempt: *refund,
                    }));
                    continue;
                }
                let rc = self.roll_call(key.0).await?;
                let done = self.broadcast_one(&rc, key.1.clone(), ds).await?;
                if let Some(SendResult::Retry {
                    next_attempt_at,
                    error,
                    refund_attempt,
                    ..
                }) = done.first()
                {
                    not_out.insert(key, (*next_attempt_at, error.clone(), *refund_attempt));
                }
                results.extend(done);
            }
            if (!first && n < BROADCAST_CLAIM) || total >= MAX_BROADCAST_BATCH {
                break;
            }
            first = false;
            chunk = self
                .store
                .claim_due_deliveries(
                    self.provider.name(),
                    self.clock.now_millis(),
                    self.settings.lease,
                    BROADCAST_CLAIM,
                )
                .await?;
        }
        let mut jobs = Vec::with_capacity(direct.len());
        for d in direct {
            let rc = self.roll_call(d.roll_call_id).await?;
            jobs.push((d, rc));
        }
        let concurrency = self.provider.capabilities().max_in_flight.max(1);
        let sent: Vec<SendResult> = futures::stream::iter(jobs)
            .map(|(d, rc)| async {
                let _place = self.window.acquire().await;
                self.send_one(d, rc).await
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        results.extend(sent);
        self.store
            .record_send_results(&results, self.clock.now_millis())
            .await?;
        self.deadlines_changed.notify_one();
        Ok(Outcome::Worked(total as u64))
    }

    /// One board post (group `None`) or one room message, covering `ds`.
    async fn broadcast_one(
        &self,
        rc: &RollCall,
        group: Option<String>,
        ds: Vec<ClaimedDelivery>,
    ) -> Result<Vec<SendResult>, StoreError> {
        let name = self.provider.name();
        let lease = lease_name(rc.id, group.as_deref());
        let sent_all = |at: Millis, post: Option<String>| -> Vec<SendResult> {
            ds.iter()
                .map(|d| SendResult::Sent {
                    id: d.id,
                    at,
                    deadline_at: at + rc.deadline_ms,
                    message_id: post.clone(),
                })
                .collect()
        };
        let back = |next: Millis, error: String, refund: bool| -> Vec<SendResult> {
            ds.iter()
                .map(|d| SendResult::Retry {
                    id: d.id,
                    lease_until: d.lease_until,
                    next_attempt_at: next,
                    error: error.clone(),
                    refund_attempt: refund,
                })
                .collect()
        };
        // Posted already (by another worker, or before a crash): record, do not post again.
        let done = || self.store.broadcast_done(rc.id, name, group.as_deref());
        if let Some(b) = done().await? {
            return Ok(sent_all(b.posted_at, b.post_id));
        }
        let now = self.clock.now_millis();
        if !self
            .store
            .try_lease(&lease, &self.holder, now, self.settings.lease)
            .await?
        {
            // Another worker is posting it; these follow once it is recorded as done.
            return Ok(back(
                now + 500,
                "another worker is making this broadcast".into(),
                true,
            ));
        }
        if let Some(b) = done().await? {
            return Ok(sent_all(b.posted_at, b.post_id));
        }
        let kind = if group.is_some() {
            RouteKind::Rooms
        } else {
            RouteKind::Broadcast
        };
        if kind == RouteKind::Rooms {
            if let Some(l) = &self.limiter {
                l.acquire().await;
            }
        }
        let req = BroadcastRequest {
            roll_call_id: rc.id,
            kind,
            group: group.clone(),
            title: rc.title.clone(),
            text: rc.message.clone(),
            buttons: crate::answers::buttons(&rc.buttons),
            asks: rc.asks.clone(),
            until: self.clock.now() + chrono::Duration::days(1),
        };
        let started = std::time::Instant::now();
        let span = info_span!("broadcast", roll_call = %rc.id, provider = name, covers = ds.len());
        let res = self.provider.broadcast(&req).instrument(span).await;
        let at = self.clock.now_millis();
        self.metrics.observe_send(
            name,
            &res.clone().map(|b| crate::providers::Sent {
                message_id: b.post_id,
            }),
            started.elapsed(),
        );
        match res {
            Ok(b) => {
                let done = Broadcast {
                    posted_at: at,
                    post_id: b.post_id.clone(),
                };
                self.store
                    .record_broadcast(rc.id, name, group.as_deref(), &done)
                    .await?;
                if kind == RouteKind::Broadcast {
                    self.wave_started();
                }
                self.went_out(rc.id);
                Ok(sent_all(at, b.post_id))
            }
            Err(ProviderError::RateLimited { reset }) => {
                if kind == RouteKind::Rooms {
                    if let Some(l) = &self.limiter {
                        l.pause_for(reset);
                    }
                }
                Ok(back(
                    at + reset.as_millis() as i64,
                    format!("rate limited by the platform for {reset:?}"),
                    true,
                ))
            }
            Err(ProviderError::Unauthorized { reason, .. }) => {
                // The platform may refuse only this route (a scope the app lacks): everyone
                // gets a 1:1 message instead, which waits for a fix itself if it is refused
                // too, without anyone failing for it.
                self.not_out(rc.id, &reason);
                self.fall_back_to_direct(rc.id, &reason).await?;
                Ok(back(at, reason, true))
            }
            Err(ProviderError::Retryable { after, reason }) => {
                self.not_out(rc.id, &reason);
                // The platform is down past everyone's deadline: they go on the call list
                // as send failed, with the reason, rather than wait unseen.
                let deadline = rc.created_at + rc.deadline_ms;
                if at >= deadline {
                    let error = not_sent_by_deadline(&reason);
                    return Ok(ds
                        .iter()
                        .map(|d| SendResult::Failed {
                            id: d.id,
                            error: error.clone(),
                        })
                        .collect());
                }
                let attempts = ds.iter().map(|d| d.attempts).max().unwrap_or(1);
                if attempts >= self.settings.max_attempts as i64 {
                    self.fall_back_to_direct(rc.id, &reason).await?;
                    return Ok(back(at, reason, true));
                }
                let wait = self
                    .settings
                    .backoff(attempts, after, &mut rand::thread_rng());
                Ok(back(
                    (at + wait.as_millis() as i64).min(deadline),
                    reason,
                    false,
                ))
            }
            Err(ProviderError::Permanent(reason)) => {
                self.fall_back_to_direct(rc.id, &reason).await?;
                Ok(back(at, reason, true))
            }
        }
    }
}
