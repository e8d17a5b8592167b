//! What disaster HQ does, as operations over the store: start a roll call from a scenario
//! (with an estimate of how long reaching everyone takes), follow its progress, close it,
//! read the phone-call list and record call outcomes. The HTTP API, the demo and the tests all
//! go through here, so they behave alike.
//!
//! Invariant: starting a roll call only writes rows; sending is the dispatcher's job, woken
//! through `new_work`.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::clock::SharedClock;
use crate::contacts::Contact;
use crate::ids::{RollCallId, StaffId};
use crate::planner::{self, Plan, Reach};
use crate::providers::{Capabilities, Route};
use crate::rollcall::{self, CallListEntry, CallOutcome, Progress, RollCall};
use crate::scenario::Scenario;
use crate::store::{SharedStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum HqError {
    #[error(
        "no contacts are stored yet: import a contacts file first (anpi contacts import FILE)"
    )]
    NoContacts,
    #[error("nobody in the contacts matches the audience of scenario {0:?}")]
    EmptyAudience(String),
    #[error("roll call {0} does not exist")]
    NotFound(RollCallId),
    /// What HQ sent cannot be recorded as it is; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(StoreError),
}

/// The longest note HQ may write on an entry.
pub const MAX_NOTE_CHARS: usize = 1_000;

/// Checks a note: not empty, not too long, no control characters but line breaks.
pub fn check_note(note: &str) -> Result<String, HqError> {
    let n = note.trim();
    if n.is_empty() {
        return Err(HqError::Invalid("the note is empty".into()));
    }
    let len = n.chars().count();
    if len > MAX_NOTE_CHARS {
        return Err(HqError::Invalid(format!(
            "the note is {len} characters long; keep it to {MAX_NOTE_CHARS}"
        )));
    }
    if let Some(c) = n
        .chars()
        .find(|c| c.is_control() && *c != '\n' && *c != '\t')
    {
        return Err(HqError::Invalid(format!(
            "the note contains the control character U+{:04X}; remove it",
            c as u32
        )));
    }
    Ok(n.replace("\r\n", "\n"))
}

/// Folds what a caller types and what is stored to one form for a search: NFKC, lower case,
/// katakana as hiragana, no spaces, phone numbers as their digits after the leading zero or
/// +81.
pub fn search_key(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    s.nfkc()
        .flat_map(char::to_lowercase)
        .filter(|c| !c.is_whitespace() && *c != '-' && *c != '(' && *c != ')')
        .map(|c| match c {
            '\u{30A1}'..='\u{30F6}' => char::from_u32(c as u32 - 0x60).unwrap_or(c),
            c => c,
        })
        .collect()
}

/// The digits of a phone number that every form of it shares: 090-1234-5678, 09012345678 and
/// +819012345678 all give 9012345678.
fn phone_key(s: &str) -> Option<String> {
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    let rest = if s.trim_start().starts_with('+') {
        digits.strip_prefix("81").unwrap_or(&digits).to_string()
    } else {
        digits.strip_prefix('0').unwrap_or(&digits).to_string()
    };
    (rest.len() >= 4).then_some(rest)
}

impl From<StoreError> for HqError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchRollCall(id) => Self::NotFound(id),
            other => Self::Store(other),
        }
    }
}

/// How long reaching everyone will take, shown to HQ before and during a roll call.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Estimate {
    pub recipients: usize,
    /// People the provider can reach (they have a chat id on it).
    pub reachable: usize,
    /// People who go straight to the call list: no chat id on this provider.
    pub no_chat_id: usize,
    /// Seconds from start until the last message has gone out.
    pub seconds_to_all_sent: f64,
    /// What limits the estimate, in words.
    pub basis: String,
    /// How the planner will reach everyone, with every route it weighed.
    pub plan: Plan,
}

/// Estimates the time to send `n` messages through a provider with these capabilities.
/// Without a rate limit the bound is anpi's own pace (measured in docs/BENCHMARKS.md: well
/// over 10,000 sends a second on the simulator); with one, the platform's budget.
pub fn estimate(n: usize, no_chat_id: usize, caps: &Capabilities) -> Estimate {
    let reachable = n.saturating_sub(no_chat_id);
    let (rate, basis) = match caps.rate_limit {
        Some(l) => (
            crate::ratelimit::sustained_per_second(l),
            format!(
                "platform limit {} requests per {}s (anpi uses {:.0}%)",
                l.requests,
                l.per.as_secs(),
                crate::ratelimit::SHARE * 100.0
            ),
        ),
        None => (
            10_000.0,
            "no platform limit: bounded by anpi (~10,000/s)".to_string(),
        ),
    };
    let burst = caps
        .rate_limit
        .map(|l| (l.requests as f64 * 0.1).floor().max(1.0))
        .unwrap_or(0.0);
    let secs = ((reachable as f64 - burst).max(0.0) / rate.max(1e-9)).max(0.0);
    Estimate {
        recipients: n,
        reachable,
        no_chat_id,
        seconds_to_all_sent: (secs * 10.0).round() / 10.0,
        basis,
        plan: Plan::direct(caps, reachable),
    }
}

/// The estimate of the plan the planner picks for `audience` over the provider's routes.
pub fn estimate_plan(
    audience: &Reach,
    no_chat_id: usize,
    caps: &Capabilities,
    routes: &[Route],
) -> Estimate {
    let mut e = estimate(audience.reachable + no_chat_id, no_chat_id, caps);
    if routes.is_empty() {
        return e;
    }
    let plan = planner::plan(audience, caps, routes);
    e.seconds_to_all_sent = plan.seconds_to_all_notified;
    e.basis = format!("{} ({})", plan.describe(), e.basis);
    e.plan = plan;
    e
}

/// A roll call's plan during dispatch.
#[derive(Debug, Clone, Serialize)]
pub struct PlanStatus {
    pub roll_call: RollCallId,
    /// None until HQ or the dispatcher has stored it (1:1-only providers store none).
    pub plan: Option<Plan>,
    /// Deliveries not yet sent.
    pub unsent: usize,
    pub seconds_remaining: f64,
    pub created_at: crate::clock::Millis,
    pub last_sent_at: Option<crate::clock::Millis>,
}

/// An open roll call as a shelter phone's page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ShelterRollCall {
    pub roll_call: RollCall,
    /// The answers this phone may give.
    pub choices: Vec<crate::answers::Choice>,
    /// What is known of this phone in the roll call (its standing answer, if any).
    pub entry: CallListEntry,
}

/// A roll call with its progress.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub roll_call: RollCall,
    pub progress: Progress,
}

#[derive(Debug)]
pub struct Hq {
    store: SharedStore,
    clock: SharedClock,
    provider: String,
    capabilities: Capabilities,
    new_work: Arc<Notify>,
    /// The provider's routes beyond 1:1, for the planner.
    routes: Vec<Route>,
    /// Progress shared by every reader (pages, CLI, metrics), computed once per tick.
    progress: crate::progress::ProgressCache,
    /// Bumped by every claim, release and outcome made here: the call list changed.
    calls_changed: std::sync::atomic::AtomicU64,
    /// Whether a call outcome on a closed roll call is recorded (marked late) or refused.
    late_outcomes: bool,
}

impl Hq {
    pub fn new(
        store: SharedStore,
        clock: SharedClock,
        provider: String,
        capabilities: Capabilities,
        new_work: Arc<Notify>,
    ) -> Self {
        Self {
            progress: crate::progress::ProgressCache::new(store.clone()),
            store,
            clock,
            provider,
            capabilities,
            new_work,
            routes: Vec::new(),
            calls_changed: Default::default(),
            late_outcomes: false,
        }
    }

    /// Records call outcomes on a closed roll call, marked late (`api.outcomes_after_close =
    /// "late"`), instead of refusing them.
    pub fn with_late_outcomes(mut self, allow: bool) -> Self {
        self.late_outcomes = allow;
        self
    }

    /// The roll call's progress, shared with every other reader (at most a short tick old,
    /// never older than a change made through here).
    pub async fn progress(&self, id: RollCallId) -> Result<Arc<Progress>, HqError> {
        Ok(self.progress.get(id).await?)
    }

    /// Something changed that this process did not do through here (an escalation): the
    /// shared progress is read afresh.
    pub fn progress_changed(&self) {
        self.progress.invalidate();
    }

    /// A number that changes whenever a claim, release or outcome is made through here.
    pub fn calls_generation(&self) -> u64 {
        self.calls_changed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn changed(&self, calls: bool) {
        self.progress.invalidate();
        if calls {
            self.calls_changed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Lets the planner use the provider's routes beyond 1:1 (board post, rooms).
    pub fn with_routes(mut self, routes: Vec<Route>) -> Self {
        self.routes = routes;
        self
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// Wakes the dispatcher after deliveries were written other than through [`Hq::start`]
    /// (a JMA retraction message).
    pub fn wake_dispatch(&self) {
        self.new_work.notify_waiters();
    }

    /// Replaces the stored contacts (the file is the truth), all or nothing.
    pub async fn import_contacts(&self, contacts: &[Contact]) -> Result<usize, HqError> {
        Ok(self
            .store
            .replace_contacts(contacts, self.clock.now_millis())
            .await?)
    }

    /// The scenario's audience, and the planner's view of it (which needs everyone).
    async fn audience(&self, scenario: &Scenario) -> Result<(Vec<Contact>, Reach), HqError> {
        let mut audience = self.store.contacts().await?;
        if audience.is_empty() {
            return Err(HqError::NoContacts);
        }
        // Taken out of the contacts in place: a city's directory is held once, not twice.
        let population = Reach::population(audience.iter(), &self.provider);
        audience.retain(|c| scenario.audience.matches(c));
        if audience.is_empty() {
            return Err(HqError::EmptyAudience(scenario.name.clone()));
        }
        let shape = Reach::within(population, audience.iter(), &self.provider);
        Ok((audience, shape))
    }

    /// The provider's capabilities as an estimate should use them: its rate limit capped by
    /// the pace its 429s showed lately, once one has been observed.
    async fn capabilities_now(&self) -> Capabilities {
        let mut caps = self.capabilities.clone();
        if let Some(observed) =
            crate::ratelimit::observed_pace(&self.store, &self.provider, self.clock.now_millis())
                .await
        {
            caps.rate_limit = Some(crate::ratelimit::slower(caps.rate_limit, observed));
        }
        caps
    }

    /// How long a roll call of `scenario` would take to reach everyone, without starting it.
    pub async fn estimate(&self, scenario: &Scenario) -> Result<Estimate, HqError> {
        let (audience, shape) = self.audience(scenario).await?;
        let no_chat = audience
            .iter()
            .filter(|c| !c.chat.contains_key(&self.provider))
            .count();
        Ok(estimate_plan(
            &shape,
            no_chat,
            &self.capabilities_now().await,
            &self.routes,
        ))
    }

    /// A roll call's plan and what is left of it, for HQ during dispatch.
    pub async fn plan_status(&self, id: RollCallId) -> Result<PlanStatus, HqError> {
        let status = self.status(id).await?;
        let plan = status
            .roll_call
            .dispatch_plan
            .as_deref()
            .and_then(|s| serde_json::from_str::<Plan>(s).ok());
        let o = &status.progress.overall;
        let unsent = (o.pending + o.sending).max(0) as usize;
        let route = plan.as_ref().map(|p| p.route);
        let limit = self.capabilities_now().await.rate_limit;
        let seconds_remaining = match route {
            Some(crate::providers::RouteKind::Direct) | None => planner::seconds_for(unsent, limit),
            // A post or room message covers many: what is left is a handful of requests.
            Some(_) => planner::seconds_for(unsent.min(1), limit),
        };
        Ok(PlanStatus {
            roll_call: id,
            plan,
            unsent,
            seconds_remaining,
            last_sent_at: status.progress.last_sent_at,
            created_at: status.roll_call.created_at,
        })
    }

    /// Starts a roll call: writes it and every delivery in one transaction and wakes the
    /// dispatcher. The same `idempotency_key` twice starts one roll call.
    pub async fn start(
        &self,
        scenario: &Scenario,
        drill: Option<bool>,
        idempotency_key: Option<String>,
    ) -> Result<(RollCall, Estimate), HqError> {
        let t = std::time::Instant::now();
        let new = rollcall::new_roll_call(scenario, &self.provider, drill, idempotency_key);
        let capabilities = self.capabilities_now().await;
        let mut composer = StartComposer {
            scenario,
            provider: &self.provider,
            capabilities: &capabilities,
            routes: &self.routes,
            contacts: 0,
            reach: Reach::default(),
            recipients: 0,
            no_chat: 0,
            estimate: None,
        };
        let rc = self
            .store
            .start_roll_call(&new, &mut composer, self.clock.now_millis())
            .await?;
        let Some(rc) = rc else {
            return Err(if composer.contacts == 0 {
                HqError::NoContacts
            } else {
                HqError::EmptyAudience(scenario.name.clone())
            });
        };
        if rc.scenario != new.scenario || rc.drill != new.drill {
            // The key was used before, for a different roll call: say so, start nothing.
            return Err(HqError::Store(StoreError::Conflict(format!(
                "this Idempotency-Key already started roll call #{} ({}{}); use a new key to \
                 start a different one",
                rc.id,
                rc.scenario,
                if rc.drill { ", drill" } else { "" }
            ))));
        }
        let est = match composer.estimate {
            Some(est) => est,
            // The key's roll call, started before: estimated from the directory as it is.
            None => self.estimate(scenario).await?,
        };
        tracing::debug!(
            recipients = est.recipients,
            written = ?t.elapsed(),
            "roll call started"
        );
        self.changed(false);
        self.new_work.notify_waiters();
        Ok((rc, est))
    }

    pub async fn status(&self, id: RollCallId) -> Result<Status, HqError> {
        let roll_call = self
            .store
            .roll_call(id)
            .await?
            .ok_or(HqError::NotFound(id))?;
        let progress = self.store.progress(id).await?;
        Ok(Status {
            roll_call,
            progress,
        })
    }

    /// [`Hq::status`] with the shared progress ([`Hq::progress`]): for readers that look
    /// again and again (live pages, metrics), which need not see a worker's change of the
    /// last moments.
    pub async fn live_status(&self, id: RollCallId) -> Result<Status, HqError> {
        let roll_call = self
            .store
            .roll_call(id)
            .await?
            .ok_or(HqError::NotFound(id))?;
        let progress = Progress::clone(&*self.progress.get(id).await?);
        Ok(Status {
            roll_call,
            progress,
        })
    }

    pub async fn list(&self) -> Result<Vec<RollCall>, HqError> {
        Ok(self.store.roll_calls().await?)
    }

    pub async fn close(&self, id: RollCallId) -> Result<bool, HqError> {
        let closed = self
            .store
            .close_roll_call(id, self.clock.now_millis())
            .await?;
        self.changed(true);
        Ok(closed)
    }

    pub async fn call_list(&self, id: RollCallId) -> Result<Vec<CallListEntry>, HqError> {
        Ok(self.store.call_list(id).await?)
    }

    /// Everyone whose standing answer has `level`, newest first.
    pub async fn answered(
        &self,
        id: RollCallId,
        level: crate::answers::AnswerLevel,
    ) -> Result<Vec<CallListEntry>, HqError> {
        self.store
            .roll_call(id)
            .await?
            .ok_or(HqError::NotFound(id))?;
        Ok(self.store.answered(id, level).await?)
    }

    /// One recipient's entry, on the action list or not.
    pub async fn entry(&self, id: RollCallId, staff: &StaffId) -> Result<CallListEntry, HqError> {
        self.store
            .roll_call(id)
            .await?
            .ok_or(HqError::NotFound(id))?;
        self.store.entry(id, staff).await?.ok_or_else(|| {
            HqError::Store(StoreError::NoSuchRecipient {
                roll_call: id,
                staff: staff.clone(),
            })
        })
    }

    /// Recipients whose name, ふりがな, staff id or phone number contains `query` (folded the
    /// same way on both sides), those on the action list first, at most `limit`.
    pub async fn search(
        &self,
        id: RollCallId,
        query: &str,
        limit: usize,
    ) -> Result<Vec<rollcall::Recipient>, HqError> {
        let q = search_key(query);
        if q.is_empty() {
            return Err(HqError::Invalid(
                "type part of a name, ふりがな, staff id or phone number".into(),
            ));
        }
        let phone = phone_key(query);
        let mut found: Vec<rollcall::Recipient> = self
            .store
            .recipients(id)
            .await?
            .into_iter()
            .filter(|r| {
                search_key(&r.name).contains(&q)
                    || r.kana
                        .as_deref()
                        .is_some_and(|k| search_key(k).contains(&q))
                    || search_key(r.staff_id.as_str()).contains(&q)
                    || phone.as_ref().is_some_and(|p| {
                        r.phones
                            .iter()
                            .any(|n| phone_key(n).is_some_and(|k| k.contains(p.as_str())))
                    })
            })
            .collect();
        found.sort_by(|a, b| a.staff_id.as_str().cmp(b.staff_id.as_str()));
        found.truncate(limit);
        Ok(found)
    }

    /// Records what HQ learned by phone and/or a note for a named person, on the list or not.
    /// Closing an urgent answer needs a note saying what was done.
    pub async fn record_call(
        &self,
        id: RollCallId,
        staff: &StaffId,
        outcome: Option<CallOutcome>,
        note: Option<&str>,
        by: &str,
    ) -> Result<CallListEntry, HqError> {
        let note = note.map(check_note).transpose()?;
        if outcome.is_none() && note.is_none() {
            return Err(HqError::Invalid(
                "say what happened: an outcome, a note, or both".into(),
            ));
        }
        // A closed roll call is HQ's finished record: a call made after it is refused with
        // the reason, or (as configured) recorded and marked late.
        let rc = self
            .store
            .roll_call(id)
            .await?
            .ok_or(HqError::NotFound(id))?;
        let closed = rc.state == crate::rollcall::RollCallState::Closed;
        let by = match (closed, self.late_outcomes) {
            (false, _) => by.to_string(),
            (true, true) => format!("{by} (閉鎖後 / after close)"),
            (true, false) => {
                return Err(HqError::Store(StoreError::Conflict(format!(
                    "roll call #{id} is closed, so its record no longer changes: this \
                     was not recorded (HQ can set api.outcomes_after_close = \"late\" to \
                     record such calls, marked late)"
                ))))
            }
        };
        if note.is_none() && outcome.is_some_and(CallOutcome::closes_entry) {
            let e = self.entry(id, staff).await?;
            if e.urgent_open() {
                return Err(HqError::Invalid(format!(
                    "{} asked for help ({}): write what was done in a note when closing it",
                    e.name,
                    e.standing.as_ref().map_or("", |a| a.label.as_str())
                )));
            }
        }
        let entry = self
            .store
            .record_call(
                id,
                staff,
                outcome,
                note.as_deref(),
                &by,
                self.clock.now_millis(),
                closed,
            )
            .await?;
        self.changed(true);
        Ok(entry)
    }

    /// Urgent answers that came after their roll call closed, with no open roll call to take
    /// them.
    pub async fn late_answers(
        &self,
        open_only: bool,
    ) -> Result<Vec<rollcall::LateAnswer>, HqError> {
        Ok(self.store.late_answers(open_only).await?)
    }

    /// HQ closes a late answer with a note of what was done.
    pub async fn close_late_answer(&self, id: i64, by: &str, note: &str) -> Result<(), HqError> {
        let note = check_note(note)?;
        if self
            .store
            .close_late_answer(id, by, &note, self.clock.now_millis())
            .await?
        {
            Ok(())
        } else {
            Err(HqError::Store(StoreError::Conflict(format!(
                "late answer {id} does not exist or is already closed"
            ))))
        }
    }

    pub async fn record_outcome(
        &self,
        id: RollCallId,
        staff: &StaffId,
        outcome: CallOutcome,
        by: &str,
    ) -> Result<CallListEntry, HqError> {
        self.record_call(id, staff, Some(outcome), None, by).await
    }

    /// Gives `caller` the next person to ring and holds them for `hold` (see
    /// [`Store::claim_next_call`](crate::store::Store::claim_next_call)).
    pub async fn claim_next_call(
        &self,
        id: RollCallId,
        caller: &str,
        hold: Duration,
    ) -> Result<Option<CallListEntry>, HqError> {
        self.store
            .roll_call(id)
            .await?
            .ok_or(HqError::NotFound(id))?;
        let entry = self
            .store
            .claim_next_call(id, caller, self.clock.now_millis(), hold)
            .await?;
        if entry.is_some() {
            self.changed(true);
        }
        Ok(entry)
    }

    /// Lets go of `caller`'s hold on `staff`. False if they held nothing.
    pub async fn release_call(
        &self,
        id: RollCallId,
        staff: &StaffId,
        caller: &str,
    ) -> Result<bool, HqError> {
        self.store
            .roll_call(id)
            .await?
            .ok_or(HqError::NotFound(id))?;
        let released = self.store.release_call(id, staff, caller).await?;
        if released {
            self.changed(true);
        }
        Ok(released)
    }

    /// A shelter phone answers through HQ's API (its own page) instead of the chat app:
    /// recorded as a tap on one of its roll call's shelter buttons (the first "ok" one when
    /// `value` is None), from that phone's chat id, through the same receipt path and event
    /// log as a tap in the chat app.
    pub async fn acknowledge(
        &self,
        id: RollCallId,
        phone: &StaffId,
        value: Option<&str>,
    ) -> Result<CallListEntry, HqError> {
        let rc = self
            .store
            .roll_call(id)
            .await?
            .ok_or(HqError::NotFound(id))?;
        if rc.state == crate::rollcall::RollCallState::Closed {
            return Err(HqError::Store(StoreError::Closed(id)));
        }
        let entry = self.entry(id, phone).await?;
        let choices = rc.choices_for(entry.kind);
        let choice = match value {
            Some(v) => choices.iter().find(|c| c.value == v).ok_or_else(|| {
                HqError::Invalid(format!(
                    "{v:?} is not one of this roll call's answers: {}",
                    choices
                        .iter()
                        .map(|c| c.value.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?,
            None => choices
                .iter()
                .find(|c| c.level == crate::answers::AnswerLevel::Ok)
                .or_else(|| choices.first())
                .ok_or_else(|| HqError::Invalid("this roll call has no answers".into()))?,
        };
        let contacts = self.store.contacts().await?;
        let contact = contacts.iter().find(|c| &c.id == phone);
        // Answers are matched by chat id; a phone without one was never sent the message and
        // is on the call list from the start, where HQ's call records what it says.
        let handle = contact
            .and_then(|c| c.chat.get(&rc.provider).cloned())
            .ok_or_else(|| {
                HqError::Store(StoreError::Conflict(format!(
                    "{phone} has no {} id, so it was not sent the message and is on the call \
                     list: HQ will call it and record the answer",
                    rc.provider
                )))
            })?;
        let now = self.clock.now();
        let event = crate::providers::InboundEvent {
            event_id: format!(
                "api-ack-{}-{}-{}-{:08x}",
                id,
                phone,
                now.timestamp_millis(),
                rand::random::<u32>()
            ),
            roll_call_id: Some(id),
            from: handle,
            kind: crate::providers::InboundKind::Answer {
                value: choice.value.clone(),
            },
            occurred_at: now,
        };
        let summary =
            crate::receipts::apply(&self.store, &self.clock, &rc.provider, &[event]).await?;
        self.changed(true);
        if summary.answered == 0 {
            return Err(HqError::Store(StoreError::NoSuchRecipient {
                roll_call: id,
                staff: phone.clone(),
            }));
        }
        self.entry(id, phone).await
    }

    /// What a shelter phone's own page shows: every open roll call the phone is in, with its
    /// answers and what the phone has answered so far.
    pub async fn shelter_view(&self, phone: &StaffId) -> Result<Vec<ShelterRollCall>, HqError> {
        let mut out = Vec::new();
        for rc in self.store.roll_calls().await? {
            if rc.state != crate::rollcall::RollCallState::Open {
                continue;
            }
            let Some(entry) = self.store.entry(rc.id, phone).await? else {
                continue;
            };
            out.push(ShelterRollCall {
                choices: rc.choices_for(entry.kind).to_vec(),
                roll_call: rc,
                entry,
            });
        }
        Ok(out)
    }

    /// Waits (by polling the store) until no delivery of `id` is pending or sending.
    pub async fn wait_all_sent(&self, id: RollCallId, poll: Duration) -> Result<Progress, HqError> {
        loop {
            let p = self.store.progress(id).await?;
            if p.overall.pending == 0 && p.overall.sending == 0 {
                return Ok(p);
            }
            tokio::time::sleep(poll).await;
        }
    }
}

/// Makes a roll call's deliveries from the directory's pages ([`Hq::start`]), and, once it
/// has seen them all, how the roll call will be sent.
struct StartComposer<'a> {
    scenario: &'a Scenario,
    provider: &'a str,
    capabilities: &'a Capabilities,
    routes: &'a [Route],
    /// The whole directory's size.
    contacts: usize,
    reach: Reach,
    recipients: usize,
    no_chat: usize,
    estimate: Option<Estimate>,
}

impl rollcall::DeliveryComposer for StartComposer<'_> {
    fn page(&mut self, contacts: Vec<Contact>) -> Vec<rollcall::NewDelivery> {
        self.contacts += contacts.len();
        // One pass: each contact is matched against the audience once, counted for the
        // planner, and made a row if it is in the audience.
        let mut rows = Vec::new();
        for c in contacts {
            let member = self.scenario.audience.matches(&c);
            self.reach.count(&c, member, self.provider);
            if member {
                rows.push(rollcall::AudienceMember::into_delivery(c, self.provider));
            }
        }
        self.no_chat += rows.iter().filter(|r| r.chat_handle.is_none()).count();
        self.recipients += rows.len();
        rows
    }

    fn finish(&mut self) -> Option<rollcall::Composed> {
        if self.recipients == 0 {
            return None;
        }
        let est = estimate_plan(&self.reach, self.no_chat, self.capabilities, self.routes);
        // Written with the roll call; the dispatcher works it out itself only for a roll
        // call that has none, and both agree.
        let dispatch_plan = if self.routes.is_empty() {
            None
        } else {
            serde_json::to_string(&est.plan).ok()
        };
        self.estimate = Some(est);
        Some(rollcall::Composed { dispatch_plan })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::RateLimit;

    fn caps(limit: Option<RateLimit>) -> Capabilities {
        Capabilities {
            read_receipts: true,
            buttons: true,
            idempotent_sends: false,
            rate_limit: limit,
            max_in_flight: 64,
        }
    }

    #[test]
    fn estimate_follows_the_rate_limit() {
        let e = estimate(
            1_000,
            0,
            &caps(Some(RateLimit {
                requests: 240,
                per: Duration::from_secs(60),
            })),
        );
        // 24 go in the first burst, the other 976 at 3.6/s.
        assert!((e.seconds_to_all_sent - 271.1).abs() < 0.2, "{e:?}");
        let e = estimate(1_000, 100, &caps(None));
        assert_eq!(e.reachable, 900);
        assert!(e.seconds_to_all_sent < 1.0);
    }
}
